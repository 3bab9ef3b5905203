//! Rule files: YAML in, compiled [`Rule`]s out, every problem reported as `FILE:LINE:COL: message`.
//!
//! Loading never stops at the first problem: a rule directory is checked whole, so `rollbackd lint`
//! shows everything at once. A set with any error is never used.

pub mod matcher;
pub mod template;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::{Location, Spanned};

pub use crate::model::{Body, Check, Redirects};
use crate::model::{Labels, Source};
pub use matcher::Matcher;
pub use template::{Scope, Template};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Enforce,
    Shadow,
}

#[derive(Clone, Debug)]
pub struct ApprovalPolicy {
    pub require_roles: Vec<String>,
    pub quorum: usize,
    pub timeout: Duration,
    pub proceed_on_timeout: bool,
}

#[derive(Clone, Debug)]
pub enum Action {
    Run {
        argv: Vec<Template>,
        env: BTreeMap<String, String>,
        dir: Option<PathBuf>,
    },
    Http {
        method: String,
        url: Template,
        headers: BTreeMap<String, String>,
        body: Body,
        expect_status: Vec<u16>,
        follow_redirects: Redirects,
    },
}

#[derive(Clone, Debug)]
pub struct StepSpec {
    pub name: String,
    pub action: Action,
    /// Tells whether the step's effect is already in place: exit 0 / expected status = in place,
    /// exit 1 / HTTP 404 = absent, anything else = cannot tell.
    pub probe: Option<Action>,
    pub timeout: Duration,
    pub retries: u32,
    pub idempotent: bool,
    pub continue_on_failure: bool,
}

#[derive(Clone, Debug)]
pub struct Verify {
    pub within: Duration,
    pub every: Duration,
    pub checks: Vec<Check>,
}

#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub max: u32,
    pub per: Duration,
}

#[derive(Clone, Debug)]
pub struct Rule {
    pub name: String,
    pub file: PathBuf,
    pub line: u64,
    pub column: u64,
    pub mode: Mode,
    pub matchers: Vec<Matcher>,
    pub sources: Option<Vec<Source>>,
    pub group_by: Option<Vec<String>>,
    pub service: Template,
    pub environment: Option<Template>,
    pub sustained: Duration,
    pub clear_after: Duration,
    /// `breach.max_open`: this rule's own cap on open breaches, in place of
    /// `limits.max_open_breaches_per_rule`.
    pub max_open: Option<usize>,
    pub max_age: Duration,
    pub approval: Option<ApprovalPolicy>,
    pub steps: Vec<StepSpec>,
    pub verify: Option<Verify>,
    /// Integrity hooks after verification (row counts, token validity, …): recorded, never
    /// changing the outcome; they may run again after a crash, so they must be read-only.
    pub after: Vec<StepSpec>,
    /// Run once when the freeze this rule's incident set is lifted (Argo CD auto-sync back on,
    /// `flux resume`), journaled like `steps`.
    pub on_unfreeze: Vec<StepSpec>,
    pub budget: Option<Budget>,
    pub freeze: bool,
    pub notify: Vec<String>,
    /// Overrides of the built-in `internal` / `external` announcement texts.
    pub messages: BTreeMap<String, Template>,
}

impl Rule {
    pub fn matches(&self, source: Source, labels: &Labels) -> bool {
        self.sources.as_ref().is_none_or(|s| s.contains(&source))
            && self.matchers.iter().all(|m| m.matches(labels))
    }

    /// The group key (`{a="x", b="y"}`) and its labels; one group per rule without `group_by`.
    pub fn group(&self, labels: &Labels) -> (String, Labels) {
        let Some(by) = &self.group_by else {
            return ("{}".to_string(), Labels::new());
        };
        let picked: Labels = by
            .iter()
            .map(|k| (k.clone(), labels.get(k).cloned().unwrap_or_default()))
            .collect();
        let inner: Vec<String> = picked.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
        (format!("{{{}}}", inner.join(", ")), picked)
    }
}

/// A loaded, valid set of rules, in file then position order.
#[derive(Clone, Debug, Default)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
    /// SHA-256 (hex) over every rule file's name and bytes, in load order: two sets with the
    /// same digest decide alike. The input log records it, so a replay can tell whether it runs
    /// the rules the daemon ran.
    pub digest: String,
}

impl RuleSet {
    /// No rules, with the digest of an empty rules directory.
    pub fn empty() -> RuleSet {
        RuleSet {
            rules: Vec::new(),
            digest: Digest::default().hex(),
        }
    }

