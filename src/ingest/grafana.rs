//! Grafana unified alerting webhook (version 1): Alertmanager's alert shape plus Grafana's fields.
//! Signature checking (`X-Grafana-Alerting-Signature`) happens in the API layer on the raw bytes.

use super::IngestError;
use crate::model::Signal;

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
}
