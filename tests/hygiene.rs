//! What a project ships beside its code: the licence Cargo.toml names, a changelog for the
//! version it builds, and a running daemon that says which build it is.

mod common;

use common::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn read(name: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(ROOT).join(name))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn the_licence_is_the_one_cargo_toml_names() {
    assert!(read("Cargo.toml").contains("license = \"Apache-2.0\""));
    let licence = read("LICENSE");
    assert!(licence.contains("Apache License"), "LICENSE is not Apache");
    assert!(licence.contains("Version 2.0, January 2004"));
    assert!(
        licence.contains("END OF TERMS AND CONDITIONS"),
        "LICENSE is cut short"
    );
}

#[test]
fn the_changelog_has_the_version_being_built() {
    let changelog = read("CHANGELOG.md");
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        changelog.contains(&format!("## [{version}]")),
        "CHANGELOG.md has no section for {version}"
    );
    assert!(changelog.contains("## [Unreleased]"));
}

#[test]
fn metrics_say_which_build_runs() {
    let setup = Setup::new("", "rules: []\n");
    let d = setup.start();
    let text = client()
        .get(d.url("/metrics"))
        .send()
        .expect("metrics")
        .text()
        .expect("text");
    let line = text
        .lines()
        .find(|l| l.starts_with("rollbackd_build_info{"))
        .unwrap_or_else(|| panic!("no rollbackd_build_info:\n{text}"));
    assert!(line.ends_with("} 1"), "{line}");
    for label in [
        format!("version=\"{}\"", env!("CARGO_PKG_VERSION")),
        format!("os=\"{}\"", std::env::consts::OS),
        format!("arch=\"{}\"", std::env::consts::ARCH),
        "commit=\"".to_string(),
    ] {
        assert!(line.contains(&label), "{line} lacks {label}");
    }
}
