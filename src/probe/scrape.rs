//! Tracker scrapes made by the probe: HTTP (BEP 48) and UDP (BEP 15 action
//! 2). Requests are built here; responses are read with the passive
//! pipeline's parsers, like the announces in [`super::tracker`].
//!
//! The scrape URL follows BEP 48: only when the last path segment of the
//! announce URL starts with `announce` is there one, that `announce`
//! replaced by `scrape` (the rest of the segment and the query kept).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::ClientConfig;

use super::tracker::{exchange, http_get, udp_connect, urlencode, TrackerUrl};
use crate::proto::tracker_http::{RequestKind, ResponseBody};
use crate::proto::tracker_udp::{self, AddrFamily, UdpLimits, UdpResponse};

/// One torrent's counters in a scrape answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScrapeCounts {
    pub seeders: Option<i64>,
    pub leechers: Option<i64>,
    pub completed: Option<i64>,
}

/// A scrape's outcome.
#[derive(Debug, Clone, Default)]
pub struct ScrapeResult {
    pub tracker: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
    pub ts_us: i64,
    pub response_ts_us: Option<i64>,
    /// Per asked info hash, in request order: the counts the tracker gave
    /// (`None`: the answer left it out).
    pub files: Vec<([u8; 20], Option<ScrapeCounts>, Option<String>)>,
    /// The tracker's `failure reason` or UDP error message.
    pub failure: Option<String>,
    /// No usable answer (timeout, connection refused, not a scrape).
    pub error: Option<String>,
    /// https: the tracker's certificate failed verification (nothing was sent).
    pub tls_refused: bool,
}

/// The scrape path (and query) of an HTTP announce URL's path, when BEP 48
/// defines one.
pub fn scrape_path(announce_path: &str) -> Option<String> {
    let (path, query) = match announce_path.find('?') {
        Some(i) => (&announce_path[..i], &announce_path[i..]),
        None => (announce_path, ""),
    };
    let slash = path.rfind('/')?;
    let last = &path[slash + 1..];
    let rest = last.strip_prefix("announce")?;
    Some(format!("{}scrape{rest}{query}", &path[..=slash]))
}

/// The HTTP scrape request target for `hashes`, or `None` without a scrape URL.
pub fn http_scrape_target(t: &TrackerUrl, hashes: &[[u8; 20]]) -> Option<String> {
    let mut q = scrape_path(&t.path)?;
    let mut sep = if q.contains('?') { '&' } else { '?' };
    for h in hashes {
        q.push(sep);
        q.push_str("info_hash=");
        q.push_str(&urlencode(h));
        sep = '&';
    }
    Some(q)
}

/// The BEP 15 scrape request (action 2).
pub fn udp_scrape_request(connection_id: u64, tid: u32, hashes: &[[u8; 20]]) -> Vec<u8> {
    let mut req = Vec::with_capacity(16 + 20 * hashes.len());
    req.extend_from_slice(&connection_id.to_be_bytes());
    req.extend_from_slice(&tracker_udp::ACTION_SCRAPE.to_be_bytes());
    req.extend_from_slice(&tid.to_be_bytes());
    for h in hashes {
        req.extend_from_slice(h);
    }
    req
}

