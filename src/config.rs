//! The daemon config (`rollbackd.yaml`): embedded defaults, `${env:NAME}` / `${file:PATH}` secret
//! references resolved in every string value, and validation before anything binds a port.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A resolved secret. Its `Debug` never shows the value, so it cannot leak through a log line.
#[derive(Clone, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Tokens {
    pub ingest: Option<Secret>,
    /// Records releases (`/v1/releases`): the release picks the rollback target, so it may be
    /// kept apart from the alert senders' token. Unset: the ingest token does it.
    pub releases: Option<Secret>,
    pub read: Option<Secret>,
    pub admin: Option<Secret>,
}

#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Person {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub pagerduty_user: Option<String>,
    /// This person's own API token (a secret reference): a vote through the API that carries it
    /// counts for this person only.
    #[serde(default)]
    pub token: Option<Secret>,
    #[serde(default)]
    pub roles: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Sustained requests per second per ingest source.
    pub ingest_per_second: u32,
    pub ingest_burst: u32,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// A connection must deliver a request's complete head (request line and headers) within
    /// this, counted from when the daemon starts waiting for it; an idle keep-alive connection
    /// is closed after it too.
    #[serde(deserialize_with = "human_duration")]
    #[schemars(with = "DurationText")]
    pub header_read_timeout: Duration,
    /// A request's whole body must arrive within this of its head; else 408.
    #[serde(deserialize_with = "human_duration")]
    #[schemars(with = "DurationText")]
    pub body_read_timeout: Duration,
    /// Connections served at once; further ones wait in the listen backlog until one closes.
    pub max_connections: usize,
    /// Open breaches one rule may hold at once; a firing alert that would open one more is
    /// refused (429) until some close. Alerts of breaches already open are never refused.
    pub max_open_breaches_per_rule: usize,
}

impl Limits {
    /// The limits that are fixed at start (quotas, body limit, connections); the breach cap
    /// follows a reload.
    pub fn fixed_at_start(&self) -> (u32, u32, usize, Duration, Duration, usize) {
        (
            self.ingest_per_second,
            self.ingest_burst,
            self.max_body_bytes,
            self.header_read_timeout,
            self.body_read_timeout,
            self.max_connections,
        )
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            ingest_per_second: 200,
            ingest_burst: 400,
            max_body_bytes: 1024 * 1024,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            max_connections: 1024,
            max_open_breaches_per_rule: 10_000,
        }
    }
}

/// A duration as text: `500ms`, `10s`, `1m`, `2h`.
#[derive(schemars::JsonSchema)]
#[schemars(transparent)]
#[allow(dead_code)]
pub struct DurationText(String);

/// A duration written as the rules write them: `10s`, `1m`, `500ms`.
fn human_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => humantime::parse_duration(s.trim()).map_err(|e| {
            serde::de::Error::custom(format!("`{s}` is not a duration like `10s` or `1m` ({e})"))
        }),
        other => Err(serde::de::Error::custom(format!(
            "expected a duration like `10s` or `1m`, got `{other}`"
        ))),
    }
}

#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Grafana {
    /// When set, `X-Grafana-Alerting-Signature` must carry the HMAC-SHA256 of the body.
    pub webhook_secret: Option<Secret>,
    /// A signature whose `X-Grafana-Alerting-Signature-Timestamp` is further than this from now
    /// (either way) is refused, so a captured delivery cannot be sent again later.
    #[serde(default = "five_minutes", deserialize_with = "human_duration")]
    #[schemars(with = "DurationText")]
    pub signature_max_age: std::time::Duration,
}

impl Default for Grafana {
    fn default() -> Self {
        Grafana {
            webhook_secret: None,
            signature_max_age: five_minutes(),
        }
    }
}

/// The value the example Secret ships for every key: a daemon never starts with it.
fn is_placeholder(value: &str) -> bool {
    let v = value.trim();
    v.eq_ignore_ascii_case("change-me") || v.eq_ignore_ascii_case("changeme")
}

