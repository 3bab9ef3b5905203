//! What a replay prints: JSON lines, a table, the summary, and the `--expect` comparison.

use super::*;

/// JSON lines, one decision per line.
pub fn render_json(decisions: &[Decision]) -> String {
    let mut out = String::new();
    for d in decisions {
        out.push_str(&serde_json::to_string(d).unwrap_or_default());
        out.push('\n');
    }
    out
}

/// A table for people: one row per decision.
pub fn render_table(decisions: &[Decision]) -> String {
    let dash = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".to_string());
    let mut rows: Vec<[String; 7]> = vec![[
        "AT".into(),
        "KIND".into(),
        "RULE".into(),
        "GROUP".into(),
        "SERVICE".into(),
        "SUBJECT".into(),
        "DETAIL".into(),
    ]];
    for d in decisions {
        rows.push([
            d.at.to_string(),
            d.kind.clone(),
            dash(&d.rule),
            dash(&d.group),
            dash(&d.service),
            d.incident
                .clone()
                .or_else(|| d.breach.clone())
                .unwrap_or_else(|| "-".into()),
            detail(d),
        ]);
    }
    let mut widths = [0usize; 6];
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        for (w, cell) in widths.iter().zip(r.iter()) {
            out.push_str(cell);
            out.push_str(&" ".repeat(w - cell.chars().count() + 2));
        }
        out.push_str(&r[6]);
        out.truncate(out.trim_end().len());
        out.push('\n');
    }
    out
}

fn detail(d: &Decision) -> String {
    let mut parts = Vec::new();
    if let Some(s) = &d.started_at {
        parts.push(format!("started {s}"));
    }
    if let Some(dl) = &d.deadline {
        parts.push(match d.kind.as_str() {
            "breach_opened" => format!("acts at {dl}"),
            _ => format!("until {dl}"),
        });
    }
    if let (Some(f), Some(t)) = (&d.release_from, &d.release_to) {
        parts.push(format!("{f} -> {t}"));
    }
    if let Some(p) = &d.person {
        parts.push(format!("by {p}"));
    }
    if let Some(s) = &d.step {
        parts.push(format!("step {s:?}"));
    }
    if let Some(argv) = &d.argv {
        let shown: Vec<String> = argv
            .iter()
            .map(|a| {
                if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '"') {
                    format!("{a:?}")
                } else {
                    a.clone()
                }
            })
            .collect();
        parts.push(shown.join(" "));
    }
    if let Some(r) = &d.reason {
        parts.push(match &d.reason_code {
            Some(c) => format!("[{}] {r}", c.code()),
            None => r.clone(),
        });
    }
    if let Some(x) = &d.detail {
        parts.push(x.clone());
    }
    if d.simulated {
        parts.push("(simulated)".to_string());
    }
    parts.join("; ")
}

fn fmt_ms(ms: u64) -> String {
    humantime::format_duration(Duration::from_millis(ms)).to_string()
}

