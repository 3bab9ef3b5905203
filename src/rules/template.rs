//! Strict `{{ name }}` templates for argv elements, URLs and the `service`/`environment` of a rule.
//!
//! A template is checked when the rule loads (unknown names are lint errors) and rendered one string
//! at a time; every substituted value must match `[A-Za-z0-9._:/@+=-]*` or rendering fails, so
//! nothing an alert says can smuggle shell syntax, spaces or secret references into a step.
//!
//! An http step's URL is stricter ([`Template::parse_url`]): its scheme, userinfo, host and port are
//! literal, a template stands only in the path or the query, and each value is percent-encoded as
//! one path segment or one query value, so no value can change where the request goes.

use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq)]
enum Part {
    Lit(String),
    Var(String, Slot),
}

/// Where a substituted value lands, which says how it is checked or encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    /// An argv element, `service`, a message: the value must be a plain token.
    Token,
    /// Inside one path segment of a URL: percent-encoded.
    PathSegment,
    /// Inside the query of a URL: percent-encoded as one query value.
    QueryValue,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
    /// URL templates with substitutions: the literal origin (`scheme://host:port`) every
    /// rendering must keep.
    origin: Option<String>,
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
    "release.previous.revision",
    "release.current.deployment_id",
    "release.current.version",
    "release.current.revision",
    FENCING_TOKEN,
];

/// The step's fencing token (the leader's term when the step started): known only when the step
/// starts, so rendering leaves [`FENCING_MARK`] in its place and the step fills it in.
pub const FENCING_TOKEN: &str = "fencing_token";
/// What `{{ fencing_token }}` renders to until the step starts (a value can never contain it:
/// braces are outside every value's charset).
pub const FENCING_MARK: &str = "{{ fencing_token }}";

/// Each string of an http step's JSON body that holds `{{`, with where it is (`.id`,
/// `.items[0]`): these are the body's templates. Keys are never templates.
pub fn json_strings<'a>(v: &'a serde_json::Value, at: &str, out: &mut Vec<(String, &'a str)>) {
    match v {
        serde_json::Value::String(s) if s.contains("{{") => out.push((at.to_string(), s)),
        serde_json::Value::Array(items) => {
            for (i, x) in items.iter().enumerate() {
                json_strings(x, &format!("{at}[{i}]"), out);
            }
        }
        serde_json::Value::Object(map) => {
            for (k, x) in map {
                json_strings(x, &format!("{at}.{k}"), out);
            }
        }
        _ => {}
    }
}

