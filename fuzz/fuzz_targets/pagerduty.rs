//! PagerDuty Webhooks V3: `verify_signature` with a fixed secret, then `parse` and `input` on the
//! body. Input layout: the first line is the `X-PagerDuty-Signature` header value (a line of
//! exactly `-` means "no header"), the rest is the body.
//!
//! Properties: nothing panics; the real HMAC of the body is always accepted (alone, and among
//! other entries during a rotation); no header is 400; a header without a well-formed `v1=` entry
//! is 400, and one whose entries are all well-formed but wrong is 401; a signature under another
//! secret never passes; an empty configured secret never verifies anything; a vote names a
//! PagerDuty user only when the event's agent is one, and carries the event's `occurred_at`.
#![no_main]

use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use rollbackd::ingest::pagerduty::{self, SignatureError};
use sha2::Sha256;

const SECRET: &str = "ChAnGeMe+fuzz/secret==";
const OTHER: &str = "another-secret-entirely";

fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    format!(
        "v1={}",
        tag.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

fuzz_target!(|data: &[u8]| {
    let (header, body) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (Some(&data[..i]), &data[i + 1..]),
        None => (None, data),
    };
    let header = header
        .filter(|h| *h != b"-")
        .map(|h| String::from_utf8_lossy(h).into_owned());

    // Whatever the header says: never panics; a pass means the real signature is in it.
    let verdict = pagerduty::verify_signature(&[SECRET], header.as_deref(), body);
    if verdict.is_ok() {
        let good = sign(SECRET, body);
        let hex = &good[3..];
        let h = header.as_deref().unwrap_or("").to_ascii_lowercase();
        assert!(
            h.contains(hex),
            "accepted a header without the real HMAC: {h:?}"
        );
    }
    if let Err(e) = verdict {
        assert!(matches!(e.status(), 400 | 401));
    }
    assert_eq!(
        pagerduty::verify_signature(&[SECRET], None, body),
        Err(SignatureError::Missing)
    );

    // The real signature passes, alone or next to the fuzzed header's entries.
    let good = sign(SECRET, body);
    assert_eq!(
        pagerduty::verify_signature(&[SECRET], Some(&good), body),
        Ok(())
    );
    assert_eq!(
        pagerduty::verify_signature(&[OTHER, SECRET], Some(&good), body),
        Ok(())
    );
    if let Some(h) = header.as_deref() {
        let rotating = format!("{h},{good}");
        assert_eq!(
            pagerduty::verify_signature(&[SECRET], Some(&rotating), body),
            Ok(()),
            "a valid entry after {h:?} was not found"
        );
    }
    // Another secret's signature, and the empty secret, never pass.
    let wrong = sign(OTHER, body);
    assert_eq!(
        pagerduty::verify_signature(&[SECRET], Some(&wrong), body),
        Err(SignatureError::NoMatch)
    );
    let empty = sign("", body);
    assert_eq!(
        pagerduty::verify_signature(&[""], Some(&empty), body),
        Err(SignatureError::NoMatch)
    );

    // The parse and its meaning, whatever the signature.
    if let Ok(event) = pagerduty::parse(body) {
        assert!(!event.id.is_empty() && !event.event_type.is_empty());
        // A vote is a person's (`agent.type: user_reference`) or nobody's, and carries the
        // signed occurred_at it is checked against.
        if let rollbackd::model::PagerDutyInput::Vote {
            pd_user,
            occurred_at,
            ..
        } = pagerduty::input(&event, Some("PAPPRV1"), Some("PREJCT1"))
        {
            let person = event
                .agent
                .as_ref()
                .filter(|a| a.kind.as_deref() == Some("user_reference"));
            assert_eq!(pd_user, person.map(|a| a.id.clone()));
            assert_eq!(occurred_at, event.occurred_at);
        }
        let _ = pagerduty::input(&event, None, None);
        if let Some(s) = pagerduty::signal(&event) {
            assert!(!s.key.is_empty());
        }
    }
});
