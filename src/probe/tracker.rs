//! Tracker announces made by the probe: HTTP (BEP 3, compact BEP 23), the
//! same over TLS (https, see [`super::tls`]) and UDP (BEP 15). Requests are built here; responses are read with the
//! passive pipeline's parsers ([`HttpStream`], [`tracker_udp::parse_response`]),
//! so a capture of the probe decodes to the same numbers.
//!
//! The statistics we report are true: we downloaded and uploaded nothing,
//! and have nothing (`left` = the torrent's size when known, else 1 so a
//! tracker does not count us as a seeder).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::proto::tracker_http::{
    Expect, HttpEvent, HttpLimits, HttpResponse, HttpStream, PeerHost, RequestKind, ResponseBody, Role,
};
use crate::proto::tracker_udp::{self, AddrFamily, UdpLimits, UdpResponse};

/// A tracker URL we can announce to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackerUrl {
    pub udp: bool,
    /// https: HTTP over TLS.
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// HTTP: path and any query of the URL (passkeys live here); UDP: unused.
    pub path: String,
    pub url: String,
}

impl TrackerUrl {
    pub fn parse(url: &str) -> Option<TrackerUrl> {
        let (udp, tls, rest, default_port) = if let Some(r) = url.strip_prefix("http://") {
            (false, false, r, 80)
        } else if let Some(r) = url.strip_prefix("https://") {
            (false, true, r, 443)
        } else if let Some(r) = url.strip_prefix("udp://") {
            (true, false, r, 0)
        } else {
            return None;
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = if let Some(h) = authority.strip_prefix('[') {
            let end = h.find(']')?;
            let port = h[end + 1..]
                .strip_prefix(':')
                .map(|p| p.parse().ok())
                .unwrap_or(Some(default_port))?;
            (h[..end].to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().ok()?),
                None => (authority.to_string(), default_port),
            }
        };
        if host.is_empty() || port == 0 {
            return None;
        }
        Some(TrackerUrl {
            udp,
            tls,
            host,
            port,
            path: path.to_string(),
            url: url.to_string(),
        })
    }

    /// The `transport` of its rows: http, https or udp.
    pub fn transport(&self) -> &'static str {
        match (self.udp, self.tls) {
            (true, _) => "udp",
            (false, true) => "https",
            (false, false) => "http",
        }
    }

    fn default_port(&self) -> u16 {
        if self.tls {
            443
        } else {
            80
        }
    }
}

/// What we announce.
#[derive(Debug, Clone)]
pub struct AnnounceParams {
    pub info_hash: [u8; 20],
    pub peer_id: [u8; 20],
    pub port: u16,
    pub left: u64,
    /// "started", "stopped", or None for a regular announce.
    pub event: Option<&'static str>,
    pub numwant: i32,
    pub key: u32,
    pub timeout: Duration,
}

/// A tracker's answer.
#[derive(Debug, Clone, Default)]
pub struct AnnounceResult {
    pub tracker: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
    pub ts_us: i64,
    pub response_ts_us: Option<i64>,
    pub interval: Option<i64>,
    pub min_interval: Option<i64>,
    pub seeders: Option<i64>,
    pub leechers: Option<i64>,
    pub completed: Option<i64>,
    pub peers: Vec<SocketAddr>,
    pub n_peers6: u64,
    pub failure: Option<String>,
    pub warning: Option<String>,
    pub status: Option<u32>,
    /// Transport-level failure (no answer at all).
    pub error: Option<String>,
    /// https: the tracker's certificate failed verification (nothing was sent).
    pub tls_refused: bool,
}

pub(super) fn urlencode(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 3);
    for &c in b {
        if c.is_ascii_alphanumeric() || b"-_.~".contains(&c) {
            s.push(c as char);
        } else {
            s.push_str(&format!("%{c:02X}"));
        }
    }
    s
}

