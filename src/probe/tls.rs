//! TLS for https trackers (rustls, ring provider).
//!
//! Certificates are verified by default against the system's trust store
//! (rustls-native-certs: Debian's ca-certificates and whatever an operator
//! added there, honouring SSL_CERT_FILE / SSL_CERT_DIR), plus the CA files
//! given with `--tracker-ca` (a private tracker's own CA). Verification is
//! skipped only with `--tracker-insecure`; the handshake's signatures are
//! still checked then, only the chain and the name are not.
//!
//! A tracker whose certificate fails verification is refused: nothing is
//! sent to it, the announce (or scrape) row says why in `failure_reason`,
//! and the run's summary counts the refusals.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// How https trackers are verified.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// PEM files of extra trust anchors (`--tracker-ca`, repeatable).
    pub ca_files: Vec<PathBuf>,
    /// Accept any certificate (`--tracker-insecure`).
    pub insecure: bool,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The client configuration for `o`, with the number of trust anchors it
/// holds (0 with `insecure`).
pub fn client_config(o: &TlsOptions) -> Result<(Arc<ClientConfig>, usize), String> {
    let prov = provider();
    let builder = ClientConfig::builder_with_provider(prov.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    if o.insecure {
        let cfg = builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(prov)))
            .with_no_client_auth();
        return Ok((Arc::new(cfg), 0));
    }
    let mut roots = RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        eprintln!(
            "swarmtap: no system trust anchors found ({} error(s)); https trackers verify against --tracker-ca only",
            found.errors.len()
        );
    }
    for f in &o.ca_files {
        let mut n = 0;
        for c in CertificateDer::pem_file_iter(f).map_err(|e| format!("--tracker-ca {}: {e}", f.display()))? {
            let c = c.map_err(|e| format!("--tracker-ca {}: {e}", f.display()))?;
            roots
                .add(c)
                .map_err(|e| format!("--tracker-ca {}: not a usable CA certificate: {e}", f.display()))?;
            n += 1;
        }
        if n == 0 {
            return Err(format!("--tracker-ca {}: no PEM certificate in it", f.display()));
        }
    }
    let n = roots.len();
    Ok((Arc::new(builder.with_root_certificates(roots).with_no_client_auth()), n))
}

/// The name the certificate must carry: a DNS name, or an IP address
/// (rustls checks IP subject alternative names).
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_string()).map_err(|e| format!("TLS: {host:?} is not a valid server name: {e}"))
}

/// Whether an I/O error from the handshake is a refused certificate.
pub fn is_certificate_refusal(e: &std::io::Error) -> bool {
    e.get_ref()
        .and_then(|i| i.downcast_ref::<rustls::Error>())
        .is_some_and(|r| matches!(r, rustls::Error::InvalidCertificate(_)))
}

