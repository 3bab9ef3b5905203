//! `rollbackd github-revert`: opens a pull request on GitHub that puts the previous release's tree
//! back, the run step of `rules/presets/github-revert.yaml`. An http step never reads another
//! step's answer, and a revert needs the previous commit's tree, which only a GET tells; so the
//! preset runs the binary itself, with the release values as arguments and the token in its
//! environment.
//!
//! [`Revert::new`] checks the arguments before anything is sent; [`Flow`] is the request sequence,
//! pure (each answer in, the next request or the pull request's URL out); [`run`] sends it with a
//! client that follows no redirect; [`command`] is the subcommand, exit codes included.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::rules::template::value_is_safe;

/// Done: the pull request's URL is on stdout.
pub const EXIT_DONE: u8 = 0;
/// The API refused or could not be reached (what, the HTTP status and GitHub's answer on stderr).
pub const EXIT_REFUSED: u8 = 1;
/// `GITHUB_TOKEN` is not set (or empty); nothing was sent.
pub const EXIT_NO_TOKEN: u8 = 2;
/// Bad arguments (or a bad `GITHUB_API_URL`); nothing was sent.
pub const EXIT_BAD_ARGUMENTS: u8 = 64;

/// Where requests go unless `GITHUB_API_URL` says otherwise.
pub const DEFAULT_API_URL: &str = "https://api.github.com";
/// The REST API version every request asks for.
pub const API_VERSION: &str = "2022-11-28";
/// How long one request may take, answer included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the whole run may take (at most five requests).
pub const RUN_TIMEOUT: Duration = Duration::from_secs(300);
/// The largest answer read; a longer one is a refusal.
const MAX_ANSWER: usize = 1024 * 1024;
/// How much of an answer an error line shows.
const MAX_SHOWN: usize = 2048;

/// The help after the options of `rollbackd github-revert --help`.
pub const AFTER_HELP: &str = "\
Requests (GitHub REST API, in this order; the first unexpected answer stops the run):
  GET   /repos/REPO/git/commits/PREVIOUS   200: the previous commit's tree
  POST  /repos/REPO/git/commits            201: {message, tree, parents: [CURRENT]}, a commit with
                                           the previous tree on top of the bad commit
  POST  /repos/REPO/git/refs               201: {ref: refs/heads/rollbackd/revert-INCIDENT, sha}
        on 422 \"Reference already exists\":
        PATCH /repos/REPO/git/refs/heads/rollbackd/revert-INCIDENT {sha, force: true}, 200
  POST  /repos/REPO/pulls                  201: {title, head, base: BASE, body}, naming the incident
        on 422 \"A pull request already exists\":
        GET /repos/REPO/pulls?head=OWNER:rollbackd/revert-INCIDENT&state=open, 200, the first one
Each request carries Authorization: Bearer $GITHUB_TOKEN, Accept: application/vnd.github+json,
X-GitHub-Api-Version: 2022-11-28 and User-Agent: rollbackd/VERSION. Redirects are not followed;
each request may take 60 s, the whole run 5 min. The pull request's html_url is printed on stdout.
Merged, the pull request undoes exactly what changed from PREVIOUS to CURRENT; git's three-way
merge keeps what BASE got after CURRENT. Nothing is merged here.

Idempotency: the branch name is fixed per incident. A repeat makes another commit with the same
tree and parent, moves the branch to it (force), finds the pull request already open and prints
its URL: one branch, one pull request.

Environment:
  GITHUB_TOKEN    required, and read only from here (never from the command line): a
                  fine-grained token with Contents: write and Pull requests: write on the
                  repository, or a GitHub App installation token
  GITHUB_API_URL  default https://api.github.com; GitHub Enterprise Server: https://HOST/api/v3

Exit status:
  0   done: the pull request's URL is on stdout
  1   the API refused or could not be reached: what was asked, the HTTP status and GitHub's
      answer on stderr (never the token)
  2   GITHUB_TOKEN is not set; nothing was sent
  64  bad arguments or GITHUB_API_URL; nothing was sent

Example (what rules/presets/github-revert.yaml runs):
  GITHUB_TOKEN=... rollbackd github-revert --repo acme/web-deploy --base main \\
      --previous 3f2a1c9e8b7d6a5f4e3d2c1b0a9f8e7d6c5b4a39 \\
      --current 9c8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b --incident inc-000042";