/// Scrapes `hashes` over HTTP or https (the caller checked [`http_scrape_target`]).
pub async fn scrape_http(
    t: &TrackerUrl,
    addr: SocketAddr,
    hashes: &[[u8; 20]],
    timeout: Duration,
    tls: Option<&Arc<ClientConfig>>,
) -> ScrapeResult {
    let mut r = ScrapeResult {
        tracker: Some(addr),
        ts_us: super::session::now_us(),
        ..Default::default()
    };
    let Some(target) = http_scrape_target(t, hashes) else {
        r.error = Some("no scrape URL (BEP 48: the announce path must end in announce*)".into());
        return r;
    };
    let (local, res, refused) = http_get(t, addr, &target, RequestKind::Scrape, timeout, tls).await;
    r.local = local;
    r.tls_refused = refused;
    match res {
        Err(e) => r.error = Some(e),
        Ok(resp) => {
            r.response_ts_us = Some(super::session::now_us());
            match resp.body {
                ResponseBody::Scrape(s) => {
                    r.failure = s.failure_reason;
                    for h in hashes {
                        let f = s.files.iter().find(|f| f.info_hash == *h);
                        r.files.push((
                            *h,
                            f.map(|f| ScrapeCounts {
                                seeders: f.complete,
                                leechers: f.incomplete,
                                completed: f.downloaded,
                            }),
                            f.and_then(|f| f.name.clone()),
                        ));
                    }
                }
                _ => r.error = Some(format!("HTTP {} without a scrape response", resp.status)),
            }
        }
    }
    r
}