    pub fn get(&self, name: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.name == name)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    pub file: PathBuf,
    pub line: u64,
    pub column: u64,
    pub severity: Severity,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "",
            Severity::Warning => "warning: ",
        };
        write!(
            f,
            "{}:{}:{}: {sev}{}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

/// What the rules may refer to outside themselves.
#[derive(Clone, Debug, Default)]
pub struct Context {
    /// The people of the config: id → the roles that person holds. `None` when no config was
    /// given (`lint` or `replay` without `--config`): approvals are then checked as far as the
    /// rules alone allow, and a role nobody is known to hold is a warning.
    pub people: Option<BTreeMap<String, BTreeSet<String>>>,
    pub notifiers: BTreeSet<String>,
}

impl Context {
    /// A context of `people` given as (id, roles) pairs.
    pub fn with_people<'a>(
        people: impl IntoIterator<Item = (&'a str, &'a [&'a str])>,
        notifiers: impl IntoIterator<Item = &'a str>,
    ) -> Context {
        Context {
            people: Some(
                people
                    .into_iter()
                    .map(|(id, roles)| {
                        (
                            id.to_string(),
                            roles.iter().map(|r| r.to_string()).collect(),
                        )
                    })
                    .collect(),
            ),
            notifiers: notifiers.into_iter().map(String::from).collect(),
        }
    }

    /// How many people hold at least one of `roles`; `None` when the people are not known.
    pub fn holders(&self, roles: &[String]) -> Option<usize> {
        let people = self.people.as_ref()?;
        Some(
            people
                .values()
                .filter(|held| roles.iter().any(|r| held.contains(r)))
                .count(),
        )
    }

    pub fn holds_role(&self, role: &str) -> bool {
        self.people
            .iter()
            .flat_map(|p| p.values())
            .any(|held| held.contains(role))
    }
}

/// Loads every `*.yaml`/`*.yml` file of `dir`. Returns the set when there is no error, and all
/// problems (warnings included) either way.
pub fn load_dir(dir: &Path, ctx: &Context) -> (Option<RuleSet>, Vec<Problem>) {
    let mut problems = Vec::new();
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
            })
            .collect(),
        Err(e) => {
            problems.push(problem(
                dir,
                0,
                0,
                format!("cannot read the rules directory: {e}"),
            ));
            return (None, problems);
        }
    };
    files.sort();
    let mut rules: Vec<Rule> = Vec::new();
    let mut digest = Digest::default();
    for file in &files {
        match std::fs::read_to_string(file) {
            Ok(text) => {
                digest.add(file, &text);
                let (mut found, mut p) = parse_file(file, &text, ctx);
                problems.append(&mut p);
                for r in found.drain(..) {
                    if let Some(prev) = rules.iter().find(|x| x.name == r.name) {
                        problems.push(problem(
                            file,
                            r.line,
                            1,
                            format!(
                                "rule name `{}` is already used at {}:{}",
                                r.name,
                                prev.file.display(),
                                prev.line
                            ),
                        ));
                    } else {
                        rules.push(r);
                    }
                }
            }
            Err(e) => problems.push(problem(file, 0, 0, format!("cannot read: {e}"))),
        }
    }
    problems.sort();
    let ok = !problems.iter().any(|p| p.severity == Severity::Error);
    let digest = digest.hex();
    (ok.then_some(RuleSet { rules, digest }), problems)
}

/// Loads rules from one YAML text (tests, replay); `origin` names it in problems.
pub fn load_str(origin: &str, text: &str, ctx: &Context) -> (Option<RuleSet>, Vec<Problem>) {
    let (rules, problems) = parse_file(Path::new(origin), text, ctx);
    let ok = !problems.iter().any(|p| p.severity == Severity::Error);
    let mut digest = Digest::default();
    digest.add(Path::new(origin), text);
    let digest = digest.hex();
    (ok.then_some(RuleSet { rules, digest }), problems)
}

/// The running digest of a rule set's files: by file name (not the directory, so a copy of the
/// rules elsewhere has the same digest) and content.
#[derive(Default)]
struct Digest(sha2::Sha256);

impl Digest {
    fn add(&mut self, file: &Path, text: &str) {
        use sha2::Digest as _;
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned());
        self.0.update(name.unwrap_or_default().as_bytes());
        self.0.update([0]);
        self.0.update(text.len().to_le_bytes());
        self.0.update(text.as_bytes());
    }

    fn hex(self) -> String {
        use sha2::Digest as _;
        hex::encode(self.0.finalize())
    }
}