/// The arguments of `rollbackd github-revert`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The repository, OWNER/NAME (each of [A-Za-z0-9._-], not starting with `.`).
    #[arg(long, value_name = "OWNER/NAME")]
    pub repo: String,
    /// The branch the pull request goes into, e.g. main.
    #[arg(long, value_name = "BRANCH")]
    pub base: String,
    /// The good commit: its tree is put back (7 to 64 lowercase hex digits).
    #[arg(long, value_name = "SHA")]
    pub previous: String,
    /// The bad commit: the revert commit's parent (7 to 64 lowercase hex digits).
    #[arg(long, value_name = "SHA")]
    pub current: String,
    /// The rollbackd incident: names the branch (rollbackd/revert-ID), the commit and the pull
    /// request.
    #[arg(long, value_name = "ID")]
    pub incident: String,
}

/// Checked arguments: every value is safe in a URL path and a JSON string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revert {
    repo: String,
    base: String,
    previous: String,
    current: String,
    incident: String,
}

/// `OWNER/NAME`, each part non-empty, of `[A-Za-z0-9._-]` and not starting with `.`.
pub fn repo_is_valid(repo: &str) -> bool {
    let part = |p: &str| {
        !p.is_empty()
            && !p.starts_with('.')
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    };
    match repo.split_once('/') {
        Some((owner, name)) => part(owner) && part(name),
        None => false,
    }
}

/// A git object name: 7 to 64 lowercase hex digits (40 for SHA-1, 64 for SHA-256, abbreviated
/// down to 7).
pub fn sha_is_valid(sha: &str) -> bool {
    (7..=64).contains(&sha.len()) && sha.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl Revert {
    /// The arguments, or what is wrong with the first bad one.
    pub fn new(args: &Args) -> Result<Revert, String> {
        if !repo_is_valid(&args.repo) {
            return Err(format!(
                "refusing repository {:?}: not OWNER/NAME of [A-Za-z0-9._-] (neither starting with `.`)",
                args.repo
            ));
        }
        for (what, v) in [("base branch", &args.base), ("incident", &args.incident)] {
            if v.is_empty() || !value_is_safe(v) {
                return Err(format!(
                    "refusing {what} {v:?}: not a plain token (only [A-Za-z0-9._:/@+=-], not empty, no `..`, no leading `-`)"
                ));
            }
        }
        for sha in [&args.previous, &args.current] {
            if !sha_is_valid(sha) {
                return Err(format!(
                    "refusing commit {sha}: not a commit sha (7 to 64 lowercase hex digits)"
                ));
            }
        }
        Ok(Revert {
            repo: args.repo.clone(),
            base: args.base.clone(),
            previous: args.previous.clone(),
            current: args.current.clone(),
            incident: args.incident.clone(),
        })
    }

    /// `rollbackd/revert-<incident>`: one branch per incident.
    pub fn branch(&self) -> String {
        format!("rollbackd/revert-{}", self.incident)
    }

    fn owner(&self) -> &str {
        self.repo.split('/').next().unwrap_or_default()
    }

    fn path(&self, rest: &str) -> String {
        format!("/repos/{}{rest}", self.repo)
    }

    /// The revert commit's message, naming the incident.
    pub fn commit_message(&self) -> String {
        format!(
            "Revert to {previous} ({incident})\n\nrollbackd incident {incident} rolled back {current}: this commit has the tree of {previous}.",
            previous = self.previous,
            current = self.current,
            incident = self.incident,
        )
    }

    /// The pull request's title, naming the incident.
    pub fn title(&self) -> String {
        format!("Revert to {} ({})", self.previous, self.incident)
    }

    /// The pull request's body, naming the incident.
    pub fn pull_body(&self) -> String {
        format!(
            "rollbackd incident {}: the release at {} breached its SLO and was rolled back. This pull request puts the tree of {} back on {}. Merge it before lifting the freeze.",
            self.incident, self.current, self.previous, self.base
        )
    }
}

/// One request to the API: the path below the API URL (query included) and the JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub method: Method,
    pub path: String,
    pub body: Option<Value>,
}

