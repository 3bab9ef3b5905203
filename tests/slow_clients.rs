//! Slow and idle clients against the real binary: a head that never completes is cut off at
//! `limits.header_read_timeout`, a body that never completes gets 408 at
//! `limits.body_read_timeout`, and `limits.max_connections` bounds the connections served at
//! once. Real time is the point here, so the timeouts are short and real.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

fn connect(d: &Daemon) -> TcpStream {
    let s = TcpStream::connect(d.base.trim_start_matches("http://")).expect("connect");
    s.set_nodelay(true).unwrap();
    s
}

/// What the server did with the connection within `wait`.
#[derive(Debug, PartialEq)]
enum Heard {
    /// It closed the connection (EOF or reset) with nothing said.
    Closed,
    /// It answered; the bytes read until it closed or went quiet.
    Answered(String),
    /// Nothing at all.
    Silence,
}

fn listen(s: &mut TcpStream, wait: Duration) -> Heard {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                // Once something arrived, a short quiet ends the answer.
                s.set_read_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if buf.is_empty() {
                    return Heard::Silence;
                }
                break;
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("read: {e}"),
        }
    }
    if buf.is_empty() {
        Heard::Closed
    } else {
        Heard::Answered(String::from_utf8_lossy(&buf).to_string())
    }
}

fn healthz(d: &Daemon) {
    let (s, v) = get(&d.url("/healthz"), None);
    assert_eq!(s, 200, "{v}");
}

#[test]
fn a_head_that_never_completes_is_cut_off() {
    let setup = Setup::new("limits: { header_read_timeout: 1s }\n", "rules: []\n");
    let d = setup.start();
    let start = Instant::now();
    // Half a request's head, then nothing.
    let mut half = connect(&d);
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .unwrap();
    // A head trickled a byte at a time: the deadline counts from the start, not from the last byte.
    let mut trickle = connect(&d);
    let mut t = trickle.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        for b in
            b"POST /v1/signals HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        {
            if t.write_all(&[*b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    // Connected and silent from the start.
    let mut silent = connect(&d);

    for (name, s) in [
        ("half", &mut half),
        ("trickle", &mut trickle),
        ("silent", &mut silent),
    ] {
        let heard = listen(s, Duration::from_secs(3));
        assert_ne!(
            heard,
            Heard::Silence,
            "{name}: still open {:?} after the start",
            start.elapsed()
        );
        if let Heard::Answered(a) = &heard {
            assert!(!a.starts_with("HTTP/1.1 2"), "{name}: served: {a}");
        }
    }
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "closed after {took:?} (header_read_timeout 1s)"
    );
    let _ = writer.join();
    healthz(&d);
}

#[test]
fn a_body_that_never_completes_gets_408() {
    let setup = Setup::new(
        "limits: { header_read_timeout: 5s, body_read_timeout: 1s }\n",
        "rules: []\n",
    );
    let d = setup.start();
    let mut s = connect(&d);
    let start = Instant::now();
    s.write_all(
        b"POST /v1/signals HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"labels\":",
    )
    .unwrap();
    let heard = listen(&mut s, Duration::from_secs(3));
    let took = start.elapsed();
    let Heard::Answered(a) = heard else {
        panic!("no 408 after {took:?}: {heard:?}");
    };
    assert!(a.starts_with("HTTP/1.1 408"), "{a}");
    assert!(a.contains("application/json"), "{a}");
    assert!(a.contains("body_read_timeout"), "{a}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "answered after {took:?} (body_read_timeout 1s)"
    );
    // Nothing was accepted, and the daemon serves on.
    let (status, v) = get(&d.url("/v1/breaches"), None);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["items"], serde_json::json!([]), "{v}");
    healthz(&d);
}

#[test]
fn connections_beyond_the_limit_wait_for_a_free_slot() {
    let setup = Setup::new(
        "limits: { max_connections: 2, header_read_timeout: 10s }\n",
        "rules: []\n",
    );
    let d = setup.start();
    let first = connect(&d);
    let second = connect(&d);
    // The kernel accepts in order, so the two idle connections hold both slots.
    let mut third = connect(&d);
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(
        listen(&mut third, Duration::from_millis(800)),
        Heard::Silence,
        "a third connection was served while two held the slots"
    );
    drop(first);
    match listen(&mut third, Duration::from_secs(2)) {
        Heard::Answered(a) => assert!(a.starts_with("HTTP/1.1 200"), "{a}"),
        other => panic!("not served once a slot was free: {other:?}"),
    }
    drop(third);
    drop(second);
    for _ in 0..3 {
        healthz(&d);
    }
    // An idle connection does not hold up a clean stop.
    let _idle = connect(&d);
    std::thread::sleep(Duration::from_millis(100));
    let start = Instant::now();
    d.stop_cleanly();
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "stop took {:?}",
        start.elapsed()
    );
}
