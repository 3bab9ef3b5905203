//! The reference in `docs/` against the code: every key the config and rule parsers accept (from
//! `rollbackd schema`, which is made from the parsers' own shapes) is documented, every route of
//! the router is in `docs/api.md`, and the shipped configs and rules fit the schemas.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::BIN;
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn schema(of: &str) -> Value {
    let out = Command::new(BIN)
        .args(["schema", of])
        .output()
        .expect("run rollbackd schema");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the schema is JSON")
}

/// Every key path the schema allows (`limits.max_body_bytes`, `rules[].steps[].http.url`), found
/// by walking it through `$ref`, `anyOf`, `items` and `additionalProperties`.
fn keys(schema: &Value) -> BTreeSet<String> {
    fn walk(
        root: &Value,
        v: &Value,
        path: &str,
        seen: &mut Vec<String>,
        out: &mut BTreeSet<String>,
    ) {
        if let Some(r) = v.get("$ref").and_then(Value::as_str) {
            if seen.iter().filter(|s| *s == r).count() > 1 {
                return;
            }
            let name = r.trim_start_matches("#/$defs/");
            seen.push(r.to_string());
            walk(root, &root["$defs"][name], path, seen, out);
            seen.pop();
        }
        for k in ["anyOf", "oneOf", "allOf"] {
            for alt in v.get(k).and_then(Value::as_array).into_iter().flatten() {
                walk(root, alt, path, seen, out);
            }
        }
        if let Some(items) = v.get("items") {
            walk(root, items, &format!("{path}[]"), seen, out);
        }
        if let Some(extra) = v.get("additionalProperties").filter(|e| e.is_object()) {
            walk(root, extra, &format!("{path}.*"), seen, out);
        }
        if let Some(props) = v.get("properties").and_then(Value::as_object) {
            for (k, sub) in props {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                out.insert(p.clone());
                walk(root, sub, &p, seen, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(schema, schema, "", &mut Vec::new(), &mut out);
    out
}

/// A key is documented when the reference names it in backticks as its path: `limits.max_body_bytes`,
/// `people[].roles`, `notifiers.NAME.webhook`, and in rules.md without the `rules[].` in front
/// (`steps[].http.url`). Two sentences of rules.md stand for many keys, and are taken at their
/// word: an `after` hook takes a step's keys, and a `probe` a step's `run`/`http`/`env`/`dir`.
fn documented(doc: &str, key: &str) -> bool {
    let mut k = key.trim_start_matches("rules[].").replace(".*.", ".NAME.");
    // `after` hooks and `on_unfreeze` steps take a step's keys, documented once under `steps[]`.
    for list in ["after[]", "on_unfreeze[]"] {
        if let Some(rest) = k.strip_prefix(list) {
            k = format!("steps[]{rest}");
        }
    }
    k = k.replace("steps[].probe.", "steps[].");
    doc.contains(&format!("`{k}`"))
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn every_config_key_is_in_docs_config_md() {
    let doc = read(&root().join("docs/config.md"));
    let keys = keys(&schema("config"));
    assert!(keys.contains("limits.max_body_bytes"), "{keys:?}");
    assert!(keys.contains("cluster.members[].url"), "{keys:?}");
    let missing: Vec<&String> = keys.iter().filter(|k| !documented(&doc, k)).collect();
    assert!(
        missing.is_empty(),
        "docs/config.md does not document {missing:?}"
    );
}

#[test]
fn every_rule_key_is_in_docs_rules_md() {
    let doc = read(&root().join("docs/rules.md"));
    let keys = keys(&schema("rules"));
    for k in [
        "rules[].sources",
        "rules[].steps[].dir",
        "rules[].steps[].http.body",
        "rules[].steps[].http.headers",
        "rules[].steps[].http.expect_status",
        "rules[].verify.checks[].http.body_contains",
        "rules[].verify.checks[].prometheus.above",
        "rules[].approval.on_timeout",
    ] {
        assert!(keys.contains(k), "{k} not in {keys:?}");
    }
    let missing: Vec<&String> = keys
        .iter()
        .filter(|k| *k != "rules" && !documented(&doc, k))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/rules.md does not document {missing:?}"
    );
}

#[test]
fn every_route_is_in_docs_api_md() {
    let doc = read(&root().join("docs/api.md"));
    let re = regex::Regex::new(r#"\.route\(\s*"([^"]+)""#).unwrap();
    let mut routes = BTreeSet::new();
    for file in ["src/api/mod.rs", "src/api/cluster.rs"] {
        for c in re.captures_iter(&read(&root().join(file))) {
            routes.insert(c[1].to_string());
        }
    }
    assert!(
        routes.contains("/v1/signals") && routes.len() > 20,
        "{routes:?}"
    );
    let missing: Vec<&String> = routes
        .iter()
        .filter(|r| !doc.contains(&format!(" {r}`")) && !doc.contains(&format!(" {r}?")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/api.md does not document {missing:?}"
    );
}

/// The YAML of `path` as JSON, the way the parsers read it.
fn yaml(path: &Path) -> Value {
    serde_saphyr::from_str(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn assert_fits(schema: &Value, files: &[PathBuf]) {
    let v = jsonschema::draft202012::new(schema).expect("a valid JSON Schema");
    for f in files {
        let doc = yaml(f);
        let errors: Vec<String> = v
            .iter_errors(&doc)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{}: {errors:#?}", f.display());
    }
}

#[test]
fn the_shipped_configs_and_rules_fit_the_schemas() {
    let r = root();
    let config = schema("config");
    assert_fits(
        &config,
        &[
            r.join("rollbackd.yaml"),
            r.join("deploy/kubernetes/rollbackd.yaml"),
            r.join("deploy/kubernetes-cluster/rollbackd.yaml"),
        ],
    );
    let rules = schema("rules");
    let mut files = Vec::new();
    for dir in ["rules", "rules/presets", "deploy/kubernetes/rules"] {
        for e in std::fs::read_dir(r.join(dir)).unwrap() {
            let p = e.unwrap().path();
            if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
                files.push(p);
            }
        }
    }
    assert!(files.len() > 5, "{files:?}");
    assert_fits(&rules, &files);

    // And the schemas say no where the parsers do.
    let v = jsonschema::draft202012::new(&rules).unwrap();
    let bad: Value = serde_json::json!({"rules": [{"name": "a", "service": "s", "breach": {"sustianed": "1m"}, "steps": []}]});
    assert!(!v.is_valid(&bad));
    let v = jsonschema::draft202012::new(&config).unwrap();
    assert!(!v.is_valid(&serde_json::json!({"lisen": "127.0.0.1:1"})));
    assert!(!v.is_valid(&serde_json::json!({"limits": {"ingest_burst": "many"}})));
}

/// Every fenced `yaml` block in `docs/` and the README that holds `rules:` loads without an error
/// against the example config's people: a rule shown in the docs is a rule that works.
#[test]
fn the_rules_shown_in_the_docs_load() {
    use rollbackd::rules::{self, Context, Severity};
    let ctx = Context::with_people(
        [
            ("ada", &["founder"][..]),
            ("cy", &["client-success-lead"][..]),
        ],
        [],
    );
    let r = root();
    let mut pages = vec![r.join("README.md")];
    for e in std::fs::read_dir(r.join("docs")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().and_then(|e| e.to_str()) == Some("md") {
            pages.push(p);
        }
    }
    let mut checked = 0;
    for page in &pages {
        let text = read(page);
        let mut block: Option<String> = None;
        for line in text.lines() {
            match (&mut block, line.trim_start()) {
                (None, l) if l.starts_with("```yaml") => block = Some(String::new()),
                (Some(b), l) if l.starts_with("```") => {
                    if b.starts_with("rules:") {
                        let (set, problems) = rules::load_str("doc.yaml", b, &ctx);
                        let errors: Vec<String> = problems
                            .iter()
                            .filter(|p| p.severity == Severity::Error)
                            .map(|p| p.to_string())
                            .collect();
                        assert!(
                            set.is_some() && errors.is_empty(),
                            "{}: a rules block does not load: {errors:#?}\n{b}",
                            page.display()
                        );
                        checked += 1;
                    }
                    block = None;
                }
                (Some(b), _) => {
                    b.push_str(line);
                    b.push('\n');
                }
                (None, _) => {}
            }
        }
    }
    assert!(checked >= 2, "only {checked} rules blocks found");
}
