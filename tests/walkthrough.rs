//! The README's five-minute walkthrough, run as written by a POSIX `sh` against the real daemon
//! and the real `rules/demo.yaml` (its times shortened), twice in a row: it must work with a
//! `date` that knows no GNU options, and leave nothing behind that stops the second run.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use common::*;

/// The first `sh` block after the walkthrough's heading.
fn walkthrough() -> String {
    let readme = repo_file("README.md");
    let from = readme
        .find("## Five minutes")
        .expect("the walkthrough heading");
    let start = readme[from..].find("```sh\n").expect("its sh block") + from + 6;
    let end = readme[start..].find("```").expect("the block's end") + start;
    readme[start..end].to_string()
}

fn shim(dir: &std::path::Path, name: &str, body: &str) {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write shim");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

#[test]
fn the_readme_walkthrough_runs_on_a_posix_shell_and_runs_again() {
    let demo = repo_file("rules/demo.yaml");
    assert!(demo.contains("sustained: 30s") && demo.contains("clear_after: 10s"));
    let rules = demo
        .replace("sustained: 30s", "sustained: 2s")
        .replace("clear_after: 10s", "clear_after: 1s");
    let setup = Setup::new("", &rules);
    let d = setup.start();
    let script = walkthrough().replace("localhost:9750", d.base.trim_start_matches("http://"));
    assert!(script.contains("sleep 31"));

    // A `date` that refuses what BSD and macOS do not have, and a `sleep` that keeps the
    // walkthrough's waits longer than the shortened rule needs but short.
    let bin_dir = setup.path().join("shims");
    std::fs::create_dir_all(&bin_dir).expect("mkdir");
    shim(
        &bin_dir,
        "date",
        r#"for a in "$@"; do case "$a" in -d|--*|-*d*) echo "date: GNU-only option $a" >&2; exit 2;; esac; done
exec /bin/date "$@""#,
    );
    shim(
        &bin_dir,
        "sleep",
        r#"if [ "$1" -gt 10 ]; then exec /bin/sleep 4; else exec /bin/sleep "$1"; fi"#,
    );
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for run in 1..=2 {
        let out = Command::new("/bin/sh")
            .args(["-eu", "-c", &script])
            .env("PATH", &path)
            .output()
            .expect("run sh");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "run {run}: {stdout}\n{stderr}");
        assert!(stderr.is_empty(), "run {run}: {stderr}");
        assert!(stdout.contains("HTTP/1.1 423"), "run {run}: {stdout}");
        assert!(
            stdout.contains("\"state\":\"rolled_back\""),
            "run {run}: {stdout}"
        );
        assert!(
            stdout.contains("in a browser: http://"),
            "run {run}: {stdout}"
        );
        // The breach the run ended clears after clear_after.
        wait_for(Duration::from_secs(10), || {
            let (_, v) = get(&d.url("/v1/breaches"), None);
            v["items"].as_array()?.is_empty().then_some(())
        })
        .unwrap_or_else(|| panic!("run {run} left its breach open"));
    }
    let (_, v) = get(&d.url("/v1/incidents?state=rolled_back"), None);
    assert_eq!(v["items"].as_array().map(Vec::len), Some(2), "{v}");
}