/// The secrets of `keyed` that are set, each with its key.
fn set_by_key<'a, const N: usize>(
    keyed: [(&str, &'a Option<Secret>); N],
) -> Vec<(String, &'a Secret)> {
    keyed
        .into_iter()
        .filter_map(|(k, s)| Some((k.to_string(), s.as_ref()?)))
        .collect()
}

/// The warning for a token or webhook secret short enough to be guessed, if it is.
fn too_short(key: &str, s: &Secret) -> Option<String> {
    (s.expose().chars().count() < 16).then(|| {
        format!("{key} is shorter than 16 characters: it can be guessed; use a long random one")
    })
}

fn five_minutes() -> std::time::Duration {
    std::time::Duration::from_secs(300)
}

/// GitHub webhooks (`POST /v1/webhooks/github`).
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GitHub {
    /// The webhook's secret: `X-Hub-Signature-256` must carry the HMAC-SHA256 of the body.
    /// Unset: the endpoint answers 404.
    pub webhook_secret: Option<Secret>,
    /// `"owner/repo"` → service, for deployments whose payload names no `service`.
    #[serde(default)]
    pub services: BTreeMap<String, String>,
}

/// GitLab project webhooks (`POST /v1/webhooks/gitlab`).
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GitLab {
    /// The webhook's secret token: `X-Gitlab-Token` must equal it. Unset: the endpoint answers 404.
    pub webhook_token: Option<Secret>,
    /// `path_with_namespace` (`group/project`) → service; else the project's name.
    #[serde(default)]
    pub services: BTreeMap<String, String>,
}

/// Flux notification-controller, Provider type `generic-hmac` (`POST /v1/webhooks/flux`).
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Flux {
    /// The Provider secret's `token`: `X-Signature` must carry the HMAC-SHA256 of the body.
    /// Unset: the endpoint answers 404.
    pub webhook_secret: Option<Secret>,
    /// `<Kind>/<namespace>/<name>` → service, for events without `metadata.service`; else the
    /// object's name.
    #[serde(default)]
    pub services: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PagerDuty {
    #[serde(default)]
    pub webhook_secrets: Vec<Secret>,
    pub api_url: Option<String>,
    pub api_token: Option<Secret>,
    pub from: Option<String>,
    pub events_url: Option<String>,
    pub routing_key: Option<Secret>,
    #[serde(default)]
    pub workflows: BTreeMap<String, String>,
}

/// Where announcements go.
#[derive(Clone, Debug, Deserialize)]
#[serde(try_from = "RawNotifier")]
pub enum Notifier {
    /// A Slack incoming webhook (Block Kit messages).
    Slack { slack_webhook: Secret },
    /// A generic JSON webhook; with `secret`, each request carries
    /// `X-Rollbackd-Signature: v1=<hex HMAC-SHA256 of "<timestamp>.<body>">`.
    Webhook {
        webhook: Secret,
        #[serde(default)]
        secret: Option<Secret>,
    },
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawNotifier {
    slack_webhook: Option<Secret>,
    webhook: Option<Secret>,
    secret: Option<Secret>,
}

impl schemars::JsonSchema for Notifier {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Notifier".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        RawNotifier::json_schema(generator)
    }
}

impl TryFrom<RawNotifier> for Notifier {
    type Error = String;

    fn try_from(r: RawNotifier) -> Result<Notifier, String> {
        match (r.slack_webhook, r.webhook, r.secret) {
            (Some(slack_webhook), None, None) => Ok(Notifier::Slack { slack_webhook }),
            (None, Some(webhook), secret) => Ok(Notifier::Webhook { webhook, secret }),
            _ => Err(
                "a notifier is either `{slack_webhook: URL}` or `{webhook: URL, secret: ..}`"
                    .to_string(),
            ),
        }
    }
}

#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listen: String,
    pub data_dir: PathBuf,
    pub rules_dir: PathBuf,
    pub public_url: Option<String>,
    pub tokens: Tokens,
    pub grafana: Grafana,
    pub pagerduty: Option<PagerDuty>,
    pub github: GitHub,
    pub gitlab: GitLab,
    pub flux: Flux,
    pub people: Vec<Person>,
    /// Named notifiers that rules reference in `notify:`.
    pub notifiers: BTreeMap<String, Notifier>,
    pub limits: Limits,
    /// Output of captured step stdout/stderr kept per step, in bytes.
    pub step_output_bytes: usize,
    /// Append every accepted input to an input log that `rollbackd replay` reads.
    pub record_inputs: bool,
    /// Where the input log goes; default `<data_dir>/inputs.jsonl`.
    pub inputs_file: Option<PathBuf>,
    /// Several nodes replicating every record with Raft; absent: a single node.
    pub cluster: Option<Cluster>,
    /// `text` or `json` (one object per line); `serve --log-format` wins. Read at start only.
    pub log_format: crate::logging::Format,
    /// Decide and record everything, run no step (`serve --dry-run` turns it on too). Read at
    /// start only.
    pub dry_run: bool,
    /// How long running steps may take to finish after SIGTERM (`serve --grace-seconds` wins).
    /// Read at start only.
    #[serde(deserialize_with = "human_duration")]
    #[schemars(with = "DurationText")]
    pub shutdown_grace: Duration,
    /// Every secret the config's references resolved to, so step output can hide them.
    #[serde(skip)]
    pub resolved: Resolved,
}

/// The (reference, value) pairs a config's secret references resolved to. `Debug` shows only
/// the references.
#[derive(Clone, Default)]
pub struct Resolved(Vec<(String, String)>);

impl Resolved {
    pub fn pairs(&self) -> &[(String, String)] {
        &self.0
    }
}

impl fmt::Debug for Resolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(r, _)| r))
            .finish()
    }
}