/// An http step's JSON body with every template string rendered (each value is checked as in
/// argv and becomes part of one JSON string, so it can never add a field); `{{ fencing_token }}`
/// stays marked until the step starts.
pub fn render_json(
    v: &serde_json::Value,
    vars: &BTreeMap<String, String>,
) -> Result<serde_json::Value, String> {
    Ok(match v {
        serde_json::Value::String(s) if s.contains("{{") => serde_json::Value::String(
            Template::parse(s, Scope::Step)
                .and_then(|t| t.render(vars))
                .map_err(|e| format!("http.json: {e}"))?,
        ),
        serde_json::Value::Array(items) => serde_json::Value::Array(
            items
                .iter()
                .map(|x| render_json(x, vars))
                .collect::<Result<_, _>>()?,
        ),
        serde_json::Value::Object(map) => serde_json::Value::Object(
            map.iter()
                .map(|(k, x)| Ok((k.clone(), render_json(x, vars)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

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
            parts.push(Part::Var(name.to_string(), Slot::Token));
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
            origin: None,
        })
    }

    /// An http step's URL. Without substitutions it is taken as written (it may be a secret
    /// reference as a whole). With them, it must start with a literal `http://` or `https://`
    /// and host (no template or secret reference in the scheme, userinfo, host or port), and a
    /// template may stand only in the path or the query, never in the fragment.
    pub fn parse_url(source: &str, scope: Scope) -> Result<Template, String> {
        let mut t = Template::parse(source, scope)?;
        if t.is_literal() {
            return Ok(t);
        }
        let refuse = |why: &str| {
            Err(format!(
                "url `{source}`: {why}; a template may stand only after the host, in the path or the query"
            ))
        };
        let first = match t.parts.first() {
            Some(Part::Lit(l)) => l.as_str(),
            _ => return refuse("the scheme and host must be written out"),
        };
        let Some(rest) = first
            .strip_prefix("http://")
            .or_else(|| first.strip_prefix("https://"))
        else {
            return refuse("a URL with templates must start with a literal http:// or https://");
        };
        // Where the authority ends for the URL standard: `\` counts as `/` in http(s) URLs.
        let Some(end) = rest.find(['/', '?', '#', '\\']) else {
            return refuse("a template in the scheme, userinfo, host or port is not allowed");
        };
        let authority = &rest[..end];
        if authority.contains("${") {
            return refuse("the host of a URL with templates may not be a secret reference");
        }
        let base = &first[..first.len() - rest.len() + end];
        let origin = match url::Url::parse(base) {
            Ok(u) if u.host_str().is_some_and(|h| !h.is_empty()) => {
                u.origin().ascii_serialization()
            }
            Ok(_) => return refuse("the URL has no host"),
            Err(e) => return refuse(&format!("`{base}` is not a valid URL start ({e})")),
        };
        let mut slot = Slot::PathSegment;
        let mut in_fragment = false;
        for p in &mut t.parts {
            match p {
                Part::Lit(l) => {
                    in_fragment |= l.contains('#');
                    if l.contains('?') {
                        slot = Slot::QueryValue;
                    }
                }
                Part::Var(name, s) => {
                    if in_fragment {
                        return refuse(&format!(
                            "`{{{{ {name} }}}}` stands in the fragment (after `#`)"
                        ));
                    }
                    *s = slot;
                }
            }
        }
        t.origin = Some(origin);
        Ok(t)
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn is_literal(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Lit(_)))
    }

    /// The literal origin a URL template keeps (URL templates with substitutions only).
    pub fn origin(&self) -> Option<&str> {
        self.origin.as_deref()
    }

    /// Renders with `vars` (full names such as `labels.service`); a missing name or an unsafe
    /// value is an error that names it.
    /// URL templates percent-encode instead, and refuse a path segment made only of dots or an
    /// empty one, and any result whose origin is not the literal one.
    pub fn render(&self, vars: &BTreeMap<String, String>) -> Result<String, String> {
        let mut out = String::new();
        // The path segment being written, and whether a value went into it.
        let mut segment = (0, false);
        for p in &self.parts {
            match p {
                Part::Lit(s) => {
                    for c in s.chars() {
                        if matches!(c, '/' | '?' | '#') {
                            check_segment(&out[segment.0..], segment.1)?;
                            segment = (out.len() + 1, false);
                        }
                        out.push(c);
                    }
                }
                Part::Var(name, _) if name == FENCING_TOKEN => out.push_str(FENCING_MARK),
                Part::Var(name, slot) => {
                    let v = vars
                        .get(name)
                        .ok_or_else(|| format!("`{{{{ {name} }}}}` has no value here"))?;
                    match slot {
                        Slot::Token if !value_is_safe(v) => {
                            return Err(format!(
                                "value of `{{{{ {name} }}}}` ({v:?}) is not a plain token (only [A-Za-z0-9._:/@+=-], no `..`, no leading `-`); refusing to use it"
                            ));
                        }
                        Slot::Token => out.push_str(v),
                        Slot::PathSegment => {
                            if v.is_empty() {
                                return Err(format!(
                                    "value of `{{{{ {name} }}}}` is empty: the URL would name another resource; refusing to use it"
                                ));
                            }
                            encode_component(v, &mut out);
                            segment.1 = true;
                        }
                        Slot::QueryValue => encode_component(v, &mut out),
                    }
                }
            }
        }
        if let Some(origin) = &self.origin {
            check_segment(&out[segment.0..], segment.1)?;
            let got = url::Url::parse(&out)
                .map_err(|e| format!("the rendered URL does not parse ({e}); refusing to use it"))?
                .origin()
                .ascii_serialization();
            if &got != origin {
                return Err(format!(
                    "the rendered URL goes to {got}, not to the rule's {origin}; refusing to use it"
                ));
            }
        }
        Ok(out)
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters, so a value is one path segment
/// or one query value whatever it holds (`/ ? # & = + @ : %` included).
fn encode_component(v: &str, out: &mut String) {
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// A path segment that a value went into may not be `.` or `..` (also written `%2e`): URL
/// parsers resolve those and climb out of the path the rule wrote.
fn check_segment(segment: &str, has_value: bool) -> Result<(), String> {
    if !has_value {
        return Ok(());
    }
    let plain = segment.to_ascii_lowercase().replace("%2e", ".");
    if plain == "." || plain == ".." {
        return Err(format!(
            "a substituted value makes the URL path segment `{segment}`, which climbs out of the path; refusing to use it"
        ));
    }
    Ok(())
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
    fn url_templates_stand_only_after_the_host() {
        for bad in [
            "http://{{ labels.cluster }}.invalid/x",
            "https://{{ labels.user }}@api.example.com/x",
            "https://api.example.com:{{ labels.port }}/x",
            "{{ labels.scheme }}://api.example.com/x",
            "https://api.{{ service }}",
            "${env:BASE}/x/{{ service }}",
            "https://${env:HOST}/x/{{ service }}",
        ] {
            let e = Template::parse_url(bad, Scope::Step).unwrap_err();
            assert!(e.contains("only after the host"), "{bad}: {e}");
        }
        let e = Template::parse_url("https://a.example/x#{{ service }}", Scope::Step).unwrap_err();
        assert!(e.contains("fragment"), "{e}");
        // Without templates a URL is taken as written, a secret reference included.
        for ok in [
            "${env:UPSTASH_REDIS_REST_URL}",
            "https://api.example.com/zones/${env:ZONE}/purge",
        ] {
            assert_eq!(Template::parse_url(ok, Scope::Step).unwrap().origin(), None);
        }
        let t = Template::parse_url(
            "https://user@api.example.com:8443/zones/${env:ZONE}/{{ service }}",
            Scope::Step,
        )
        .unwrap();
        assert_eq!(t.origin(), Some("https://api.example.com:8443"));
    }

    #[test]
    fn url_values_are_percent_encoded_where_they_stand() {
        let t = Template::parse_url(
            "http://api.example.com/v1/{{ labels.a }}/x?to={{ labels.b }}&n={{ labels.c }}",
            Scope::Step,
        )
        .unwrap();
        let out = t
            .render(&vars(&[
                ("labels.a", "a/../../b?x=1#@127.0.0.1:9"),
                ("labels.b", "x&admin=1#f"),
                ("labels.c", ""),
            ]))
            .unwrap();
        assert_eq!(
            out,
            "http://api.example.com/v1/a%2F..%2F..%2Fb%3Fx%3D1%23%40127.0.0.1%3A9/x?to=x%26admin%3D1%23f&n="
        );
        // Anything goes in, encoded: spaces, `%`, non-ASCII.
        let out = t
            .render(&vars(&[
                ("labels.a", "50% é"),
                ("labels.b", "+"),
                ("labels.c", "~"),
            ]))
            .unwrap();
        assert_eq!(out, "http://api.example.com/v1/50%25%20%C3%A9/x?to=%2B&n=~");
        // A segment that would climb, or vanish, is refused.
        for (a, why) in [("..", "climbs out"), (".", "climbs out"), ("", "empty")] {
            let e = t
                .render(&vars(&[
                    ("labels.a", a),
                    ("labels.b", "b"),
                    ("labels.c", "c"),
                ]))
                .unwrap_err();
            assert!(e.contains(why), "{a:?}: {e}");
        }
        let t = Template::parse_url("http://h.example/v{{ labels.a }}.", Scope::Step).unwrap();
        assert!(t.render(&vars(&[("labels.a", ".")])).is_ok());
        let t = Template::parse_url("http://h.example/{{ labels.a }}.", Scope::Step).unwrap();
        assert!(t.render(&vars(&[("labels.a", ".")])).is_err());
    }

    #[test]
    fn missing_value_is_named() {
        let t = Template::parse("{{ labels.service }}", Scope::Labels).unwrap();
        assert!(t.render(&vars(&[])).unwrap_err().contains("labels.service"));
    }
}
