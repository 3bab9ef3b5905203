//! A TCP proxy the test controls, one in front of each cluster node: the members' urls point at
//! the proxies, each node listens on its own port behind its proxy.
//!
//! On each accepted connection the proxy reads the first request head (up to `\r\n\r\n`), takes
//! the sender from its `X-Rollbackd-Node: N` header (case-insensitive; absent: a client, which is
//! never blocked), connects to the node and pipes both ways, the buffered head first. A connection
//! belongs to the directed link `sender -> node` for its whole life (a node sends every request to
//! a peer with its own id, so a kept-alive connection never changes sender).
//!
//! The test blocks and unblocks directed links: a blocked link has its new connections closed at
//! once and its open ones shut down. Threads and `std::net` only.

#![allow(dead_code)]

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// The header a node puts on every request it sends to a peer.
pub const NODE_HEADER: &str = "x-rollbackd-node";

/// How long a new connection may take to send its first head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_HEAD: usize = 64 * 1024;

/// The shared switchboard: which directed links are cut, and the open connections of each.
#[derive(Clone, Default)]
pub struct Net {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
    next_conn: AtomicU64,
}

#[derive(Default)]
struct State {
    /// Node ids with a proxy, for `isolate`.
    nodes: Vec<u64>,
    blocked: HashSet<(u64, u64)>,
    open: Vec<Conn>,
    /// Connections of a node-to-node link accepted so far, per (from, to).
    accepted: Vec<(u64, u64)>,
    /// Connections closed at once because their link was blocked.
    refused: Vec<(u64, u64)>,
    /// Connections without a sender header, per proxied node.
    anonymous: Vec<u64>,
}

struct Conn {
    id: u64,
    from: u64,
    to: u64,
    downstream: TcpStream,
    upstream: TcpStream,
}

impl Conn {
    fn shut(&self) {
        let _ = self.downstream.shutdown(Shutdown::Both);
        let _ = self.upstream.shutdown(Shutdown::Both);
    }
}

impl Net {
    pub fn new() -> Net {
        Net::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Cuts the directed link: connections `from` opens to `to` are closed at once, and those
    /// open now are shut down.
    pub fn block(&self, from: u64, to: u64) {
        let mut st = self.state();
        st.blocked.insert((from, to));
        for c in st.open.iter().filter(|c| c.from == from && c.to == to) {
            c.shut();
        }
        st.open.retain(|c| !(c.from == from && c.to == to));
    }

    pub fn unblock(&self, from: u64, to: u64) {
        self.state().blocked.remove(&(from, to));
    }

    /// Cuts every link to and from `node` (clients still reach it).
    pub fn isolate(&self, node: u64) {
        let others: Vec<u64> = self
            .state()
            .nodes
            .iter()
            .copied()
            .filter(|n| *n != node)
            .collect();
        for o in others {
            self.block(node, o);
            self.block(o, node);
        }
    }

    /// Opens every link to and from `node` again.
    pub fn heal(&self, node: u64) {
        self.state()
            .blocked
            .retain(|(from, to)| *from != node && *to != node);
    }

    /// Opens every link.
    pub fn heal_all(&self) {
        self.state().blocked.clear();
    }

    pub fn is_blocked(&self, from: u64, to: u64) -> bool {
        self.state().blocked.contains(&(from, to))
    }

    /// Open connections of the link `from -> to`.
    pub fn open_connections(&self, from: u64, to: u64) -> usize {
        self.state()
            .open
            .iter()
            .filter(|c| c.from == from && c.to == to)
            .count()
    }

    /// Connections of the link `from -> to` accepted and piped so far.
    pub fn accepted(&self, from: u64, to: u64) -> usize {
        let st = self.state();
        st.accepted.iter().filter(|l| **l == (from, to)).count()
    }

    /// Connections of the link `from -> to` closed at once because it was blocked.
    pub fn refused(&self, from: u64, to: u64) -> usize {
        let st = self.state();
        st.refused.iter().filter(|l| **l == (from, to)).count()
    }

    /// Connections to node `to`'s proxy that named no sender (clients, or a node that left out
    /// its header).
    pub fn anonymous(&self, to: u64) -> usize {
        self.state().anonymous.iter().filter(|t| **t == to).count()
    }

    /// Starts the proxy in front of node `to`, listening on a free loopback port and forwarding
    /// to `target`. Returns its address.
    pub fn proxy(&self, to: u64, target: SocketAddr) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        self.proxy_on(listener, to, target)
    }

