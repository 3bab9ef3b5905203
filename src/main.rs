//! The binary: parse the command line, load and validate, then hand over to the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use rollbackd::config::Config;
use rollbackd::logging::Format;
use rollbackd::rules::{self, Severity};

/// Rolls a bad release back on its own, with a human's yes.
///
/// rollbackd takes alerts (Alertmanager, Grafana, generic signals) and release events from CI.
/// When a rule's breach lasts longer than `breach.sustained` and began after the service's latest
/// release, it opens an incident, asks for approval if the rule wants it, runs the rollback steps
/// (argv commands or HTTP requests, never a shell), verifies, and freezes releases.
#[derive(Parser)]
#[command(version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon. Without --config it uses embedded defaults: listen 127.0.0.1:9750,
    /// data ./data, rules ./rules, no tokens, no external service.
    Serve {
        /// Config file (rollbackd.yaml). Secrets as ${env:NAME} or ${file:PATH}.
        #[arg(long, env = "ROLLBACKD_CONFIG")]
        config: Option<PathBuf>,
        /// Address to listen on (overrides `listen`), e.g. 0.0.0.0:9750; port 0 picks one.
        #[arg(long)]
        listen: Option<String>,
        /// Where state lives (overrides `data_dir`).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Rules directory (overrides `rules_dir`).
        #[arg(long)]
        rules: Option<PathBuf>,
        /// Decide and record everything, run no step (every incident ends `suppressed`); or
        /// `dry_run: true` in the config.
        #[arg(long)]
        dry_run: bool,
        /// Seconds running steps may take to finish after SIGTERM (overrides `shutdown_grace`,
        /// default 30 s).
        #[arg(long)]
        grace_seconds: Option<u64>,
        /// Log lines on stderr: text, or json (one object per line); overrides `log_format`.
        #[arg(long, value_enum)]
        log_format: Option<rollbackd::logging::Format>,
    },
    /// List incidents (newest first).
    Incidents {
        /// Only this state, e.g. awaiting_approval.
        #[arg(long)]
        state: Option<String>,
        #[command(subcommand)]
        action: Option<IncidentAction>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Approve an incident's rollback: with your own people token as yourself, or with the
    /// admin token as --person (break-glass).
    Approve(VoteArgs),
    /// Reject an incident's rollback: with your own people token as yourself, or with the admin
    /// token as --person (break-glass).
    Reject(VoteArgs),
    /// Freeze a service's releases by hand (needs the admin token).
    Freeze(FreezeArgs),
    /// Lift a service's freeze (needs the admin token); the reason goes into the timeline.
    Unfreeze(FreezeArgs),
    /// Check rule files; prints each problem as FILE:LINE:COL: message. Exit 0 clean, 1 problems.
    Lint {
        /// Config to check rules against (people's roles, notifier names). Without it, nobody is
        /// known to hold a role: approvals are checked as far as the rules alone allow.
        #[arg(long, env = "ROLLBACKD_CONFIG")]
        config: Option<PathBuf>,
        /// Rules directory; default: the config's rules_dir, else ./rules.
        rules_dir: Option<PathBuf>,
        /// Also check, on this host, that every secret reference the rules' steps, probes and
        /// hooks use resolves and every run step's program is found; a miss is an error.
        #[arg(long)]
        preflight: bool,
    },
    /// Print the JSON Schema (draft 2020-12) of the config file or of a rule file, for editors
    /// and CI (e.g. a YAML language server's `# yaml-language-server: $schema=...`).
    Schema {
        #[arg(value_enum)]
        of: SchemaOf,
    },
    /// Show or change the members of a rollbackd cluster (config section `cluster:`).
    ///
    /// Any node answers `status` from what it knows; `add` and `remove` go to the leader (a
    /// follower forwards them). Replacing a node whose disk is lost: `remove` its id, wipe its data
    /// directory, start it empty, then `add` the same id and url back; it catches up from a
    /// snapshot before it votes.
    #[command(
        after_long_help = "Examples:\n  rollbackd cluster status --url http://127.0.0.1:9751\n  rollbackd cluster remove 2 --token \"$ADMIN_TOKEN\"\n  rollbackd cluster add 2 http://127.0.0.1:9752 --token \"$ADMIN_TOKEN\""
    )]
    Cluster {
        #[command(subcommand)]
        action: ClusterAction,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Copy every record of a running daemon into FILE (needs the admin token): a consistent
    /// copy, taken between two commits, while the daemon keeps running.
    Backup {
        file: PathBuf,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Write a backup FILE into DATA_DIR, which must hold no records yet; then start
    /// `rollbackd serve` on DATA_DIR. Exit 1 when the file is not a whole backup.
    Restore { file: PathBuf, data_dir: PathBuf },
    /// Backtest: feed recorded inputs through the engine on a virtual clock and print every
    /// decision with its time. Exit 0 ok, 1 differs from --expect, 64 bad input or rules.
    Replay(rollbackd::replay::Args),
    /// Open a GitHub pull request that puts the previous release's tree back (the run step of
    /// rules/presets/github-revert.yaml). Exit 0 done, 1 refused, 2 no GITHUB_TOKEN, 64 bad
    /// arguments.
    ///
    /// Makes a commit with the tree of --previous on top of --current (the bad commit), points
    /// the branch rollbackd/revert-INCIDENT at it and opens a pull request into --base whose
    /// title and body name the incident; prints the pull request's URL. A person merges it.
    /// Arguments are checked before anything is sent; the token comes only from GITHUB_TOKEN.
    #[command(after_long_help = rollbackd::github_revert::AFTER_HELP)]
    GithubRevert(rollbackd::github_revert::Args),
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SchemaOf {
    /// `rollbackd.yaml`
    Config,
    /// a file of `rules_dir`
    Rules,
}

#[derive(clap::Args)]
struct VoteArgs {
    id: String,
    /// The people id whose vote this is: required with the admin token; with a person's own
    /// token it may be left out (and must be that person when given).
    #[arg(long)]
    person: Option<String>,
    #[arg(long)]
    reason: Option<String>,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(clap::Args)]
struct FreezeArgs {
    service: String,
    /// Why, for the timeline (default: that it was done by hand from the command line).
    #[arg(long)]
    reason: Option<String>,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Subcommand)]
enum IncidentAction {
    /// Check an incident's hash-chained timeline; exit 1 when a record was edited or removed.
    Verify { id: String },
    /// Print the change-log record and postmortem draft (Markdown; --json for the JSON form).
    Report { id: String },
}

#[derive(Subcommand)]
enum ClusterAction {
    /// Members, roles, rules digests, the leader and the term (read token).
    ///
    /// As the node at --url sees them: one row per member with its url, role (leader, follower,
    /// candidate, learner, unreachable) and rules digest; the leader is marked *. Exit 1 when the
    /// node knows no leader: writes are then refused with 503 until a majority elects one.
    Status,
    /// Add a member (admin token); returns once it has caught up and votes.
    ///
    /// The new node (started with the same `cluster:` secret, advertising URL) joins as a
    /// learner, catches up with the leader, and is then promoted to voter.
    Add {
        /// The new member's node id.
        id: u64,
        /// How the other nodes reach it: the new node's `cluster.advertise`.
        #[arg(value_name = "URL")]
        member_url: String,
        /// Seconds to wait for the new member to catch up.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// Remove a member, voter or learner (admin token); prints the members after the change.
    Remove {
        /// The member's node id.
        id: u64,
    },
}

#[derive(clap::Args)]
struct ApiArgs {
    /// rollbackd's address.
    #[arg(
        long,
        global = true,
        env = "ROLLBACKD_URL",
        default_value = "http://127.0.0.1:9750"
    )]
    url: String,
    /// Bearer token (admin for freeze/unfreeze and cluster add/remove; your people token or the
    /// admin token for approve/reject).
    #[arg(long, global = true, env = "ROLLBACKD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

impl ApiArgs {
    fn client(self) -> rollbackd::cli::Client {
        rollbackd::cli::Client {
            url: self.url,
            token: self.token,
            json: self.json,
        }
    }
}

const EXIT_CONFIG: u8 = 64;

fn vote(v: VoteArgs, approve: bool) -> ExitCode {
    let c = v.api.client();
    operate(async move {
        c.vote(&v.id, approve, v.person.as_deref(), v.reason.as_deref())
            .await
    })
}

fn freeze(f: FreezeArgs, frozen: bool) -> ExitCode {
    let c = f.api.client();
    let (done, command) = if frozen {
        ("frozen", "freeze")
    } else {
        ("lifted", "unfreeze")
    };
    let reason = f
        .reason
        .unwrap_or_else(|| format!("{done} by hand with `rollbackd {command}`"));
    operate(async move { c.freeze(&f.service, frozen, &reason).await })
}

/// Runs one operator command on a small runtime; errors print and exit 1.
fn operate<F: std::future::Future<Output = Result<(), rollbackd::cli::CliError>>>(
    f: F,
) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rollbackd: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(f) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rollbackd: {e}");
            ExitCode::FAILURE
        }
    }
}

