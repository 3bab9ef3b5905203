//! The deploy tools' webhooks: `rollbackd::ingest::{github, gitlab, flux, argocd}::parse` on
//! arbitrary bytes, and `verify_sha256_signature` (GitHub's `X-Hub-Signature-256`, Flux's
//! `X-Signature`) on a fuzzed header and body. Input layout: the first byte picks the tool, the
//! first line after it is the signature header (a line of exactly `-` means "no header"), the
//! rest is the body.
//!
//! Properties: nothing panics; a recorded release is safe to hand to a step and says which tool
//! reported it (`common::check_release`); a signature passes only when it is the real HMAC of the
//! body, the real one always passes, and an empty secret verifies nothing.
#![no_main]

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use jiff::Timestamp;
use libfuzzer_sys::fuzz_target;
use rollbackd::ingest::{self, Outcome};
use sha2::Sha256;

#[path = "common.rs"]
mod common;

const SECRET: &str = "deploy-fuzz-secret-0123";

fn real(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let (header, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let header = match std::str::from_utf8(header) {
        Ok("-") => None,
        Ok(h) => Some(h),
        Err(_) => return,
    };
    let now: Timestamp = "2026-11-24T12:00:00Z".parse().unwrap();
    let services: BTreeMap<String, String> =
        [("acme/web".to_string(), "web".to_string()), ("Kustomization/flux-system/web".to_string(), "web".to_string())]
            .into_iter()
            .collect();

    let name = "X-Hub-Signature-256";
    let verdict = ingest::verify_sha256_signature(name, SECRET, header, body);
    let real_sig = real(body);
    if verdict.is_ok() {
        let given = header.unwrap_or_default().trim();
        assert!(
            given.eq_ignore_ascii_case(&real_sig),
            "a signature that is not the body's HMAC passed: {given}"
        );
    }
    assert!(ingest::verify_sha256_signature(name, SECRET, Some(&real_sig), body).is_ok());
    assert!(ingest::verify_sha256_signature(name, "", Some(&real_sig), body).is_err());

    let (origin, outcome) = match pick % 5 {
        0 => ("github", ingest::github::parse("deployment_status", body, &services, now)),
        1 => ("github", ingest::github::parse(header.unwrap_or(""), body, &services, now)),
        2 => ("gitlab", ingest::gitlab::parse(body, &services, now)),
        3 => ("flux", ingest::flux::parse(body, &services, now)),
        _ => ("argocd", ingest::argocd::parse(body, now)),
    };
    if let Ok(Outcome::Release(r)) = outcome {
        assert_eq!(r.origin, origin);
        common::check_release(&r, now);
    }
});