/// The HTTP announce request's target (path and query).
pub fn http_target(t: &TrackerUrl, a: &AnnounceParams) -> String {
    let sep = if t.path.contains('?') { '&' } else { '?' };
    let mut q = format!(
        "{}{sep}info_hash={}&peer_id={}&port={}&uploaded=0&downloaded=0&left={}&corrupt=0&key={:08X}&numwant={}&compact=1&no_peer_id=1&supportcrypto=1",
        t.path,
        urlencode(&a.info_hash),
        urlencode(&a.peer_id),
        a.port,
        a.left,
        a.key,
        a.numwant.max(0),
    );
    if let Some(e) = a.event {
        q.push_str("&event=");
        q.push_str(e);
    }
    q
}

/// Resolves the tracker's host (a literal address needs no lookup).
pub async fn resolve(t: &TrackerUrl) -> Result<Vec<SocketAddr>, String> {
    if let Ok(ip) = t.host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, t.port)]);
    }
    tokio::net::lookup_host((t.host.as_str(), t.port))
        .await
        .map(|i| i.collect())
        .map_err(|e| format!("cannot resolve {}: {e}", t.host))
}

/// One HTTP GET of `target` to the tracker at `addr` (over TLS for an
/// https tracker, with `tls`), the response read by the passive parser as
/// an answer of `kind`. Returns our local address, the response (or why
/// there is none), and whether the tracker's certificate was refused.
pub(super) async fn http_get(
    t: &TrackerUrl,
    addr: SocketAddr,
    target: &str,
    kind: RequestKind,
    timeout: Duration,
    tls: Option<&Arc<ClientConfig>>,
) -> (Option<SocketAddr>, Result<Box<HttpResponse>, String>, bool) {
    let mut local = None;
    let mut refused = false;
    let host = if t.port == t.default_port() {
        t.host.clone()
    } else if t.host.contains(':') {
        format!("[{}]:{}", t.host, t.port)
    } else {
        format!("{}:{}", t.host, t.port)
    };
    let req = format!(
        "GET {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: swarmtap/{}\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    );
    let res = tokio::time::timeout(timeout, async {
        let s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        local = s.local_addr().ok();
        if !t.tls {
            return request(s, req.as_bytes(), kind, false).await;
        }
        let cfg = tls.ok_or_else(|| "https tracker without a TLS configuration".to_string())?;
        let name = super::tls::server_name(&t.host)?;
        let s = tokio_rustls::TlsConnector::from(cfg.clone())
            .connect(name, s)
            .await
            .map_err(|e| {
                refused = super::tls::is_certificate_refusal(&e);
                format!("TLS: {e}")
            })?;
        request(s, req.as_bytes(), kind, true).await
    })
    .await;
    let r = match res {
        Err(_) => Err("timeout".to_string()),
        Ok(r) => r,
    };
    (local, r, refused)
}

/// Sends `req` on `s` and reads the response with the passive parser.
async fn request<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    req: &[u8],
    kind: RequestKind,
    tls: bool,
) -> Result<Box<HttpResponse>, String> {
    let limits = HttpLimits::default();
    s.write_all(req).await.map_err(|e| e.to_string())?;
    let mut stream = HttpStream::new(Role::Response, limits);
    stream.expect(Expect {
        kind,
        head: false,
        index: 0,
    });
    let mut buf = vec![0u8; 16 * 1024];
    let mut total = 0usize;
    let mut resp = None;
    loop {
        let n = match s.read(&mut buf).await {
            Ok(n) => n,
            // Many servers close a TLS connection without close_notify; the
            // body's own framing (length, chunks, a complete bencoded
            // dictionary) says whether the answer is whole.
            Err(e) if tls && e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(e.to_string()),
        };
        let mut on = |ev: HttpEvent| {
            if let HttpEvent::Response(x) = ev {
                if !x.interim && resp.is_none() {
                    resp = Some(x);
                }
            }
        };
        if n == 0 {
            stream.finish(&mut on);
            break;
        }
        total += n;
        if total > limits.max_body_bytes + limits.max_head_bytes {
            return Err("tracker response too large".to_string());
        }
        stream.feed(&buf[..n], &mut on);
        if resp.is_some() {
            break;
        }
    }
    resp.ok_or_else(|| "no complete HTTP response".to_string())
}

