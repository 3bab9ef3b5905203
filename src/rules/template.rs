//! Strict `{{ name }}` templates for argv elements, URLs and the `service`/`environment` of a rule.
//!
//! A template is checked when the rule loads (unknown names are lint errors) and rendered one string
//! at a time; every substituted value must match `[A-Za-z0-9._:/@+=-]*` or rendering fails, so
//! nothing an alert says can smuggle shell syntax, spaces or secret references into a step.

use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq)]
enum Part {
    Lit(String),
    Var(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

/// Names a template may use, by where it is used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// `service:` and `environment:` of a rule: only alert labels exist yet.
    Labels,
    /// Step fields: labels plus the incident and its releases.
    Step,
}

const STEP_VARS: &[&str] = &[
    "service",
    "environment",
    "rule",
    "incident.id",
    "release.previous.deployment_id",
    "release.previous.version",
    "release.current.deployment_id",
    "release.current.version",
];

/// The contract's charset `[A-Za-z0-9._:/@+=-]*`, and two refusals on top of it: no `..` (a path
/// climbing out of where a step expects it) and no leading `-` (a value read as an option).
pub fn value_is_safe(v: &str) -> bool {
    v.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b".:/@+=-_".contains(&b))
        && !v.contains("..")
        && !v.starts_with('-')
}

impl Template {
    pub fn parse(source: &str, scope: Scope) -> Result<Template, String> {
        // `${file:/srv/{{ x }}}` would let whoever posts releases or alerts pick which secret is
        // read: a reference must be literal.
        let mut rest = source;
        while let Some(start) = rest.find("${") {
            let inner = &rest[start + 2..];
            let end = inner.find('}').unwrap_or(inner.len());
            if inner[..end].contains("{{") {
                return Err(format!(
                    "template `{source}`: a secret reference (${{env:..}} / ${{file:..}}) may not contain a template"
                ));
            }
            rest = &inner[end..];
        }
        let mut parts = Vec::new();
        let mut rest = source;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Lit(rest[..open].to_string()));
            }
            let after = &rest[open + 2..];
            let close = after
                .find("}}")
                .ok_or_else(|| format!("template `{source}`: `{{{{` without a closing `}}}}`"))?;
            let name = after[..close].trim();
            check_name(name, scope).map_err(|e| format!("template `{source}`: {e}"))?;
            parts.push(Part::Var(name.to_string()));
            rest = &after[close + 2..];
        }
        if rest.contains("}}") {
            return Err(format!(
                "template `{source}`: `}}}}` without an opening `{{{{`"
            ));
        }
        if !rest.is_empty() {
            parts.push(Part::Lit(rest.to_string()));
        }
        Ok(Template {
            source: source.to_string(),
            parts,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn is_literal(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Lit(_)))
    }

    /// Renders with `vars` (full names such as `labels.service`); a missing name or an unsafe
    /// value is an error that names it.
    pub fn render(&self, vars: &BTreeMap<String, String>) -> Result<String, String> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Lit(s) => out.push_str(s),
                Part::Var(name) => {
                    let v = vars
                        .get(name)
                        .ok_or_else(|| format!("`{{{{ {name} }}}}` has no value here"))?;
                    if !value_is_safe(v) {
                        return Err(format!(
                            "value of `{{{{ {name} }}}}` ({v:?}) is not a plain token (only [A-Za-z0-9._:/@+=-], no `..`, no leading `-`); refusing to use it"
                        ));
                    }
                    out.push_str(v);
                }
            }
        }
        Ok(out)
    }
}

fn check_name(name: &str, scope: Scope) -> Result<(), String> {
    if let Some(label) = name.strip_prefix("labels.") {
        if !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Ok(());
        }
        return Err(format!("`{name}` is not a valid label reference"));
    }
    match scope {
        Scope::Step if STEP_VARS.contains(&name) => Ok(()),
        Scope::Step => Err(format!(
            "unknown name `{name}` (known: labels.<name>, {})",
            STEP_VARS.join(", ")
        )),
        Scope::Labels => Err(format!(
            "unknown name `{name}` (only labels.<name> is known here)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn renders_each_name() {
        let t = Template::parse(
            "dpl-{{ release.previous.deployment_id }}/{{labels.x}}",
            Scope::Step,
        )
        .unwrap();
        let out = t
            .render(&vars(&[
                ("release.previous.deployment_id", "dpl_123"),
                ("labels.x", "a.b"),
            ]))
            .unwrap();
        assert_eq!(out, "dpl-dpl_123/a.b");
    }

    #[test]
    fn refuses_unsafe_values() {
        let t = Template::parse("{{ labels.service }}", Scope::Labels).unwrap();
        for bad in [
            "a b",
            "a;rm -rf /",
            "$(id)",
            "${env:SECRET}",
            "a\nb",
            "`x`",
            "a'b",
            "é",
        ] {
            let err = t.render(&vars(&[("labels.service", bad)])).unwrap_err();
            assert!(err.contains("refusing"), "{bad}: {err}");
        }
        assert_eq!(
            t.render(&vars(&[("labels.service", "svc-1_a.b:c/d@e+f=g")]))
                .unwrap(),
            "svc-1_a.b:c/d@e+f=g"
        );
    }

    #[test]
    fn unknown_names_fail_at_parse() {
        assert!(Template::parse("{{ incident.id }}", Scope::Labels).is_err());
        assert!(
            Template::parse("{{ nope }}", Scope::Step)
                .unwrap_err()
                .contains("unknown name")
        );
        assert!(Template::parse("{{ labels. }}", Scope::Step).is_err());
        assert!(
            Template::parse("{{ service", Scope::Step)
                .unwrap_err()
                .contains("closing")
        );
        assert!(
            Template::parse("service }}", Scope::Step)
                .unwrap_err()
                .contains("opening")
        );
    }

    #[test]
    fn no_templates_inside_secret_references() {
        for bad in [
            "${file:/srv/{{ release.previous.version }}/key}",
            "${env:TOKEN_{{ labels.team }}}",
            "x ${file:{{ service }}}",
        ] {
            let e = Template::parse(bad, Scope::Step).unwrap_err();
            assert!(e.contains("secret reference"), "{bad}: {e}");
        }
        assert!(Template::parse("--token=${env:T} {{ service }}", Scope::Step).is_ok());
    }

    #[test]
    fn missing_value_is_named() {
        let t = Template::parse("{{ labels.service }}", Scope::Labels).unwrap();
        assert!(t.render(&vars(&[])).unwrap_err().contains("labels.service"));
    }
}
