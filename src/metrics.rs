//! `/metrics`: one owned registry (no globals), bounded labels only (sources, states, outcomes and
//! reasons come from closed sets; rule names from the operator's rule files; never a service or
//! an alert label).

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::engine::State;
use crate::model::IncidentState;

/// The ingest sources, each with its own quota and its own `source` label: alert senders, then
/// release reporters (CI and the deploy tools).
pub const INGEST_SOURCES: [&str; 9] = [
    "alertmanager",
    "grafana",
    "pagerduty",
    "signal",
    "release",
    "github",
    "gitlab",
    "flux",
    "argocd",
];

/// The sources whose requests carry signals (`rollbackd_signals_received_total`).
const SIGNAL_SOURCES: [&str; 4] = ["alertmanager", "grafana", "pagerduty", "signal"];

pub struct Metrics {
    registry: Registry,
    pub signals_received: IntCounterVec,
    pub ingest_rejected: IntCounterVec,
    pub breaches_open: IntGauge,
    pub breaches_refused: IntCounterVec,
    pub incidents: IntGaugeVec,
    pub step_outcomes: IntCounterVec,
    pub decision_latency: Histogram,
    pub decisions_late: IntCounter,
    pub reload_successful: IntGauge,
    pub reload_timestamp: IntGauge,
    pub preflight_missing: IntGaugeVec,
    pub cluster_rules_mismatch: IntGauge,
    pub cluster_term: IntGauge,
    pub cluster_leader: IntGauge,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let signals_received = IntCounterVec::new(
            Opts::new(
                "rollbackd_signals_received_total",
                "Alert signals accepted, by source.",
            ),
            &["source"],
        )
        .expect("static metric definition");
        let ingest_rejected = IntCounterVec::new(
            Opts::new(
                "rollbackd_ingest_rejected_total",
                "Requests refused at ingest, by source and reason (auth, malformed, rate_limited).",
            ),
            &["source", "reason"],
        )
        .expect("static metric definition");
        let breaches_open = IntGauge::new("rollbackd_breaches_open", "Breaches currently open.")
            .expect("static metric definition");
        let breaches_refused = IntCounterVec::new(
            Opts::new(
                "rollbackd_breaches_refused_total",
                "Firing signals refused because their rule already held limits.max_open_breaches_per_rule open breaches, by rule.",
            ),
            &["rule"],
        )
        .expect("static metric definition");
        let incidents = IntGaugeVec::new(
            Opts::new("rollbackd_incidents", "Incidents by state."),
            &["state"],
        )
        .expect("static metric definition");
        let step_outcomes = IntCounterVec::new(
            Opts::new(
                "rollbackd_step_outcomes_total",
                "Rollback step attempts by outcome (done, failed).",
            ),
            &["outcome"],
        )
        .expect("static metric definition");
        let decision_latency = Histogram::with_opts(
            HistogramOpts::new(
                "rollbackd_decision_latency_seconds",
                "From a breach's deadline to its incident being durably written, for breaches known before their deadline.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )
        .expect("static metric definition");
        let decisions_late = IntCounter::new(
            "rollbackd_decisions_late_total",
            "Incidents opened for breaches first seen at or after their deadline (not in rollbackd_decision_latency_seconds).",
        )
        .expect("static metric definition");
        let reload_successful = IntGauge::new(
            "rollbackd_config_last_reload_successful",
            "1 when the active config and rules loaded cleanly.",
        )
        .expect("static metric definition");
        let reload_timestamp = IntGauge::new(
            "rollbackd_config_last_reload_success_timestamp_seconds",
            "When the active config and rules were loaded (start or reload).",
        )
        .expect("static metric definition");
        let preflight_missing = IntGaugeVec::new(
            Opts::new(
                "rollbackd_preflight_missing",
                "Secrets and programs the active rules' steps, probes and hooks need and this host lacks, by rule (as of the last start or reload).",
            ),
            &["rule"],
        )
        .expect("static metric definition");
        let cluster_rules_mismatch = IntGauge::new(
            "rollbackd_cluster_rules_digest_mismatch",
            "Cluster members whose rules digest differs from this node's, as last seen by GET /v1/cluster.",
        )
        .expect("static metric definition");
        let cluster_term = IntGauge::new(
            "rollbackd_cluster_term",
            "The Raft term this node is in (the fencing token of steps a leader starts in it).",
        )
        .expect("static metric definition");
        let cluster_leader = IntGauge::new(
            "rollbackd_cluster_is_leader",
            "1 while this node leads its cluster and acts.",
        )
        .expect("static metric definition");
        let build_info = IntGaugeVec::new(
            Opts::new(
                "rollbackd_build_info",
                "Always 1; the labels say which build runs (commit: ROLLBACKD_COMMIT at build time).",
            ),
            &["version", "commit", "os", "arch"],
        )
        .expect("static metric definition");
        build_info
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                option_env!("ROLLBACKD_COMMIT").unwrap_or("unknown"),
                std::env::consts::OS,
                std::env::consts::ARCH,
            ])
            .set(1);
        for c in [
            Box::new(build_info) as Box<dyn prometheus::core::Collector>,
            Box::new(signals_received.clone()),
            Box::new(cluster_rules_mismatch.clone()),
            Box::new(cluster_term.clone()),
            Box::new(cluster_leader.clone()),
            Box::new(ingest_rejected.clone()),
            Box::new(breaches_open.clone()),
            Box::new(breaches_refused.clone()),
            Box::new(incidents.clone()),
            Box::new(step_outcomes.clone()),
            Box::new(decision_latency.clone()),
            Box::new(decisions_late.clone()),
            Box::new(reload_successful.clone()),
            Box::new(reload_timestamp.clone()),
            Box::new(preflight_missing.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        for s in IncidentState::ALL {
            incidents.with_label_values(&[s.as_str()]).set(0);
        }
        for src in INGEST_SOURCES {
            if SIGNAL_SOURCES.contains(&src) {
                signals_received.with_label_values(&[src]).inc_by(0);
            }
            for reason in ["auth", "malformed", "rate_limited"] {
                ingest_rejected.with_label_values(&[src, reason]).inc_by(0);
            }
        }
        for o in ["done", "failed"] {
            step_outcomes.with_label_values(&[o]).inc_by(0);
        }
        Metrics {
            registry,
            signals_received,
            ingest_rejected,
            breaches_open,
            breaches_refused,
            incidents,
            step_outcomes,
            decision_latency,
            decisions_late,
            reload_successful,
            reload_timestamp,
            preflight_missing,
            cluster_rules_mismatch,
            cluster_term,
            cluster_leader,
        }
    }

    /// Gauges that mirror engine state, refreshed after each event.
    pub fn observe_state(&self, st: &State) {
        self.breaches_open.set(st.index.open_count() as i64);
        for s in IncidentState::ALL {
            let n = st.index.count(s);
            self.incidents
                .with_label_values(&[s.as_str()])
                .set(n as i64);
        }
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let enc = TextEncoder::new();
        if enc.encode(&self.registry.gather(), &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