/// Scrapes `hashes` over UDP: connect, then scrape.
pub async fn scrape_udp(addr: SocketAddr, hashes: &[[u8; 20]], timeout: Duration) -> ScrapeResult {
    let mut r = ScrapeResult {
        tracker: Some(addr),
        ts_us: super::session::now_us(),
        ..Default::default()
    };
    let mut buf = vec![0u8; 65536];
    let deadline = Instant::now() + timeout;
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
    let req = udp_scrape_request(cid, tid2, hashes);
    let got = exchange(&sock, &req, &mut buf, deadline, |d| {
        match tracker_udp::parse_response(d, fam, &limits) {
            Ok(UdpResponse::Scrape(s)) if s.transaction_id == tid2 => Some(Ok(s
                .entries
                .iter()
                .map(|e| ScrapeCounts {
                    seeders: Some(i64::from(e.seeders)),
                    leechers: Some(i64::from(e.leechers)),
                    completed: Some(i64::from(e.completed)),
                })
                .collect::<Vec<_>>())),
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
        Some(Ok(entries)) => {
            r.response_ts_us = Some(super::session::now_us());
            // BEP 15: entries in request order.
            for (i, h) in hashes.iter().enumerate() {
                r.files.push((*h, entries.get(i).copied(), None));
            }
        }
    }
    r
}

/// Whether the tracker has a scrape (UDP always; HTTP per BEP 48).
pub fn has_scrape(t: &TrackerUrl) -> bool {
    t.udp || scrape_path(&t.path).is_some()
}

/// Scrapes one tracker (HTTP, https or UDP) at `addr`.
pub async fn scrape(
    t: &TrackerUrl,
    addr: SocketAddr,
    hashes: &[[u8; 20]],
    timeout: Duration,
    tls: Option<&Arc<ClientConfig>>,
) -> ScrapeResult {
    if t.udp {
        scrape_udp(addr, hashes, timeout).await
    } else {
        scrape_http(t, addr, hashes, timeout, tls).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UdpSocket;

    #[test]
    fn bep48_scrape_urls() {
        assert_eq!(scrape_path("/announce").as_deref(), Some("/scrape"));
        assert_eq!(scrape_path("/x/announce").as_deref(), Some("/x/scrape"));
        assert_eq!(scrape_path("/announce.php").as_deref(), Some("/scrape.php"));
        assert_eq!(scrape_path("/a/announce?pk=ab").as_deref(), Some("/a/scrape?pk=ab"));
        assert_eq!(scrape_path("/announce?x=y/z").as_deref(), Some("/scrape?x=y/z"));
        // BEP 48's examples of URLs without a scrape.
        assert_eq!(scrape_path("/a"), None);
        assert_eq!(scrape_path("/announce/x"), None);
        assert_eq!(scrape_path("/x%064announce"), None);
        assert_eq!(scrape_path("/"), None);
        let t = TrackerUrl::parse("http://h:1/announce?pk=1").unwrap();
        assert_eq!(
            http_scrape_target(&t, &[[0xab; 20], [0x41; 20]]).unwrap(),
            format!(
                "/scrape?pk=1&info_hash={}&info_hash={}",
                "%AB".repeat(20),
                "A".repeat(20)
            )
        );
    }

    /// The request encoder against the passive parser, and known bytes.
    #[test]
    fn udp_scrape_request_round_trip() {
        let req = udp_scrape_request(0x0102030405060708, 0xdeadbeef, &[[7; 20], [9; 20]]);
        assert_eq!(
            &req[..16],
            b"\x01\x02\x03\x04\x05\x06\x07\x08\x00\x00\x00\x02\xde\xad\xbe\xef"
        );
        assert_eq!(req.len(), 56);
        match tracker_udp::parse_request(&req, &UdpLimits::default()) {
            Ok(tracker_udp::UdpRequest::Scrape(s)) => {
                assert_eq!(s.connection_id, 0x0102030405060708);
                assert_eq!(s.transaction_id, 0xdeadbeef);
                assert_eq!(s.info_hashes.iter().collect::<Vec<_>>(), vec![[7; 20], [9; 20]]);
            }
            other => panic!("not a scrape request: {other:?}"),
        }
    }

    /// A real UDP scrape on loopback: connect, scrape, entries in request order.
    #[tokio::test]
    async fn udp_scrape_on_loopback() {
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
            assert_eq!(n, 16 + 40);
            assert_eq!(&b[0..12], b"\x11\x22\x33\x44\x55\x66\x77\x88\x00\x00\x00\x02");
            let mut r = vec![0, 0, 0, 2];
            r.extend_from_slice(&b[12..16]);
            for (s, c, l) in [(5u32, 17u32, 3u32), (0, 1, 2)] {
                r.extend_from_slice(&s.to_be_bytes());
                r.extend_from_slice(&c.to_be_bytes());
                r.extend_from_slice(&l.to_be_bytes());
            }
            srv.send_to(&r, from).await.unwrap();
        });
        let r = scrape_udp(addr, &[[1; 20], [2; 20]], Duration::from_secs(3)).await;
        assert_eq!(r.error, None);
        let c = |s, l, d| {
            Some(ScrapeCounts {
                seeders: Some(s),
                leechers: Some(l),
                completed: Some(d),
            })
        };
        assert_eq!(r.files, vec![([1; 20], c(5, 3, 17), None), ([2; 20], c(0, 2, 1), None)]);
    }

    /// A real HTTP scrape on loopback: the request line, and the known
    /// answer read by the passive parser (one torrent answered, one left out).
    #[tokio::test]
    async fn http_scrape_on_loopback() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let srv = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut b = vec![0u8; 4096];
            let n = s.read(&mut b).await.unwrap();
            let body = b"d5:filesd20:\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01d8:completei4e10:downloadedi9e10:incompletei6eeee";
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
            s.write_all(head.as_bytes()).await.unwrap();
            s.write_all(body).await.unwrap();
            String::from_utf8_lossy(&b[..n]).into_owned()
        });
        let t = TrackerUrl::parse(&format!("http://127.0.0.1:{}/announce", addr.port())).unwrap();
        let r = scrape_http(&t, addr, &[[1; 20], [2; 20]], Duration::from_secs(3), None).await;
        let req = srv.await.unwrap();
        assert!(
            req.starts_with(&format!(
                "GET /scrape?info_hash={}&info_hash={} HTTP/1.1\r\n",
                "%01".repeat(20),
                "%02".repeat(20)
            )),
            "{req}"
        );
        assert_eq!(r.error, None);
        assert_eq!(
            r.files,
            vec![
                (
                    [1; 20],
                    Some(ScrapeCounts {
                        seeders: Some(4),
                        leechers: Some(6),
                        completed: Some(9)
                    }),
                    None
                ),
                ([2; 20], None, None)
            ]
        );
    }
}
