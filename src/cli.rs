//! Operator commands: thin clients of the HTTP API (`incidents`, `approve`, `reject`, `freeze`,
//! `unfreeze`, `cluster status|add|remove`). They print readable tables; `--json` prints what the
//! API said.

use std::time::Duration;

use serde_json::{Value, json};

pub struct Client {
    pub url: String,
    pub token: Option<String>,
    pub json: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot reach rollbackd at {url}: {why}")]
    Unreachable { url: String, why: String },
    #[error("rollbackd answered {status}: {message}")]
    Api { status: u16, message: String },
    /// The API answered, and what it said is a failure (printed above, exit 1).
    #[error("{0}")]
    Verdict(String),
}

/// An error answer's status and its `error` text.
fn api_error(status: u16, v: &Value) -> CliError {
    CliError::Api {
        status,
        message: v["error"]
            .as_str()
            .unwrap_or("no error message")
            .to_string(),
    }
}

/// How long most commands wait for an answer.
const TIMEOUT: Duration = Duration::from_secs(15);

impl Client {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), CliError> {
        self.call_within(method, path, body, TIMEOUT).await
    }

    async fn call_within(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        timeout: Duration,
    ) -> Result<(u16, Value), CliError> {
        let mut req = self.request(method, path, timeout)?;
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| self.unreachable(e))?;
        let status = resp.status().as_u16();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        if status >= 400 && status != 423 {
            return Err(api_error(status, &v));
        }
        Ok((status, v))
    }

    /// A request to `path` with the token, if any.
    fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        timeout: Duration,
    ) -> Result<reqwest::RequestBuilder, CliError> {
        let url = format!("{}{}", self.url.trim_end_matches('/'), path);
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| self.unreachable(e))?;
        let mut req = http.request(method, &url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        Ok(req)
    }

    fn unreachable(&self, e: reqwest::Error) -> CliError {
        CliError::Unreachable {
            url: self.url.clone(),
            why: if e.is_connect() {
                "connection refused (is `rollbackd serve` running? see --url)".into()
            } else {
                e.to_string()
            },
        }
    }

    /// `GET /v1/backup` into `file` (written whole, then renamed into place).
    pub async fn backup(&self, file: &std::path::Path) -> Result<(), CliError> {
        let req = self.request(reqwest::Method::GET, "/v1/backup", Duration::from_secs(300))?;
        let resp = req.send().await.map_err(|e| self.unreachable(e))?;
        let status = resp.status().as_u16();
        if status >= 400 {
            let v: Value = resp.json().await.unwrap_or(Value::Null);
            return Err(api_error(status, &v));
        }
        let bytes = resp.bytes().await.map_err(|e| self.unreachable(e))?;
        let failed = |e: std::io::Error| CliError::Verdict(format!("{}: {e}", file.display()));
        let mut partial = file.as_os_str().to_owned();
        partial.push(".partial");
        std::fs::write(&partial, &bytes).map_err(failed)?;
        std::fs::rename(&partial, file).map_err(failed)?;
        println!(
            "backup of {} bytes written to {}",
            bytes.len(),
            file.display()
        );
        Ok(())
    }

    fn print(&self, v: &Value, table: impl FnOnce(&Value) -> String) {
        if self.json {
            println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        } else {
            print!("{}", table(v));
        }
    }

    pub async fn incidents(&self, state: Option<&str>) -> Result<(), CliError> {
        let path = match state {
            Some(s) => format!("/v1/incidents?state={s}"),
            None => "/v1/incidents".to_string(),
        };
        let (_, v) = self.call(reqwest::Method::GET, &path, None).await?;
        self.print(&v, |v| {
            let rows: Vec<Vec<String>> = v["items"]
                .as_array()
                .map(|items| {
                    items
                        .iter()
                        .map(|i| {
                            vec![
                                s(&i["id"]),
                                s(&i["state"]),
                                s(&i["service"]),
                                format!(
                                    "{} -> {}",
                                    s(&i["release_from"]["version"]),
                                    s(&i["release_to"]["version"])
                                ),
                                s(&i["opened_at"]),
                                s(&i["rule"]),
                            ]
                        })
                        .collect()
                })
                .unwrap_or_default();
            table(
                &["ID", "STATE", "SERVICE", "RELEASE", "OPENED", "RULE"],
                &rows,
            )
        });
        Ok(())
    }

    /// Fails (exit 1) when the chain is broken.
    pub async fn verify(&self, id: &str) -> Result<(), CliError> {
        let (_, v) = self
            .call(reqwest::Method::GET, &format!("/v1/incidents/{id}"), None)
            .await?;
        let chain = &v["timeline_chain"];
        self.print(chain, |c| {
            if c["ok"] == true {
                format!(
                    "{id}: timeline intact ({} entries, head {})\n",
                    c["entries"],
                    s(&c["head"])
                )
            } else {
                format!(
                    "{id}: timeline BROKEN at entry {} of {}: a record was edited or removed\n",
                    c["broken_at"], c["entries"]
                )
            }
        });
        if chain["ok"] == true {
            Ok(())
        } else {
            Err(CliError::Api {
                status: 200,
                message: format!("the timeline of {id} does not verify"),
            })
        }
    }

    pub async fn report(&self, id: &str) -> Result<(), CliError> {
        let path = if self.json {
            format!("/v1/incidents/{id}/report?format=json")
        } else {
            format!("/v1/incidents/{id}/report")
        };
        let url = format!("{}{}", self.url.trim_end_matches('/'), path);
        let mut req = reqwest::Client::new().get(&url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| CliError::Unreachable {
            url: url.clone(),
            why: e.to_string(),
        })?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        if status >= 400 {
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["error"].as_str().map(String::from))
                .unwrap_or(text);
            return Err(CliError::Api { status, message });
        }
        print!("{text}");
        Ok(())
    }

    pub async fn vote(
        &self,
        id: &str,
        approve: bool,
        person: Option<&str>,
        reason: Option<&str>,
    ) -> Result<(), CliError> {
        let verb = if approve { "approve" } else { "reject" };
        let mut body = json!({"reason": reason});
        if let Some(p) = person {
            body["person"] = json!(p);
        }
        let (_, v) = self
            .call(
                reqwest::Method::POST,
                &format!("/v1/incidents/{id}/{verb}"),
                Some(body),
            )
            .await?;
        let by = person.unwrap_or("the token's owner");
        self.print(&v, |v| {
            format!(
                "{}: {} ({verb} by {by} recorded)\n",
                s(&v["id"]),
                s(&v["state"])
            )
        });
        Ok(())
    }

    pub async fn freeze(&self, service: &str, freeze: bool, reason: &str) -> Result<(), CliError> {
        let method = if freeze {
            reqwest::Method::PUT
        } else {
            reqwest::Method::DELETE
        };
        let (_, v) = self
            .call(
                method,
                &format!("/v1/freezes/{service}"),
                Some(json!({"reason": reason})),
            )
            .await?;
        self.print(&v, |_| {
            format!(
                "{service}: {}\n",
                if freeze { "frozen" } else { "unfrozen" }
            )
        });
        Ok(())
    }
}