fn problem(file: &Path, line: u64, column: u64, message: String) -> Problem {
    Problem {
        file: file.to_path_buf(),
        line,
        column,
        severity: Severity::Error,
        message,
    }
}

// ---- raw YAML shapes ----

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "RuleFile")]
struct RawFile {
    #[serde(default)]
    #[schemars(with = "Vec<RawRule>")]
    rules: Vec<Spanned<RawRule>>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Rule")]
struct RawRule {
    #[schemars(with = "String")]
    name: Spanned<String>,
    #[schemars(with = "Option<String>")]
    mode: Option<Spanned<String>>,
    #[serde(rename = "match", default)]
    #[schemars(with = "Vec<String>")]
    matchers: Vec<Spanned<String>>,
    #[schemars(with = "Option<Vec<String>>")]
    sources: Option<Vec<Spanned<String>>>,
    #[schemars(with = "Option<Vec<String>>")]
    group_by: Option<Vec<Spanned<String>>>,
    #[schemars(with = "String")]
    service: Spanned<String>,
    #[schemars(with = "Option<String>")]
    environment: Option<Spanned<String>>,
    #[schemars(with = "RawBreach")]
    breach: Spanned<RawBreach>,
    release: Option<RawRelease>,
    #[schemars(with = "Option<RawApproval>")]
    approval: Option<Spanned<RawApproval>>,
    #[serde(default)]
    #[schemars(with = "Vec<RawStep>")]
    steps: Vec<Spanned<RawStep>>,
    #[schemars(with = "Option<RawVerify>")]
    verify: Option<Spanned<RawVerify>>,
    #[serde(default)]
    #[schemars(with = "Vec<RawStep>")]
    after: Vec<Spanned<RawStep>>,
    #[serde(default)]
    #[schemars(with = "Vec<RawStep>")]
    on_unfreeze: Vec<Spanned<RawStep>>,
    #[schemars(with = "Option<RawBudget>")]
    budget: Option<Spanned<RawBudget>>,
    #[serde(default)]
    freeze: bool,
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    notify: Vec<Spanned<String>>,
    #[serde(default)]
    messages: RawMessages,
}

#[derive(Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Messages")]
struct RawMessages {
    #[schemars(with = "Option<String>")]
    internal: Option<Spanned<String>>,
    #[schemars(with = "Option<String>")]
    external: Option<Spanned<String>>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Breach")]
struct RawBreach {
    #[schemars(with = "String")]
    sustained: Spanned<String>,
    #[schemars(with = "Option<String>")]
    clear_after: Option<Spanned<String>>,
    #[schemars(with = "Option<usize>")]
    max_open: Option<Spanned<usize>>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Release")]
struct RawRelease {
    #[schemars(with = "String")]
    max_age: Spanned<String>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
#[schemars(rename = "Approval")]
enum RawApproval {
    Word(String),
    Policy(RawPolicy),
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Policy")]
struct RawPolicy {
    #[serde(default)]
    require_roles: Vec<String>,
    quorum: Option<usize>,
    timeout: Option<String>,
    on_timeout: Option<String>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Step")]
struct RawStep {
    #[schemars(with = "String")]
    name: Spanned<String>,
    #[schemars(with = "Option<Vec<String>>")]
    run: Option<Vec<Spanned<String>>>,
    #[schemars(with = "Option<RawHttp>")]
    http: Option<Spanned<RawHttp>>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    dir: Option<String>,
    #[schemars(with = "Option<RawAction>")]
    probe: Option<Spanned<RawAction>>,
    #[schemars(with = "Option<String>")]
    timeout: Option<Spanned<String>>,
    #[serde(default)]
    retries: u32,
    #[serde(default)]
    idempotent: bool,
    #[serde(default)]
    continue_on_failure: bool,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Action")]
struct RawAction {
    #[schemars(with = "Option<Vec<String>>")]
    run: Option<Vec<Spanned<String>>>,
    #[schemars(with = "Option<RawHttp>")]
    http: Option<Spanned<RawHttp>>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    dir: Option<String>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Http")]
struct RawHttp {
    #[serde(default = "default_method")]
    method: String,
    #[schemars(with = "String")]
    url: Spanned<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    json: Option<serde_json::Value>,
    body: Option<String>,
    expect_status: Option<StatusList>,
    #[schemars(with = "Option<String>")]
    follow_redirects: Option<Spanned<String>>,
}

fn default_method() -> String {
    "POST".to_string()
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
enum StatusList {
    One(u16),
    Many(Vec<u16>),
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Verify")]
struct RawVerify {
    #[schemars(with = "Option<String>")]
    within: Option<Spanned<String>>,
    #[schemars(with = "Option<String>")]
    every: Option<Spanned<String>>,
    #[serde(default)]
    #[schemars(with = "Vec<RawCheck>")]
    checks: Vec<Spanned<RawCheck>>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Check")]
struct RawCheck {
    prometheus: Option<RawPromCheck>,
    http: Option<RawHttpCheck>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "PromCheck")]
struct RawPromCheck {
    url: String,
    query: String,
    below: Option<f64>,
    above: Option<f64>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "HttpCheck")]
struct RawHttpCheck {
    url: String,
    #[serde(default = "default_status")]
    expect_status: u16,
    body_contains: Option<String>,
}

fn default_status() -> u16 {
    200
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Budget")]
struct RawBudget {
    max: u32,
    per: String,
}

/// The JSON Schema (draft 2020-12) of a rule file, made from the shapes the parser reads.
pub fn schema() -> serde_json::Value {
    let mut s = schemars::schema_for!(RawFile).to_value();
    if let Some(o) = s.as_object_mut() {
        o.insert("title".into(), "rollbackd rule file".into());
    }
    s
}

/// Collects problems against one file.
struct Lint<'a> {
    file: &'a Path,
    problems: Vec<Problem>,
}

impl Lint<'_> {
    fn at(&mut self, loc: &Location, message: impl Into<String>) {
        self.push(loc, Severity::Error, message.into());
    }

    fn warn(&mut self, loc: &Location, message: impl Into<String>) {
        self.push(loc, Severity::Warning, message.into());
    }

    fn push(&mut self, loc: &Location, severity: Severity, message: String) {
        self.problems.push(Problem {
            file: self.file.to_path_buf(),
            line: loc.line(),
            column: loc.column(),
            severity,
            message,
        });
    }

    fn duration(&mut self, s: &Spanned<String>, what: &str) -> Option<Duration> {
        match humantime::parse_duration(s.value.trim()) {
            Ok(d) => Some(d),
            Err(e) => {
                self.at(
                    &s.referenced,
                    format!(
                        "{what}: `{}` is not a duration ({e}); write e.g. 30s, 10m, 2h",
                        s.value
                    ),
                );
                None
            }
        }
    }

    fn template(&mut self, s: &Spanned<String>, scope: Scope) -> Option<Template> {
        self.parsed(s, Template::parse(&s.value, scope))
    }

    /// An http step's URL: templates only after the host (see [`Template::parse_url`]).
    fn url_template(&mut self, s: &Spanned<String>) -> Option<Template> {
        self.parsed(s, Template::parse_url(&s.value, Scope::Step))
    }

    fn parsed(&mut self, s: &Spanned<String>, t: Result<Template, String>) -> Option<Template> {
        t.map_err(|e| self.at(&s.referenced, e)).ok()
    }
}

fn parse_file(file: &Path, text: &str, ctx: &Context) -> (Vec<Rule>, Vec<Problem>) {
    let mut lint = Lint {
        file,
        problems: Vec::new(),
    };
    let raw: Vec<Spanned<RawRule>> = match serde_saphyr::from_str::<RawFile>(text) {
        Ok(r) => r.rules,
        Err(e) => match rule_by_rule(file, text) {
            Some((rules, mut problems)) if !problems.is_empty() => {
                lint.problems.append(&mut problems);
                rules
            }
            _ => {
                lint.problems.push(yaml_problem(file, &e));
                return (Vec::new(), lint.problems);
            }
        },
    };
    let mut rules = Vec::new();
    let mut names = BTreeSet::new();
    for r in raw {
        if !names.insert(r.value.name.value.clone()) {
            lint.at(
                &r.value.name.referenced,
                format!(
                    "rule name `{}` appears twice in this file",
                    r.value.name.value
                ),
            );
            continue;
        }
        if let Some(rule) = compile(&mut lint, r, ctx) {
            rules.push(rule);
        }
    }
    (rules, lint.problems)
}

fn yaml_problem(file: &Path, e: &serde_saphyr::Error) -> Problem {
    let (line, col) = e
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((1, 1));
    problem(file, line, col, yaml_message(&e.to_string()))
}

/// The outline of a rule file: where each rule begins, nothing of what it says.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutline {
    #[serde(default)]
    rules: Vec<Spanned<serde::de::IgnoredAny>>,
}

/// When the file as a whole does not parse, each rule on its own: the rules that parse are
/// checked further, each one that does not says why, so one structural error hides nothing
/// else. `None` when the file's outline itself does not parse, or two rules share a line.
fn rule_by_rule(file: &Path, text: &str) -> Option<(Vec<Spanned<RawRule>>, Vec<Problem>)> {
    let outline: RawOutline = serde_saphyr::from_str(text).ok()?;
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let starts: Vec<&Location> = outline.rules.iter().map(|r| &r.referenced).collect();
    if starts.windows(2).any(|w| w[0].line() >= w[1].line())
        || starts
            .iter()
            .any(|l| l.line() == 0 || l.line() as usize > lines.len())
    {
        return None;
    }
    let mut rules = Vec::new();
    let mut problems = Vec::new();
    for (i, at) in starts.iter().enumerate() {
        let first = at.line() as usize - 1;
        let end = starts
            .get(i + 1)
            .map_or(lines.len(), |n| n.line() as usize - 1);
        // The rule's own lines, at their own line numbers and columns: the lines before it are
        // left empty and the `- ` that opens it becomes blanks.
        let mut piece = "\n".repeat(first);
        let lead = (at.column() as usize).saturating_sub(1);
        let head = lines[first];
        let cut = head.char_indices().nth(lead).map_or(head.len(), |(b, _)| b);
        piece.push_str(&" ".repeat(head[..cut].chars().count()));
        piece.push_str(&head[cut..]);
        for l in &lines[first + 1..end] {
            piece.push_str(l);
        }
        match serde_saphyr::from_str::<RawRule>(&piece) {
            Ok(value) => rules.push(Spanned::new(value, **at, **at)),
            Err(e) => problems.push(yaml_problem(file, &e)),
        }
    }
    Some((rules, problems))
}

/// serde-saphyr's message without its own location prefix and source snippet.
fn yaml_message(display: &str) -> String {
    let first = display.lines().next().unwrap_or(display);
    let first = first.strip_prefix("error: ").unwrap_or(first);
    match first.strip_prefix("line ") {
        Some(rest) => rest
            .split_once(": ")
            .map(|(_, m)| m.to_string())
            .unwrap_or_else(|| first.to_string()),
        None => first.to_string(),
    }
}

fn compile(lint: &mut Lint, raw: Spanned<RawRule>, ctx: &Context) -> Option<Rule> {
    let before = lint.problems.len();
    let at = raw.referenced;
    let r = raw.value;
    let name = r.name.value.clone();
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        lint.at(
            &r.name.referenced,
            format!("rule name `{name}` must match [a-z0-9-]+"),
        );
    }
    let mode = match r.mode.as_ref().map(|m| m.value.as_str()) {
        None | Some("enforce") => Mode::Enforce,
        Some("shadow") => Mode::Shadow,
        Some(other) => {
            let loc = r.mode.as_ref().map(|m| m.referenced).unwrap_or(at);
            lint.at(
                &loc,
                format!("mode `{other}` is not one of: enforce, shadow"),
            );
            Mode::Enforce
        }
    };
    if r.matchers.is_empty() {
        lint.at(
            &at,
            "`match` is empty: a rule must say which alerts mean a breach",
        );
    }
    let mut matchers = Vec::new();
    for m in &r.matchers {
        match Matcher::parse(&m.value) {
            Ok(x) => matchers.push(x),
            Err(e) => lint.at(&m.referenced, e),
        }
    }
    let sources = r.sources.as_ref().map(|list| {
        list.iter()
            .filter_map(|s| {
                let src = Source::parse(&s.value);
                if src.is_none() {
                    lint.at(
                        &s.referenced,
                        format!(
                            "unknown source `{}` (known: alertmanager, grafana, pagerduty, signal)",
                            s.value
                        ),
                    );
                }
                src
            })
            .collect::<Vec<_>>()
    });
    let group_by = r.group_by.as_ref().map(|list| {
        list.iter()
            .map(|g| {
                if g.value.is_empty()
                    || !g
                        .value
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_')
                {
                    lint.at(
                        &g.referenced,
                        format!("group_by: `{}` is not a label name", g.value),
                    );
                }
                g.value.clone()
            })
            .collect::<Vec<_>>()
    });
    let service = lint.template(&r.service, Scope::Labels);
    if let Some(t) = &service
        && t.is_literal()
        && !template::value_is_safe(t.source())
    {
        lint.at(
            &r.service.referenced,
            "service must match [A-Za-z0-9._:/@+=-]*",
        );
    }
    let environment = r
        .environment
        .as_ref()
        .and_then(|e| lint.template(e, Scope::Labels));
    let sustained = lint.duration(&r.breach.value.sustained, "breach.sustained");
    let clear_after = match &r.breach.value.clear_after {
        Some(c) => lint.duration(c, "breach.clear_after"),
        None => Some(Duration::ZERO),
    };
    let max_open = r.breach.value.max_open.as_ref().map(|m| {
        if m.value == 0 {
            lint.at(
                &m.referenced,
                "breach.max_open must be at least 1 (use mode: shadow to never act)",
            );
        }
        m.value
    });
    let max_age = match &r.release {
        Some(rel) => lint.duration(&rel.max_age, "release.max_age"),
        None => Some(Duration::from_secs(2 * 3600)),
    };
    let approval = r
        .approval
        .as_ref()
        .and_then(|a| compile_approval(lint, a, ctx));
    if r.steps.is_empty() {
        lint.at(&at, "`steps` is empty: a rule must say how to roll back");
    }
    let steps: Vec<StepSpec> = r
        .steps
        .iter()
        .filter_map(|s| compile_step(lint, s))
        .collect();
    let verify = r.verify.as_ref().and_then(|v| compile_verify(lint, v));
    let after: Vec<StepSpec> = r
        .after
        .iter()
        .filter_map(|s| compile_step(lint, s))
        .collect();
    let on_unfreeze: Vec<StepSpec> = r
        .on_unfreeze
        .iter()
        .filter_map(|s| compile_step(lint, s))
        .collect();
    if let (Some(first), false) = (r.on_unfreeze.first(), r.freeze) {
        lint.at(
            &first.referenced,
            "`on_unfreeze` needs `freeze: true`: its steps run when the rule's freeze is lifted, and without `freeze` there is none",
        );
    }
    let budget = r.budget.as_ref().and_then(|b| {
        let per = lint.duration(
            &Spanned::new(b.value.per.clone(), b.referenced, b.defined),
            "budget.per",
        )?;
        if b.value.max == 0 {
            lint.at(
                &b.referenced,
                "budget.max must be at least 1 (use mode: shadow to never act)",
            );
        }
        Some(Budget {
            max: b.value.max,
            per,
        })
    });
    for n in &r.notify {
        if !ctx.notifiers.contains(&n.value) {
            lint.warn(
                &n.referenced,
                format!(
                    "notifier `{}` is not defined under `notifiers:` in the config",
                    n.value
                ),
            );
        }
    }
    let mut messages = BTreeMap::new();
    for (key, text) in [
        ("internal", &r.messages.internal),
        ("external", &r.messages.external),
    ] {
        if let Some(t) = text.as_ref().and_then(|t| lint.template(t, Scope::Step)) {
            messages.insert(key.to_string(), t);
        }
    }
    if lint.problems[before..]
        .iter()
        .any(|p| p.severity == Severity::Error)
    {
        return None;
    }
    Some(Rule {
        name,
        file: lint.file.to_path_buf(),
        line: at.line(),
        column: at.column(),
        mode,
        matchers,
        sources,
        group_by,
        service: service?,
        environment,
        sustained: sustained?,
        clear_after: clear_after?,
        max_open,
        max_age: max_age?,
        approval: approval.flatten(),
        steps,
        verify,
        after,
        on_unfreeze,
        budget,
        freeze: r.freeze,
        notify: r.notify.into_iter().map(|n| n.value).collect(),
        messages,
    })
}

/// `Some(None)` is `approval: none`; `None` means the policy had errors.
fn compile_approval(
    lint: &mut Lint,
    a: &Spanned<RawApproval>,
    ctx: &Context,
) -> Option<Option<ApprovalPolicy>> {
    let before = lint.problems.len();
    let p = match &a.value {
        RawApproval::Word(w) if w == "none" => return Some(None),
        RawApproval::Word(w) => {
            lint.at(
                &a.referenced,
                format!("approval: `{w}` is not `none` or a policy (require_roles, quorum, timeout, on_timeout)"),
            );
            return None;
        }
        RawApproval::Policy(p) => p,
    };
    let timeout = match &p.timeout {
        Some(t) => lint.duration(
            &Spanned::new(t.clone(), a.referenced, a.defined),
            "approval.timeout",
        )?,
        None => Duration::from_secs(15 * 60),
    };
    let proceed_on_timeout = match p.on_timeout.as_deref() {
        None | Some("abort") => false,
        Some("proceed") => true,
        Some(other) => {
            lint.at(
                &a.referenced,
                format!("approval.on_timeout: `{other}` is not one of: abort, proceed"),
            );
            return None;
        }
    };
    let quorum = p.quorum.unwrap_or(p.require_roles.len().max(1));
    if quorum == 0 {
        lint.at(
            &a.referenced,
            "approval.quorum must be at least 1 (use `approval: none` for no approval)",
        );
        return None;
    }
    if quorum < p.require_roles.len() {
        lint.warn(
            &a.referenced,
            format!(
                "approval.quorum {quorum} is below the {} required roles: one person holding several roles can satisfy it",
                p.require_roles.len()
            ),
        );
    }
    if p.require_roles.is_empty() {
        lint.at(
            &a.referenced,
            "approval.require_roles is empty: nobody could approve (use `approval: none` for no approval)",
        );
        return None;
    }
    let mut unheld = false;
    for role in &p.require_roles {
        if ctx.holds_role(role) {
            continue;
        }
        unheld = true;
        if ctx.people.is_some() {
            lint.at(
                &a.referenced,
                format!("approval: nobody under `people:` in the config holds role `{role}`; nobody could approve"),
            );
        } else {
            lint.warn(
                &a.referenced,
                format!("approval: without --config nobody is known to hold role `{role}`; lint with --config to check the people"),
            );
        }
    }
    if let Some(holders) = ctx.holders(&p.require_roles)
        && !unheld
        && quorum > holders
    {
        lint.at(
            &a.referenced,
            format!(
                "approval.quorum {quorum} is more than the {holders} people under `people:` who hold {}; the quorum could never be met",
                p.require_roles.iter().map(|r| format!("`{r}`")).collect::<Vec<_>>().join(" or ")
            ),
        );
    }
    if lint.problems[before..]
        .iter()
        .any(|p| p.severity == Severity::Error)
    {
        return None;
    }
    Some(Some(ApprovalPolicy {
        require_roles: p.require_roles.clone(),
        quorum,
        timeout,
        proceed_on_timeout,
    }))
}

fn compile_step(lint: &mut Lint, s: &Spanned<RawStep>) -> Option<StepSpec> {
    let raw = &s.value;
    let before = lint.problems.len();
    let action = compile_action(
        lint,
        ActionParts {
            run: &raw.run,
            http: &raw.http,
            env: &raw.env,
            dir: &raw.dir,
        },
        &s.referenced,
        &format!("step `{}`", raw.name.value),
    )?;
    let probe = match &raw.probe {
        Some(p) => Some(compile_action(
            lint,
            ActionParts {
                run: &p.value.run,
                http: &p.value.http,
                env: &p.value.env,
                dir: &p.value.dir,
            },
            &p.referenced,
            "probe",
        )?),
        None => None,
    };
    let timeout = match &raw.timeout {
        Some(t) => lint.duration(t, "step timeout")?,
        None => Duration::from_secs(300),
    };
    if lint.problems[before..]
        .iter()
        .any(|p| p.severity == Severity::Error)
    {
        return None;
    }
    Some(StepSpec {
        name: raw.name.value.clone(),
        action,
        probe,
        timeout,
        retries: raw.retries,
        idempotent: raw.idempotent,
        continue_on_failure: raw.continue_on_failure,
    })
}

struct ActionParts<'a> {
    run: &'a Option<Vec<Spanned<String>>>,
    http: &'a Option<Spanned<RawHttp>>,
    env: &'a BTreeMap<String, String>,
    dir: &'a Option<String>,
}

/// A `run` or `http` action, shared by steps, probes and after hooks.
fn compile_action(lint: &mut Lint, raw: ActionParts, at: &Location, what: &str) -> Option<Action> {
    match (raw.run, raw.http) {
        (Some(argv), None) => {
            if argv.is_empty() {
                lint.at(at, "run: the command is empty");
            }
            if let Some(first) = argv.first()
                && first.value.contains("{{")
            {
                lint.at(
                    &first.referenced,
                    "run: the program itself may not be a template",
                );
            }
            for a in argv {
                if let Some(reference) = secret_reference(&a.value) {
                    lint.warn(
                        &a.referenced,
                        format!(
                            "run: `{reference}` in argv puts the secret on the child's command line (readable in /proc/PID/cmdline and ps while it runs); pass it through the step's environment instead, e.g. `env: {{ NAME: \"{reference}\" }}`, and let the program read NAME"
                        ),
                    );
                }
            }
            let argv: Vec<Template> = argv
                .iter()
                .filter_map(|a| lint.template(a, Scope::Step))
                .collect();
            Some(Action::Run {
                argv,
                env: raw.env.clone(),
                dir: raw.dir.as_ref().map(PathBuf::from),
            })
        }
        (None, Some(h)) => {
            let method = h.value.method.to_ascii_uppercase();
            if !matches!(
                method.as_str(),
                "GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD"
            ) {
                lint.at(
                    &h.referenced,
                    format!(
                        "http.method `{}` is not one of GET, POST, PUT, PATCH, DELETE, HEAD",
                        h.value.method
                    ),
                );
            }
            // With templates, `parse_url` asks for more (a literal scheme and host) and says so.
            let url_text = h.value.url.value.as_str();
            let starts_ok = ["http://", "https://", "${"]
                .iter()
                .any(|p| url_text.starts_with(p));
            if !starts_ok && !url_text.contains("{{") {
                lint.at(
                    &h.value.url.referenced,
                    "http.url must start with http:// or https://",
                );
            }
            let url = lint.url_template(&h.value.url);
            let follow_redirects = match h.value.follow_redirects.as_ref() {
                None => Redirects::None,
                Some(f) => {
                    match f.value.as_str() {
                        "none" => Redirects::None,
                        "same_origin" => Redirects::SameOrigin,
                        other => {
                            lint.at(
                            &f.referenced,
                            format!("http.follow_redirects: `{other}` is not one of: none, same_origin"),
                        );
                            Redirects::None
                        }
                    }
                }
            };
            let body = match (&h.value.json, &h.value.body) {
                (Some(_), Some(_)) => {
                    lint.at(&h.referenced, "http: give `json` or `body`, not both");
                    Body::None
                }
                (Some(j), None) => {
                    let mut strings = Vec::new();
                    template::json_strings(j, "", &mut strings);
                    for (at, text) in strings {
                        if let Err(e) = Template::parse(text, Scope::Step) {
                            lint.at(&h.referenced, format!("http.json{at}: {e}"));
                        }
                    }
                    Body::Json(j.clone())
                }
                (None, Some(b)) => Body::Raw(b.clone()),
                (None, None) => Body::None,
            };
            let expect_status = match &h.value.expect_status {
                None => Vec::new(),
                Some(StatusList::One(s)) => vec![*s],
                Some(StatusList::Many(v)) => v.clone(),
            };
            if !raw.env.is_empty() || raw.dir.is_some() {
                lint.at(at, "env and dir belong to run steps, not http steps");
            }
            Some(Action::Http {
                method,
                url: url?,
                headers: h.value.headers.clone(),
                body,
                expect_status,
                follow_redirects,
            })
        }
        _ => {
            lint.at(at, format!("{what} needs exactly one of `run` or `http`"));
            None
        }
    }
}

/// The first `${env:..}` / `${file:..}` reference in `s`, as written.
fn secret_reference(s: &str) -> Option<&str> {
    let start = s.find("${env:").or_else(|| s.find("${file:"))?;
    let len = s[start..].find('}').map_or(s.len() - start, |e| e + 1);
    Some(&s[start..start + len])
}

fn compile_verify(lint: &mut Lint, v: &Spanned<RawVerify>) -> Option<Verify> {
    let within = match &v.value.within {
        Some(w) => lint.duration(w, "verify.within")?,
        None => Duration::from_secs(600),
    };
    let every = match &v.value.every {
        Some(e) => lint.duration(e, "verify.every")?,
        None => Duration::from_secs(30),
    };
    let mut checks = Vec::new();
    for c in &v.value.checks {
        match (&c.value.prometheus, &c.value.http) {
            (Some(p), None) => {
                if p.below.is_none() == p.above.is_none() {
                    lint.at(
                        &c.referenced,
                        "prometheus check needs exactly one of `below` or `above`",
                    );
                    continue;
                }
                checks.push(Check::Prometheus {
                    url: p.url.clone(),
                    query: p.query.clone(),
                    below: p.below,
                    above: p.above,
                });
            }
            (None, Some(h)) => checks.push(Check::Http {
                url: h.url.clone(),
                expect_status: h.expect_status,
                body_contains: h.body_contains.clone(),
            }),
            _ => lint.at(
                &c.referenced,
                "a check needs exactly one of `prometheus` or `http`",
            ),
        }
    }
    Some(Verify {
        within,
        every,
        checks,
    })
}

#[cfg(test)]
mod tests;
