//! Grafana unified alerting webhook (version 1): Alertmanager's alert shape plus Grafana's fields.
//! Signature checking (`X-Grafana-Alerting-Signature`) happens in the API layer on the raw bytes.

use super::IngestError;
use crate::model::Signal;

/// Grafana's optional webhook HMAC: lowercase hex HMAC-SHA256 in `X-Grafana-Alerting-Signature`,
/// over `"<timestamp>:" + body` when the contact point sends a timestamp header
/// (`X-Grafana-Alerting-Signature-Timestamp`, Unix seconds), else over the body alone. A signed
/// timestamp further than `max_age` from `now` (either way) is refused: a captured delivery
/// cannot be sent again later. The error is what the sender is told.
pub fn verify_signature(
    secret: &str,
    signature: Option<&str>,
    timestamp: Option<&str>,
    body: &[u8],
    now: i64,
    max_age: std::time::Duration,
) -> Result<(), String> {
    use hmac::{Hmac, Mac};
    let sig = signature.ok_or("missing X-Grafana-Alerting-Signature")?;
    let sig = hex::decode(sig.trim()).map_err(|_| "X-Grafana-Alerting-Signature is not hex")?;
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
        .map_err(|_| "the configured grafana.webhook_secret cannot key an HMAC")?;
    if let Some(ts) = timestamp {
        mac.update(ts.as_bytes());
        mac.update(b":");
    }
    mac.update(body);
    if secret.is_empty() || mac.verify_slice(&sig).is_err() {
        return Err("X-Grafana-Alerting-Signature does not match the body".to_string());
    }
    // Only a signed timestamp means anything, so its age is checked after the signature.
    let Some(ts) = timestamp else {
        return Ok(());
    };
    let at: i64 = ts
        .trim()
        .parse()
        .map_err(|_| "X-Grafana-Alerting-Signature-Timestamp is not Unix seconds")?;
    let off = now.abs_diff(at);
    if off > max_age.as_secs() {
        let when = if at < now { "old" } else { "in the future" };
        return Err(format!(
            "X-Grafana-Alerting-Signature-Timestamp {at} is {off}s {when}, beyond grafana.signature_max_age ({}s): a stale or replayed delivery",
            max_age.as_secs()
        ));
    }
    Ok(())
}

pub fn parse(body: &[u8]) -> Result<Vec<Signal>, IngestError> {
    delivery(body)?.all()
}

pub use super::alertmanager::grafana_delivery as delivery;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Source;

    #[test]
    fn reads_grafana_times_with_offsets() {
        let body = r#"{"receiver":"r","status":"firing","orgId":1,"state":"alerting","title":"t","message":"m",
          "version":"1","alerts":[{"status":"firing","labels":{"alertname":"A"},"annotations":{},
          "startsAt":"2026-11-24T12:00:00.123456+02:00","endsAt":"0001-01-01T00:00:00Z","fingerprint":"abc",
          "silenceURL":"s","dashboardURL":"d","panelURL":"p","values":{"B":1.5}}]}"#;
        let s = parse(body.as_bytes()).unwrap();
        assert_eq!(s[0].source, Source::Grafana);
        assert_eq!(
            s[0].starts_at.unwrap().to_string(),
            "2026-11-24T10:00:00.123456Z"
        );
        assert!(parse(br#"{"version":"2","alerts":[]}"#).is_err());
    }

    fn sign(secret: &str, ts: Option<&str>, body: &[u8]) -> String {
        use hmac::{Hmac, Mac};
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        if let Some(ts) = ts {
            mac.update(format!("{ts}:").as_bytes());
        }
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    }

    #[test]
    fn signatures_cover_the_timestamp_and_expire() {
        let five = std::time::Duration::from_secs(300);
        let check = |sig: &str, ts: Option<&str>, now: i64| {
            verify_signature("s3cret", Some(sig), ts, b"{}", now, five)
        };
        assert_eq!(check(&sign("s3cret", None, b"{}"), None, 0), Ok(()));
        let ts = Some("1000");
        let good = sign("s3cret", ts, b"{}");
        assert_eq!(check(&good, ts, 1000), Ok(()));
        assert_eq!(check(&good, ts, 1300), Ok(()), "at the edge of the window");
        assert!(check(&good, ts, 1301).unwrap_err().contains("301s old"));
        assert!(check(&good, ts, 699).unwrap_err().contains("in the future"));
        assert!(
            check(&good, Some("1001"), 1000)
                .unwrap_err()
                .contains("does not match")
        );
        assert!(check(&sign("other", ts, b"{}"), ts, 1000).is_err());
        let min = i64::MIN.to_string();
        let extreme = sign("s3cret", Some(&min), b"{}");
        assert!(
            check(&extreme, Some(&min), i64::MAX).is_err(),
            "no overflow"
        );
        assert!(verify_signature("", Some(&sign("", None, b"{}")), None, b"{}", 0, five).is_err());
    }
}
