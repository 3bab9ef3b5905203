//! What a project ships beside its code: the licence Cargo.toml names, a changelog for the
//! version it builds, and a running daemon that says which build it is.

mod common;

use common::*;

#[test]
fn the_licence_is_the_one_cargo_toml_names() {
    assert!(repo_file("Cargo.toml").contains("license = \"Apache-2.0\""));
    let licence = repo_file("LICENSE");
    assert!(licence.contains("Apache License"), "LICENSE is not Apache");
    assert!(licence.contains("Version 2.0, January 2004"));
    assert!(
        licence.contains("END OF TERMS AND CONDITIONS"),
        "LICENSE is cut short"
    );
}

#[test]
fn the_changelog_has_the_version_being_built() {
    let changelog = repo_file("CHANGELOG.md");
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

/// Every `rollbackd NAME` the docs show in code is a command the binary has (`listening` is the
/// first line of `serve`), and every `rollbackd_*` metric they name is defined.
#[test]
fn the_docs_name_only_commands_and_metrics_that_exist() {
    let metrics_src = repo_file("src/metrics.rs");
    for doc in [
        "README.md",
        "deploy/README.md",
        "CHANGELOG.md",
        "rules/presets/README.md",
        "docs/api.md",
        "docs/argocd.md",
        "docs/config.md",
        "docs/flux.md",
        "docs/github.md",
        "docs/gitlab.md",
        "docs/gitops.md",
        "docs/rules.md",
    ] {
        let text = repo_file(doc);
        for (at, _) in text.match_indices("`rollbackd ") {
            let name: String = text[at + 11..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '-')
                .collect();
            let name = name.trim_end_matches('-');
            if name.is_empty() || name == "listening" {
                continue;
            }
            let o = std::process::Command::new(bin())
                .args(["help", name])
                .output()
                .expect("run rollbackd");
            assert!(
                o.status.success(),
                "{doc} shows `rollbackd {name}`, which does not exist"
            );
        }
        for (at, _) in text.match_indices("rollbackd_") {
            let name: String = text[at..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            assert!(
                metrics_src.contains(&format!("\"{name}\"")),
                "{doc} names the metric {name}, which src/metrics.rs does not define"
            );
        }
    }
}

/// Hot reload is built: the deployment docs say how it is triggered and never that it is missing,
/// and the systemd unit's reload sends the signal the daemon reloads on.
#[test]
fn the_deployment_docs_know_about_hot_reload() {
    for doc in ["deploy/README.md", "deploy/kubernetes/statefulset.yaml"] {
        let text = repo_file(doc).to_lowercase();
        assert!(
            !text.contains("no hot reload"),
            "{doc} says there is no hot reload"
        );
    }
    let deploy = repo_file("deploy/README.md");
    for how in ["SIGHUP", "POST /-/reload", "systemctl reload rollbackd"] {
        assert!(
            deploy.contains(how),
            "deploy/README.md does not mention {how}"
        );
    }
    assert!(repo_file("deploy/rollbackd.service").contains("ExecReload=/bin/kill -HUP $MAINPID"));
}