/// What the API answered: the status and the body as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }

    /// The answer for an error line: trimmed, at most [`MAX_SHOWN`] bytes.
    fn shown(&self) -> String {
        crate::steps::truncate(self.text.trim(), MAX_SHOWN)
    }
}

/// After an answer: the next request, or the pull request's `html_url`.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    Send(Request),
    Done(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Stage {
    ReadCommit,
    CreateCommit,
    CreateRef { commit: String },
    MoveRef,
    OpenPull,
    FindPull,
    Finished,
}

/// The request sequence of one revert, answer by answer. No stage is visited twice, so a run
/// makes at most five requests.
#[derive(Debug, Clone)]
pub struct Flow {
    revert: Revert,
    stage: Stage,
}

/// Whether a JSON text contains `already exists` (how GitHub words both 422s it is asked again
/// after).
fn says_already_exists(v: &Value) -> bool {
    v.as_str().is_some_and(|m| m.contains("already exists"))
}

impl Flow {
    pub fn new(revert: Revert) -> Flow {
        Flow {
            revert,
            stage: Stage::ReadCommit,
        }
    }

    /// The first request: the previous commit.
    pub fn first(&self) -> Request {
        Request {
            method: Method::GET,
            path: self
                .revert
                .path(&format!("/git/commits/{}", self.revert.previous)),
            body: None,
        }
    }

    /// Takes the answer to the last request; `Err` says what was refused and how.
    pub fn answer(&mut self, a: &Answer) -> Result<Next, String> {
        let r = &self.revert;
        let branch = r.branch();
        let refused = |what: &str| format!("{what}: HTTP {}: {}", a.status, a.shown());
        let field = |what: &str, name: &str| {
            format!(
                "{what}: HTTP {}: the answer has no {name}: {}",
                a.status,
                a.shown()
            )
        };
        let v = a.json();
        let (stage, next) = match &self.stage {
            Stage::ReadCommit => {
                let what = format!("reading commit {}", r.previous);
                if a.status != 200 {
                    return Err(refused(&what));
                }
                let tree = match v["tree"]["sha"].as_str() {
                    Some(t) if !t.is_empty() => t,
                    _ => return Err(field(&what, "tree.sha")),
                };
                // The parent is the bad commit and the tree the good one's.
                let body = json!({
                    "message": r.commit_message(),
                    "tree": tree,
                    "parents": [r.current],
                });
                (Stage::CreateCommit, self.post("/git/commits", body))
            }
            Stage::CreateCommit => {
                let what = "creating the revert commit";
                if a.status != 201 {
                    return Err(refused(what));
                }
                let commit = match v["sha"].as_str() {
                    Some(s) if !s.is_empty() => s.to_string(),
                    _ => return Err(field(what, "sha")),
                };
                let body = json!({"ref": format!("refs/heads/{branch}"), "sha": commit});
                (Stage::CreateRef { commit }, self.post("/git/refs", body))
            }
            Stage::CreateRef { commit } => {
                if a.status == 422 && says_already_exists(&v["message"]) {
                    let move_ref = Request {
                        method: Method::PATCH,
                        path: r.path(&format!("/git/refs/heads/{branch}")),
                        body: Some(json!({"sha": commit, "force": true})),
                    };
                    (Stage::MoveRef, Next::Send(move_ref))
                } else if a.status == 201 {
                    (Stage::OpenPull, self.open_pull())
                } else {
                    return Err(refused(&format!("creating branch {branch}")));
                }
            }
            Stage::MoveRef => {
                if a.status != 200 {
                    return Err(refused(&format!("moving branch {branch}")));
                }
                (Stage::OpenPull, self.open_pull())
            }
            Stage::OpenPull => {
                let exists = a.status == 422
                    && v["errors"]
                        .as_array()
                        .is_some_and(|e| e.iter().any(|e| says_already_exists(&e["message"])));
                if exists {
                    let find = Request {
                        method: Method::GET,
                        path: r.path(&format!(
                            "/pulls?head={}&state=open",
                            query_value(&format!("{}:{branch}", r.owner()))
                        )),
                        body: None,
                    };
                    (Stage::FindPull, Next::Send(find))
                } else {
                    let what = "opening the pull request";
                    if a.status != 201 {
                        return Err(refused(what));
                    }
                    match v["html_url"].as_str() {
                        Some(u) if !u.is_empty() => (Stage::Finished, Next::Done(u.to_string())),
                        _ => return Err(field(what, "html_url")),
                    }
                }
            }
            Stage::FindPull => {
                let what = format!("finding the open pull request for {branch}");
                if a.status != 200 {
                    return Err(refused(&what));
                }
                let Some(open) = v.as_array() else {
                    return Err(field(&what, "list of pull requests"));
                };
                let Some(first) = open.first() else {
                    return Err(format!("no open pull request for {branch}"));
                };
                match first["html_url"].as_str() {
                    Some(u) if !u.is_empty() => (Stage::Finished, Next::Done(u.to_string())),
                    _ => return Err(field(&what, "html_url")),
                }
            }
            Stage::Finished => return Err("the revert is already done".to_string()),
        };
        self.stage = stage;
        Ok(next)
    }

    fn post(&self, rest: &str, body: Value) -> Next {
        Next::Send(Request {
            method: Method::POST,
            path: self.revert.path(rest),
            body: Some(body),
        })
    }

    fn open_pull(&self) -> Next {
        let r = &self.revert;
        self.post(
            "/pulls",
            json!({
                "title": r.title(),
                "head": r.branch(),
                "base": r.base,
                "body": r.pull_body(),
            }),
        )
    }
}

/// A query value of checked characters: `+` and `=` (which a query would read as a space and a
/// separator) percent-encoded, `:` and `/` kept as GitHub documents `head=OWNER:BRANCH`.
fn query_value(v: &str) -> String {
    v.replace('+', "%2B").replace('=', "%3D")
}

/// The API URL: `GITHUB_API_URL` when set and not empty, else [`DEFAULT_API_URL`]; an http(s) URL
/// without credentials, query or fragment, returned without a trailing `/`.
pub fn api_url(setting: Option<&str>) -> Result<String, String> {
    let raw = match setting {
        Some(s) if !s.is_empty() => s,
        _ => return Ok(DEFAULT_API_URL.to_string()),
    };
    let bad = |why: &str| format!("refusing GITHUB_API_URL {raw:?}: {why}");
    let url = url::Url::parse(raw).map_err(|e| bad(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("not an http or https URL"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("credentials go in GITHUB_TOKEN, not in the URL"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("a query or fragment has no place in it"));
    }
    Ok(raw.trim_end_matches('/').to_string())
}

/// `e` with the chain of its causes, which is where reqwest says what went wrong.
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Sends one request with GitHub's headers and reads the answer (at most [`MAX_ANSWER`] bytes).
async fn send(
    client: &reqwest::Client,
    api: &str,
    token: &str,
    r: &Request,
) -> Result<Answer, String> {
    let url = format!("{api}{}", r.path);
    let no_answer = |e: reqwest::Error| {
        format!(
            "{} {url}: no answer ({})",
            r.method,
            causes(&e.without_url())
        )
    };
    let mut req = client
        .request(r.method.clone(), &url)
        .timeout(REQUEST_TIMEOUT)
        .bearer_auth(token)
        .header(reqwest::header::ACCEPT, "application/vnd.github+json")
        .header("X-GitHub-Api-Version", API_VERSION);
    if let Some(body) = &r.body {
        req = req.json(body);
    }
    let mut resp = req.send().await.map_err(no_answer)?;
    let status = resp.status().as_u16();
    let mut bytes = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(no_answer)? {
        if bytes.len() + chunk.len() > MAX_ANSWER {
            return Err(format!(
                "{} {url}: HTTP {status}: an answer of more than {MAX_ANSWER} bytes",
                r.method
            ));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(Answer {
        status,
        text: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

/// Runs the whole revert against the API at `api` (no trailing `/`); the pull request's URL, or
/// what was refused. `client` must not follow redirects ([`crate::steps::http_client`]).
pub async fn run(
    client: &reqwest::Client,
    api: &str,
    token: &str,
    revert: Revert,
) -> Result<String, String> {
    let mut flow = Flow::new(revert);
    let mut request = flow.first();
    loop {
        let answer = send(client, api, token, &request).await?;
        match flow.answer(&answer)? {
            Next::Send(next) => request = next,
            Next::Done(url) => return Ok(url),
        }
    }
}

/// A token that can go into a header: visible ASCII only.
fn token_is_usable(token: &str) -> bool {
    token.bytes().all(|b| b.is_ascii_graphic())
}

/// `rollbackd github-revert`: checks everything, then runs; the exit code.
pub fn command(args: Args) -> u8 {
    let say = |line: &str| eprintln!("rollbackd github-revert: {line}");
    let revert = match Revert::new(&args) {
        Ok(r) => r,
        Err(e) => {
            say(&e);
            return EXIT_BAD_ARGUMENTS;
        }
    };
    let api = match api_url(std::env::var("GITHUB_API_URL").ok().as_deref()) {
        Ok(a) => a,
        Err(e) => {
            say(&e);
            return EXIT_BAD_ARGUMENTS;
        }
    };
    let token = match std::env::var("GITHUB_TOKEN") {
        Ok(t) if !t.is_empty() => t,
        Err(std::env::VarError::NotUnicode(_)) => {
            say("refusing GITHUB_TOKEN: it is not UTF-8");
            return EXIT_REFUSED;
        }
        _ => {
            say("GITHUB_TOKEN is not set");
            return EXIT_NO_TOKEN;
        }
    };
    if !token_is_usable(&token) {
        say("refusing GITHUB_TOKEN: it has characters a header cannot hold");
        return EXIT_REFUSED;
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            say(&format!("cannot start the runtime: {e}"));
            return EXIT_REFUSED;
        }
    };
    let client = crate::steps::http_client();
    let outcome = rt.block_on(async {
        tokio::time::timeout(RUN_TIMEOUT, run(&client, &api, &token, revert))
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "gave up after {}",
                    humantime::format_duration(RUN_TIMEOUT)
                ))
            })
    });
    match outcome {
        Ok(url) => {
            println!("{url}");
            EXIT_DONE
        }
        Err(e) => {
            say(&e.replace(&token, "${env:GITHUB_TOKEN}"));
            EXIT_REFUSED
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREVIOUS: &str = "3f2a1c9e8b7d6a5f4e3d2c1b0a9f8e7d6c5b4a39";
    const CURRENT: &str = "9c8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b";
    const TREE: &str = "1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e";
    const COMMIT: &str = "0000000000000000000000000000000000c0ffee";

    fn args() -> Args {
        Args {
            repo: "acme/web-deploy".into(),
            base: "main".into(),
            previous: PREVIOUS.into(),
            current: CURRENT.into(),
            incident: "inc-000042".into(),
        }
    }

    fn flow() -> Flow {
        Flow::new(Revert::new(&args()).expect("valid"))
    }

    fn answer(status: u16, body: Value) -> Answer {
        Answer {
            status,
            text: body.to_string(),
        }
    }

    fn sent(next: Result<Next, String>) -> Request {
        match next {
            Ok(Next::Send(r)) => r,
            other => panic!("expected a request, got {other:?}"),
        }
    }

    /// The flow up to the branch request, with the commit created.
    fn at_create_ref() -> (Flow, Request) {
        let mut f = flow();
        sent(f.answer(&answer(
            200,
            json!({"sha": PREVIOUS, "tree": {"sha": TREE}}),
        )));
        let r = sent(f.answer(&answer(201, json!({"sha": COMMIT}))));
        (f, r)
    }

    fn at_open_pull() -> (Flow, Request) {
        let (mut f, _) = at_create_ref();
        let r = sent(f.answer(&answer(201, json!({"ref": "refs/heads/x"}))));
        (f, r)
    }

    #[test]
    fn repositories_are_owner_slash_name() {
        for ok in ["acme/web-deploy", "a.b/c_d-1", "A1/x.y", "o/n"] {
            assert!(repo_is_valid(ok), "{ok}");
        }
        for bad in [
            "",
            "acme",
            "acme/",
            "/web",
            "acme/web/x",
            ".acme/web",
            "acme/.web",
            "acme/..",
            "ac me/web",
            "acme/web?x=1",
            "acme/web#x",
            "acme/wéb",
            "acme\\web",
        ] {
            assert!(!repo_is_valid(bad), "{bad}");
        }
    }

    #[test]
    fn shas_are_7_to_64_lowercase_hex_digits() {
        for ok in [PREVIOUS, "abcdef0", &"a".repeat(64)] {
            assert!(sha_is_valid(ok), "{ok}");
        }
        for bad in [
            "",
            "abcdef",
            &"a".repeat(65),
            "main",
            "3F2A1C9E8B7D6A5F4E3D2C1B0A9F8E7D6C5B4A39",
            "3f2a1c9e8b7d6a5f4e3d2c1b0a9f8e7d6c5b4a3g",
            "abcdef0 ",
            "-abcdef0",
        ] {
            assert!(!sha_is_valid(bad), "{bad}");
        }
    }

    #[test]
    fn each_bad_argument_is_refused_by_name() {
        assert!(Revert::new(&args()).is_ok());
        type Change = fn(&mut Args);
        let cases: [(Change, &str); 9] = [
            (|a| a.repo = "acme".into(), "refusing repository"),
            (|a| a.repo = "acme/web/x".into(), "refusing repository"),
            (|a| a.base = String::new(), "refusing base branch"),
            (|a| a.base = "-f".into(), "refusing base branch"),
            (|a| a.base = "../main".into(), "refusing base branch"),
            (|a| a.incident = "inc 1".into(), "refusing incident"),
            (|a| a.incident = "inc\"1".into(), "refusing incident"),
            (|a| a.previous = "main".into(), "refusing commit main"),
            (|a| a.current = "HEAD~1".into(), "refusing commit HEAD~1"),
        ];
        for (change, says) in cases {
            let mut a = args();
            change(&mut a);
            let e = Revert::new(&a).expect_err("refused");
            assert!(e.contains(says), "{says:?} not in {e}");
        }
        let mut a = args();
        a.base = "release/2024.06".into();
        a.incident = "inc:42@web+1=x".into();
        assert!(Revert::new(&a).is_ok());
    }

    #[test]
    fn a_first_run_makes_four_requests_and_ends_with_the_pull_request_url() {
        let mut f = flow();
        assert_eq!(
            f.first(),
            Request {
                method: Method::GET,
                path: format!("/repos/acme/web-deploy/git/commits/{PREVIOUS}"),
                body: None,
            }
        );
        let post = |path: &str, body: Value| Request {
            method: Method::POST,
            path: format!("/repos/acme/web-deploy{path}"),
            body: Some(body),
        };
        let commit = sent(f.answer(&answer(
            200,
            json!({"sha": PREVIOUS, "tree": {"sha": TREE}, "parents": []}),
        )));
        assert_eq!(
            commit,
            post(
                "/git/commits",
                json!({
                    "message": format!("Revert to {PREVIOUS} (inc-000042)\n\nrollbackd incident inc-000042 rolled back {CURRENT}: this commit has the tree of {PREVIOUS}."),
                    "tree": TREE,
                    "parents": [CURRENT],
                })
            )
        );
        let branch = sent(f.answer(&answer(201, json!({"sha": COMMIT, "tree": {"sha": TREE}}))));
        assert_eq!(
            branch,
            post(
                "/git/refs",
                json!({"ref": "refs/heads/rollbackd/revert-inc-000042", "sha": COMMIT})
            )
        );
        let pull = sent(f.answer(&answer(
            201,
            json!({"ref": "refs/heads/rollbackd/revert-inc-000042"}),
        )));
        assert_eq!(
            pull,
            post(
                "/pulls",
                json!({
                    "title": format!("Revert to {PREVIOUS} (inc-000042)"),
                    "head": "rollbackd/revert-inc-000042",
                    "base": "main",
                    "body": format!("rollbackd incident inc-000042: the release at {CURRENT} breached its SLO and was rolled back. This pull request puts the tree of {PREVIOUS} back on main. Merge it before lifting the freeze."),
                })
            )
        );
        assert_eq!(
            f.answer(&answer(
                201,
                json!({"number": 7, "html_url": "https://github.com/acme/web-deploy/pull/7"})
            )),
            Ok(Next::Done(
                "https://github.com/acme/web-deploy/pull/7".into()
            ))
        );
        assert!(
            f.answer(&answer(201, json!({}))).is_err(),
            "nothing after done"
        );
    }

    #[test]
    fn a_branch_that_exists_is_moved_to_the_new_commit() {
        let (mut f, _) = at_create_ref();
        let moved = sent(f.answer(&answer(
            422,
            json!({"message": "Reference already exists", "documentation_url": "https://docs.github.com/rest", "status": "422"}),
        )));
        assert_eq!(moved.method, Method::PATCH);
        assert_eq!(
            moved.path,
            "/repos/acme/web-deploy/git/refs/heads/rollbackd/revert-inc-000042"
        );
        assert_eq!(moved.body, Some(json!({"sha": COMMIT, "force": true})));
        let pull = sent(f.answer(&answer(
            200,
            json!({"ref": "refs/heads/rollbackd/revert-inc-000042"}),
        )));
        assert_eq!(pull.path, "/repos/acme/web-deploy/pulls");

        // The move refused: the status and GitHub's answer.
        let (mut f, _) = at_create_ref();
        sent(f.answer(&answer(422, json!({"message": "Reference already exists"}))));
        let e = f
            .answer(&answer(422, json!({"message": "Reference does not exist"})))
            .expect_err("refused");
        assert!(
            e.starts_with("moving branch rollbackd/revert-inc-000042: HTTP 422: ")
                && e.contains("Reference does not exist"),
            "{e}"
        );
    }

    #[test]
    fn another_422_on_the_branch_is_a_refusal() {
        for body in [
            json!({"message": "Reference name is invalid"}),
            json!({"message": "Object does not exist"}),
            json!({"errors": [{"message": "already exists"}]}),
        ] {
            let (mut f, _) = at_create_ref();
            let e = f.answer(&answer(422, body.clone())).expect_err("refused");
            assert_eq!(
                e,
                format!("creating branch rollbackd/revert-inc-000042: HTTP 422: {body}")
            );
        }
        let (mut f, _) = at_create_ref();
        let e = f
            .answer(&answer(200, json!({"ref": "x"})))
            .expect_err("201 only");
        assert!(e.contains("HTTP 200"), "{e}");
    }

    #[test]
    fn a_pull_request_already_open_is_found_and_reported() {
        let (mut f, _) = at_open_pull();
        let find = sent(f.answer(&answer(
            422,
            json!({"message": "Validation Failed", "errors": [{"resource": "PullRequest", "code": "custom", "message": "A pull request already exists for acme:rollbackd/revert-inc-000042."}], "status": "422"}),
        )));
        assert_eq!(find.method, Method::GET);
        assert_eq!(
            find.path,
            "/repos/acme/web-deploy/pulls?head=acme:rollbackd/revert-inc-000042&state=open"
        );
        assert_eq!(find.body, None);
        assert_eq!(
            f.answer(&answer(
                200,
                json!([{"html_url": "https://github.com/acme/web-deploy/pull/1"}, {"html_url": "https://github.com/acme/web-deploy/pull/2"}])
            )),
            Ok(Next::Done("https://github.com/acme/web-deploy/pull/1".into()))
        );

        // Listed, but none open.
        let (mut f, _) = at_open_pull();
        sent(f.answer(&answer(
            422,
            json!({"errors": [{"message": "A pull request already exists for acme:x."}]}),
        )));
        assert_eq!(
            f.answer(&answer(200, json!([]))),
            Err("no open pull request for rollbackd/revert-inc-000042".into())
        );

        // The list refused.
        let (mut f, _) = at_open_pull();
        sent(f.answer(&answer(
            422,
            json!({"errors": [{"message": "A pull request already exists for acme:x."}]}),
        )));
        let e = f
            .answer(&answer(
                403,
                json!({"message": "Resource not accessible by integration"}),
            ))
            .expect_err("refused");
        assert!(
            e.starts_with(
                "finding the open pull request for rollbackd/revert-inc-000042: HTTP 403: "
            ) && e.contains("Resource not accessible"),
            "{e}"
        );
    }

    #[test]
    fn another_422_on_the_pull_request_is_a_refusal() {
        for body in [
            json!({"message": "Validation Failed", "errors": [{"resource": "PullRequest", "field": "head", "code": "invalid"}]}),
            json!({"message": "Validation Failed", "errors": [{"message": "No commits between main and rollbackd/revert-inc-000042"}]}),
            json!({"message": "Reference already exists"}),
        ] {
            let (mut f, _) = at_open_pull();
            let e = f.answer(&answer(422, body.clone())).expect_err("refused");
            assert_eq!(e, format!("opening the pull request: HTTP 422: {body}"));
        }
    }

    #[test]
    fn refusals_and_answers_without_the_field_name_the_step() {
        let mut f = flow();
        let e = f
            .answer(&answer(404, json!({"message": "Not Found"})))
            .expect_err("refused");
        assert_eq!(
            e,
            format!("reading commit {PREVIOUS}: HTTP 404: {{\"message\":\"Not Found\"}}")
        );
        let mut f = flow();
        let e = f
            .answer(&Answer {
                status: 200,
                text: "<html>".into(),
            })
            .expect_err("no tree");
        assert!(e.contains("the answer has no tree.sha: <html>"), "{e}");
        let mut f = flow();
        sent(f.answer(&answer(200, json!({"tree": {"sha": TREE}}))));
        let e = f
            .answer(&answer(422, json!({"message": "Tree SHA does not exist"})))
            .expect_err("refused");
        assert!(
            e.starts_with("creating the revert commit: HTTP 422: "),
            "{e}"
        );
        let (mut f, _) = at_open_pull();
        let e = f
            .answer(&answer(201, json!({"number": 1})))
            .expect_err("no url");
        assert!(e.contains("no html_url"), "{e}");
        // A redirect is an answer like any other.
        let e = flow()
            .answer(&answer(301, json!({"message": "Moved Permanently"})))
            .expect_err("not followed");
        assert!(e.contains("HTTP 301"), "{e}");
    }

    #[test]
    fn a_long_answer_is_cut_in_the_error() {
        let mut f = flow();
        let text = "é".repeat(MAX_SHOWN);
        let e = f
            .answer(&Answer {
                status: 500,
                text: text.clone(),
            })
            .expect_err("refused");
        assert!(e.len() < MAX_SHOWN + 200, "{}", e.len());
        // "é" is 2 bytes: the first MAX_SHOWN bytes are kept, the other half is cut.
        assert!(
            e.ends_with(&format!("… [{} bytes cut]", text.len() - MAX_SHOWN)),
            "{e}"
        );
    }

    #[test]
    fn the_head_query_keeps_plus_and_equals_as_data() {
        let mut a = args();
        a.incident = "inc+1=2".into();
        let mut f = Flow::new(Revert::new(&a).expect("valid"));
        sent(f.answer(&answer(200, json!({"tree": {"sha": TREE}}))));
        sent(f.answer(&answer(201, json!({"sha": COMMIT}))));
        sent(f.answer(&answer(201, json!({}))));
        let find = sent(f.answer(&answer(
            422,
            json!({"errors": [{"message": "A pull request already exists"}]}),
        )));
        assert_eq!(
            find.path,
            "/repos/acme/web-deploy/pulls?head=acme:rollbackd/revert-inc%2B1%3D2&state=open"
        );
    }

    #[test]
    fn the_api_url_defaults_to_github_and_takes_enterprise_server() {
        assert_eq!(api_url(None), Ok(DEFAULT_API_URL.to_string()));
        assert_eq!(api_url(Some("")), Ok(DEFAULT_API_URL.to_string()));
        assert_eq!(
            api_url(Some("https://ghe.example.com/api/v3/")),
            Ok("https://ghe.example.com/api/v3".to_string())
        );
        assert_eq!(
            api_url(Some("http://127.0.0.1:8080")),
            Ok("http://127.0.0.1:8080".to_string())
        );
        for bad in [
            "ghe.example.com",
            "file:///etc/passwd",
            "https://user:pw@ghe.example.com/api/v3",
            "https://ghe.example.com/api/v3?x=1",
        ] {
            assert!(api_url(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn tokens_are_visible_ascii() {
        assert!(token_is_usable("github_pat_11AAAA_bbbb"));
        assert!(!token_is_usable("ghp_x\r\nX-Injected: 1"));
        assert!(!token_is_usable("ghp x"));
    }
}
