//! `rollbackd::rules::load_str` on arbitrary UTF-8 (a rule file) with a Context that knows a few
//! roles and notifiers: never panics, never hangs; a loaded set has no error-level problems, and
//! every problem points inside the text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rollbackd::rules::{Context, Severity, load_str};

fuzz_target!(|text: &str| {
    let ctx = Context::with_people(
        [("ada", &["founder"][..]), ("cy", &["client-success-lead"][..])],
        ["incidents", "status"],
    );
    let (set, problems) = load_str("fuzz.yaml", text, &ctx);
    // YAML line breaks are `\n`, `\r\n` and a lone `\r`; a problem may point one past the last.
    let lines = text.replace("\r\n", "\n").matches(['\n', '\r']).count() as u64 + 2;
    for p in &problems {
        assert!(
            p.line <= lines,
            "problem beyond the text: {p} ({lines} lines)"
        );
        let _ = p.to_string();
    }
    if set.is_some() {
        assert!(
            !problems.iter().any(|p| p.severity == Severity::Error),
            "a rule set with errors was returned"
        );
    }
});
