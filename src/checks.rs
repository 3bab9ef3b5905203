//! Verification checks after the last step: Prometheus instant queries and HTTP probes.
//! An empty query result is a failure, never a pass.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde::de::IgnoredAny;

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
    match resp.bytes().await {
        Ok(body) => judge(status, &body, below, above),
        Err(_) => (
            false,
            format!("HTTP {status}: the response body could not be read"),
        ),
    }
}

/// The answer of `GET /api/v1/query` (Prometheus HTTP API, "Format overview"); `warnings` and
/// `infos` are not read.
#[derive(Debug, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
enum QueryResponse {
    Success {
        data: QueryData,
    },
    Error {
        #[serde(rename = "errorType", default)]
        error_type: String,
        #[serde(default)]
        error: String,
    },
}

/// `data` of an instant query: `{"resultType": ..., "result": ...}`.
#[derive(Debug, Deserialize)]
#[serde(tag = "resultType", content = "result", rename_all = "lowercase")]
enum QueryData {
    Vector(Vec<VectorSample>),
    Scalar(Sample),
    /// Not comparable with a bound; only named in the failure.
    Matrix(IgnoredAny),
    String(IgnoredAny),
}

#[derive(Debug, Deserialize)]
struct VectorSample {
    /// The series' labels: part of the answer, not needed to compare its value.
    #[serde(default)]
    #[expect(dead_code, reason = "read by serde only")]
    metric: BTreeMap<String, String>,
    /// Absent from native histogram samples, which carry `histogram` instead: those are no float
    /// to compare and are left out.
    value: Option<Sample>,
}

/// `[<unix time>, "<value>"]`: the value is a string (`"NaN"` and `"+Inf"` included).
#[derive(Debug, Deserialize)]
struct Sample(f64, String);

impl Sample {
    fn value(&self) -> Result<f64, String> {
        self.1
            .parse()
            .map_err(|_| format!("sample value {:?} at {} is not a number", self.1, self.0))
    }
}

/// Pass or fail, and why, for the HTTP status and body of a query answer.
fn judge(
    status: reqwest::StatusCode,
    body: &[u8],
    below: Option<f64>,
    above: Option<f64>,
) -> (bool, String) {
    let data = match serde_json::from_slice::<QueryResponse>(body) {
        Ok(QueryResponse::Success { data }) => data,
        Ok(QueryResponse::Error { error_type, error }) => {
            return (false, format!("query error ({error_type}): {error}"));
        }
        Err(e) if e.is_data() => {
            return (
                false,
                format!("HTTP {status}: not a Prometheus query response: {e}"),
            );
        }
        Err(_) => return (false, format!("HTTP {status}: response is not JSON")),
    };
    let samples: Vec<&Sample> = match &data {
        QueryData::Vector(v) => v.iter().filter_map(|s| s.value.as_ref()).collect(),
        QueryData::Scalar(s) => vec![s],
        QueryData::Matrix(_) => return (false, unsupported("matrix")),
        QueryData::String(_) => return (false, unsupported("string")),
    };
    let values = match samples
        .iter()
        .map(|s| s.value())
        .collect::<Result<Vec<f64>, _>>()
    {
        Ok(v) => v,
        Err(e) => return (false, e),
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

fn unsupported(result_type: &str) -> String {
    format!("unsupported result type `{result_type}`: a check compares a vector or a scalar")
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

#[cfg(test)]
mod tests {
    use super::judge;
    use reqwest::StatusCode;

    fn check(body: &str, below: Option<f64>, above: Option<f64>) -> (bool, String) {
        judge(StatusCode::OK, body.as_bytes(), below, above)
    }

    const VECTOR: &str = r#"{"status":"success","data":{"resultType":"vector","result":[
        {"metric":{"__name__":"up","job":"a"},"value":[1435781451.781,"0.1"]},
        {"metric":{},"value":[1435781451.781,"0.3"]}]}}"#;

    #[test]
    fn vector_samples_are_compared() {
        assert_eq!(
            check(VECTOR, Some(0.5), None),
            (true, "2 sample(s) below 0.5".to_string())
        );
        assert_eq!(
            check(VECTOR, Some(0.2), None),
            (false, "1 of 2 sample(s) not below 0.2: [0.3]".to_string())
        );
        assert_eq!(
            check(VECTOR, None, Some(0.05)),
            (true, "2 sample(s) above 0.05".to_string())
        );
    }

    #[test]
    fn scalar_is_one_sample() {
        let body =
            r#"{"status":"success","data":{"resultType":"scalar","result":[1435781451.781,"1"]}}"#;
        assert_eq!(
            check(body, None, Some(0.0)),
            (true, "1 sample(s) above 0".to_string())
        );
        let nan = body.replace(r#""1""#, r#""NaN""#);
        assert!(!check(&nan, Some(1.0), None).0, "NaN passes no bound");
        let inf = body.replace(r#""1""#, r#""+Inf""#);
        assert_eq!(
            check(&inf, Some(1.0), None),
            (false, "1 of 1 sample(s) not below 1: [inf]".to_string())
        );
    }

    #[test]
    fn empty_result_is_a_failure() {
        let body = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert_eq!(
            check(body, Some(1.0), None),
            (false, "empty result: no data is not a pass".to_string())
        );
        // Native histogram samples carry no float value.
        let body = r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{},"histogram":[1435781451.781,{"count":"1","sum":"1","buckets":[]}]}]}}"#;
        assert!(check(body, Some(1.0), None).1.starts_with("empty result"));
    }

    #[test]
    fn error_answers_say_what_prometheus_said() {
        let body = r#"{"status":"error","errorType":"bad_data","error":"1:5: parse error: unexpected end of input"}"#;
        assert_eq!(
            judge(StatusCode::BAD_REQUEST, body.as_bytes(), Some(1.0), None),
            (
                false,
                "query error (bad_data): 1:5: parse error: unexpected end of input".to_string()
            )
        );
    }

    #[test]
    fn other_answers_fail_with_a_reason() {
        let matrix = r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[[1,"1"]]}]}}"#;
        let (ok, why) = check(matrix, Some(1.0), None);
        assert!(!ok);
        assert!(why.starts_with("unsupported result type `matrix`"), "{why}");
        let string = r#"{"status":"success","data":{"resultType":"string","result":[1,"x"]}}"#;
        assert!(check(string, Some(1.0), None).1.contains("`string`"));

        let (ok, why) = check(&VECTOR.replace(r#""0.3""#, r#""high""#), Some(1.0), None);
        assert!(!ok);
        assert_eq!(
            why,
            r#"sample value "high" at 1435781451.781 is not a number"#
        );

        let (ok, why) = judge(
            StatusCode::BAD_GATEWAY,
            b"<html>bad gateway</html>",
            Some(1.0),
            None,
        );
        assert!(!ok);
        assert_eq!(why, "HTTP 502 Bad Gateway: response is not JSON");

        for body in [
            r#"{"data":{"resultType":"vector","result":[]}}"#,
            r#"{"status":"pending"}"#,
            r#"{"status":"success"}"#,
            r#"{"status":"success","data":{"resultType":"histogram","result":[]}}"#,
            r#"{"status":"success","data":{"resultType":"vector","result":{}}}"#,
            r#"{"status":"success","data":{"resultType":"vector","result":[{"value":[1,2]}]}}"#,
        ] {
            let (ok, why) = check(body, Some(1.0), None);
            assert!(!ok, "{body}");
            assert!(
                why.starts_with("HTTP 200 OK: not a Prometheus query response: "),
                "{body}: {why}"
            );
        }
    }
}