/// glibc raises its mmap and trim thresholds after the first large free (up to 32 MiB), after which
/// freed heap is kept for good: an alert storm would leave the daemon at its peak size. Fixed
/// thresholds keep large buffers in mmap and give freed heap back as it is freed.
fn tame_the_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called once before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1024 * 1024);
    }
}

fn main() -> ExitCode {
    tame_the_heap();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    match cli.command {
        Command::Lint {
            config,
            rules_dir,
            preflight,
        } => lint(config, rules_dir, preflight),
        Command::Replay(args) => ExitCode::from(rollbackd::replay::command(args)),
        Command::GithubRevert(args) => ExitCode::from(rollbackd::github_revert::command(args)),
        Command::Schema { of } => {
            let schema = match of {
                SchemaOf::Config => rollbackd::config::schema(),
                SchemaOf::Rules => rules::schema(),
            };
            match serde_json::to_string_pretty(&schema) {
                Ok(text) => {
                    println!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("rollbackd schema: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Backup { file, api } => {
            let c = api.client();
            operate(async move { c.backup(&file).await })
        }
        Command::Restore { file, data_dir } => operate(async move {
            let fail = rollbackd::cli::CliError::Verdict;
            let bytes =
                std::fs::read(&file).map_err(|e| fail(format!("{}: {e}", file.display())))?;
            let n = rollbackd::store::Store::restore(&bytes, &data_dir)
                .await
                .map_err(fail)?;
            println!("restored {n} records into {}", data_dir.display());
            Ok(())
        }),
        Command::Incidents { state, action, api } => {
            let c = api.client();
            match action {
                None => operate(async move { c.incidents(state.as_deref()).await }),
                Some(IncidentAction::Verify { id }) => operate(async move { c.verify(&id).await }),
                Some(IncidentAction::Report { id }) => operate(async move { c.report(&id).await }),
            }
        }
        Command::Cluster { action, api } => {
            let c = api.client();
            match action {
                ClusterAction::Status => operate(async move { c.cluster_status().await }),
                ClusterAction::Add {
                    id,
                    member_url,
                    timeout,
                } => operate(async move {
                    c.cluster_add(id, &member_url, Duration::from_secs(timeout))
                        .await
                }),
                ClusterAction::Remove { id } => operate(async move { c.cluster_remove(id).await }),
            }
        }
        Command::Approve(v) => vote(v, true),
        Command::Reject(v) => vote(v, false),
        Command::Freeze(f) => freeze(f, true),
        Command::Unfreeze(f) => freeze(f, false),
        Command::Serve {
            config,
            listen,
            data_dir,
            rules,
            dry_run,
            grace_seconds,
            log_format,
        } => {
            let source = rollbackd::live::Source {
                config,
                listen,
                data_dir,
                rules_dir: rules,
            };
            serve(source, dry_run, grace_seconds, log_format)
        }
    }
}

/// A command line clap refuses exits 64 (EX_USAGE), as every other bad input to rollbackd does
/// (and `github-revert` keeps 2 for "no token"). Help and version print and exit 0 as usual.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit()
    }
    let _ = e.print();
    ExitCode::from(64)
}

fn load_config(path: Option<&PathBuf>) -> Result<Config, String> {
    match path {
        Some(p) => Config::load(p).map_err(|e| e.to_string()),
        None => Ok(Config::default()),
    }
}

fn lint(config: Option<PathBuf>, dir: Option<PathBuf>, preflight: bool) -> ExitCode {
    // The config is checked too: a problem in it is a problem like any other (exit 1).
    let cfg = match load_config(config.as_ref()) {
        Ok(c) => c,
        Err(e) => {
            println!("{e}");
            eprintln!("the config does not load; rules not checked");
            return ExitCode::from(1);
        }
    };
    if let Some(path) = &config {
        for w in cfg.warnings() {
            println!("{}: warning: {w}", path.display());
        }
    }
    let dir = dir.unwrap_or_else(|| cfg.rules_dir.clone());
    let mut ctx = cfg.rules_context();
    if config.is_none() {
        ctx.people = None;
    }
    let (set, problems) = rules::load_dir(&dir, &ctx);
    for p in &problems {
        println!("{p}");
    }
    match set {
        Some(s) if preflight => {
            let missing = rollbackd::preflight::rules(&s, Severity::Error);
            for (_, p) in &missing {
                println!("{p}");
            }
            if missing.is_empty() {
                eprintln!(
                    "{}: {} rule(s) OK, preflight OK{}",
                    dir.display(),
                    s.rules.len(),
                    if problems.is_empty() {
                        String::new()
                    } else {
                        format!(", {} warning(s)", problems.len())
                    }
                );
                ExitCode::SUCCESS
            } else {
                eprintln!("{}: {} preflight error(s)", dir.display(), missing.len());
                ExitCode::from(1)
            }
        }
        Some(s) => {
            let warnings = problems.len();
            eprintln!(
                "{}: {} rule(s) OK{}",
                dir.display(),
                s.rules.len(),
                if warnings > 0 {
                    format!(", {warnings} warning(s)")
                } else {
                    String::new()
                }
            );
            ExitCode::SUCCESS
        }
        None => {
            let errors = problems
                .iter()
                .filter(|p| p.severity == Severity::Error)
                .count();
            eprintln!("{}: {errors} error(s)", dir.display());
            ExitCode::from(1)
        }
    }
}

/// Starts the log in the format asked for: the flag, else the config file's `log_format` (read
/// on its own here, so the format holds even when the rules do not load), else text.
fn start_logging(source: &rollbackd::live::Source, flag: Option<Format>) -> Format {
    let format = flag.unwrap_or_else(|| {
        source
            .config
            .as_ref()
            .and_then(|p| Config::load(p).ok())
            .map(|c| c.log_format)
            .unwrap_or_default()
    });
    use tracing_subscriber::util::SubscriberInitExt as _;
    rollbackd::logging::subscriber_of(
        format,
        tracing_subscriber::EnvFilter::try_from_env("ROLLBACKD_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
        std::io::stderr,
        rollbackd::logging::colour_on_stderr(),
    )
    .init();
    format
}

/// A line that stops the daemon: as an ERROR event in the JSON log (so every stderr line
/// parses), as `rollbackd: <line>` in the text log.
fn fatal(format: Format, line: &str) {
    match format {
        Format::Json => tracing::error!("{line}"),
        Format::Text => eprintln!("rollbackd: {}", rollbackd::logging::one_line(line)),
    }
}

fn serve(
    source: rollbackd::live::Source,
    dry_run: bool,
    grace_seconds: Option<u64>,
    log_format: Option<Format>,
) -> ExitCode {
    let format = start_logging(&source, log_format);
    let loaded = match source.load_at_start() {
        Ok(l) => l,
        Err(e) => {
            for line in e.lines() {
                match format {
                    Format::Json => tracing::error!("{line}"),
                    Format::Text => eprintln!("{}", rollbackd::logging::one_line(&line)),
                }
            }
            fatal(format, &format!("{e}; not starting"));
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    for p in &loaded.warnings {
        tracing::warn!("{p}");
    }
    for w in loaded.config.warnings() {
        tracing::warn!("{w}");
    }
    let (cfg, set) = (loaded.config, loaded.rules);
    let dry_run = dry_run || cfg.dry_run;
    let grace = grace_seconds.map_or(cfg.shutdown_grace, Duration::from_secs);
    let addr = match cfg.listen_addr() {
        Ok(a) => a,
        Err(e) => {
            fatal(format, &format!("bad config: {e}"));
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // Before the listener binds: a second daemon on the same data dir stops here, before it
    // says it listens. Held until `serve` returns.
    let _lock = match rollbackd::store::lock::lock(&cfg.data_dir) {
        Ok(l) => l,
        Err(e) => {
            fatal(format, &format!("{e}; not starting"));
            return ExitCode::FAILURE;
        }
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            fatal(format, &format!("cannot start the runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        // Before the listener binds and the daemon says it listens: from then on SIGTERM is a
        // graceful stop, never the default action.
        let shutdown = shutdown_signal();
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                fatal(format, &format!("cannot listen on {addr}: {e}"));
                return ExitCode::FAILURE;
            }
        };
        let bound = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        if cfg.tokens.admin.is_none() && !addr.ip().is_loopback() {
            tracing::warn!("no admin token configured and listening beyond loopback: anyone who reaches {bound} can approve and unfreeze");
        }
        tracing::info!(
            rules = set.rules.len(),
            data_dir = %cfg.data_dir.display(),
            dry_run,
            "rollbackd listening on http://{bound}"
        );
        // Tests and scripts read this line to find the port.
        println!("rollbackd listening on http://{bound}");
        let daemon = rollbackd::Daemon {
            source,
            data_dir: cfg.data_dir.clone(),
            config: cfg,
            rules: set,
            dry_run,
            clock: Arc::new(rollbackd::clock::SystemClock),
            grace,
        };
        match daemon.run(listener, shutdown).await {
            Ok(()) => {
                tracing::info!("stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                fatal(format, &e.to_string());
                ExitCode::FAILURE
            }
        }
    })
}

/// Registers SIGTERM and SIGINT (Ctrl-C) at once, not when first polled, and resolves at the
/// first of them. Must be called inside the runtime.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let signals = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        )
    };
    async move {
        #[cfg(unix)]
        match signals {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = int.recv() => {},
                }
            }
            (Ok(mut one), Err(_)) | (Err(_), Ok(mut one)) => {
                one.recv().await;
            }
            (Err(_), Err(_)) => std::future::pending::<()>().await,
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutdown signal received; draining");
    }
}
