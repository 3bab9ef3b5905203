//! Preflight: whether what a plan needs from this host is here — every `${env:..}` /
//! `${file:..}` reference its steps, probes and `after` hooks hold resolves, and every run
//! step's program is found — before anyone is asked to approve it. Checked for every rule at
//! start and at each reload (a warning, `/readyz`, a metric; an error with `lint --preflight`),
//! and for an incident's own plan when it opens (the engine refuses the plan when anything is
//! missing). Values resolved here are dropped at once; only what is missing is said, by name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::resolve_refs;
use crate::model::{Incident, Plan, StepKind};
use crate::rules::{Action, Body, Problem, RuleSet, Severity};

/// What one action needs: its program (run steps) and the strings that may hold references.
struct Needs<'a> {
    program: Option<&'a str>,
    dir: Option<&'a Path>,
    env: &'a BTreeMap<String, String>,
    /// (where, text) of every string expanded when the action runs.
    texts: Vec<(String, &'a str)>,
}

impl<'a> Needs<'a> {
    fn of_plan(p: &'a Plan) -> Needs<'a> {
        let mut texts = Vec::new();
        let program = match p.kind {
            StepKind::Run => {
                for a in p.argv.iter().skip(1) {
                    texts.push(("argv".to_string(), a.as_str()));
                }
                p.argv.first().map(String::as_str)
            }
            StepKind::Http => {
                if let Some(u) = p.argv.get(1) {
                    texts.push(("url".to_string(), u.as_str()));
                }
                None
            }
        };
        Needs::finish(
            program,
            p.dir.as_deref(),
            &p.env,
            &p.headers,
            &p.body,
            texts,
        )
    }

    fn of_action(a: &'a Action) -> Needs<'a> {
        static NONE: BTreeMap<String, String> = BTreeMap::new();
        match a {
            Action::Run { argv, env, dir } => {
                let texts = argv
                    .iter()
                    .skip(1)
                    .map(|t| ("argv".to_string(), t.source()))
                    .collect();
                // A program that is a template is known only once rendered.
                let program = argv
                    .first()
                    .map(|t| t.source())
                    .filter(|p| !p.contains("{{"));
                Needs::finish(program, dir.as_deref(), env, &NONE, &Body::None, texts)
            }
            Action::Http {
                url, headers, body, ..
            } => {
                let texts = vec![("url".to_string(), url.source())];
                Needs::finish(None, None, &NONE, headers, body, texts)
            }
        }
    }

    fn finish(
        program: Option<&'a str>,
        dir: Option<&'a Path>,
        env: &'a BTreeMap<String, String>,
        headers: &'a BTreeMap<String, String>,
        body: &'a Body,
        mut texts: Vec<(String, &'a str)>,
    ) -> Needs<'a> {
        texts.extend(env.iter().map(|(k, v)| (format!("env {k}"), v.as_str())));
        texts.extend(
            headers
                .iter()
                .map(|(k, v)| (format!("header {k}"), v.as_str())),
        );
        if let Body::Raw(b) = body {
            texts.push(("body".to_string(), b.as_str()));
        }
        Needs {
            program,
            dir,
            env,
            texts,
        }
    }

    /// One line per thing missing, each starting with `what`.
    fn check(&self, what: &str, out: &mut Vec<String>) {
        for (place, text) in &self.texts {
            if text.contains("${")
                && let Err(e) = resolve_refs(text)
            {
                push(out, format!("{what}: {place}: {e}"));
            }
        }
        if let Some(program) = self.program
            && let Err(e) = find_program(program, self.dir, self.env)
        {
            push(out, format!("{what}: {e}"));
        }
    }
}

fn push(out: &mut Vec<String>, line: String) {
    if !out.contains(&line) {
        out.push(line);
    }
}

/// Where `program` would be started from, as a child process looks it up: a name with a `/` as
/// a path (relative ones from the step's `dir`), anything else through `PATH` (the step's own
/// `env: { PATH: .. }` when it sets one).
fn find_program(
    program: &str,
    dir: Option<&Path>,
    env: &BTreeMap<String, String>,
) -> Result<PathBuf, String> {
    if program.is_empty() {
        return Err("empty command".to_string());
    }
    if program.contains('/') {
        let path = match dir {
            Some(d) if Path::new(program).is_relative() => d.join(program),
            _ => PathBuf::from(program),
        };
        return if executable(&path) {
            Ok(path)
        } else {
            Err(format!("program `{program}` is not an executable file"))
        };
    }
    let path = match env.get("PATH") {
        Some(p) => resolve_refs(p).unwrap_or_default(),
        None => std::env::var("PATH").unwrap_or_default(),
    };
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| executable(p))
        .ok_or_else(|| format!("program `{program}` is not found in PATH"))
}

fn executable(p: &Path) -> bool {
    let Ok(meta) = std::fs::metadata(p) else {
        return false;
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        meta.is_file() && meta.permissions().mode() & 0o111 != 0
    }
    #[cfg(not(unix))]
    {
        meta.is_file()
    }
}

/// What an incident's plan lacks here, one line each (empty: it can run). A step that could not
/// be rendered is left out: it fails with its own reason.
pub fn incident(inc: &Incident) -> Vec<String> {
    let mut out = Vec::new();
    for (kind, runs) in [
        ("step", &inc.steps),
        ("after hook", &inc.after),
        ("on_unfreeze step", &inc.on_unfreeze),
    ] {
        for s in runs.iter().filter(|s| s.render_error.is_none()) {
            Needs::of_plan(&s.plan).check(&format!("{kind} `{}`", s.name), &mut out);
            if let Some(p) = &s.probe {
                Needs::of_plan(p).check(&format!("{kind} `{}` probe", s.name), &mut out);
            }
        }
    }
    out
}

/// What every rule of `set` lacks here, one problem each at the rule (as `lint` prints them),
/// with `severity`, beside the rule's name.
pub fn rules(set: &RuleSet, severity: Severity) -> Vec<(String, Problem)> {
    let mut problems = Vec::new();
    for rule in &set.rules {
        let mut out = Vec::new();
        for (kind, specs) in [
            ("step", &rule.steps),
            ("after hook", &rule.after),
            ("on_unfreeze step", &rule.on_unfreeze),
        ] {
            for s in specs {
                Needs::of_action(&s.action).check(&format!("{kind} `{}`", s.name), &mut out);
                if let Some(p) = &s.probe {
                    Needs::of_action(p).check(&format!("{kind} `{}` probe", s.name), &mut out);
                }
            }
        }
        problems.extend(out.into_iter().map(|m| {
            let p = Problem {
                file: rule.file.clone(),
                line: rule.line,
                column: rule.column,
                severity,
                message: format!("rule {} cannot run here: {m}", rule.name),
            };
            (rule.name.clone(), p)
        }));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(argv: &[&str], env: &[(&str, &str)]) -> Plan {
        let mut p = Plan::run(argv.iter().map(|a| a.to_string()).collect());
        p.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        p
    }

    #[test]
    fn names_what_is_missing_never_a_value() {
        let n = plan(
            &["/bin/sh", "-c", "true"],
            &[
                ("T", "${env:ROLLBACKD_TEST_SURELY_UNSET}"),
                ("H", "${env:HOME}"),
            ],
        );
        let mut out = Vec::new();
        Needs::of_plan(&n).check("step `x`", &mut out);
        assert_eq!(
            out,
            ["step `x`: env T: environment variable `ROLLBACKD_TEST_SURELY_UNSET` is not set"]
        );
        let mut out = Vec::new();
        Needs::of_plan(&plan(&["rollbackd-surely-no-such-program"], &[])).check("s", &mut out);
        assert_eq!(
            out,
            ["s: program `rollbackd-surely-no-such-program` is not found in PATH"]
        );
        let mut out = Vec::new();
        Needs::of_plan(&plan(&["sh", "${file:/nonexistent/tok}"], &[])).check("s", &mut out);
        assert!(
            out[0].contains("cannot read secret file `/nonexistent/tok`"),
            "{out:?}"
        );
    }

    #[test]
    fn programs_are_found_as_a_child_would_find_them() {
        let none = BTreeMap::new();
        assert!(find_program("sh", None, &none).is_ok());
        assert!(find_program("/bin/sh", None, &none).is_ok());
        assert!(find_program("sh", Some(Path::new("/bin")), &none).is_ok());
        assert!(find_program("./sh", Some(Path::new("/bin")), &none).is_ok());
        assert!(find_program("./sh", Some(Path::new("/")), &none).is_err());
        let mut env = BTreeMap::new();
        env.insert("PATH".to_string(), "/nonexistent".to_string());
        assert!(find_program("sh", None, &env).is_err());
        assert!(
            find_program("/etc/passwd", None, &none).is_err(),
            "not executable"
        );
    }
}