/// `cluster:`: this node, the initial voters and the secret the nodes share.
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// This node's id; optional when `advertise` is one of the members' urls. A node whose id
    /// is not among `members` never forms a cluster: it waits to be added to one.
    pub node_id: Option<u64>,
    /// How the other nodes reach this node's listener.
    pub advertise: String,
    /// The initial voters, the same list on every node.
    pub members: Vec<Member>,
    /// Nodes authenticate each other with it (at least 16 characters).
    pub secret: Secret,
    /// How often the leader tells the others it is alive.
    #[serde(default = "heartbeat", deserialize_with = "human_duration")]
    #[schemars(with = "DurationText")]
    pub heartbeat: Duration,
    /// A follower that hears nothing for this long (up to twice it) starts an election.
    #[serde(default = "election_timeout", deserialize_with = "human_duration")]
    #[schemars(with = "DurationText")]
    pub election_timeout: Duration,
    /// Every this many log entries, a node snapshots its state trees and drops the log before
    /// it (keeping up to 1,000 entries for followers a little behind); a node that is further
    /// behind, or whose disk was wiped, receives the snapshot.
    #[serde(default = "snapshot_every")]
    pub snapshot_every: u64,
}

fn snapshot_every() -> u64 {
    5000
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub id: u64,
    pub url: String,
}

fn heartbeat() -> Duration {
    Duration::from_millis(250)
}

fn election_timeout() -> Duration {
    Duration::from_secs(1)
}

impl Cluster {
    /// This node's id: `node_id`, or the member whose url is `advertise`.
    pub fn me(&self) -> Result<u64, String> {
        let by_url = self
            .members
            .iter()
            .find(|m| m.url.trim_end_matches('/') == self.advertise.trim_end_matches('/'))
            .map(|m| m.id);
        match (self.node_id, by_url) {
            (Some(id), Some(u)) if id != u => Err(format!(
                "cluster.node_id {id} but cluster.advertise `{}` is the url of member {u}",
                self.advertise
            )),
            (Some(id), _) => Ok(id),
            (None, Some(u)) => Ok(u),
            (None, None) => Err(format!(
                "cluster: set node_id, or make advertise (`{}`) one of the members' urls",
                self.advertise
            )),
        }
    }

