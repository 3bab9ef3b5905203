//! The active config and rules, swappable at run time (SIGHUP, `POST /-/reload`, a change in the
//! rules directory or config file), and the one place that loads them (start and reload alike).
//!
//! A new set is used only when it loads with no error; otherwise the last good set stays, the lint
//! messages go to the log and to the caller, and `rollbackd_config_last_reload_successful` is 0.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::rules::{self, Problem, RuleSet, Severity};

/// Where the config and rules come from: the file, and the command line's overrides.
#[derive(Clone, Debug, Default)]
pub struct Source {
    pub config: Option<PathBuf>,
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub rules_dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("bad config: {0}")]
    Config(String),
    #[error("rules in {dir} have errors")]
    Rules { dir: String, problems: Vec<Problem> },
}

impl LoadError {
    /// One line per problem, as `rollbackd lint` prints them.
    pub fn lines(&self) -> Vec<String> {
        match self {
            LoadError::Config(e) => vec![format!("bad config: {e}")],
            LoadError::Rules { problems, .. } => problems
                .iter()
                .filter(|p| p.severity == Severity::Error)
                .map(|p| p.to_string())
                .collect(),
        }
    }
}

/// A valid config and rule set, with the warnings seen while loading them.
pub struct Loaded {
    pub config: Config,
    pub rules: RuleSet,
    pub warnings: Vec<Problem>,
}

impl Source {
    /// [`Source::load`], except that on the embedded defaults (no config file, no `--rules`) a
    /// missing `./rules` is no error: the daemon starts with no rules and says so, and a rules
    /// directory that appears later is loaded as any change is.
    pub fn load_at_start(&self) -> Result<Loaded, LoadError> {
        let defaults = self.config.is_none() && self.rules_dir.is_none();
        let dir = Config::default().rules_dir;
        if defaults && !dir.exists() {
            let config = self.overridden(Config::default())?;
            let warning = Problem {
                file: dir,
                line: 0,
                column: 0,
                severity: Severity::Warning,
                message: "no rules directory: running with no rules; rule files put there are loaded as they appear".to_string(),
            };
            return Ok(Loaded {
                config,
                rules: RuleSet::empty(),
                warnings: vec![warning],
            });
        }
        self.load()
    }

    pub fn load(&self) -> Result<Loaded, LoadError> {
        let config = self.overridden(match &self.config {
            Some(p) => Config::load(p).map_err(|e| LoadError::Config(e.to_string()))?,
            None => Config::default(),
        })?;
        let (set, problems) = rules::load_dir(&config.rules_dir, &config.rules_context());
        match set {
            Some(rules) => Ok(Loaded {
                config,
                rules,
                warnings: problems,
            }),
            None => Err(LoadError::Rules {
                dir: config.rules_dir.display().to_string(),
                problems,
            }),
        }
    }

    /// `config` with the command line's `--listen`, `--data-dir` and `--rules`.
    fn overridden(&self, mut config: Config) -> Result<Config, LoadError> {
        if let Some(l) = &self.listen {
            config.listen = l.clone();
        }
        if let Some(d) = &self.data_dir {
            config.data_dir = d.clone();
        }
        if let Some(r) = &self.rules_dir {
            config.rules_dir = r.clone();
        }
        config.listen_addr().map_err(LoadError::Config)?;
        Ok(config)
    }

    /// A digest of everything a reload would read: the config file and every rule file (through
    /// symlinks, so a Kubernetes ConfigMap's `..data` swap counts).
    pub fn fingerprint(&self, rules_dir: &Path) -> String {
        let mut h = Sha256::new();
        if let Some(p) = &self.config {
            h.update(std::fs::read(p).unwrap_or_default());
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(rules_dir)
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.sort();
        for f in files {
            if matches!(f.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
                h.update(f.to_string_lossy().as_bytes());
                h.update(std::fs::read(&f).unwrap_or_default());
            }
        }
        hex::encode(h.finalize())
    }
}

/// The config and rules in force. Readers take a cheap snapshot; a reload swaps both at once.
pub struct Live {
    current: RwLock<(Arc<Config>, Arc<RuleSet>)>,
}

impl Live {
    pub fn new(config: Config, rules: RuleSet) -> Live {
        Live {
            current: RwLock::new((Arc::new(config), Arc::new(rules))),
        }
    }

    pub fn config(&self) -> Arc<Config> {
        self.snapshot().0
    }

    pub fn rules(&self) -> Arc<RuleSet> {
        self.snapshot().1
    }

    pub fn snapshot(&self) -> (Arc<Config>, Arc<RuleSet>) {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn set(&self, config: Config, rules: RuleSet) {
        let new = (Arc::new(config), Arc::new(rules));
        match self.current.write() {
            Ok(mut g) => *g = new,
            Err(poisoned) => *poisoned.into_inner() = new,
        }
    }
}