/// Announces over HTTP (or https, with `tls`) to `addr`.
pub async fn announce_http(
    t: &TrackerUrl,
    addr: SocketAddr,
    a: &AnnounceParams,
    tls: Option<&Arc<ClientConfig>>,
) -> AnnounceResult {
    let mut r = AnnounceResult {
        tracker: Some(addr),
        ts_us: super::session::now_us(),
        ..Default::default()
    };
    let (local, res, refused) = http_get(t, addr, &http_target(t, a), RequestKind::Announce, a.timeout, tls).await;
    r.local = local;
    r.tls_refused = refused;
    match res {
        Err(e) => r.error = Some(e),
        Ok(resp) => {
            r.response_ts_us = Some(super::session::now_us());
            r.status = Some(u32::from(resp.status));
            match resp.body {
                ResponseBody::Announce(b) => {
                    r.failure = b.failure_reason;
                    r.warning = b.warning_message;
                    r.interval = b.interval;
                    r.min_interval = b.min_interval;
                    r.seeders = b.complete;
                    r.leechers = b.incomplete;
                    r.completed = b.downloaded;
                    for p in b.peers {
                        if let PeerHost::Ip(ip) = p.host {
                            if ip.is_ipv6() {
                                r.n_peers6 += 1;
                            }
                            r.peers.push(SocketAddr::new(ip, p.port));
                        }
                    }
                }
                _ => r.error = Some(format!("HTTP {} without an announce response", resp.status)),
            }
        }
    }
    r
}

fn udp_event(e: Option<&'static str>) -> u32 {
    match e {
        Some("completed") => 1,
        Some("started") => 2,
        Some("stopped") => 3,
        _ => 0,
    }
}

/// BEP 15 connect: a socket connected to the tracker, the transaction id
/// used (the next request uses it + 1) and the connection id. Else (our
/// local address, the tracker's error message, a transport error).
#[allow(clippy::type_complexity)]
pub(super) async fn udp_connect(
    addr: SocketAddr,
    buf: &mut [u8],
    deadline: Instant,
) -> Result<(UdpSocket, u32, u64), (Option<SocketAddr>, Option<String>, Option<String>)> {
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().unwrap_or(addr)
    } else {
        "[::]:0".parse().unwrap_or(addr)
    };
    let sock = UdpSocket::bind(bind)
        .await
        .map_err(|e| (None, None, Some(e.to_string())))?;
    sock.connect(addr)
        .await
        .map_err(|e| (None, None, Some(e.to_string())))?;
    let local = sock.local_addr().ok();
    let fam = AddrFamily::of(addr.ip());
    let limits = UdpLimits::default();
    let mut tid_b = [0u8; 4];
    super::mse::fill_random(&mut tid_b);
    let tid = u32::from_be_bytes(tid_b);
    let mut connect = Vec::with_capacity(16);
    connect.extend_from_slice(&tracker_udp::PROTOCOL_ID.to_be_bytes());
    connect.extend_from_slice(&tracker_udp::ACTION_CONNECT.to_be_bytes());
    connect.extend_from_slice(&tid.to_be_bytes());
    let got = exchange(&sock, &connect, buf, deadline, |d| {
        match tracker_udp::parse_response(d, fam, &limits) {
            Ok(UdpResponse::Connect(c)) if c.transaction_id == tid => Some(Ok(c.connection_id)),
            Ok(UdpResponse::Error(e)) if e.transaction_id == tid => {
                Some(Err(String::from_utf8_lossy(e.message).into_owned()))
            }
            _ => None,
        }
    })
    .await;
    match got {
        None => Err((local, None, Some("timeout".into()))),
        Some(Err(m)) => Err((local, Some(m), None)),
        Some(Ok(cid)) => Ok((sock, tid, cid)),
    }
}