impl Client {
    /// `GET /v1/cluster`, as a table; fails (exit 1) when the node knows no leader.
    pub async fn cluster_status(&self) -> Result<(), CliError> {
        let (_, v) = self.call(reqwest::Method::GET, "/v1/cluster", None).await?;
        self.print(&v, cluster_view);
        if v["leader"].is_null() {
            return Err(CliError::Verdict(format!(
                "node {} knows no leader (term {}): writes are refused (503) until a majority of the members elects one",
                s(&v["node_id"]),
                s(&v["term"])
            )));
        }
        Ok(())
    }

    /// `POST /v1/cluster/members`: answers once the new member caught up and votes, so it may take
    /// longer than other commands (`timeout`).
    pub async fn cluster_add(&self, id: u64, url: &str, timeout: Duration) -> Result<(), CliError> {
        let (_, v) = self
            .call_within(
                reqwest::Method::POST,
                "/v1/cluster/members",
                Some(json!({"id": id, "url": url})),
                timeout,
            )
            .await?;
        self.print(&v, |v| {
            format!(
                "node {id} added at {url}: caught up, now a voter\n{}",
                cluster_view(v)
            )
        });
        Ok(())
    }

    /// `DELETE /v1/cluster/members/{id}`.
    pub async fn cluster_remove(&self, id: u64) -> Result<(), CliError> {
        let (_, v) = self
            .call(
                reqwest::Method::DELETE,
                &format!("/v1/cluster/members/{id}"),
                None,
            )
            .await?;
        self.print(&v, |v| format!("node {id} removed\n{}", cluster_view(v)));
        Ok(())
    }
}

/// The members as the answering node sees them: who leads, in which term, and each member's role
/// and rules digest (shortened; a difference is called out, since the leader's rules decide).
fn cluster_view(v: &Value) -> String {
    let leader = v["leader"].as_u64();
    let members = v["members"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let rows: Vec<Vec<String>> = members
        .iter()
        .map(|m| {
            let mark = if m["id"].as_u64().is_some_and(|id| Some(id) == leader) {
                "*"
            } else {
                ""
            };
            let digest = match m["rules_digest"].as_str() {
                Some(d) => d.chars().take(12).collect(),
                None => "-".to_string(),
            };
            vec![
                format!("{}{mark}", s(&m["id"])),
                s(&m["url"]),
                s(&m["role"]),
                digest,
            ]
        })
        .collect();
    let mut out = format!(
        "term {}, leader {} (as node {} sees it)\n",
        s(&v["term"]),
        leader.map_or_else(|| "none".to_string(), |l| format!("{l}*")),
        s(&v["node_id"])
    );
    out.push_str(&table(&["ID", "URL", "ROLE", "RULES DIGEST"], &rows));
    let mut digests: Vec<&str> = members
        .iter()
        .filter_map(|m| m["rules_digest"].as_str())
        .collect();
    digests.sort_unstable();
    digests.dedup();
    if digests.len() > 1 {
        out.push_str("rules differ between members: the leader's rules decide\n");
    }
    out
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    }
}

/// Left-aligned columns, two spaces apart.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths.get(i).copied().unwrap_or(0)))
            .collect();
        format!("{}\n", parts.join("  ").trim_end())
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out.push_str(&line(r.clone()));
    }
    if rows.is_empty() {
        out.push_str("(none)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn table_aligns() {
        let t = super::table(&["A", "LONGER"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    LONGER\nxyz  1\n");
        assert!(super::table(&["A"], &[]).ends_with("(none)\n"));
    }
}
