//! `rollbackd lint` against a config's people: approvals nobody could give, `==` in a matcher, and
//! a structural error that hides nothing else of its file.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::bin;

/// `rollbackd lint --config CONFIG RULES`.
fn lint(config: &Path, rules: &Path) -> Output {
    Command::new(bin())
        .args(["lint", "--config"])
        .arg(config)
        .arg(rules)
        .env_remove("ROLLBACKD_CONFIG")
        .output()
        .expect("run rollbackd lint")
}

const CONFIG: &str = "people:
  - { id: ada, roles: [founder] }
  - { id: cy, roles: [client-success-lead] }
";

const RULES: &str = r#"rules:
  - name: too-many-approvers
    match: [alertname="A"]
    service: web
    breach: { sustained: 1m }
    approval: { require_roles: [founder, client-success-lead], quorum: 3 }
    steps: [{ name: s, run: [/bin/true] }]
  - name: nobody-holds-it
    match: [alertname="B"]
    service: web
    breach: { sustained: 1m }
    approval: { require_roles: [database-owner] }
    steps: [{ name: s, run: [/bin/true] }]
  - name: double-equals
    match: [severity==page]
    service: web
    breach: { sustained: 1m }
    approval: none
    steps: [{ name: s, run: [/bin/true] }]
  - name: misspelt-key
    match: [alertname="C"]
    service: web
    breach: { sustained: 1m, sustianed: 2m }
    approval: none
    steps: [{ name: s, run: [/bin/true] }]
"#;

#[test]
fn lint_reports_every_approval_nobody_could_give_and_keeps_going_after_a_structural_error() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    let file = rules.join("rules.yaml");
    std::fs::write(&file, RULES).unwrap();
    let cfg = dir.path().join("rollbackd.yaml");
    std::fs::write(&cfg, CONFIG).unwrap();

    let out = lint(&cfg, &rules);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    let f = file.display();
    let want = [
        format!(
            "{f}:6:15: approval.quorum 3 is more than the 2 people under `people:` who hold `founder` or `client-success-lead`; the quorum could never be met"
        ),
        format!(
            "{f}:12:15: approval: nobody under `people:` in the config holds role `database-owner`; nobody could approve"
        ),
        format!(
            "{f}:15:13: matcher `severity==page`: `==` is not an operator; write `severity=\"value\"` (one of =, !=, =~, !~)"
        ),
        format!(
            "{f}:23:30: unknown field `sustianed`, expected one of sustained, clear_after, max_open"
        ),
    ];
    let got: Vec<&str> = stdout.lines().collect();
    assert_eq!(got, want, "stderr: {stderr}");
    assert!(stderr.contains("4 error(s)"), "{stderr}");
}

/// A config that does not load is a problem lint reports like the others: exit 1, the file and
/// what is wrong on stdout.
#[test]
fn lint_with_a_config_that_does_not_load_exits_1_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(rules.join("rules.yaml"), "rules: []\n").unwrap();
    let cfg = dir.path().join("rollbackd.yaml");
    std::fs::write(&cfg, "listen: 127.0.0.1:9750\nlisen_typo: 1\n").unwrap();
    for (config, says) in [
        (cfg, "lisen_typo"),
        (dir.path().join("missing.yaml"), "cannot read"),
    ] {
        let out = lint(&config, &rules);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{stdout}");
        assert!(
            stdout.starts_with(&config.display().to_string()) && stdout.contains(says),
            "{stdout}"
        );
    }
}