/// Announces over UDP (BEP 15): connect, then announce; each step retried
/// on silence until the overall timeout.
pub async fn announce_udp(addr: SocketAddr, a: &AnnounceParams) -> AnnounceResult {
    let mut r = AnnounceResult {
        tracker: Some(addr),
        ts_us: super::session::now_us(),
        ..Default::default()
    };
    let mut buf = vec![0u8; 65536];
    let deadline = Instant::now() + a.timeout;
    let (sock, tid, cid) = match udp_connect(addr, &mut buf, deadline).await {
        Ok(x) => x,
        Err((local, failure, error)) => {
            r.local = local;
            if failure.is_some() {
                r.response_ts_us = Some(super::session::now_us());
            }
            r.failure = failure;
            r.error = error;
            return r;
        }
    };
    r.local = sock.local_addr().ok();
    let fam = AddrFamily::of(addr.ip());
    let limits = UdpLimits::default();
    let tid2 = tid.wrapping_add(1);
    let mut req = Vec::with_capacity(98);
    req.extend_from_slice(&cid.to_be_bytes());
    req.extend_from_slice(&tracker_udp::ACTION_ANNOUNCE.to_be_bytes());
    req.extend_from_slice(&tid2.to_be_bytes());
    req.extend_from_slice(&a.info_hash);
    req.extend_from_slice(&a.peer_id);
    req.extend_from_slice(&0u64.to_be_bytes()); // downloaded
    req.extend_from_slice(&a.left.to_be_bytes());
    req.extend_from_slice(&0u64.to_be_bytes()); // uploaded
    req.extend_from_slice(&udp_event(a.event).to_be_bytes());
    req.extend_from_slice(&0u32.to_be_bytes()); // ip: the sender's
    req.extend_from_slice(&a.key.to_be_bytes());
    req.extend_from_slice(&a.numwant.to_be_bytes());
    req.extend_from_slice(&a.port.to_be_bytes());
    let got = exchange(&sock, &req, &mut buf, deadline, |d| {
        match tracker_udp::parse_response(d, fam, &limits) {
            Ok(UdpResponse::Announce(x)) if x.transaction_id == tid2 => Some(Ok((
                i64::from(x.interval),
                i64::from(x.seeders),
                i64::from(x.leechers),
                x.peers.iter().collect::<Vec<_>>(),
            ))),
            Ok(UdpResponse::Error(e)) if e.transaction_id == tid2 => {
                Some(Err(String::from_utf8_lossy(e.message).into_owned()))
            }
            _ => None,
        }
    })
    .await;
    match got {
        None => r.error = Some("timeout".into()),
        Some(Err(m)) => {
            r.response_ts_us = Some(super::session::now_us());
            r.failure = Some(m);
        }
        Some(Ok((interval, seeders, leechers, peers))) => {
            r.response_ts_us = Some(super::session::now_us());
            r.interval = Some(interval);
            r.seeders = Some(seeders);
            r.leechers = Some(leechers);
            r.n_peers6 = peers.iter().filter(|p| p.is_ipv6()).count() as u64;
            r.peers = peers;
        }
    }
    r
}