    /// Starts the proxy in front of node `to` on `listener`, forwarding to `target`.
    pub fn proxy_on(&self, listener: TcpListener, to: u64, target: SocketAddr) -> SocketAddr {
        let addr = listener.local_addr().expect("proxy addr");
        self.state().nodes.push(to);
        let net = self.clone();
        // Lives until the test process exits; it serves only loopback connections of this test.
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let net = net.clone();
                std::thread::spawn(move || net.serve(stream, to, target));
            }
        });
        addr
    }

    fn serve(&self, mut downstream: TcpStream, to: u64, target: SocketAddr) {
        let _ = downstream.set_nodelay(true);
        let Some(head) = read_head(&mut downstream) else {
            return;
        };
        let from = sender(&head);
        if from.is_none() {
            self.state().anonymous.push(to);
        }
        // A cut link is refused before the node is even asked.
        if let Some(f) = from {
            if self.is_blocked(f, to) {
                self.state().refused.push((f, to));
                let _ = downstream.shutdown(Shutdown::Both);
                return;
            }
        }
        let Ok(mut upstream) = TcpStream::connect_timeout(&target, Duration::from_secs(5)) else {
            let _ = downstream.shutdown(Shutdown::Both);
            return;
        };
        let _ = upstream.set_nodelay(true);
        let id = self.inner.next_conn.fetch_add(1, Ordering::SeqCst);
        if let Some(f) = from {
            // Checked again under the lock that `block` takes, so a link cut meanwhile never
            // keeps a connection.
            let mut st = self.state();
            if st.blocked.contains(&(f, to)) {
                st.refused.push((f, to));
                drop(st);
                let _ = downstream.shutdown(Shutdown::Both);
                let _ = upstream.shutdown(Shutdown::Both);
                return;
            }
            let (Ok(d), Ok(u)) = (downstream.try_clone(), upstream.try_clone()) else {
                return;
            };
            st.accepted.push((f, to));
            st.open.push(Conn {
                id,
                from: f,
                to,
                downstream: d,
                upstream: u,
            });
        }
        if upstream.write_all(&head).is_ok() {
            let (Ok(mut d2), Ok(mut u2)) = (downstream.try_clone(), upstream.try_clone()) else {
                self.forget(id);
                return;
            };
            let back = std::thread::spawn(move || {
                let _ = std::io::copy(&mut u2, &mut d2);
                let _ = d2.shutdown(Shutdown::Both);
                let _ = u2.shutdown(Shutdown::Both);
            });
            let _ = std::io::copy(&mut downstream, &mut upstream);
            let _ = upstream.shutdown(Shutdown::Both);
            let _ = downstream.shutdown(Shutdown::Both);
            let _ = back.join();
        }
        let _ = upstream.shutdown(Shutdown::Both);
        let _ = downstream.shutdown(Shutdown::Both);
        self.forget(id);
    }

    fn forget(&self, id: u64) {
        self.state().open.retain(|c| c.id != id);
    }
}

/// Reads until the end of the first request head; None if the peer closes or sends too much
/// first. The bytes read (the head and whatever followed it in the same reads) are returned.
fn read_head(s: &mut TcpStream) -> Option<Vec<u8>> {
    let _ = s.set_read_timeout(Some(HEAD_TIMEOUT));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
    }
    let _ = s.set_read_timeout(None);
    Some(buf)
}