    fn validate(&self) -> Result<(), String> {
        if self.secret.expose().len() < 16 {
            return Err(
                "cluster.secret is shorter than 16 characters; use a long random secret".into(),
            );
        }
        if self.members.is_empty() {
            return Err("cluster.members: list the initial voters (id and url of each)".into());
        }
        let mut ids = BTreeSet::new();
        for m in &self.members {
            if !ids.insert(m.id) {
                return Err(format!("cluster.members: id {} appears twice", m.id));
            }
            let u = url::Url::parse(&m.url)
                .map_err(|e| format!("cluster.members: `{}` is not a URL ({e})", m.url))?;
            if !matches!(u.scheme(), "http" | "https") || u.host().is_none() {
                return Err(format!(
                    "cluster.members: `{}` is not an http(s) URL with a host",
                    m.url
                ));
            }
        }
        if self.snapshot_every == 0 {
            return Err("cluster.snapshot_every must be at least 1".into());
        }
        if self.heartbeat.is_zero() || self.election_timeout <= self.heartbeat * 2 {
            return Err(format!(
                "cluster: election_timeout ({:?}) must be more than twice heartbeat ({:?})",
                self.election_timeout, self.heartbeat
            ));
        }
        self.me().map(|_| ())
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:9750".to_string(),
            data_dir: PathBuf::from("./data"),
            rules_dir: PathBuf::from("./rules"),
            public_url: None,
            tokens: Tokens::default(),
            grafana: Grafana::default(),
            pagerduty: None,
            github: GitHub::default(),
            gitlab: GitLab::default(),
            flux: Flux::default(),
            people: Vec::new(),
            notifiers: BTreeMap::new(),
            limits: Limits::default(),
            step_output_bytes: 4096,
            record_inputs: false,
            inputs_file: None,
            cluster: None,
            log_format: crate::logging::Format::Text,
            dry_run: false,
            shutdown_grace: Duration::from_secs(30),
            resolved: Resolved::default(),
        }
    }
}

/// The JSON Schema (draft 2020-12) of `rollbackd.yaml`, made from the shapes the parser reads.
/// Every string may also be a `${env:NAME}` / `${file:PATH}` reference.
pub fn schema() -> serde_json::Value {
    let mut s = schemars::schema_for!(Config).to_value();
    durations_as_text(&mut s);
    if let Some(o) = s.as_object_mut() {
        o.insert("title".into(), "rollbackd config (rollbackd.yaml)".into());
    }
    s
}