/// Sends `req` and waits for a datagram `accept` recognises; resends after
/// 2, 4, 8 … seconds of silence (BEP 15 uses 15·2^n; a probe is impatient
/// but still backs off) until `deadline`.
pub(super) async fn exchange<T>(
    sock: &UdpSocket,
    req: &[u8],
    buf: &mut [u8],
    deadline: Instant,
    accept: impl Fn(&[u8]) -> Option<T>,
) -> Option<T> {
    let mut wait = Duration::from_secs(2);
    loop {
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        if sock.send(req).await.is_err() {
            return None;
        }
        let until = (now + wait).min(deadline);
        loop {
            match tokio::time::timeout_at(until.into(), sock.recv(buf)).await {
                Err(_) => break,
                Ok(Err(_)) => return None,
                Ok(Ok(n)) => {
                    if let Some(t) = accept(&buf[..n]) {
                        return Some(t);
                    }
                }
            }
        }
        wait *= 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = TrackerUrl::parse("http://10.99.0.1:6969/announce").unwrap();
        assert_eq!(
            (t.udp, t.host.as_str(), t.port, t.path.as_str()),
            (false, "10.99.0.1", 6969, "/announce")
        );
        let t = TrackerUrl::parse("udp://tracker.example:1337").unwrap();
        assert_eq!((t.udp, t.port), (true, 1337));
        let t = TrackerUrl::parse("http://[fd00::1]/a?pk=1").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.path.as_str()), ("fd00::1", 80, "/a?pk=1"));
        assert!(TrackerUrl::parse("udp://host").is_none());
        let t = TrackerUrl::parse("https://x/announce").unwrap();
        assert_eq!((t.tls, t.udp, t.port, t.transport()), (true, false, 443, "https"));
        let t = TrackerUrl::parse("https://[::1]:8443/announce").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.transport()), ("::1", 8443, "https"));
        assert!(TrackerUrl::parse("wss://x/announce").is_none());
    }

    #[test]
    fn http_target_is_honest() {
        let t = TrackerUrl::parse("http://h:1/announce").unwrap();
        let a = AnnounceParams {
            info_hash: [0xab; 20],
            peer_id: *b"-SW0100-abcdefghijkl",
            port: 6881,
            left: 1234,
            event: Some("started"),
            numwant: 50,
            key: 7,
            timeout: Duration::from_secs(1),
        };
        let q = http_target(&t, &a);
        assert!(q.starts_with("/announce?info_hash=%AB%AB"));
        assert!(q.contains("&peer_id=-SW0100-abcdefghijkl&port=6881&uploaded=0&downloaded=0&left=1234&"));
        assert!(q.ends_with("&event=started"));
    }

    /// A real HTTP exchange on loopback, parsed by the passive parser.
    #[tokio::test]
    async fn http_announce_on_loopback() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut b = vec![0u8; 4096];
            let _ = s.read(&mut b).await;
            let body = b"d8:completei1e10:incompletei2e8:intervali900e12:min intervali60e5:peers12:\x0a\x63\x00\x0b\x1a\xe1\x0a\x63\x00\x0c\x1a\xe2e";
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(body).await;
        });
        let t = TrackerUrl::parse(&format!("http://127.0.0.1:{}/announce", addr.port())).unwrap();
        let a = AnnounceParams {
            info_hash: [1; 20],
            peer_id: [2; 20],
            port: 1,
            left: 1,
            event: Some("started"),
            numwant: 50,
            key: 1,
            timeout: Duration::from_secs(3),
        };
        let r = announce_http(&t, addr, &a, None).await;
        assert_eq!(r.error, None);
        assert_eq!(r.interval, Some(900));
        assert_eq!(r.min_interval, Some(60));
        assert_eq!((r.seeders, r.leechers), (Some(1), Some(2)));
        assert_eq!(
            r.peers,
            vec!["10.99.0.11:6881".parse().unwrap(), "10.99.0.12:6882".parse().unwrap()]
        );
    }

    /// A real UDP exchange on loopback.
    #[tokio::test]
    async fn udp_announce_on_loopback() {
        let srv = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = srv.local_addr().unwrap();
        tokio::spawn(async move {
            let mut b = vec![0u8; 2048];
            let (n, from) = srv.recv_from(&mut b).await.unwrap();
            assert_eq!(n, 16);
            let mut c = vec![0, 0, 0, 0];
            c.extend_from_slice(&b[12..16]);
            c.extend_from_slice(&0x1122334455667788u64.to_be_bytes());
            srv.send_to(&c, from).await.unwrap();
            let (n, from) = srv.recv_from(&mut b).await.unwrap();
            assert_eq!(n, 98);
            assert_eq!(&b[0..8], &0x1122334455667788u64.to_be_bytes());
            assert_eq!(&b[56..64], &0u64.to_be_bytes()); // downloaded
            assert_eq!(&b[64..72], &777u64.to_be_bytes()); // left
            let mut r = vec![0, 0, 0, 1];
            r.extend_from_slice(&b[12..16]);
            r.extend_from_slice(&120u32.to_be_bytes());
            r.extend_from_slice(&3u32.to_be_bytes());
            r.extend_from_slice(&4u32.to_be_bytes());
            r.extend_from_slice(&[10, 99, 0, 13, 0x1a, 0xe1]);
            srv.send_to(&r, from).await.unwrap();
        });
        let a = AnnounceParams {
            info_hash: [1; 20],
            peer_id: [2; 20],
            port: 1,
            left: 777,
            event: None,
            numwant: -1,
            key: 1,
            timeout: Duration::from_secs(3),
        };
        let r = announce_udp(addr, &a).await;
        assert_eq!(r.error, None);
        assert_eq!(r.interval, Some(120));
        assert_eq!((r.seeders, r.leechers), (Some(4), Some(3)));
        assert_eq!(r.peers, vec!["10.99.0.13:6881".parse().unwrap()]);
    }
}