/// `--tracker-insecure`: any chain and name accepted; signatures checked.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::tracker::{announce_http, AnnounceParams, TrackerUrl};
    use polars::prelude::*;
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    use rustls::pki_types::PrivateKeyDer;
    use std::net::SocketAddr;
    use std::sync::Mutex;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A CA, and a server certificate it signed for `names`.
    fn pki(names: &[&str]) -> (String, rustls::ServerConfig) {
        server_signed_by(&test_ca("swarmtap test CA (foreign)"), names)
    }

    /// A CA named `cn` (CAs of the same name would be told apart only by
    /// their signatures).
    fn test_ca(cn: &str) -> CertifiedIssuer<'static, KeyPair> {
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(rcgen::DnType::CommonName, cn);
        CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap()
    }

    fn server_signed_by(ca: &CertifiedIssuer<'_, KeyPair>, names: &[&str]) -> (String, rustls::ServerConfig) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let leaf = CertificateParams::new(names).unwrap().signed_by(&key, ca).unwrap();
        let cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        (ca.pem(), cfg)
    }

    /// What one loopback HTTPS tracker saw: request lines answered, and
    /// handshakes that failed.
    #[derive(Default)]
    struct Seen {
        requests: Vec<String>,
        failed_handshakes: u32,
    }

    /// A real HTTPS tracker on loopback: rustls server, answering BEP 3
    /// announces (one peer, compact) and BEP 48 scrapes with bencoded
    /// bodies, for info hash `ih`.
    async fn https_tracker(
        cfg: rustls::ServerConfig,
        ih: [u8; 20],
        seen: Arc<Mutex<Seen>>,
        on_change: Arc<tokio::sync::Notify>,
    ) -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        tokio::spawn(async move {
            while let Ok((tcp, _)) = l.accept().await {
                let acceptor = acceptor.clone();
                let seen = seen.clone();
                let on_change = on_change.clone();
                tokio::spawn(async move {
                    let mut s = match acceptor.accept(tcp).await {
                        Ok(s) => s,
                        Err(_) => {
                            seen.lock().unwrap().failed_handshakes += 1;
                            on_change.notify_one();
                            return;
                        }
                    };
                    let mut req = Vec::new();
                    let mut b = [0u8; 2048];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut b).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&b[..n]),
                        }
                    }
                    let line = String::from_utf8_lossy(&req).lines().next().unwrap_or("").to_string();
                    let mut body = Vec::new();
                    if line.starts_with("GET /scrape?") {
                        body.extend_from_slice(b"d5:filesd20:");
                        body.extend_from_slice(&ih);
                        body.extend_from_slice(b"d8:completei3e10:downloadedi7e10:incompletei5eeee");
                    } else {
                        body.extend_from_slice(
                            b"d8:completei3e10:downloadedi7e10:incompletei5e8:intervali1800e12:min intervali900e5:peers6:",
                        );
                        body.extend_from_slice(&[127, 0, 0, 2, 0x1a, 0xe1]);
                        body.push(b'e');
                    }
                    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                    let _ = s.write_all(head.as_bytes()).await;
                    let _ = s.write_all(&body).await;
                    let _ = s.shutdown().await;
                    seen.lock().unwrap().requests.push(line);
                    on_change.notify_one();
                });
            }
        });
        addr
    }

    fn strs(df: &DataFrame, c: &str) -> Vec<Option<String>> {
        df.column(c)
            .unwrap()
            .str()
            .unwrap()
            .iter()
            .map(|v| v.map(str::to_string))
            .collect()
    }

    fn ints(df: &DataFrame, c: &str) -> Vec<Option<i64>> {
        let s = df.column(c).unwrap().cast(&DataType::Int64).unwrap();
        s.i64().unwrap().iter().collect()
    }

    fn table(dir: &std::path::Path, t: &str) -> DataFrame {
        let f = std::fs::File::open(dir.join(format!("{t}.parquet"))).unwrap();
        ParquetReader::new(f).finish().unwrap()
    }

    /// `swarmtap probe` against three real HTTPS trackers on loopback: one
    /// whose certificate a --tracker-ca file vouches for (scraped, announced
    /// to, `stopped` at the end: rows with transport https and the
    /// tracker's numbers), one whose certificate another CA signed, and one
    /// signed by the right CA for another name. The last two are refused
    /// before anything is sent, on the scrape and on the announce, and
    /// counted: 4 refusals.
    #[test]
    fn probe_announces_and_scrapes_over_https_and_refuses_wrong_certificates() {
        let ih = [0x5a; 20];
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        let out = dir.path().join("out");
        // The right CA signs the good tracker's and the misnamed one's.
        let ca = test_ca("swarmtap test CA");
        let (ca_pem, good_cfg) = server_signed_by(&ca, &["127.0.0.1", "localhost"]);
        let (_, misnamed_cfg) = server_signed_by(&ca, &["tracker.example"]);
        let (_, foreign_cfg) = pki(&["127.0.0.1"]);
        std::fs::write(&ca_file, ca_pem).unwrap();

        let seen: Vec<Arc<Mutex<Seen>>> = (0..3).map(|_| Arc::default()).collect();
        let notify = Arc::new(tokio::sync::Notify::new());
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let rt = tokio::runtime::Runtime::new().unwrap();
        let addrs: Vec<SocketAddr> = rt.block_on(async {
            let mut v = Vec::new();
            for (cfg, s) in [good_cfg, foreign_cfg, misnamed_cfg].into_iter().zip(&seen) {
                v.push(https_tracker(cfg, ih, s.clone(), notify.clone()).await);
            }
            v
        });
        // Ends the probe once the good tracker answered its scrape and
        // first announce and each bad one saw two failed handshakes.
        let watch = seen.clone();
        rt.spawn(async move {
            loop {
                {
                    let ok = watch[0].lock().unwrap().requests.len() >= 2
                        && watch[1..].iter().all(|s| s.lock().unwrap().failed_handshakes >= 2);
                    if ok {
                        let _ = stop_tx.send(true);
                        return;
                    }
                }
                notify.notified().await;
            }
        });

        let mut s = crate::probe::ProbeSettings::new(out.clone());
        let mut t = crate::probe::targets::Target::bare(ih);
        t.trackers = addrs.iter().map(|a| format!("https://{a}/announce")).collect();
        s.targets = vec![t];
        s.policy.allow_private = true;
        s.transports = vec![crate::probe::session::Transport::Tcp];
        s.tls.ca_files = vec![ca_file];
        s.stop = Some(stop_rx);
        // A hang guard only: the run ends on `stop` above.
        s.duration = Some(Duration::from_secs(120));
        let summary = crate::probe::run(s).unwrap();

        assert_eq!(summary.n_tls_refused, 4, "{}", summary.render());
        assert_eq!(summary.n_announces, 4);
        let good = seen[0].lock().unwrap();
        assert_eq!(good.failed_handshakes, 0);
        let q = |r: &str| good.requests.iter().filter(|l| l.starts_with(r)).count();
        assert_eq!(good.requests.len(), 3, "{:?}", good.requests);
        assert_eq!(q("GET /scrape?info_hash=ZZZZ"), 1);
        assert_eq!(
            good.requests
                .iter()
                .filter(|l| l.starts_with("GET /announce?info_hash=ZZZZ") && l.contains("&event=started"))
                .count(),
            1
        );
        assert_eq!(good.requests.iter().filter(|l| l.contains("&event=stopped")).count(), 1);
        for s in &seen[1..] {
            let s = s.lock().unwrap();
            assert!(
                s.requests.is_empty(),
                "a request reached a tracker with a wrong certificate"
            );
            assert_eq!(s.failed_handshakes, 2);
        }

        let a = table(&out, "tracker_announces");
        let (tr, tip, tport, ev, fail) = (
            strs(&a, "transport"),
            strs(&a, "tracker_ip"),
            ints(&a, "tracker_port"),
            strs(&a, "event"),
            strs(&a, "failure_reason"),
        );
        let (se, le, co, iv, np) = (
            ints(&a, "seeders"),
            ints(&a, "leechers"),
            ints(&a, "completed"),
            ints(&a, "interval"),
            ints(&a, "n_peers_returned"),
        );
        assert_eq!(a.height(), 4);
        assert!(tr.iter().all(|t| t.as_deref() == Some("https")), "{tr:?}");
        assert!(tip.iter().all(|t| t.as_deref() == Some("127.0.0.1")));
        let tport = &tport;
        let of = |p: u16| (0..a.height()).filter(move |&i| tport[i] == Some(i64::from(p)));
        let started: Vec<usize> = of(addrs[0].port())
            .filter(|&i| ev[i].as_deref() == Some("started"))
            .collect();
        assert_eq!(started.len(), 1);
        let i = started[0];
        assert_eq!(
            (se[i], le[i], co[i], iv[i], np[i], fail[i].as_deref()),
            (Some(3), Some(5), Some(7), Some(1800), Some(1), None)
        );
        assert_eq!(
            of(addrs[0].port())
                .filter(|&i| ev[i].as_deref() == Some("stopped"))
                .count(),
            1
        );
        for (k, why) in [(1, "UnknownIssuer"), (2, "not valid for name \"127.0.0.1\"")] {
            let rows: Vec<usize> = of(addrs[k].port()).collect();
            assert_eq!(rows.len(), 1);
            let f = fail[rows[0]].clone().unwrap_or_default();
            assert!(f.starts_with("TLS: ") && f.contains(why), "{f}");
            assert_eq!((np[rows[0]], se[rows[0]]), (None, None));
        }
        // The started and the stopped announce were each answered with the one peer.
        let p = table(&out, "tracker_peers");
        assert_eq!(
            (strs(&p, "transport"), strs(&p, "peer_ip"), ints(&p, "peer_port")),
            (
                vec![Some("https".into()); 2],
                vec![Some("127.0.0.2".into()); 2],
                vec![Some(6881); 2]
            )
        );
        let sc = table(&out, "tracker_scrapes");
        assert_eq!(sc.height(), 3);
        let (str_, sport, sse, sle, sco, sf) = (
            strs(&sc, "transport"),
            ints(&sc, "tracker_port"),
            ints(&sc, "seeders"),
            ints(&sc, "leechers"),
            ints(&sc, "completed"),
            strs(&sc, "failure_reason"),
        );
        assert!(str_.iter().all(|t| t.as_deref() == Some("https")));
        for i in 0..3 {
            if sport[i] == Some(i64::from(addrs[0].port())) {
                assert_eq!(
                    (sse[i], sle[i], sco[i], sf[i].as_deref()),
                    (Some(3), Some(5), Some(7), None)
                );
            } else {
                assert_eq!((sse[i], sle[i], sco[i]), (None, None, None));
                assert!(sf[i].as_deref().is_some_and(|f| f.starts_with("TLS: ")), "{:?}", sf[i]);
            }
        }
    }

    /// `--tracker-insecure` talks to a tracker whatever its certificate;
    /// the default refuses the same tracker; a CA file that holds no
    /// certificate is an error before anything is sent.
    #[tokio::test]
    async fn insecure_accepts_any_certificate_and_ca_files_are_checked() {
        let ih = [0x11; 20];
        let (_, foreign_cfg) = pki(&["127.0.0.1"]);
        let seen = Arc::new(Mutex::new(Seen::default()));
        let addr = https_tracker(foreign_cfg, ih, seen.clone(), Arc::default()).await;
        let t = TrackerUrl::parse(&format!("https://{addr}/announce")).unwrap();
        let a = AnnounceParams {
            info_hash: ih,
            peer_id: [2; 20],
            port: 1,
            left: 1,
            event: Some("started"),
            numwant: 50,
            key: 1,
            timeout: Duration::from_secs(20),
        };
        let (strict, n) = client_config(&TlsOptions::default()).unwrap();
        let r = announce_http(&t, addr, &a, Some(&strict)).await;
        assert!(r.tls_refused && r.response_ts_us.is_none(), "{r:?}");
        assert_eq!(n, strict_roots(), "system trust anchors");
        let (loose, n) = client_config(&TlsOptions {
            insecure: true,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(n, 0);
        let r = announce_http(&t, addr, &a, Some(&loose)).await;
        assert!(!r.tls_refused && r.error.is_none(), "{r:?}");
        assert_eq!((r.seeders, r.leechers, r.interval), (Some(3), Some(5), Some(1800)));
        assert_eq!(r.peers, vec!["127.0.0.2:6881".parse::<SocketAddr>().unwrap()]);
        let s = seen.lock().unwrap();
        assert_eq!((s.failed_handshakes, s.requests.len()), (1, 1));

        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("empty.pem");
        std::fs::write(&f, "not a certificate\n").unwrap();
        let e = client_config(&TlsOptions {
            ca_files: vec![f],
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.contains("no PEM certificate"), "{e}");
    }

    /// The system store's anchor count, as rustls-native-certs reads it.
    fn strict_roots() -> usize {
        let mut r = RootCertStore::empty();
        r.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        r.len()
    }
}