/// The sender's node id from the `X-Rollbackd-Node` header of the head in `buf`.
pub fn sender(buf: &[u8]) -> Option<u64> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]);
    head.split("\r\n").skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case(NODE_HEADER)
            .then(|| value.trim().parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};

    /// An echo server standing in for a node: answers each line it reads with `node:<line>`.
    fn echo_node(name: &'static str) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut w = s.try_clone().unwrap();
                    for line in BufReader::new(s).lines() {
                        let Ok(line) = line else { return };
                        if writeln!(w, "{name}:{line}").is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    fn head(from: Option<u64>) -> String {
        let h = from
            .map(|f| format!("x-RollbackD-node: {f}\r\n"))
            .unwrap_or_default();
        format!("POST /internal/raft/append HTTP/1.1\r\nHost: x\r\n{h}\r\n")
    }

    /// Connects through the proxy, sends a head, then a line; returns the stream and reader.
    fn open(proxy: SocketAddr, from: Option<u64>) -> (TcpStream, BufReader<TcpStream>) {
        let mut s = TcpStream::connect(proxy).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(head(from).as_bytes()).unwrap();
        let r = BufReader::new(s.try_clone().unwrap());
        (s, r)
    }

    /// Reads lines until one names the node (the echo of the head's lines comes first).
    fn ask(s: &mut TcpStream, r: &mut BufReader<TcpStream>, msg: &str) -> Option<String> {
        writeln!(s, "{msg}").ok()?;
        loop {
            let mut line = String::new();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => return None,
                Ok(_) => {
                    if line.trim_end().ends_with(msg) {
                        return Some(line.trim_end().to_string());
                    }
                }
            }
        }
    }

    /// True when the proxy closed the connection (EOF or reset) without piping anything.
    fn closed(s: &mut TcpStream) -> bool {
        let mut buf = [0u8; 64];
        matches!(s.read(&mut buf), Ok(0) | Err(_))
    }

    #[test]
    fn sender_header_is_case_insensitive_and_optional() {
        assert_eq!(
            sender(b"GET / HTTP/1.1\r\nX-Rollbackd-Node: 3\r\n\r\n"),
            Some(3)
        );
        assert_eq!(
            sender(b"GET / HTTP/1.1\r\nx-rollbackd-node:12 \r\nHost: a\r\n\r\nbody"),
            Some(12)
        );
        assert_eq!(sender(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), None);
        assert_eq!(sender(b"GET / HTTP/1.1\r\nX-Rollbackd-Node: 3\r\n"), None);
        // The header's name only in a value is not the header.
        assert_eq!(
            sender(b"GET / HTTP/1.1\r\nReferer: x-rollbackd-node: 4\r\n\r\n"),
            None
        );
    }

    #[test]
    fn pipes_both_ways_with_the_head_first() {
        let net = Net::new();
        let p = net.proxy(2, echo_node("n2"));
        let (mut s, mut r) = open(p, Some(1));
        let mut first = String::new();
        r.read_line(&mut first).unwrap();
        assert_eq!(first.trim_end(), "n2:POST /internal/raft/append HTTP/1.1");
        assert_eq!(ask(&mut s, &mut r, "hello").as_deref(), Some("n2:hello"));
        assert_eq!(net.accepted(1, 2), 1);
        assert_eq!(net.open_connections(1, 2), 1);
    }

    #[test]
    fn block_cuts_open_connections_and_refuses_new_ones_of_that_link_only() {
        let net = Net::new();
        let p2 = net.proxy(2, echo_node("n2"));
        let p3 = net.proxy(3, echo_node("n3"));
        let (mut a, mut ar) = open(p2, Some(1)); // 1 -> 2
        let (mut b, mut br) = open(p2, Some(3)); // 3 -> 2
        let (mut c, mut cr) = open(p3, Some(2)); // 2 -> 3
        let (mut k, mut kr) = open(p2, None); // a client of 2
        for (s, r) in [(&mut a, &mut ar), (&mut b, &mut br), (&mut c, &mut cr)] {
            assert!(ask(s, r, "before").is_some());
        }
        assert!(ask(&mut k, &mut kr, "before").is_some());
        assert_eq!(net.anonymous(2), 1);

        net.block(1, 2);
        // The open connection of 1 -> 2 is shut down.
        assert!(ask(&mut a, &mut ar, "after").is_none(), "1->2 still open");
        assert_eq!(net.open_connections(1, 2), 0);
        // A new one is closed at once.
        let (mut a2, _) = open(p2, Some(1));
        assert!(closed(&mut a2), "new 1->2 connection was piped");
        assert_eq!(net.refused(1, 2), 1);
        // Other links and clients are untouched, new ones too.
        assert_eq!(ask(&mut b, &mut br, "after").as_deref(), Some("n2:after"));
        assert_eq!(ask(&mut c, &mut cr, "after").as_deref(), Some("n3:after"));
        assert_eq!(ask(&mut k, &mut kr, "after").as_deref(), Some("n2:after"));
        let (mut b2, mut b2r) = open(p2, Some(3));
        assert!(ask(&mut b2, &mut b2r, "new").is_some());
        let (mut k2, mut k2r) = open(p2, None);
        assert!(ask(&mut k2, &mut k2r, "new").is_some());

        net.unblock(1, 2);
        let (mut a3, mut a3r) = open(p2, Some(1));
        assert_eq!(ask(&mut a3, &mut a3r, "again").as_deref(), Some("n2:again"));
    }

    #[test]
    fn isolate_cuts_both_directions_and_heal_restores_them() {
        let net = Net::new();
        let p1 = net.proxy(1, echo_node("n1"));
        let p2 = net.proxy(2, echo_node("n2"));
        let p3 = net.proxy(3, echo_node("n3"));
        let (mut in1, mut in1r) = open(p1, Some(2)); // 2 -> 1
        let (mut out1, mut out1r) = open(p2, Some(1)); // 1 -> 2
        let (mut other, mut otherr) = open(p3, Some(2)); // 2 -> 3
        net.isolate(1);
        assert!(ask(&mut in1, &mut in1r, "x").is_none());
        assert!(ask(&mut out1, &mut out1r, "x").is_none());
        assert!(ask(&mut other, &mut otherr, "x").is_some());
        for (p, from) in [(p1, 2), (p1, 3), (p2, 1), (p3, 1)] {
            let (mut s, _) = open(p, Some(from));
            assert!(closed(&mut s), "{from} -> {p} piped while isolated");
        }
        // Clients still reach the isolated node.
        let (mut k, mut kr) = open(p1, None);
        assert_eq!(ask(&mut k, &mut kr, "client").as_deref(), Some("n1:client"));

        net.heal(1);
        for (p, from) in [(p1, 2), (p1, 3), (p2, 1), (p3, 1)] {
            let (mut s, mut r) = open(p, Some(from));
            assert!(ask(&mut s, &mut r, "healed").is_some(), "{from} -> {p}");
        }
    }

    #[test]
    fn one_direction_only() {
        let net = Net::new();
        let p1 = net.proxy(1, echo_node("n1"));
        let p2 = net.proxy(2, echo_node("n2"));
        net.block(1, 2);
        let (mut s, _) = open(p2, Some(1));
        assert!(closed(&mut s));
        let (mut s, mut r) = open(p1, Some(2));
        assert_eq!(ask(&mut s, &mut r, "back").as_deref(), Some("n1:back"));
        net.heal_all();
        let (mut s, mut r) = open(p2, Some(1));
        assert!(ask(&mut s, &mut r, "fwd").is_some());
    }
}