/// The summary for people.
pub fn render_summary(s: &Summary) -> String {
    let t = |o: &Option<Timestamp>| o.map(|t| t.to_string()).unwrap_or_else(|| "-".into());
    let mut out = format!(
        "summary: {} input(s) from {} to {}{}; {} decision(s)\n",
        s.inputs,
        t(&s.from),
        t(&s.until),
        if s.inputs_after_until > 0 {
            format!(" ({} after --until not replayed)", s.inputs_after_until)
        } else {
            String::new()
        },
        s.decisions
    );
    let header = [
        "RULE",
        "BREACHES",
        "INCIDENTS",
        "ROLLBACKS",
        "NOT_ACTING",
        "SUPPRESSED",
        "BLIPS_ABSORBED",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for (name, r) in &s.rules {
        rows.push(vec![
            name.clone(),
            r.breaches.to_string(),
            r.incidents.to_string(),
            r.rollbacks.to_string(),
            r.not_acting.to_string(),
            r.suppressed.to_string(),
            r.blips_absorbed.to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    for r in &rows {
        let mut line = String::from("  ");
        for (c, cell) in r.iter().enumerate() {
            line.push_str(&format!("{cell:<w$}  ", w = widths[c]));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out.push_str(&format!(
        "  median breach length: {} ({} closed breach(es), {} still open at the end)\n",
        s.median_breach_ms.map(fmt_ms).unwrap_or_else(|| "-".into()),
        s.breaches_closed,
        s.breaches_open_at_end
    ));
    out.push_str(&format!(
        "  blips absorbed by clear_after: {}\n",
        s.blips_absorbed
    ));
    out
}

// ---- --expect ----

/// The fields `--expect` compares.
pub const EXPECT_FIELDS: [&str; 5] = ["at", "kind", "rule", "group", "service"];

/// One expected decision: its line in the file, and its fields.
pub type Expected = (usize, serde_json::Map<String, serde_json::Value>);

/// Reads an expectations file: JSON lines, one decision each (extra fields are ignored; a field
/// left out matches anything).
pub fn read_expect(text: &str, file: &str) -> Result<Vec<Expected>, inputs::InputError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let err = |message: String| inputs::InputError {
            file: file.to_string(),
            line: i + 1,
            message,
        };
        let v: serde_json::Value =
            serde_json::from_str(t).map_err(|e| err(format!("not JSON: {e}")))?;
        let serde_json::Value::Object(m) = v else {
            return Err(err("an expected decision is a JSON object".to_string()));
        };
        if let Some(at) = m.get("at") {
            let ok = at.as_str().is_some_and(|s| s.parse::<Timestamp>().is_ok());
            if !ok {
                return Err(err(format!("at: {at} is not an RFC 3339 time")));
            }
        }
        out.push((i + 1, m));
    }
    Ok(out)
}

fn expected_matches(e: &serde_json::Map<String, serde_json::Value>, d: &Decision) -> bool {
    EXPECT_FIELDS.iter().all(|f| {
        let Some(want) = e.get(*f) else {
            return true;
        };
        match *f {
            "at" => want
                .as_str()
                .and_then(|s| s.parse::<Timestamp>().ok())
                .is_some_and(|t| t == d.at),
            "kind" => want.as_str() == Some(d.kind.as_str()),
            field => {
                let got = match field {
                    "rule" => &d.rule,
                    "group" => &d.group,
                    _ => &d.service,
                };
                match got {
                    Some(g) => want.as_str() == Some(g.as_str()),
                    None => want.is_null(),
                }
            }
        }
    })
}

fn compared(d: &Decision) -> String {
    let opt = |o: &Option<String>| serde_json::Value::from(o.clone());
    fields(&[
        ("at", serde_json::Value::from(d.at.to_string())),
        ("kind", serde_json::Value::from(d.kind.clone())),
        ("rule", opt(&d.rule)),
        ("group", opt(&d.group)),
        ("service", opt(&d.service)),
    ])
}

fn compared_expected(e: &serde_json::Map<String, serde_json::Value>) -> String {
    let present: Vec<(&str, serde_json::Value)> = EXPECT_FIELDS
        .iter()
        .filter_map(|f| e.get(*f).map(|v| (*f, v.clone())))
        .collect();
    fields(&present)
}

/// A JSON object with its keys in the order given.
fn fields(kv: &[(&str, serde_json::Value)]) -> String {
    let inner: Vec<String> = kv.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
    format!("{{{}}}", inner.join(","))
}

/// The difference between the expected decisions and the replayed ones, or `None` when they
/// agree: lines `- FILE:LINE: {..}` expected but not made, `+ decision N: {..}` made but not
/// expected, in order.
pub fn compare(expected: &[Expected], actual: &[Decision], file: &str) -> Option<String> {
    let eq = |i: usize, j: usize| expected_matches(&expected[i].1, &actual[j]);
    let (n, m) = (expected.len(), actual.len());
    let mut pre = 0;
    while pre < n && pre < m && eq(pre, pre) {
        pre += 1;
    }
    let mut suf = 0;
    while suf < n - pre && suf < m - pre && eq(n - 1 - suf, m - 1 - suf) {
        suf += 1;
    }
    if pre + suf == n && pre + suf == m {
        return None;
    }
    let (e0, e1, a0, a1) = (pre, n - suf, pre, m - suf);
    let (h, w) = (e1 - e0, a1 - a0);
    // (false, i) = expected i missing; (true, j) = actual j unexpected.
    let mut ops: Vec<(bool, usize)> = Vec::new();
    if h.saturating_mul(w) <= 4_000_000 {
        // Longest common subsequence of the differing middle.
        let mut lcs = vec![0u32; (h + 1) * (w + 1)];
        let at = |i: usize, j: usize| i * (w + 1) + j;
        for i in (0..h).rev() {
            for j in (0..w).rev() {
                lcs[at(i, j)] = if eq(e0 + i, a0 + j) {
                    lcs[at(i + 1, j + 1)] + 1
                } else {
                    lcs[at(i + 1, j)].max(lcs[at(i, j + 1)])
                };
            }
        }
        let (mut i, mut j) = (0, 0);
        while i < h || j < w {
            if i < h && j < w && eq(e0 + i, a0 + j) {
                i += 1;
                j += 1;
            } else if j < w && (i == h || lcs[at(i, j + 1)] >= lcs[at(i + 1, j)]) {
                ops.push((true, a0 + j));
                j += 1;
            } else {
                ops.push((false, e0 + i));
                i += 1;
            }
        }
    } else {
        ops.extend((e0..e1).map(|i| (false, i)));
        ops.extend((a0..a1).map(|j| (true, j)));
    }
    let missing = ops.iter().filter(|(plus, _)| !plus).count();
    let extra = ops.len() - missing;
    let mut out = format!(
        "replay differs from {file}: {missing} expected decision(s) not made, {extra} decision(s) not expected (compared: {})\n",
        EXPECT_FIELDS.join(", ")
    );
    for (plus, k) in ops {
        if plus {
            out.push_str(&format!("+ decision {}: {}\n", k + 1, compared(&actual[k])));
        } else {
            let (line, e) = &expected[k];
            out.push_str(&format!("- {file}:{line}: {}\n", compared_expected(e)));
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(at: &str, kind: &str, rule: Option<&str>) -> Decision {
        let mut d = Decision::new(at.parse().unwrap(), kind);
        d.rule = rule.map(String::from);
        d
    }

    #[test]
    fn compare_reports_missing_and_unexpected_in_order() {
        let actual = vec![
            dec("2026-01-01T10:00:00Z", "breach_opened", Some("r")),
            dec("2026-01-01T10:10:00Z", "triggered", Some("r")),
            dec("2026-01-01T10:10:00Z", "would_run", Some("r")),
        ];
        let exp = read_expect(
            "{\"at\":\"2026-01-01T10:00:00.000Z\",\"kind\":\"breach_opened\",\"rule\":\"r\"}\n\n{\"kind\":\"not_acting\"}\n{\"kind\":\"would_run\",\"rule\":\"r\",\"argv\":[\"ignored\"]}\n",
            "e.jsonl",
        )
        .unwrap();
        let diff = compare(&exp, &actual, "e.jsonl").unwrap();
        assert!(
            diff.contains("1 expected decision(s) not made, 1 decision(s) not expected"),
            "{diff}"
        );
        assert!(
            diff.contains("- e.jsonl:3: {\"kind\":\"not_acting\"}"),
            "{diff}"
        );
        assert!(
            diff.contains("+ decision 2: {\"at\":\"2026-01-01T10:10:00Z\",\"kind\":\"triggered\""),
            "{diff}"
        );
        let exact: Vec<_> = actual
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let serde_json::Value::Object(m) = serde_json::to_value(d).unwrap() else {
                    panic!()
                };
                (i + 1, m)
            })
            .collect();
        assert_eq!(compare(&exact, &actual, "e"), None);
        assert!(read_expect("{\"at\":\"noon\"}", "e").is_err());
    }

    #[test]
    fn table_aligns_and_shows_details() {
        let mut d = dec("2026-01-01T10:10:00Z", "would_run", Some("web-errors"));
        d.argv = Some(vec!["echo".into(), "a b".into()]);
        d.step = Some("roll back".into());
        let t = render_table(&[d]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("AT  "), "{t}");
        assert_eq!(lines[0].find("KIND"), lines[1].find("would_run"), "{t}");
        assert!(
            lines[1].ends_with("step \"roll back\"; echo \"a b\""),
            "{t}"
        );
    }
}