/// A duration's default as it is written (`5m`), not as `Duration` serializes (`{secs, nanos}`).
fn durations_as_text(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(o) => {
            if let Some(d) = o.get("default")
                && let (Some(secs), Some(nanos)) = (
                    d.get("secs").and_then(|x| x.as_u64()),
                    d.get("nanos").and_then(|x| x.as_u64()),
                )
            {
                let d = Duration::new(secs, nanos as u32);
                o.insert(
                    "default".into(),
                    humantime::format_duration(d).to_string().into(),
                );
            }
            o.values_mut().for_each(durations_as_text);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(durations_as_text),
        _ => {}
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {err}")]
    Read { path: String, err: std::io::Error },
    #[error("{path}:{line}:{column}: {message}")]
    Yaml {
        path: String,
        line: u64,
        column: u64,
        message: String,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

impl Config {
    /// Reads and validates a config file. Secret references are resolved here, once.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError::Read {
            path: path.display().to_string(),
            err,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: origin.to_string(),
            message,
        };
        let mut tree: serde_json::Value = if text.trim().is_empty() {
            serde_json::Value::Object(Default::default())
        } else {
            serde_saphyr::from_str(text).map_err(|e| {
                let (line, column) = e
                    .location()
                    .map(|l| (l.line(), l.column()))
                    .unwrap_or((1, 1));
                ConfigError::Yaml {
                    path: origin.to_string(),
                    line,
                    column,
                    message: e.to_string().lines().next().unwrap_or("").to_string(),
                }
            })?
        };
        let raw = tree.clone();
        let mut resolved = Vec::new();
        resolve_tree(&mut tree, "", &mut resolved).map_err(invalid)?;
        let mut cfg: Config = serde_path_to_error::deserialize(tree)
            .map_err(|e| invalid(conceal(explain(&e, &raw), &resolved)))?;
        if let Some((reference, _)) = resolved.iter().find(|(_, v)| is_placeholder(v)) {
            return Err(invalid(format!(
                "{reference} is still the placeholder CHANGE-ME (deploy/kubernetes/secret.example.yaml); set the real secret"
            )));
        }
        cfg.validate().map_err(|m| invalid(conceal(m, &resolved)))?;
        cfg.resolved = Resolved(resolved);
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), String> {
        self.listen_addr()?;
        let mut ids = BTreeSet::new();
        for p in &self.people {
            if p.id.is_empty() {
                return Err("people: every person needs an `id`".to_string());
            }
            if !ids.insert(&p.id) {
                return Err(format!("people: id `{}` appears twice", p.id));
            }
        }
        for (key, map) in [
            ("github.services", &self.github.services),
            ("gitlab.services", &self.gitlab.services),
            ("flux.services", &self.flux.services),
        ] {
            if let Some((from, to)) = map
                .iter()
                .find(|(_, to)| to.is_empty() || !crate::rules::template::value_is_safe(to))
            {
                return Err(format!(
                    "{key}: {from:?} maps to {to:?}, which is not a service name ([A-Za-z0-9._:/@+=-], without `..` or a leading `-`)"
                ));
            }
        }
        for (name, n) in &self.notifiers {
            if name == "pagerduty" {
                return Err(
                    "notifiers: `pagerduty` is reserved (configure `pagerduty:` instead)"
                        .to_string(),
                );
            }
            let url = match n {
                Notifier::Slack { slack_webhook } => slack_webhook,
                Notifier::Webhook { webhook, .. } => webhook,
            };
            if !(url.expose().starts_with("https://") || url.expose().starts_with("http://")) {
                return Err(format!(
                    "notifiers.{name}: the URL must start with http:// or https://"
                ));
            }
        }
        if let Some(pd) = &self.pagerduty {
            if let Some(key) = pd
                .workflows
                .keys()
                .find(|k| *k != "approve" && *k != "reject")
            {
                return Err(format!(
                    "pagerduty.workflows: `{key}` is not `approve` or `reject`"
                ));
            }
            if let Some(from) = &pd.from
                && !from.contains('@')
            {
                return Err(format!(
                    "pagerduty.from: `{from}` must be the email of a PagerDuty user (REST writes are made as that user)"
                ));
            }
        }
        if self.limits.ingest_per_second == 0 || self.limits.ingest_burst == 0 {
            return Err(
                "limits: ingest_per_second and ingest_burst must be at least 1".to_string(),
            );
        }
        if self.limits.max_body_bytes < 1024 {
            return Err("limits.max_body_bytes must be at least 1024".to_string());
        }
        for (key, d) in [
            ("header_read_timeout", self.limits.header_read_timeout),
            ("body_read_timeout", self.limits.body_read_timeout),
        ] {
            if d.is_zero() {
                return Err(format!("limits.{key} must be longer than 0s"));
            }
        }
        if self.limits.max_connections == 0 {
            return Err("limits.max_connections must be at least 1".to_string());
        }
        if self.limits.max_open_breaches_per_rule == 0 {
            return Err("limits.max_open_breaches_per_rule must be at least 1".to_string());
        }
        if let Some(c) = &self.cluster {
            c.validate()?;
        }
        let mut seen = self.api_tokens();
        for (key, t) in self.people_tokens() {
            if let Some((other, _)) = seen.iter().find(|(_, s)| *s == t) {
                return Err(format!(
                    "{key} is the same as {other}: every token must be its own"
                ));
            }
            seen.push((key, t));
        }
        Ok(())
    }

    /// The `tokens.*` that are set, by key.
    fn api_tokens(&self) -> Vec<(String, &Secret)> {
        let t = &self.tokens;
        set_by_key([
            ("tokens.ingest", &t.ingest),
            ("tokens.releases", &t.releases),
            ("tokens.read", &t.read),
            ("tokens.admin", &t.admin),
        ])
    }

    /// The `people[].token` that are set, by key.
    fn people_tokens(&self) -> Vec<(String, &Secret)> {
        self.people
            .iter()
            .filter_map(|p| Some((format!("people[{}].token", p.id), p.token.as_ref()?)))
            .collect()
    }

    /// What is allowed but unwise, said once at start.
    pub fn warnings(&self) -> Vec<String> {
        let t = &self.tokens;
        let mut out = Vec::new();
        match (&t.ingest, &t.releases) {
            (Some(_), None) => out.push(
                "tokens.releases is not set: the ingest token (held by every alert sender) also records releases, and a release picks the rollback target; set tokens.releases".to_string(),
            ),
            (Some(i), Some(r)) if i == r => out.push(
                "tokens.releases is the same as tokens.ingest: every alert sender can record releases, and a release picks the rollback target".to_string(),
            ),
            _ => {}
        }
        let webhook_secrets = set_by_key([
            ("github.webhook_secret", &self.github.webhook_secret),
            ("gitlab.webhook_token", &self.gitlab.webhook_token),
            ("flux.webhook_secret", &self.flux.webhook_secret),
        ]);
        out.extend(
            self.api_tokens()
                .into_iter()
                .chain(self.people_tokens())
                .chain(webhook_secrets)
                .filter_map(|(key, s)| too_short(&key, s)),
        );
        if let Some(k) = self
            .pagerduty
            .as_ref()
            .and_then(|pd| pd.routing_key.as_ref())
            && k.expose().len() != 32
        {
            out.push("pagerduty.routing_key is not 32 characters long, as the integration key of an Events API v2 integration is: PagerDuty will refuse the events".to_string());
        }
        out
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, String> {
        self.listen
            .parse()
            .map_err(|e| format!("listen: `{}` is not an address:port ({e})", self.listen))
    }

    pub fn person(&self, id: &str) -> Option<&Person> {
        self.people.iter().find(|p| p.id == id)
    }

    pub fn rules_context(&self) -> crate::rules::Context {
        crate::rules::Context {
            people: Some(
                self.people
                    .iter()
                    .map(|p| (p.id.clone(), p.roles.iter().cloned().collect()))
                    .collect(),
            ),
            notifiers: self.notifiers.keys().cloned().collect(),
        }
    }
}

/// A typed-parse error of the resolved tree, said without the resolved values: the key's path
/// and, where the value came from a reference, the reference instead of what it resolved to.
fn explain(e: &serde_path_to_error::Error<serde_json::Error>, raw: &serde_json::Value) -> String {
    let path = e.path().to_string();
    let at = |m: &dyn fmt::Display| {
        if path == "." {
            m.to_string()
        } else {
            format!("{path}: {m}")
        }
    };
    let mut refs = Vec::new();
    references_in(subtree(raw, e.path()), &mut refs);
    if refs.is_empty() {
        return at(e.inner());
    }
    // The same parse over the unresolved text fails at the same key with the reference quoted
    // where the value would have been; when it does not (the reference itself would parse), the
    // message names the reference only.
    match serde_path_to_error::deserialize::<_, Config>(raw.clone()) {
        Err(r) if r.path().to_string() == path => at(r.inner()),
        _ => at(&format!(
            "the value of {} is not valid here (the value is not shown)",
            refs.join(", ")
        )),
    }
}

/// The part of `v` at `path`, or the deepest part of it the path still leads to.
fn subtree<'a>(
    v: &'a serde_json::Value,
    path: &serde_path_to_error::Path,
) -> &'a serde_json::Value {
    use serde_path_to_error::Segment;
    let mut here = v;
    for seg in path.iter() {
        let next = match seg {
            Segment::Seq { index } => here.get(*index),
            Segment::Map { key } => here.get(key.as_str()),
            Segment::Enum { variant } => here.get(variant.as_str()),
            Segment::Unknown => None,
        };
        match next {
            Some(n) => here = n,
            None => break,
        }
    }
    here
}

