use super::*;

fn ctx() -> Context {
    Context::with_people(
        [
            ("ada", &["founder"][..]),
            ("cy", &["client-success-lead"][..]),
        ],
        ["incidents"],
    )
}

fn lint(yaml: &str) -> Vec<String> {
    let (_, problems) = load_str("r.yaml", yaml, &ctx());
    problems.iter().map(|p| p.to_string()).collect()
}

#[test]
fn the_shipped_rules_load_cleanly_against_the_example_config() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let (set, problems) = load_dir(&dir, &ctx());
    assert!(problems.is_empty(), "{problems:#?}");
    let set = set.unwrap();
    let portal = set.get("portal-error-rate").unwrap();
    assert_eq!(portal.sustained, Duration::from_secs(600));
    assert_eq!(portal.clear_after, Duration::from_secs(120));
    let a = portal.approval.as_ref().unwrap();
    assert_eq!(a.require_roles, ["founder", "client-success-lead"]);
    assert_eq!((a.quorum, a.timeout), (2, Duration::from_secs(300)));
    assert_eq!(portal.steps.len(), 4);
    assert!(portal.freeze);
    assert_eq!(portal.verify.as_ref().unwrap().checks.len(), 4);
}

#[test]
fn every_problem_has_file_line_and_column() {
    let out = lint(
        r#"rules:
  - name: Bad_Name
    match:
      - alertname
      - severity=~"("
    service: "{{ labels.service }}"
    breach: { sustained: tenminutes }
    approval: maybe
    steps:
      - name: x
        run: [rollback, "{{ nope }}"]
      - name: y
    notify: [pager]
"#,
    );
    let want = [
        "r.yaml:2:11: rule name `Bad_Name` must match [a-z0-9-]+",
        "r.yaml:4:9: matcher `alertname` has no operator (one of =, !=, =~, !~)",
        "r.yaml:5:9: matcher `severity=~\"(\"`: invalid regular expression: unclosed group",
        "r.yaml:7:26: breach.sustained: `tenminutes` is not a duration (expected number at 0); write e.g. 30s, 10m, 2h",
        "r.yaml:8:15: approval: `maybe` is not `none` or a policy (require_roles, quorum, timeout, on_timeout)",
        "r.yaml:11:25: template `{{ nope }}`: unknown name `nope` (known: labels.<name>, service, environment, rule, incident.id, release.previous.deployment_id, release.previous.version, release.previous.revision, release.current.deployment_id, release.current.version, release.current.revision, fencing_token)",
        "r.yaml:12:9: step `y` needs exactly one of `run` or `http`",
        "r.yaml:13:14: warning: notifier `pager` is not defined under `notifiers:` in the config",
    ];
    let mut got = out.clone();
    got.sort();
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn structural_errors_name_the_place() {
    let out = lint(
        "rules:\n  - name: a\n    match: [a=\"b\"]\n    service: s\n    breach: { sustained: 1m, sustianed: 2m }\n    steps: [{name: s, run: [x]}]\n",
    );
    assert_eq!(out.len(), 1, "{out:?}");
    assert!(
        out[0].starts_with("r.yaml:5:30: unknown field `sustianed`"),
        "{out:?}"
    );
    let out = lint("rules: [ {name: a");
    assert!(out[0].starts_with("r.yaml:1:"), "{out:?}");
}

#[test]
fn duplicate_names_are_errors_across_files() {
    let dir = tempfile::tempdir().unwrap();
    let r = "rules:\n  - name: a\n    match: [a=\"b\"]\n    service: s\n    breach: { sustained: 1m }\n    steps: [{name: s, run: [x]}]\n";
    std::fs::write(dir.path().join("1.yaml"), r).unwrap();
    std::fs::write(dir.path().join("2.yml"), r).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
    let (set, problems) = load_dir(dir.path(), &ctx());
    assert!(set.is_none());
    assert_eq!(problems.len(), 1);
    assert!(problems[0].message.contains("already used"), "{problems:?}");
    assert!(problems[0].file.ends_with("2.yml"));
}

#[test]
fn defaults_follow_the_contract() {
    let (set, p) = load_str(
        "r.yaml",
        "rules:\n  - name: a\n    match: [a=\"b\"]\n    service: s\n    breach: { sustained: 1m }\n    approval: { require_roles: [founder] }\n    steps: [{name: s, run: [x]}]\n",
        &ctx(),
    );
    assert!(p.is_empty(), "{p:?}");
    let set = set.unwrap();
    let r = &set.rules[0];
    assert_eq!(r.mode, Mode::Enforce);
    let a = r.approval.as_ref().unwrap();
    assert_eq!(a.quorum, 1);
    assert_eq!(a.timeout, Duration::from_secs(900));
    assert!(!a.proceed_on_timeout);
    let s = &r.steps[0];
    assert_eq!(s.timeout, Duration::from_secs(300));
    assert_eq!(
        (s.retries, s.idempotent, s.continue_on_failure),
        (0, false, false)
    );
    assert_eq!(r.group(&Labels::new()).0, "{}");
}

#[test]
fn approval_policy_problems() {
    let base = "rules:\n  - name: a\n    match: [a=\"b\"]\n    service: s\n    breach: { sustained: 1m }\n    steps: [{name: s, run: [x]}]\n";
    let out = lint(&format!(
        "{base}    approval: {{ require_roles: [janitor] }}\n"
    ));
    assert!(
        out[0].starts_with(
            "r.yaml:7:15: approval: nobody under `people:` in the config holds role `janitor`"
        ),
        "{out:?}"
    );
    let out = lint(&format!("{base}    approval: {{ require_roles: [] }}\n"));
    assert!(out[0].contains("require_roles is empty"), "{out:?}");
    let out = lint(&format!(
        "{base}    approval: {{ require_roles: [founder], on_timeout: shrug }}\n"
    ));
    assert!(out[0].contains("on_timeout"), "{out:?}");
}

#[test]
fn group_key_is_canonical() {
    let (set, _) = load_str(
        "r.yaml",
        "rules:\n  - name: a\n    match: [a=\"b\"]\n    group_by: [service, env]\n    service: s\n    breach: { sustained: 1m }\n    steps: [{name: s, run: [x]}]\n",
        &ctx(),
    );
    let set = set.unwrap();
    let labels: Labels = [("service", "web"), ("x", "y")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let (key, picked) = set.rules[0].group(&labels);
    assert_eq!(key, r#"{env="", service="web"}"#);
    assert_eq!(picked.len(), 2);
}

#[test]
fn breach_max_open_overrides_the_cap_and_must_be_positive() {
    let rule = |max_open: &str| {
        format!(
            "rules:\n  - name: r\n    match: ['alertname=\"A\"']\n    service: web\n    breach: {{ sustained: 1m, max_open: {max_open} }}\n    approval: none\n    steps:\n      - name: x\n        run: [/bin/true]\n"
        )
    };
    let (set, problems) = load_str("r.yaml", &rule("25"), &ctx());
    assert!(problems.is_empty(), "{problems:#?}");
    assert_eq!(set.unwrap().get("r").unwrap().max_open, Some(25));
    let out = lint(&rule("0"));
    assert_eq!(out.len(), 1, "{out:#?}");
    assert!(
        out[0].starts_with("r.yaml:5:") && out[0].contains("breach.max_open must be at least 1"),
        "{out:#?}"
    );
}

#[test]
fn approvals_nobody_could_give_are_errors() {
    let base = "rules:\n  - name: a\n    match: [a=\"b\"]\n    service: s\n    breach: { sustained: 1m }\n    steps: [{name: s, run: [x]}]\n";
    // Two people hold `founder` or `client-success-lead`: a quorum of 3 is never met.
    let out = lint(&format!(
        "{base}    approval: {{ require_roles: [founder, client-success-lead], quorum: 3 }}\n"
    ));
    assert_eq!(
        out,
        [
            "r.yaml:7:15: approval.quorum 3 is more than the 2 people under `people:` who hold `founder` or `client-success-lead`; the quorum could never be met"
        ]
    );
    let out = lint(&format!(
        "{base}    approval: {{ require_roles: [founder], quorum: 2 }}\n"
    ));
    assert!(
        out[0].contains("approval.quorum 2 is more than the 1 people"),
        "{out:?}"
    );
    let (set, p) = load_str(
        "r.yaml",
        &format!(
            "{base}    approval: {{ require_roles: [founder, client-success-lead], quorum: 2 }}\n"
        ),
        &ctx(),
    );
    assert!(p.is_empty() && set.is_some(), "{p:?}");
}

#[test]
fn a_double_equals_matcher_is_an_error() {
    let out = lint(
        "rules:\n  - name: a\n    match: [alertname=\"A\", severity==page]\n    service: s\n    breach: { sustained: 1m }\n    approval: none\n    steps: [{name: s, run: [x]}]\n",
    );
    assert_eq!(out.len(), 1, "{out:?}");
    assert!(
        out[0].starts_with("r.yaml:3:28: matcher `severity==page`: `==` is not an operator"),
        "{out:?}"
    );
}

#[test]
fn a_structural_error_hides_no_other_rule() {
    let out = lint(
        r#"rules:
  - name: one
    match: [a="b"]
    service: s
    breach: { sustained: 1m, sustianed: 2m }
    approval: none
    steps: [{name: s, run: [x]}]
  # a comment between rules
  - name: two
    match: [severity==page]
    service: s
    breach: { sustained: soon }
    approval: none
    steps: [{name: s, run: [x]}]
  - {name: three, match: [a="b"], service: s, breach: {sustained: 1m}, approval: none, steps: [{name: s, runn: [x]}]}
  - name: four
    match: [a="b"]
    service: s
    breach: { sustained: 1m }
    approval: { require_roles: [janitor] }
    steps: [{name: s, run: [x]}]
"#,
    );
    let mut got = out.clone();
    got.sort();
    assert_eq!(got.len(), 5, "{got:#?}");
    assert!(
        got[0].starts_with("r.yaml:10:13: matcher `severity==page`"),
        "{got:#?}"
    );
    assert!(
        got[1].starts_with("r.yaml:12:26: breach.sustained: `soon`"),
        "{got:#?}"
    );
    assert!(
        got[2].starts_with("r.yaml:15:106: unknown field `runn`"),
        "{got:#?}"
    );
    assert!(got[2].contains("runn"), "{got:#?}");
    assert!(
        got[3].starts_with("r.yaml:20:15: approval: nobody"),
        "{got:#?}"
    );
    assert!(
        got[4].starts_with("r.yaml:5:30: unknown field `sustianed`"),
        "{got:#?}"
    );
}

#[test]
fn without_a_config_an_unknown_role_is_a_warning() {
    let (set, p) = load_str(
        "r.yaml",
        "rules:\n  - name: a\n    match: [a=\"b\"]\n    service: s\n    breach: { sustained: 1m }\n    approval: { require_roles: [founder], quorum: 2 }\n    steps: [{name: s, run: [x]}]\n",
        &Context::default(),
    );
    assert!(set.is_some(), "{p:?}");
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].severity, Severity::Warning);
    assert!(p[0].message.contains("without --config"), "{p:?}");
}

#[test]
fn on_unfreeze_needs_a_freeze_and_takes_a_steps_keys() {
    let base = r#"rules:
  - name: gitops
    match: ['alertname="X"']
    service: web
    breach: { sustained: 10m }
    steps:
      - name: auto-sync off
        run: [argocd-patch, off]
    on_unfreeze:
      - name: auto-sync on
        run: [argocd-patch, "{{ release.current.revision }}"]
        idempotent: true
"#;
    assert_eq!(
        lint(base),
        [
            "r.yaml:10:9: `on_unfreeze` needs `freeze: true`: its steps run when the rule's freeze is lifted, and without `freeze` there is none"
        ]
    );
    let with_freeze = format!("{base}    freeze: true\n");
    let (set, problems) = load_str("r.yaml", &with_freeze, &ctx());
    assert!(problems.is_empty(), "{problems:#?}");
    let set = set.unwrap();
    let rule = set.get("gitops").unwrap();
    assert_eq!(rule.on_unfreeze.len(), 1);
    assert!(rule.on_unfreeze[0].idempotent);
    let bad = base.replace(
        "run: [argocd-patch, \"{{ release.current.revision }}\"]",
        "run: [\"{{ nope }}\"]",
    );
    assert!(
        lint(&format!("{bad}    freeze: true\n"))
            .iter()
            .any(|p| p.starts_with("r.yaml:11:") && p.contains("unknown name `nope`")),
        "an on_unfreeze step's templates are checked like a step's"
    );
}

#[test]
fn json_body_strings_take_templates_checked_at_load_and_rendered_one_string_each() {
    let yaml = |id: &str| {
        format!(
            r#"rules:
  - name: argo
    match: ['alertname="X"']
    service: web
    breach: {{ sustained: 10m }}
    steps:
      - name: rollback
        http:
          method: POST
          url: https://argocd.example.com/api/v1/applications/web/rollback
          json: {{ name: web, id: "{id}", tags: ["{{{{ incident.id }}}}", 3], "{{{{ keys }}}}": literal }}
"#
        )
    };
    assert_eq!(
        lint(&yaml("{{ nope }}")),
        [
            "r.yaml:9:11: http.json.id: template `{{ nope }}`: unknown name `nope` (known: labels.<name>, service, environment, rule, incident.id, release.previous.deployment_id, release.previous.version, release.previous.revision, release.current.deployment_id, release.current.version, release.current.revision, fencing_token)"
        ]
    );
    let (set, problems) = load_str(
        "r.yaml",
        &yaml("{{ release.previous.deployment_id }}"),
        &ctx(),
    );
    assert!(problems.is_empty(), "{problems:#?}");
    let rule = set.unwrap().get("argo").cloned().unwrap();
    let Action::Http {
        body: Body::Json(body),
        ..
    } = &rule.steps[0].action
    else {
        panic!("an http step with a JSON body")
    };
    let vars: BTreeMap<String, String> = [
        ("release.previous.deployment_id", "6"),
        ("incident.id", "inc-000001"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(
        template::render_json(body, &vars).unwrap(),
        serde_json::json!({"name": "web", "id": "6", "tags": ["inc-000001", 3], "{{ keys }}": "literal"}),
        "values fill strings; keys and other values stay as written"
    );
    // A value that would break out of its JSON string is refused, as in argv.
    let mut hostile = vars.clone();
    hostile.insert(
        "release.previous.deployment_id".into(),
        "6\",\"prune\":true,\"x\":\"".into(),
    );
    let e = template::render_json(body, &hostile).unwrap_err();
    assert!(
        e.starts_with("http.json: value of `{{ release.previous.deployment_id }}`"),
        "{e}"
    );
}
