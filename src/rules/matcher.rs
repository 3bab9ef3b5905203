//! Alertmanager matcher syntax: `name="value"`, `name!="value"`, `name=~"regex"`, `name!~"regex"`.
//! Regexes are fully anchored, as in Alertmanager; a missing label matches as the empty string.

use regex::Regex;

use crate::model::Labels;

#[derive(Clone, Debug)]
pub enum Op {
    Eq,
    Ne,
    Re(Regex),
    NotRe(Regex),
}

#[derive(Clone, Debug)]
pub struct Matcher {
    pub name: String,
    pub value: String,
    pub op: Op,
}

impl Matcher {
    /// Parses one matcher; the error says what is wrong in words a rule author can act on.
    pub fn parse(input: &str) -> Result<Matcher, String> {
        let s = input.trim();
        let name_end = s
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .ok_or_else(|| format!("matcher `{s}` has no operator (one of =, !=, =~, !~)"))?;
        let name = &s[..name_end];
        if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(format!(
                "matcher `{s}` must start with a label name ([a-zA-Z_][a-zA-Z0-9_]*)"
            ));
        }
        let rest = s[name_end..].trim_start();
        let (op, rest) = if let Some(r) = rest.strip_prefix("=~") {
            ("=~", r)
        } else if let Some(r) = rest.strip_prefix("!~") {
            ("!~", r)
        } else if let Some(r) = rest.strip_prefix("!=") {
            ("!=", r)
        } else if rest.starts_with("==") {
            return Err(format!(
                "matcher `{s}`: `==` is not an operator; write `{name}=\"value\"` (one of =, !=, =~, !~)"
            ));
        } else if let Some(r) = rest.strip_prefix('=') {
            ("=", r)
        } else {
            return Err(format!(
                "matcher `{s}`: expected one of =, !=, =~, !~ after `{name}`"
            ));
        };
        let value = unquote(rest.trim()).map_err(|e| format!("matcher `{s}`: {e}"))?;
        let anchored = |v: &str| {
            Regex::new(&format!("^(?:{v})$")).map_err(|e| {
                // regex's message spans several lines; its last line says what is wrong.
                let e = e.to_string();
                let why = e.lines().last().unwrap_or("").trim_start_matches("error: ");
                format!("matcher `{s}`: invalid regular expression: {why}")
            })
        };
        let op = match op {
            "=" => Op::Eq,
            "!=" => Op::Ne,
            "=~" => Op::Re(anchored(&value)?),
            _ => Op::NotRe(anchored(&value)?),
        };
        Ok(Matcher {
            name: name.to_string(),
            value,
            op,
        })
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        let v = labels.get(&self.name).map(String::as_str).unwrap_or("");
        match &self.op {
            Op::Eq => v == self.value,
            Op::Ne => v != self.value,
            Op::Re(re) => re.is_match(v),
            Op::NotRe(re) => !re.is_match(v),
        }
    }
}

/// A double-quoted value with Go-style escapes (`\"`, `\\`, `\n`), or a bare word.
fn unquote(v: &str) -> Result<String, String> {
    let Some(inner) = v.strip_prefix('"') else {
        if v.contains(['"', ' ', ',', '{', '}']) {
            return Err(format!("value `{v}` must be double-quoted"));
        }
        return Ok(v.to_string());
    };
    let mut out = String::new();
    let mut chars = inner.chars();
    loop {
        match chars.next() {
            None => return Err("unterminated quoted value".to_string()),
            Some('"') => break,
            Some('\\') => match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(c @ ('"' | '\\')) => out.push(c),
                // Keep other escapes for the regex engine (`\.`, `\d`).
                Some(c) => {
                    out.push('\\');
                    out.push(c);
                }
                None => return Err("unterminated quoted value".to_string()),
            },
            Some(c) => out.push(c),
        }
    }
    if !chars.as_str().trim().is_empty() {
        return Err(format!(
            "unexpected text after the quoted value: `{}`",
            chars.as_str()
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn all_four_operators() {
        let l = labels(&[("alertname", "PortalHighErrorRate"), ("severity", "page")]);
        assert!(
            Matcher::parse(r#"alertname="PortalHighErrorRate""#)
                .unwrap()
                .matches(&l)
        );
        assert!(
            !Matcher::parse(r#"alertname!="PortalHighErrorRate""#)
                .unwrap()
                .matches(&l)
        );
        assert!(
            Matcher::parse(r#"severity=~"page|critical""#)
                .unwrap()
                .matches(&l)
        );
        assert!(
            !Matcher::parse(r#"severity!~"page|critical""#)
                .unwrap()
                .matches(&l)
        );
    }

    #[test]
    fn regex_is_anchored_and_missing_label_is_empty() {
        let l = labels(&[("severity", "paged")]);
        assert!(!Matcher::parse(r#"severity=~"page""#).unwrap().matches(&l));
        assert!(Matcher::parse(r#"team="""#).unwrap().matches(&l));
        assert!(Matcher::parse(r#"team!="x""#).unwrap().matches(&l));
        assert!(Matcher::parse(r#"team=~".*""#).unwrap().matches(&l));
    }

    #[test]
    fn bare_values_and_escapes() {
        let m = Matcher::parse("env=prod").unwrap();
        assert_eq!(m.value, "prod");
        let m = Matcher::parse(r#"path="a\"b""#).unwrap();
        assert_eq!(m.value, "a\"b");
        let m = Matcher::parse(r#"host=~"a\.b""#).unwrap();
        assert!(m.matches(&labels(&[("host", "a.b")])));
        assert!(!m.matches(&labels(&[("host", "axb")])));
    }

    #[test]
    fn errors_name_the_problem() {
        assert!(
            Matcher::parse("alertname")
                .unwrap_err()
                .contains("operator")
        );
        assert!(
            Matcher::parse(r#"x=~"(""#)
                .unwrap_err()
                .contains("regular expression")
        );
        assert!(
            Matcher::parse(r#"x="abc"#)
                .unwrap_err()
                .contains("unterminated")
        );
        assert!(
            Matcher::parse(r#"="a""#)
                .unwrap_err()
                .contains("label name")
        );
        let e = Matcher::parse("severity==page").unwrap_err();
        assert!(e.contains("`==` is not an operator"), "{e}");
        assert_eq!(Matcher::parse(r#"x="=page""#).unwrap().value, "=page");
        assert!(
            Matcher::parse(r#"x<"a""#)
                .unwrap_err()
                .contains("expected one of")
        );
    }
}
