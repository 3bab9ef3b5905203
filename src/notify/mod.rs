//! Announcements: delivers the durable outbox to Slack, generic webhooks and PagerDuty.
//!
//! The engine queues entries in the same commit as the transition they announce; this worker only
//! reads them and reports each outcome back as an event, so the engine stays the single writer.
//! One queue per target, in order: an outage of one receiver delays only its own messages and
//! never blocks a rollback. Retries back off exponentially (honouring `Retry-After` and
//! PagerDuty's `ratelimit-reset`). Delivery is at least once: a crash in the instant between a
//! receiver's 2xx and the commit of "delivered" sends that one message again after the restart,
//! with the same `X-Rollbackd-Delivery` id (and PagerDuty's dedup key) so receivers can tell.

pub mod pagerduty;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use jiff::Timestamp;
use serde_json::json;
use sha2::Sha256;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::Notifier as NotifierConfig;
use crate::driver::EngineHandle;
use crate::engine::{Delivery, Event};
use crate::message;
use crate::model::{Incident, OutboxEntry, add};
use crate::store::Store;
use pagerduty::{EventAction, EventsV2, PdClient, PdError};

pub struct Notifier {
    pub store: Store,
    pub engine: EngineHandle,
    pub live: Arc<crate::live::Live>,
    pub http: reqwest::Client,
    pub pagerduty: Option<PdClient>,
    pub clock: Arc<dyn Clock>,
    pub wake: Arc<tokio::sync::Notify>,
    pub stopping: CancellationToken,
}

