//! `rollbackd backup FILE` from a running daemon and `rollbackd restore FILE DATA_DIR` into a
//! fresh data dir: a daemon started on the restored dir holds every record the backup held.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const ADMIN: &str = "backupAdminToken0123456789abcdef";

const RULES: &str = r#"rules:
  - name: checkout-errors
    match: ['alertname="CheckoutErrors"']
    group_by: [service]
    service: "{{ labels.service }}"
    breach: { sustained: 1s }
    release: { max_age: 1h }
    approval: none
    freeze: true
    steps:
      - name: redeploy
        run: [/bin/echo, "redeploying {{ release.previous.deployment_id }}"]
"#;

fn rollbackd(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .output()
        .expect("run rollbackd")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Tree name → key → value, from a backup file's bytes: per tree its name, its record count and
/// its key/value pairs, each length-prefixed (u32 big-endian).
fn records(backup: &[u8]) -> BTreeMap<String, BTreeMap<Vec<u8>, Vec<u8>>> {
    struct Cursor<'a>(&'a [u8]);
    impl Cursor<'_> {
        fn u32(&mut self) -> usize {
            let (n, rest) = self.0.split_at(4);
            self.0 = rest;
            u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize
        }
        fn bytes(&mut self) -> Vec<u8> {
            let n = self.u32();
            let (v, rest) = self.0.split_at(n);
            self.0 = rest;
            v.to_vec()
        }
    }
    let mut c = Cursor(
        backup
            .strip_prefix(b"rollbackd-backup 1\n".as_slice())
            .expect("the backup's first line"),
    );
    let mut out = BTreeMap::new();
    while !c.0.is_empty() {
        let name = String::from_utf8(c.bytes()).expect("tree name");
        let tree = (0..c.u32()).map(|_| (c.bytes(), c.bytes())).collect();
        out.insert(name, tree);
    }
    out
}

fn backup_over_http(d: &Daemon) -> Vec<u8> {
    let r = client()
        .get(d.url("/v1/backup"))
        .bearer_auth(ADMIN)
        .send()
        .expect("backup");
    assert_eq!(r.status().as_u16(), 200);
    r.bytes().expect("bytes").to_vec()
}

#[test]
fn a_backup_of_a_running_daemon_restores_every_record_into_a_fresh_data_dir() {
    let config = format!("tokens: {{ admin: \"{ADMIN}\" }}\n");
    let setup = Setup::new(&config, RULES);
    let d = setup.start();
    release_pair_and_alert(
        &d,
        "checkout",
        json!({"alertname": "CheckoutErrors", "service": "checkout"}),
        "f1",
    );
    let id = first_incident(&d, "rolled_back", None, Duration::from_secs(15)).expect("rolled back");
    assert_eq!(put_freeze(&d, "billing", "quarter close", Some(ADMIN)), 200);

    // Without the admin token there is no backup, and no file.
    let file = setup.path().join("rollbackd.backup");
    let file_arg = file.to_str().expect("path");
    let o = rollbackd(&["backup", file_arg, "--url", &d.base]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("401"), "{}", text(&o));
    assert!(!file.exists());

    // Online: the daemon keeps running and answering.
    let o = rollbackd(&["backup", file_arg, "--url", &d.base, "--token", ADMIN]);
    assert!(o.status.success(), "{}", text(&o));
    let (s, _) = get(&d.url("/v1/incidents"), None);
    assert_eq!(s, 200);
    let backup = std::fs::read(&file).expect("backup file");
    let original = records(&backup);
    assert!(original["incidents"].contains_key(id.as_bytes()));
    assert_eq!(
        original["freezes"].len(),
        2,
        "checkout (by the incident) and billing"
    );
    assert!(!original["timeline"].is_empty());
    let (_, before) = get(&d.url(&format!("/v1/incidents/{id}")), None);
    drop(d);

    // A cut-short file changes nothing; a dir that holds records is refused.
    let restored = Setup::new(&config, RULES);
    let data = restored.path().join("data");
    let data_arg = data.to_str().expect("path");
    let cut = setup.path().join("cut.backup");
    std::fs::write(&cut, &backup[..backup.len() - 7]).expect("write");
    let o = rollbackd(&["restore", cut.to_str().expect("path"), data_arg]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("cut short"), "{}", text(&o));
    let o = rollbackd(&["restore", file_arg, data_arg]);
    assert!(o.status.success(), "{}", text(&o));
    let n: usize = original.values().map(|t| t.len()).sum();
    assert!(
        text(&o).contains(&format!("restored {n} records into")),
        "{}",
        text(&o)
    );
    let o = rollbackd(&["restore", file_arg, data_arg]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("already holds records"), "{}", text(&o));

    // A daemon on the restored dir holds every record; only the start counter moved on.
    let d = restored.start();
    let (_, after) = get(&d.url(&format!("/v1/incidents/{id}")), None);
    assert_eq!(after, before);
    assert_eq!(after["timeline_chain"]["ok"], Value::Bool(true));
    let mut copy = records(&backup_over_http(&d));
    let mut want = original.clone();
    let epoch = |r: &mut BTreeMap<String, BTreeMap<Vec<u8>, Vec<u8>>>| {
        let v = r
            .get_mut("meta")
            .and_then(|m| m.remove(b"epoch".as_slice()));
        let v = v.expect("meta epoch");
        u64::from_be_bytes(v.try_into().expect("u64"))
    };
    assert_eq!(epoch(&mut copy), epoch(&mut want) + 1);
    assert_eq!(copy, want, "a record differs after restore");
}
