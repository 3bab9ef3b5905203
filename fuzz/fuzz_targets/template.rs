//! Strict templates: `Template::parse` and `render` with arbitrary sources and values.
//!
//! Properties:
//! - `{{ labels.x }}` alone, rendered with an arbitrary value: Ok means the output is exactly the
//!   value and the value is in `[A-Za-z0-9._:/@+=-]*`, has no `..` and no leading `-` (checked
//!   here independently of `value_is_safe`); Err otherwise. The same inside literal text.
//! - An arbitrary source, parsed in either scope and rendered with every name bound to one
//!   arbitrary value: never panics; if it has a substitution and renders Ok, the value is safe.
//! - An http URL with `{{ labels.x }}` in a path segment and a query value, rendered with an
//!   arbitrary value: Ok unless the segment would be empty, `.` or `..`; the host, path and query
//!   stay as written, the value appears percent-encoded (only unreserved characters and `%XX`)
//!   and decodes back to itself. An arbitrary source parsed as a URL never panics.
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

fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).expect("ascii");
            out.push(u8::from_str_radix(hex, 16).expect("hex"));
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

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

    // In a URL: encoded where it stands, the structure as written.
    let u = Template::parse_url(
        "https://api.example.com/v1/{{ labels.x }}/x?q={{ labels.x }}",
        Scope::Step,
    )
    .unwrap();
    match u.render(&one) {
        Ok(out) => {
            let rest = out
                .strip_prefix("https://api.example.com/v1/")
                .expect("scheme and host kept");
            let (segment, query) = rest.split_once("/x?q=").expect("path and query kept");
            assert_eq!(segment, query);
            assert!(
                segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b)),
                "not encoded: {out:?}"
            );
            assert_eq!(percent_decode(segment), input.value.as_bytes());
            assert!(!matches!(input.value, "" | "." | ".."));
        }
        Err(_) => assert!(
            matches!(input.value, "" | "." | ".."),
            "value {:?} refused in a URL",
            input.value
        ),
    }
    if let Ok(t) = Template::parse_url(input.source, Scope::Step) {
        let _ = t.render(&one);
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