/// Every `${..}` reference written in the strings of `v`.
fn references_in(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) => {
            let mut rest = s.as_str();
            while let Some(start) = rest.find("${") {
                let Some(end) = rest[start..].find('}') else {
                    break;
                };
                out.push(rest[start..start + end + 1].to_string());
                rest = &rest[start + end + 1..];
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|i| references_in(i, out)),
        serde_json::Value::Object(map) => map.values().for_each(|i| references_in(i, out)),
        _ => {}
    }
}

/// The shortest resolved value `conceal` hides: shorter ones are no secret worth the name, and
/// replacing every occurrence of a letter or two would garble the message.
const CONCEAL_MIN: usize = 4;

/// `message` with every resolved value (as written, and as Rust's `{:?}` escapes it inside
/// quotes) replaced by the reference it came from.
pub fn conceal(mut message: String, resolved: &[(String, String)]) -> String {
    let mut pairs: Vec<&(String, String)> = resolved
        .iter()
        .filter(|(_, v)| v.chars().count() >= CONCEAL_MIN)
        .collect();
    pairs.sort_by_key(|(_, v)| std::cmp::Reverse(v.len()));
    for (reference, value) in pairs {
        let escaped = format!("{value:?}");
        let escaped = &escaped[1..escaped.len() - 1];
        message = message.replace(value.as_str(), reference);
        if escaped != value {
            message = message.replace(escaped, reference);
        }
    }
    message
}

