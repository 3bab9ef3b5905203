//! `rollbackd replay`: the files in, the table or JSON lines out, `--expect` diff.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use super::*;
use crate::rules::{self, Severity};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
}

/// `rollbackd replay`: what would have happened, and when.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Rules directory (checked as `serve` checks it; errors exit 64).
    #[arg(long)]
    pub rules: PathBuf,
    /// Recorded inputs: JSON lines `{"at", "source", "body"}` (what `record_inputs: true` writes),
    /// or a Prometheus ALERTS range-query export (/api/v1/query_range JSON). May be given more
    /// than once (e.g. an export in pieces): all files are merged in time order.
    #[arg(long, required = true)]
    pub events: Vec<PathBuf>,
    /// Releases: JSON lines, input-log lines or bare `/v1/releases` bodies with `deployed_at`.
    #[arg(long)]
    pub releases: Option<PathBuf>,
    /// Config for people (approvals) and PagerDuty workflow ids; secret references are not
    /// resolved (replay needs no secret).
    #[arg(long, env = "ROLLBACKD_CONFIG")]
    pub config: Option<PathBuf>,
    /// `table` for people, `json` for tools (one decision per line; the summary goes to stderr).
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Run the clock to this RFC 3339 time (default: the last input's); later inputs are skipped.
    #[arg(long)]
    pub until: Option<String>,
    /// Expected decisions (JSON lines, compared on at, kind, rule, group, service); exit 1 and
    /// print the difference when the replay differs.
    #[arg(long)]
    pub expect: Option<PathBuf>,
    /// Prometheus exports: the query step (default: the smallest gap between two samples).
    #[arg(long)]
    pub step: Option<String>,
    /// Decide as `serve --dry-run` does: every incident is recorded as suppressed, nothing runs.
    #[arg(long)]
    pub dry_run: bool,
}

pub const EXIT_DIFFERS: u8 = 1;
pub const EXIT_BAD_INPUT: u8 = 64;

/// Secret references replaced for replay: long enough for a token, a URL for a notifier.
const SECRET_STANDIN: &str = "https://replay.invalid/secret";

fn load_config(path: &Path) -> Result<Config, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let re = regex::Regex::new(r"\$\{(env|file):[^}]*\}").map_err(|e| e.to_string())?;
    let text = re.replace_all(&text, SECRET_STANDIN);
    Config::parse(&text, &path.display().to_string()).map_err(|e| e.to_string())
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))
}

/// Runs `rollbackd replay`; returns the exit code (0 ok, 1 differs from `--expect`, 64 bad input).
pub fn command(args: Args) -> u8 {
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rollbackd replay: {e}");
            EXIT_BAD_INPUT
        }
    }
}

fn run(args: Args) -> Result<u8, String> {
    let cfg = match &args.config {
        Some(p) => load_config(p)?,
        None => Config::default(),
    };
    let mut ctx = cfg.rules_context();
    if args.config.is_none() {
        ctx.people = None;
    }
    let (set, problems) = rules::load_dir(&args.rules, &ctx);
    for p in &problems {
        eprintln!("{p}");
    }
    let Some(set) = set else {
        let errors = problems
            .iter()
            .filter(|p| p.severity == Severity::Error)
            .count();
        return Err(format!(
            "rules in {} have {errors} error(s)",
            args.rules.display()
        ));
    };
    let until = match &args.until {
        Some(u) => Some(
            u.parse::<Timestamp>()
                .map_err(|e| format!("--until: `{u}` is not an RFC 3339 time ({e})"))?,
        ),
        None => None,
    };
    let mut opts = inputs::Options::from_config(&cfg);
    if let Some(s) = &args.step {
        opts.step = Some(
            humantime::parse_duration(s)
                .map_err(|e| format!("--step: `{s}` is not a duration ({e})"))?,
        );
    }
    let expected = match &args.expect {
        Some(p) => {
            Some(read_expect(&read(p)?, &p.display().to_string()).map_err(|e| e.to_string())?)
        }
        None => None,
    };
    let mut events = Vec::new();
    for p in &args.events {
        events.extend(
            files::read_events(&read(p)?, &p.display().to_string(), &opts)
                .map_err(|e| e.to_string())?,
        );
    }
    let releases = match &args.releases {
        Some(p) => {
            files::read_releases(&read(p)?, &p.display().to_string()).map_err(|e| e.to_string())?
        }
        None => Vec::new(),
    };
    let all = files::sorted(releases, events);

    let total = all.len();
    let mut progress = Progress::new(total);
    let exact = match exact_for(&all, &set) {
        Ok(true) => {
            eprintln!(
                "rollbackd replay: a daemon's own log under the same rules: ticks and outcomes come from the log"
            );
            true
        }
        Ok(false) => false,
        Err(why) => {
            eprintln!("rollbackd replay: {why}");
            false
        }
    };
    let mut r = Replayer::new(&set, &cfg.people)
        .pagerduty(cfg.pagerduty.is_some())
        .dry_run(args.dry_run)
        .max_open_breaches_per_rule(cfg.limits.max_open_breaches_per_rule)
        .recorded(&all, exact);
    for (n, input) in all.into_iter().enumerate() {
        r.feed_until(input, until);
        progress.tick(n + 1);
    }
    progress.done();
    let report = r.finish(until);

    let mut stdout = std::io::stdout().lock();
    let printed = match args.format {
        Format::Json => {
            let res = stdout.write_all(render_json(&report.decisions).as_bytes());
            eprint!("{}", render_summary(&report.summary));
            res
        }
        Format::Table => stdout
            .write_all(render_table(&report.decisions).as_bytes())
            .and_then(|_| stdout.write_all(b"\n"))
            .and_then(|_| stdout.write_all(render_summary(&report.summary).as_bytes())),
    };
    let _ = printed.and_then(|_| stdout.flush());
    if let (Some(exp), Some(path)) = (expected, &args.expect) {
        if let Some(diff) = compare(&exp, &report.decisions, &path.display().to_string()) {
            eprint!("{diff}");
            return Ok(EXIT_DIFFERS);
        }
        eprintln!(
            "replay matches {} ({} decision(s))",
            path.display(),
            exp.len()
        );
    }
    Ok(0)
}

/// A progress bar on stderr for large inputs, only when stderr is a terminal.
struct Progress {
    total: usize,
    on: bool,
    shown: usize,
}

impl Progress {
    fn new(total: usize) -> Progress {
        Progress {
            total,
            on: total >= 20_000 && std::io::stderr().is_terminal(),
            shown: usize::MAX,
        }
    }

    fn tick(&mut self, n: usize) {
        if !self.on {
            return;
        }
        let pct = n * 100 / self.total.max(1);
        if pct == self.shown {
            return;
        }
        self.shown = pct;
        let filled = pct * 30 / 100;
        eprint!(
            "\rreplaying [{}{}] {pct:>3}% {n}/{} inputs",
            "#".repeat(filled),
            ".".repeat(30 - filled),
            self.total
        );
    }

    fn done(&self) {
        if self.on {
            eprint!("\r\x1b[K");
        }
    }
}
