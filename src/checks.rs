//! Verification checks after the last step: Prometheus instant queries and HTTP probes.
//! An empty query result is a failure, never a pass.

use std::time::Duration;

use crate::model::CheckResult;
use crate::rules::Check;

pub async fn run(client: &reqwest::Client, check: &Check, timeout: Duration) -> CheckResult {
    match check {
        Check::Prometheus {
            url,
            query,
            below,
            above,
        } => {
            let name = check.name();
            let (ok, detail) = prometheus(client, url, query, *below, *above, timeout).await;
            CheckResult { name, ok, detail }
        }
        Check::Http {
            url,
            expect_status,
            body_contains,
        } => {
            let name = check.name();
            let (ok, detail) = http(
                client,
                url,
                *expect_status,
                body_contains.as_deref(),
                timeout,
            )
            .await;
            CheckResult { name, ok, detail }
        }
    }
}

async fn prometheus(
    client: &reqwest::Client,
    base: &str,
    query: &str,
    below: Option<f64>,
    above: Option<f64>,
    timeout: Duration,
) -> (bool, String) {
    let url = format!("{}/api/v1/query", base.trim_end_matches('/'));
    let resp = match client
        .get(&url)
        .query(&[("query", query)])
        .timeout(timeout)
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => {
            return (
                false,
                format!(
                    "query failed: {}",
                    if e.is_timeout() {
                        "timed out"
                    } else {
                        "could not reach Prometheus"
                    }
                ),
            );
        }
    };
    let status = resp.status();
    let body: serde_json::Value = match resp.json().await {
        Ok(b) => b,
        Err(_) => return (false, format!("HTTP {status}: response is not JSON")),
    };
    if body["status"] != "success" {
        return (false, format!("query error: {}", body["error"]));
    }
    let data = &body["data"];
    let values: Vec<f64> = match data["resultType"].as_str() {
        Some("vector") => data["result"]
            .as_array()
            .map(|a| a.iter().filter_map(|s| sample(&s["value"])).collect())
            .unwrap_or_default(),
        Some("scalar") => sample(&data["result"]).into_iter().collect(),
        other => return (false, format!("unsupported result type {other:?}")),
    };
    if values.is_empty() {
        return (false, "empty result: no data is not a pass".to_string());
    }
    let bad: Vec<f64> = values
        .iter()
        .copied()
        // NaN passes neither bound.
        .filter(|v| {
            below.is_some_and(|b| v.partial_cmp(&b) != Some(std::cmp::Ordering::Less))
                || above.is_some_and(|a| v.partial_cmp(&a) != Some(std::cmp::Ordering::Greater))
        })
        .collect();
    let want = match (below, above) {
        (Some(b), _) => format!("below {b}"),
        (_, Some(a)) => format!("above {a}"),
        _ => String::new(),
    };
    if bad.is_empty() {
        (true, format!("{} sample(s) {want}", values.len()))
    } else {
        (
            false,
            format!(
                "{} of {} sample(s) not {want}: {:?}",
                bad.len(),
                values.len(),
                bad
            ),
        )
    }
}

fn sample(v: &serde_json::Value) -> Option<f64> {
    v.get(1)?.as_str()?.parse().ok()
}

async fn http(
    client: &reqwest::Client,
    url: &str,
    expect: u16,
    contains: Option<&str>,
    timeout: Duration,
) -> (bool, String) {
    let resp = match client.get(url).timeout(timeout).send().await {
        Ok(r) => r,
        Err(e) => {
            return (
                false,
                if e.is_timeout() {
                    "timed out".into()
                } else {
                    "could not connect".into()
                },
            );
        }
    };
    let status = resp.status().as_u16();
    if status != expect {
        return (false, format!("HTTP {status}, expected {expect}"));
    }
    if let Some(needle) = contains {
        let body = resp.text().await.unwrap_or_default();
        if !body.contains(needle) {
            return (
                false,
                format!("HTTP {status} but the body lacks {needle:?}"),
            );
        }
    }
    (true, format!("HTTP {status}"))
}