/// Resolves the references in every string of `v`, noting each (reference, value) in `resolved`.
fn resolve_tree(
    v: &mut serde_json::Value,
    path: &str,
    resolved: &mut Vec<(String, String)>,
) -> Result<(), String> {
    match v {
        serde_json::Value::String(s) => {
            *s = resolve_noting(s, resolved)
                .map_err(|e| format!("{}: {e}", path.trim_start_matches('.')))?;
        }
        serde_json::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                resolve_tree(item, &format!("{path}[{i}]"), resolved)?;
            }
        }
        serde_json::Value::Object(map) => {
            for (k, item) in map.iter_mut() {
                resolve_tree(item, &format!("{path}.{k}"), resolved)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Replaces every `${env:NAME}` and `${file:PATH}` in `s`. A missing variable or unreadable file is
/// an error naming it (never its value). File contents lose one trailing newline.
pub fn resolve_refs(s: &str) -> Result<String, String> {
    resolve_noting(s, &mut Vec::new())
}

/// [`resolve_refs`], noting each (reference, value) it expanded in `resolved`, so whatever the
/// value reaches can be [`conceal`]ed before it is kept.
pub fn resolve_noting(s: &str, resolved: &mut Vec<(String, String)>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| "`${` without a closing `}`".to_string())?;
        let reference = &after[..end];
        let value = if let Some(name) = reference.strip_prefix("env:") {
            std::env::var(name).map_err(|_| format!("environment variable `{name}` is not set"))?
        } else if let Some(file) = reference.strip_prefix("file:") {
            let text = std::fs::read_to_string(file)
                .map_err(|e| format!("cannot read secret file `{file}`: {e}"))?;
            text.strip_suffix('\n').unwrap_or(&text).to_string()
        } else {
            return Err(format!(
                "`${{{reference}}}` is not a reference; write ${{env:NAME}} or ${{file:PATH}}"
            ));
        };
        out.push_str(&value);
        resolved.push((format!("${{{reference}}}"), value));
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_embedded_defaults() {
        let c = Config::parse("", "t").unwrap();
        assert_eq!(c.listen, "127.0.0.1:9750");
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        assert_eq!(c.rules_dir, PathBuf::from("./rules"));
        assert!(c.tokens.ingest.is_none());
    }

    #[test]
    fn file_references_resolve_and_never_show_in_debug() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tok");
        std::fs::write(&f, "s3cr3t-token-0123456789\n").unwrap();
        let c = Config::parse(
            &format!("tokens: {{ ingest: \"${{file:{}}}\" }}", f.display()),
            "t",
        )
        .unwrap();
        assert_eq!(
            c.tokens.ingest.as_ref().unwrap().expose(),
            "s3cr3t-token-0123456789"
        );
        assert!(!format!("{c:?}").contains("s3cr3t"));
    }

    #[test]
    fn missing_env_is_named() {
        let e = Config::parse(
            "tokens: { admin: \"${env:ROLLBACKD_TEST_SURELY_UNSET}\" }",
            "t",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("tokens.admin"), "{e}");
        assert!(e.contains("ROLLBACKD_TEST_SURELY_UNSET"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        for (yaml, want) in [
            ("listen: nowhere", "listen"),
            ("lisen: 1.2.3.4:5", "unknown field"),
            ("people: [{id: a}, {id: a}]", "twice"),
            ("notifiers: {x: {slack_webhook: nope}}", "notifiers.x"),
            ("notifiers: {x: {email: a@b}}", "slack_webhook"),
            ("notifiers: {x: {}}", "slack_webhook"),
            ("pagerduty: {workflows: {aprove: P1}}", "aprove"),
            ("pagerduty: {from: Rollback Bot}", "pagerduty.from"),
            (
                "github: {services: {\"acme/web\": \"web app\"}}",
                "github.services",
            ),
            (
                "flux: {services: {\"HelmRelease/a/b\": \"--force\"}}",
                "flux.services",
            ),
            ("gitlab: {services: {\"a/b\": \"\"}}", "gitlab.services"),
            ("github: {secret: x}", "unknown field"),
            ("rules: [", "t:1:"),
            ("x: \"${vault:a}\"", "not a reference"),
        ] {
            let e = Config::parse(yaml, "t").unwrap_err().to_string();
            assert!(e.contains(want), "{yaml}: {e}");
        }
    }

    /// A secret reference that resolves to the example Secret's placeholder stops the start,
    /// naming the reference.
    #[test]
    fn the_example_placeholder_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("admin");
        std::fs::write(&f, "CHANGE-ME\n").unwrap();
        let yaml = format!("tokens: {{admin: \"${{file:{}}}\"}}", f.display());
        let e = Config::parse(&yaml, "t").unwrap_err().to_string();
        assert!(e.contains("placeholder") && e.contains("${file:"), "{e}");
    }

    /// Short tokens and secrets, and a routing key of another length, are allowed and said.
    #[test]
    fn weak_secrets_are_warnings_naming_the_key() {
        for (yaml, want) in [
            ("tokens: {read: short}", "tokens.read is shorter than 16"),
            (
                "github: {webhook_secret: short}",
                "github.webhook_secret is shorter",
            ),
            (
                "gitlab: {webhook_token: short}",
                "gitlab.webhook_token is shorter",
            ),
            (
                "flux: {webhook_secret: short}",
                "flux.webhook_secret is shorter",
            ),
            (
                "people: [{id: ada, token: short}]",
                "people[ada].token is shorter",
            ),
            ("pagerduty: {routing_key: short}", "pagerduty.routing_key"),
        ] {
            let c = Config::parse(yaml, "t").unwrap_or_else(|e| panic!("{yaml}: {e}"));
            let w = c.warnings();
            assert!(w.iter().any(|w| w.contains(want)), "{yaml}: {w:?}");
            assert!(
                !w.iter()
                    .any(|w| w.contains("short\"") || w.ends_with("short")),
                "{w:?}"
            );
        }
        let long = Config::parse(
            "tokens: {read: aaaaaaaaaaaaaaaaaaaa, ingest: bbbbbbbbbbbbbbbbbbbb, releases: cccccccccccccccccccc}",
            "t",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(long.warnings().is_empty(), "{:?}", long.warnings());
    }

    #[test]
    fn a_type_error_names_the_key_and_reference_never_the_value() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("secret");
        std::fs::write(&f, "s3cr3t-\"value\"-123\n").unwrap();
        let r = format!("${{file:{}}}", f.display());
        for (yaml, key) in [
            (
                format!("pagerduty: {{ webhook_secrets: \"{r}\" }}"),
                "pagerduty.webhook_secrets",
            ),
            (
                format!("limits: {{ ingest_burst: \"{r}\" }}"),
                "limits.ingest_burst",
            ),
            (
                format!("limits: {{ header_read_timeout: \"x{r}\" }}"),
                "limits.header_read_timeout",
            ),
            (format!("pagerduty: {{ from: \"{r}\" }}"), "pagerduty.from"),
            (
                format!("people: [{{ id: a, roles: \"{r}\" }}]"),
                "people[0].roles",
            ),
        ] {
            let e = Config::parse(&yaml, "t").unwrap_err().to_string();
            eprintln!("{e}");
            assert!(e.contains(key), "{yaml}: {e}");
            assert!(e.contains(&r), "{yaml}: {e}");
            assert!(!e.contains("s3cr3t"), "{yaml}: {e}");
        }
    }

    #[test]
    fn limits_take_durations() {
        let c = Config::parse(
            "limits: { header_read_timeout: 2s, body_read_timeout: 1m, max_connections: 3 }",
            "t",
        )
        .unwrap();
        assert_eq!(c.limits.header_read_timeout, Duration::from_secs(2));
        assert_eq!(c.limits.body_read_timeout, Duration::from_secs(60));
        assert_eq!(c.limits.max_connections, 3);
        for (yaml, want) in [
            (
                "limits: { header_read_timeout: 10 }",
                "limits.header_read_timeout",
            ),
            (
                "limits: { body_read_timeout: soon }",
                "limits.body_read_timeout",
            ),
            ("limits: { body_read_timeout: 0s }", "longer than 0s"),
            ("limits: { max_connections: 0 }", "max_connections"),
        ] {
            let e = Config::parse(yaml, "t").unwrap_err().to_string();
            assert!(e.contains(want), "{yaml}: {e}");
        }
    }
}