impl Notifier {
    pub async fn run(self: Arc<Self>) {
        let mut busy: HashSet<String> = HashSet::new();
        let mut tasks: JoinSet<String> = JoinSet::new();
        // Which target a task delivers for, so a task that panics frees its queue too.
        let mut owners: std::collections::HashMap<tokio::task::Id, String> = Default::default();
        loop {
            let now = self.clock.now();
            let entries = match self.store.outbox() {
                Ok(e) => e,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the outbox");
                    Vec::new()
                }
            };
            // The head of each target's queue, in sequence order.
            let mut heads: BTreeMap<String, OutboxEntry> = BTreeMap::new();
            for e in entries {
                heads.entry(e.target.clone()).or_insert(e);
            }
            let mut next_due: Option<Timestamp> = None;
            for (target, e) in heads {
                if busy.contains(&target) {
                    continue;
                }
                match e.next_at {
                    Some(at) if at > now => {
                        next_due = Some(next_due.map_or(at, |n: Timestamp| n.min(at)));
                    }
                    _ => {
                        busy.insert(target.clone());
                        let me = self.clone();
                        let t = target.clone();
                        let handle = tasks.spawn(async move {
                            me.deliver(e).await;
                            t
                        });
                        owners.insert(handle.id(), target);
                    }
                }
            }
            let wait = next_due
                .map(|at| crate::model::since(at, now))
                .unwrap_or(Duration::from_secs(5))
                .min(Duration::from_secs(5));
            tokio::select! {
                _ = self.stopping.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                    let id = match &done {
                        Ok((id, _)) => *id,
                        Err(err) => {
                            tracing::error!(error = %err, "a delivery task failed; its queue continues");
                            err.id()
                        }
                    };
                    if let Some(target) = owners.remove(&id) {
                        busy.remove(&target);
                    }
                }
            }
        }
        tasks.shutdown().await;
    }

    async fn deliver(&self, e: OutboxEntry) {
        let inc = match self.store.incident(&e.incident) {
            // As it was when announced: the state and why of that transition.
            Ok(Some(mut i)) => {
                if let Some(st) = e.state {
                    i.state = st;
                    i.reason = Some(e.detail.clone());
                    i.updated_at = e.at;
                }
                i
            }
            Ok(None) => {
                self.report(
                    e,
                    Delivery::Dropped {
                        error: "incident not found".into(),
                    },
                )
                .await;
                return;
            }
            Err(err) => {
                let at = self.backoff(&e);
                self.report(
                    e,
                    Delivery::Retry {
                        error: err.to_string(),
                        at,
                    },
                )
                .await;
                return;
            }
        };
        let config = self.live.config();
        let outcome = match (e.target.as_str(), config.notifiers.get(&e.target)) {
            ("pagerduty", _) => self.pagerduty(&e, &inc).await,
            (_, Some(NotifierConfig::Slack { slack_webhook })) => {
                let body = self.slack_body(&e, &inc);
                self.post(&e, slack_webhook.expose(), &body, None).await
            }
            (_, Some(NotifierConfig::Webhook { webhook, secret })) => {
                let body = json!({
                    "id": delivery_id(&e),
                    "kind": e.kind,
                    "at": e.at,
                    "headline": message::headline(&e, &inc),
                    "text": message::body(&e, &inc, self.link(&inc).as_deref()),
                    "incident": inc,
                });
                self.post(
                    &e,
                    webhook.expose(),
                    &body,
                    secret.as_ref().map(|s| s.expose()),
                )
                .await
            }
            (_, None) => Delivery::Dropped {
                error: format!("no notifier named `{}` in the config", e.target),
            },
        };
        self.report(e, outcome).await;
    }

    async fn report(&self, entry: OutboxEntry, outcome: Delivery) {
        if let Err(err) = self
            .engine
            .send(Event::Delivery {
                entry: Box::new(entry),
                outcome,
            })
            .await
        {
            tracing::warn!(error = %err, "delivery outcome not recorded; it will be retried");
        }
    }

    fn link(&self, inc: &Incident) -> Option<String> {
        self.live
            .config()
            .public_url
            .as_ref()
            .map(|u| format!("{}/v1/incidents/{}", u.trim_end_matches('/'), inc.id))
    }

    /// 1 s, 2 s, 4 s … capped at 5 minutes.
    fn backoff(&self, e: &OutboxEntry) -> Timestamp {
        let secs = 1u64 << e.attempts.min(8);
        add(self.clock.now(), Duration::from_secs(secs.min(300)))
    }

    fn retry_at(&self, e: &OutboxEntry, after: Option<Duration>) -> Timestamp {
        match after {
            Some(d) => add(self.clock.now(), d.min(Duration::from_secs(3600))),
            None => self.backoff(e),
        }
    }

    fn slack_body(&self, e: &OutboxEntry, inc: &Incident) -> serde_json::Value {
        let headline = message::headline(e, inc);
        let text = message::body(e, inc, None);
        let link = self
            .link(inc)
            .map(|l| format!("<{l}|{}>", inc.id))
            .unwrap_or_else(|| inc.id.clone());
        let reason = inc.reason.clone().unwrap_or_else(|| e.detail.clone());
        json!({
            "text": format!("{headline}: {text}"),
            "blocks": [
                {"type": "header", "text": {"type": "plain_text", "text": truncate(&headline, 150)}},
                {"type": "section", "text": {"type": "mrkdwn", "text": truncate(&text, 3000)}},
                {"type": "section", "fields": [
                    {"type": "mrkdwn", "text": format!("*State*\n{}", inc.state)},
                    {"type": "mrkdwn", "text": format!("*Service*\n{} {}", inc.service, inc.environment)},
                    {"type": "mrkdwn", "text": format!("*Release*\n{} → {}", inc.release_from.version, inc.release_to.version)},
                    {"type": "mrkdwn", "text": format!("*Rule*\n{}", inc.rule)},
                ]},
                {"type": "context", "elements": [
                    {"type": "mrkdwn", "text": truncate(&format!("{link} · {reason}"), 3000)}
                ]}
            ]
        })
    }

    /// POSTs JSON; 2xx delivered, 408/429/5xx and transport errors retried, other 4xx dropped.
    async fn post(
        &self,
        e: &OutboxEntry,
        url: &str,
        body: &serde_json::Value,
        secret: Option<&str>,
    ) -> Delivery {
        let bytes = match serde_json::to_vec(body) {
            Ok(b) => b,
            Err(err) => {
                return Delivery::Dropped {
                    error: err.to_string(),
                };
            }
        };
        let mut req = self
            .http
            .post(url)
            .timeout(Duration::from_secs(10))
            .header("content-type", "application/json")
            .header("x-rollbackd-delivery", delivery_id(e));
        if let Some(secret) = secret {
            let ts = self.clock.now().as_second().to_string();
            req = req
                .header("x-rollbackd-timestamp", &ts)
                .header("x-rollbackd-signature", sign(secret, &ts, &bytes));
        }
        match req.body(bytes).send().await {
            Err(err) => Delivery::Retry {
                error: if err.is_timeout() {
                    "timed out".into()
                } else {
                    "could not connect".into()
                },
                at: self.backoff(e),
            },
            Ok(resp) => {
                let status = resp.status().as_u16();
                let retry_after = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                match status {
                    200..=299 => Delivery::Delivered {
                        detail: format!("HTTP {status}"),
                    },
                    408 | 429 | 500..=599 => Delivery::Retry {
                        error: format!("HTTP {status}"),
                        at: self.retry_at(e, retry_after),
                    },
                    _ => {
                        let text = resp.text().await.unwrap_or_default();
                        Delivery::Dropped {
                            error: format!("HTTP {status}: {}", truncate(&text, 200)),
                        }
                    }
                }
            }
        }
    }

    /// PagerDuty: notes on a linked PagerDuty incident; otherwise the Events API with one dedup
    /// key per rollbackd incident (a trigger appends to the open alert; `rolled_back` resolves it).
    async fn pagerduty(&self, e: &OutboxEntry, inc: &Incident) -> Delivery {
        let Some(pd) = &self.pagerduty else {
            return Delivery::Dropped {
                error: "PagerDuty is not configured".into(),
            };
        };
        let link = self.link(inc);
        let text = format!(
            "rollbackd: {} — {}",
            message::headline(e, inc),
            message::body(e, inc, link.as_deref())
        );
        let routing_key = self
            .live
            .config()
            .pagerduty
            .as_ref()
            .and_then(|p| p.routing_key.as_ref())
            .map(|k| k.expose().to_string());
        let summary = format!(
            "{}: {}",
            message::headline(e, inc),
            message::body(e, inc, None)
        );
        let event = |key: String, action: EventAction| {
            EventsV2::new(key, action, dedup_key(inc), &summary, inc, link.as_deref())
        };
        let result = match (&inc.pagerduty_incident, routing_key) {
            // Announced on a PagerDuty incident: a note for each transition; when it is the
            // incident rollbackd opened, a verified rollback also resolves it (idempotent, first).
            (Some(pd_id), key) => {
                let resolved = match key.filter(|_| e.kind.ends_the_page()) {
                    Some(k) => pd
                        .enqueue(&event(k, EventAction::Resolve))
                        .await
                        .map(|_| ()),
                    None => Ok(()),
                };
                match resolved {
                    Ok(()) => pd
                        .note(pd_id, &text)
                        .await
                        .map(|()| format!("note on {pd_id}")),
                    Err(err) => Err(err),
                }
            }
            (None, Some(key)) => {
                let action = if e.kind.ends_the_page() {
                    EventAction::Resolve
                } else {
                    EventAction::Trigger
                };
                let ev = event(key, action);
                pd.enqueue(&ev)
                    .await
                    .map(|k| format!("event {} for {k}", ev.event_action))
            }
            (None, None) => {
                return Delivery::Dropped {
                    error: "no pagerduty.routing_key and no linked PagerDuty incident".into(),
                };
            }
        };
        match result {
            Ok(detail) => Delivery::Delivered { detail },
            Err(PdError::Retry { after, why }) => Delivery::Retry {
                error: why,
                at: self.retry_at(e, after),
            },
            Err(PdError::Permanent(why)) => Delivery::Dropped { error: why },
        }
    }
}

/// Announcements after which nobody needs to be paged about this incident any more: the alert
/// rollbackd opened is resolved. A failed rollback keeps paging.
/// The Events API dedup key of a rollbackd incident; PagerDuty's `incident_key` of the incident
/// it opens, which is how `incident.triggered` webhooks are mapped back.
pub fn dedup_key(inc: &Incident) -> String {
    crate::engine::pagerduty_key(&inc.id)
}

pub fn delivery_id(e: &OutboxEntry) -> String {
    format!("{}-{}", e.seq, e.target)
}

/// `v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
pub fn sign(secret: &str, ts: &str, body: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    mac.update(ts.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}
