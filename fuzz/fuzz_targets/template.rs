//! Strict templates: `Template::parse` and `render` with arbitrary sources and values.
//!
//! Properties:
//! - `{{ labels.x }}` alone, rendered with an arbitrary value: Ok means the output is exactly the
//!   value and the value is in `[A-Za-z0-9._:/@+=-]*`, has no `..` and no leading `-` (checked
//!   here independently of `value_is_safe`); Err otherwise. The same inside literal text.
//! - An arbitrary source, parsed in either scope and rendered with every name bound to one
//!   arbitrary value: never panics; if it has a substitution and renders Ok, the value is safe.
#![no_main]

use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use rollbackd::rules::template::{Scope, Template};

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    value: &'a str,
    source: &'a str,
    prefix: &'a str,
    suffix: &'a str,
    step_scope: bool,
}

const NAMES: &[&str] = &[
    "service",
    "environment",
    "rule",
    "incident.id",
    "release.previous.deployment_id",
    "release.previous.version",
    "release.current.deployment_id",
    "release.current.version",
];

fn safe(v: &str) -> bool {
    v.chars()
        .all(|c| c.is_ascii_alphanumeric() || "._:/@+=-".contains(c))
        && !v.contains("..")
        && !v.starts_with('-')
}

fuzz_target!(|input: Input| {
    let mut one = BTreeMap::new();
    one.insert("labels.x".to_string(), input.value.to_string());

    let t = Template::parse("{{ labels.x }}", Scope::Labels).unwrap();
    match t.render(&one) {
        Ok(out) => {
            assert_eq!(out, input.value);
            assert!(safe(&out), "unsafe value rendered: {out:?}");
        }
        Err(e) => assert!(
            !safe(input.value),
            "safe value {:?} refused: {e}",
            input.value
        ),
    }

    // Literal text around it (braces and `$` removed, so the source stays one substitution).
    let clean = |s: &str| s.replace(['{', '}', '$'], "");
    let (pre, post) = (clean(input.prefix), clean(input.suffix));
    let t = Template::parse(&format!("{pre}{{{{labels.x}}}}{post}"), Scope::Step).unwrap();
    match t.render(&one) {
        Ok(out) => {
            assert!(safe(input.value), "unsafe value {:?} rendered", input.value);
            assert_eq!(out, format!("{pre}{}{post}", input.value));
        }
        Err(_) => assert!(!safe(input.value)),
    }

    // Arbitrary source: bind every known name and every `labels.*` it may use to the value.
    let scope = if input.step_scope {
        Scope::Step
    } else {
        Scope::Labels
    };
    if let Ok(t) = Template::parse(input.source, scope) {
        assert_eq!(t.source(), input.source);
        let mut vars: BTreeMap<String, String> = NAMES
            .iter()
            .map(|n| (n.to_string(), input.value.to_string()))
            .collect();
        for piece in input.source.split("{{").skip(1) {
            if let Some(name) = piece.split("}}").next() {
                vars.insert(name.trim().to_string(), input.value.to_string());
            }
        }
        match t.render(&vars) {
            Ok(out) => {
                if !t.is_literal() {
                    assert!(
                        safe(input.value),
                        "unsafe value {:?} rendered in {out:?}",
                        input.value
                    );
                } else {
                    assert_eq!(out, input.source, "a literal template changed");
                }
            }
            Err(e) => assert!(
                !t.is_literal() && !safe(input.value),
                "render failed though the value is safe: {e}"
            ),
        }
    }
});
