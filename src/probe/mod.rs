//! `swarmtap probe`: active probes that ask a swarm what a passive tap did
//! not see. Torrents come from .torrent files, magnet links, bare info
//! hashes or a passive dataset; peers from trackers (HTTP, UDP), ut_pex and
//! explicit endpoints. Each peer is visited over TCP or uTP (plaintext, or
//! MSE/PE with RC4 or plaintext payload, falling back between them), its piece
//! count read from bitfield / have / have_all / have_none, and revisited on
//! a schedule until it crosses the completion threshold; failures back off
//! and retry. Confirmed downloads and their crossing time come from the
//! visit history.
//!
//! Concurrency: one current-thread tokio runtime of its own (never inside
//! the analysis pipeline's rayon pool). A single scheduler loop owns all
//! state; contacts and tracker announces run as tasks that report back over
//! a channel, so nothing is shared and nothing is locked. Rows go to the
//! same Parquet writer thread `analyze` uses, in the same tables.
//!
//! Safety: every destination passes the [`targets::AddrPolicy`] (private and
//! loopback ranges refused unless `--allow-private`, CIDR allow/deny), a
//! global concurrency cap and a rate limit bound what the probe sends, and
//! [`ProbeLimits`] bound what it keeps.

pub mod dht;
mod discovery;
pub mod mse;
pub mod schedule;
pub mod scrape;
pub mod session;
pub mod targets;
pub mod tls;
pub mod tracker;
pub mod utp;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::proto::metainfo::{hex, Metainfo};
use crate::proto::peer_wire::PeerWireLimits;
use crate::sink::{
    PeerProgressRow, PeerRow, ProbeVisitRow, RowBatch, SinkThread, TorrentRow, TrackerAnnounceRow, TrackerPeerRow, Ts,
};
use session::{Attempt, ContactParams, Crypto, Transport};
use targets::{AddrPolicy, Target};
use tracker::{AnnounceParams, AnnounceResult, TrackerUrl};

/// Bounds on what the probe holds, each with its reason.
#[derive(Debug, Clone, Copy)]
pub struct ProbeLimits {
    /// Peers (info hash, address) tracked. Each costs ~300 bytes plus its
    /// visit history (16 bytes a visit); 2^20 peers ≈ 0.5 GB at worst. Past
    /// it, newly discovered peers are counted, not tracked.
    pub max_peers: usize,
    /// Visit-history points kept per peer. Visits stop once a peer crosses
    /// the threshold, so a history only grows while a download is slow;
    /// past the bound the newest point replaces the last one (first and
    /// latest kept, the crossing is detected as points arrive).
    pub max_history: usize,
    /// Messages read in one contact before it ends. A peer announces each
    /// piece once; 2^16 covers a full torrent of 65 k pieces announced by
    /// `have`s, and stops an endless `have` stream.
    pub max_msgs: u64,
    /// Largest info dictionary fetched by ut_metadata. libtorrent refuses
    /// metadata above 4 MiB by default; 16 MiB covers very large torrents.
    pub max_metadata_bytes: usize,
    /// ut_pex peers taken from one contact (a ut_pex message lists at most
    /// 50 added peers per BEP 11 practice; several may arrive).
    pub max_pex_per_contact: usize,
    /// Largest piece count a bitfield may describe (same as the passive
    /// pipeline: 2^23 pieces = 1 MiB of bitfield).
    pub max_pieces: u32,
    /// Peer-wire framing bounds (the passive pipeline's): a length prefix
    /// above `max_message_len` (1 MiB) ends the contact.
    pub wire: PeerWireLimits,
    /// Longest single contact: a peer trickling keep-alives just under the
    /// idle timeout cannot hold a slot for ever.
    pub max_contact: Duration,
    /// probe_visits rows buffered before they are handed to the writer.
    pub visit_rows_per_batch: usize,
    /// uTP connections, buffers and timers (see `utp::UtpLimits`).
    pub utp: utp::UtpLimits,
    /// The DHT node's bounds (table, queries, values; see [`dht::DhtNodeLimits`]).
    pub dht: dht::DhtNodeLimits,
}

impl Default for ProbeLimits {
    fn default() -> Self {
        ProbeLimits {
            max_peers: 1 << 20,
            max_history: 1024,
            max_msgs: 1 << 16,
            max_metadata_bytes: 16 << 20,
            max_pex_per_contact: 200,
            max_pieces: 1 << 23,
            wire: PeerWireLimits::default(),
            max_contact: Duration::from_secs(120),
            visit_rows_per_batch: 4096,
            utp: utp::UtpLimits::default(),
            dht: dht::DhtNodeLimits::default(),
        }
    }
}

/// Validated settings of one probe run.
#[derive(Debug, Clone)]
pub struct ProbeSettings {
    pub targets: Vec<Target>,
    /// Endpoints contacted for every target (`--peer`).
    pub peers: Vec<SocketAddr>,
    pub policy: AddrPolicy,
    pub output: PathBuf,
    /// How the dataset is written (`--sensor`, `--force`).
    pub output_options: crate::sink::OutputOptions,
    /// Longest time between visits of a peer below the threshold (a peer
    /// whose count does not move is revisited this often).
    pub revisit: Duration,
    /// Shortest time between visits: the scheduler's lower bound.
    pub min_revisit: Duration,
    /// First back-off after a failed visit; doubles per consecutive failure
    /// up to `max_backoff`.
    pub retry: Duration,
    pub max_backoff: Duration,
    /// Run length; `None`: until SIGINT.
    pub duration: Option<Duration>,
    pub concurrency: usize,
    /// New contacts per second.
    pub rate: f64,
    pub crypto: Vec<Crypto>,
    /// Transports tried in order (`--transport`); a peer known to speak
    /// uTP (ut_pex flag) or that answered over one goes that way first.
    pub transports: Vec<Transport>,
    pub threshold: f64,
    pub connect_timeout: Duration,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub announce: bool,
    pub announce_port: u16,
    pub numwant: i32,
    pub tracker_timeout: Duration,
    /// Shortest re-announce interval we use even if a tracker asks for less.
    pub min_reannounce: Duration,
    pub pex: bool,
    /// Port to accept incoming peers on (announced instead of `announce_port`).
    pub listen: Option<u16>,
    /// DHT entry points, HOST:PORT (`--dht-bootstrap`); none: no DHT node.
    pub dht_bootstrap: Vec<String>,
    /// UDP port of our DHT node (0: any).
    pub dht_port: u16,
    /// Time between get_peers rounds.
    pub dht_interval: Duration,
    /// Scrape every tracker before each announce.
    pub scrape: bool,
    /// How https trackers' certificates are verified (`--tracker-ca`,
    /// `--tracker-insecure`).
    pub tls: tls::TlsOptions,
    /// Ends the run when it turns true, as --duration does (embedding, tests).
    pub stop: Option<watch::Receiver<bool>>,
    pub limits: ProbeLimits,
}

impl ProbeSettings {
    pub fn new(output: PathBuf) -> Self {
        ProbeSettings {
            targets: Vec::new(),
            peers: Vec::new(),
            policy: AddrPolicy::default(),
            output,
            output_options: crate::sink::OutputOptions::default(),
            revisit: Duration::from_secs(300),
            min_revisit: Duration::from_secs(10),
            retry: Duration::from_secs(30),
            max_backoff: Duration::from_secs(1800),
            duration: None,
            concurrency: 64,
            rate: 20.0,
            crypto: vec![Crypto::Plain, Crypto::Rc4],
            transports: vec![Transport::Tcp, Transport::Utp],
            threshold: 0.98,
            connect_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(6),
            announce: true,
            announce_port: 6881,
            numwant: 200,
            tracker_timeout: Duration::from_secs(15),
            min_reannounce: Duration::from_secs(60),
            pex: true,
            listen: None,
            dht_bootstrap: Vec::new(),
            dht_port: 0,
            dht_interval: Duration::from_secs(300),
            scrape: true,
            tls: tls::TlsOptions::default(),
            stop: None,
            limits: ProbeLimits::default(),
        }
    }
}

/// Totals printed at the end.
#[derive(Debug, Clone, Default)]
pub struct ProbeSummary {
    pub n_torrents: usize,
    pub n_peers: usize,
    pub n_visits: u64,
    pub n_attempts: u64,
    pub n_visits_ok: u64,
    pub n_first_contacts: u64,
    pub n_first_contacts_ok: u64,
    pub n_announces: u64,
    /// https announces and scrapes refused: the tracker's certificate failed verification.
    pub n_tls_refused: u64,
    pub n_incoming: u64,
    pub n_refused_by_policy: u64,
    pub n_untracked: u64,
    pub n_confirmed: u64,
    pub elapsed_s: f64,
    pub cpu_s: f64,
}

impl ProbeSummary {
    pub fn render(&self) -> String {
        let share = if self.n_first_contacts > 0 {
            100.0 * self.n_first_contacts_ok as f64 / self.n_first_contacts as f64
        } else {
            0.0
        };
        let vpm = if self.elapsed_s > 0.0 {
            self.n_visits as f64 * 60.0 / self.elapsed_s
        } else {
            0.0
        };
        format!(
            "{} torrent(s), {} peer(s); {} visit(s) ({} attempts, {} ok), first contacts ok {}/{} ({share:.0} %); \
             {} announce(s) ({} refused for their TLS certificate); {} incoming contact(s); {} confirmed download(s); {} address(es) refused by policy, {} peer(s) over the tracking cap; \
             {:.1} s, {vpm:.1} visits/min, {:.2} s CPU",
            self.n_torrents,
            self.n_peers,
            self.n_visits,
            self.n_attempts,
            self.n_visits_ok,
            self.n_first_contacts_ok,
            self.n_first_contacts,
            self.n_announces,
            self.n_tls_refused,
            self.n_incoming,
            self.n_confirmed,
            self.n_refused_by_policy,
            self.n_untracked,
            self.elapsed_s,
            self.cpu_s,
        )
    }
}

/// Source bits of a peer (`peers.sources`).
const SRC_TRACKER: u8 = 1;
const SRC_PEX: u8 = 2;
const SRC_PROBE: u8 = 4;
const SRC_GIVEN: u8 = 8;
const SRC_INCOMING: u8 = 16;
const SRC_DHT: u8 = 32;

struct TorrentState {
    target: Target,
    meta: Option<Metainfo>,
    metadata_source: &'static str,
    n_pieces: Option<u32>,
    /// Largest bitfield length seen (bits), an estimate when the count is unknown.
    estimate: u64,
    first_ts: Option<i64>,
    last_ts: Option<i64>,
}

impl TorrentState {
    fn piece_length(&self) -> Option<u64> {
        self.meta.as_ref().map(|m| m.piece_length)
    }
}

struct PeerState {
    torrent: u32,
    addr: SocketAddr,
    sources: u8,
    peer_id: Option<[u8; 20]>,
    client: Option<Box<str>>,
    first_ts: i64,
    last_ts: i64,
    /// (visit start µs, pieces the peer had), successful visits with a count.
    history: Vec<(i64, u64)>,
    /// What set each point of `history` (bitfield, have, …), in step.
    causes: Vec<&'static str>,
    /// (time µs, pieces) the scheduler estimates the rate from: every
    /// count heard and each contact's end (see [`schedule`]).
    obs: Vec<(i64, u64)>,
    crypto_ok: Option<Crypto>,
    /// Transport of the last successful visit, else a hint (ut_pex uTP flag).
    transport_ok: Option<Transport>,
    failures: u32,
    n_visits: u32,
    n_ok: u32,
    done: bool,
    in_flight: bool,
}

enum Event {
    Visit {
        peer: u32,
        attempts: Vec<Attempt>,
    },
    Announce {
        torrent: u32,
        url: String,
        udp: bool,
        params: AnnounceParams,
        result: Box<AnnounceResult>,
    },
    TrackerEnded,
    Scrape {
        torrent: u32,
        url: String,
        udp: bool,
        result: Box<scrape::ScrapeResult>,
    },
    Dht(Box<dht::DhtReport>),
    Incoming {
        from: SocketAddr,
        result: Option<Box<(usize, Attempt)>>,
    },
}

struct Probe {
    s: ProbeSettings,
    peer_id: [u8; 20],
    torrents: Vec<TorrentState>,
    peers: Vec<PeerState>,
    index: HashMap<(u32, SocketAddr), u32>,
    due: BTreeSet<(Instant, u32)>,
    rows: RowBatch,
    sink: SinkThread,
    summary: ProbeSummary,
    next_conn_id: u64,
    /// Our own addresses (local ends of tracker and peer connections):
    /// trackers and ut_pex list us back; we never contact ourselves.
    local_ips: HashSet<IpAddr>,
    /// (torrent, address, peer id) of peers heard from: an incoming peer
    /// without a BEP 10 listen port is matched to the peer we know by its id.
    by_peer_id: HashMap<(u32, IpAddr, [u8; 20]), u32>,
    /// The UDP socket of uTP contacts (on the listen port with --listen).
    utp: Option<std::sync::Arc<utp::UtpSocket>>,
    /// The same over IPv6 (IPv6-only, same port number): IPv6 peers are
    /// tried over uTP like IPv4 ones. None when the host has no IPv6.
    utp6: Option<std::sync::Arc<utp::UtpSocket>>,
}

/// Runs a probe to completion (duration reached or SIGINT) and writes every
/// table to the output directory.
pub fn run(s: ProbeSettings) -> Result<ProbeSummary, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    rt.block_on(run_async(s))
}

fn our_peer_id() -> [u8; 20] {
    // Our own Azureus-style prefix, then 12 random alphanumerics.
    let mut id = *b"-SW0100-000000000000";
    let mut r = [0u8; 12];
    mse::fill_random(&mut r);
    const ALNUM: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    for (i, b) in r.iter().enumerate() {
        id[8 + i] = ALNUM[usize::from(*b) % ALNUM.len()];
    }
    id
}

fn cpu_seconds() -> f64 {
    // utime + stime from /proc/self/stat (fields 14 and 15, in clock ticks
    // of 1/100 s on Linux).
    let Ok(s) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let Some(rest) = s.rsplit_once(')').map(|x| x.1) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}

async fn run_async(s: ProbeSettings) -> Result<ProbeSummary, String> {
    // TLS for https trackers: the trust anchors are read once, and a bad
    // --tracker-ca fails the run before anything is sent or written.
    let https = s.announce
        && s.targets
            .iter()
            .flat_map(|t| &t.trackers)
            .any(|u| TrackerUrl::parse(u).is_some_and(|t| t.tls));
    let tls_config = if https || !s.tls.ca_files.is_empty() {
        let (cfg, n) = tls::client_config(&s.tls)?;
        if https {
            if s.tls.insecure {
                eprintln!("swarmtap: https trackers: certificates NOT verified (--tracker-insecure)");
            } else {
                eprintln!("swarmtap: https trackers: certificates verified against {n} trust anchor(s)");
            }
        }
        Some(cfg)
    } else {
        None
    };
    let sink = SinkThread::to_dir_with(&s.output, &s.output_options)?;
    let started = Instant::now();
    let cpu0 = cpu_seconds();
    let mut p = Probe {
        peer_id: our_peer_id(),
        torrents: Vec::new(),
        peers: Vec::new(),
        index: HashMap::new(),
        due: BTreeSet::new(),
        rows: RowBatch::default(),
        sink,
        summary: ProbeSummary::default(),
        next_conn_id: 1,
        local_ips: HashSet::new(),
        by_peer_id: HashMap::new(),
        utp: None,
        utp6: None,
        s,
    };
    let (tx, mut rx) = mpsc::channel::<Event>(1024);
    // Trackers stop (and send `stopped`) as soon as the run ends; contacts in
    // progress get a grace period at the end of --duration to finish what
    // they are hearing, and none on SIGINT.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (cut_tx, cut_rx) = watch::channel(false);

    // Torrents and the peers we were given.
    let targets = std::mem::take(&mut p.s.targets);
    for t in targets {
        let n_pieces = t.meta.as_ref().map(|m| m.n_pieces).or(t.n_pieces);
        let given: Vec<SocketAddr> = t.peers.iter().chain(p.s.peers.iter()).copied().collect();
        let utp_given = t.utp_peers.clone();
        let idx = p.torrents.len() as u32;
        p.torrents.push(TorrentState {
            metadata_source: if t.meta.is_some() { "torrent_file" } else { "none" },
            meta: t.meta.clone(),
            n_pieces,
            estimate: 0,
            first_ts: None,
            last_ts: None,
            target: t,
        });
        let now = session::now_us();
        for a in given {
            p.add_peer(idx, a, SRC_GIVEN, now);
        }
        // Seen over uTP by a passive capture: tried that way first.
        for a in utp_given {
            if let Some(&i) = p.index.get(&(idx, a)) {
                p.peers[i as usize].transport_ok = Some(Transport::Utp);
            }
        }
    }

    // The listen port, when asked for: announced in place of --announce-port.
    let listeners = match p.s.listen {
        Some(port) => {
            let (l4, l6) = listen_tcp(port).await?;
            p.s.announce_port = l4.local_addr().map(|a| a.port()).unwrap_or(port);
            [Some(l4), l6]
        }
        None => [None, None],
    };
    // uTP: the same port number over UDP when listening (real clients
    // connect to the announced port over uTP), else an ephemeral port.
    if p.s.listen.is_some() || p.s.transports.contains(&Transport::Utp) {
        let port = if p.s.listen.is_some() { p.s.announce_port } else { 0 };
        let addr = SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, port));
        let u = utp::UtpSocket::bind(addr, p.s.listen.is_some(), p.s.limits.utp)
            .await
            .map_err(|e| format!("cannot bind UDP port {port} for uTP: {e}"))?;
        p.utp = Some(std::sync::Arc::new(u));
        let port = p
            .utp
            .as_ref()
            .and_then(|u| u.local_addr().ok())
            .map(|a| a.port())
            .unwrap_or(port);
        let addr6 = SocketAddr::from((
            std::net::Ipv6Addr::UNSPECIFIED,
            if p.s.listen.is_some() { port } else { 0 },
        ));
        match utp::UtpSocket::bind(addr6, p.s.listen.is_some(), p.s.limits.utp).await {
            Ok(u) => p.utp6 = Some(std::sync::Arc::new(u)),
            Err(e) => eprintln!("swarmtap: no IPv6 UDP socket for uTP ({e}); IPv6 peers are tried over TCP only"),
        }
    }
    let utp_socks = [p.utp.clone(), p.utp6.clone()];
    // Incoming uTP from an address the policy refuses gets no answer at all.
    for u in utp_socks.iter().flatten() {
        let policy = p.s.policy.clone();
        u.set_accept_filter(std::sync::Arc::new(move |ip| policy.refuse(ip).is_none()));
    }

    // Tracker loops.
    let mut n_trackers = 0usize;
    if p.s.announce {
        for (i, t) in p.torrents.iter().enumerate() {
            for url in &t.target.trackers {
                let Some(tu) = TrackerUrl::parse(url) else {
                    eprintln!("swarmtap: skipping tracker {url}: only http://, https:// and udp:// are supported");
                    continue;
                };
                let left = t.meta.as_ref().map(|m| m.total_bytes).unwrap_or(1).max(1);
                let mut key = [0u8; 4];
                mse::fill_random(&mut key);
                let ap = AnnounceParams {
                    info_hash: t.target.info_hash,
                    peer_id: p.peer_id,
                    port: p.s.announce_port,
                    left,
                    event: Some("started"),
                    numwant: p.s.numwant,
                    key: u32::from_be_bytes(key),
                    timeout: p.s.tracker_timeout,
                };
                tokio::spawn(tracker_loop(
                    i as u32,
                    tu,
                    ap,
                    p.s.scrape,
                    p.s.policy.clone(),
                    p.s.min_reannounce,
                    tls_config.clone(),
                    tx.clone(),
                    stop_rx.clone(),
                ));
                n_trackers += 1;
            }
        }
    }

    // Our DHT node, when given entry points: ends like a tracker loop.
    if p.start_dht(&tx, &stop_rx).await {
        n_trackers += 1;
    }

    let deadline = p.s.duration.map(|d| started + d);
    let mut in_flight = 0usize;
    let mut next_launch = Instant::now();
    let launch_gap = Duration::from_secs_f64(1.0 / p.s.rate.max(0.001));
    let sigint = tokio::signal::ctrl_c();
    tokio::pin!(sigint);
    let mut stopping = false;
    let mut trackers_alive = n_trackers;
    let mut drain_deadline: Option<Instant> = None;
    let mut cut_at: Option<Instant> = None;
    let mut interrupted = false;
    let mut outside_stop = p.s.stop.clone();

    loop {
        let now = Instant::now();
        if !stopping {
            if deadline.is_some_and(|d| now >= d) {
                stopping = true;
            }
            // Every peer done and no tracker left to ask: nothing more to learn.
            if p.due.is_empty() && in_flight == 0 && trackers_alive == 0 {
                eprintln!("swarmtap: every peer completed or none left to visit; stopping");
                stopping = true;
            }
        }
        if stopping {
            if drain_deadline.is_none() {
                let _ = stop_tx.send(true);
                let grace = if interrupted {
                    Duration::ZERO
                } else {
                    (p.s.handshake_timeout + p.s.idle_timeout).min(p.s.limits.max_contact)
                };
                cut_at = Some(now + grace);
                drain_deadline = Some(now + grace + p.s.connect_timeout + Duration::from_secs(5));
            }
            if cut_at.is_some_and(|c| now >= c) && !*cut_tx.borrow() {
                let _ = cut_tx.send(true);
            }
            if in_flight == 0 && trackers_alive == 0 {
                break;
            }
            if drain_deadline.is_some_and(|d| now >= d) {
                eprintln!("swarmtap: {in_flight} contact(s) and {trackers_alive} tracker(s) still busy at the end; not waiting");
                break;
            }
        } else {
            // Launch what is due, within the concurrency cap and the rate.
            while in_flight < p.s.concurrency && now >= next_launch {
                let Some(&(when, peer)) = p.due.iter().next() else {
                    break;
                };
                if when > now {
                    break;
                }
                p.due.remove(&(when, peer));
                p.launch(peer, &tx, &cut_rx);
                in_flight += 1;
                next_launch = next_launch.max(now - launch_gap) + launch_gap;
            }
        }
        // Sleep until something can happen.
        let mut wake = now + Duration::from_secs(3600);
        if let Some(d) = deadline {
            wake = wake.min(d);
        }
        if let Some(d) = drain_deadline {
            wake = wake.min(d);
        }
        if let Some(c) = cut_at.filter(|_| !*cut_tx.borrow()) {
            wake = wake.min(c);
        }
        if !stopping && in_flight < p.s.concurrency {
            if let Some(&(when, _)) = p.due.iter().next() {
                wake = wake.min(when.max(next_launch));
            }
        }
        tokio::select! {
            ev = rx.recv() => match ev {
                Some(Event::Visit { peer, attempts }) => {
                    in_flight -= 1;
                    p.on_visit(peer, attempts, stopping, false)?;
                }
                Some(Event::Announce { torrent, url, udp, params, result }) => {
                    p.on_announce(torrent, &url, udp, &params, *result);
                }
                Some(Event::TrackerEnded) => trackers_alive = trackers_alive.saturating_sub(1),
                Some(Event::Scrape { torrent, url, udp, result }) => p.on_scrape(torrent, &url, udp, *result),
                Some(Event::Dht(r)) => p.on_dht(*r),
                Some(Event::Incoming { from, result }) => {
                    in_flight -= 1;
                    if let Some(r) = result {
                        let (ti, a) = *r;
                        p.on_incoming(ti, from, a)?;
                    }
                }
                None => {}
            },
            acc = accept_utp(&utp_socks), if p.s.listen.is_some() && !stopping => {
                if let Some(stream) = acc {
                    let from = stream.peer_addr();
                    if p.s.policy.refuse(from.ip()).is_none() && in_flight < p.s.concurrency {
                        let known: Vec<ContactParams> = (0..p.torrents.len()).map(|i| p.params_for(i)).collect();
                        let tx = tx.clone();
                        let cut = cut_rx.clone();
                        in_flight += 1;
                        tokio::spawn(async move {
                            let local = stream.local_addr().ok();
                            let r = session::accept_stream(stream, Transport::Utp, local, &known, &cut).await;
                            let _ = tx.send(Event::Incoming { from, result: r.map(Box::new) }).await;
                        });
                    }
                }
            }
            acc = accept_tcp(&listeners), if listeners[0].is_some() && !stopping => {
                if let Ok((sock, from)) = acc {
                    if p.s.policy.refuse(from.ip()).is_none() && in_flight < p.s.concurrency {
                        let known: Vec<ContactParams> = (0..p.torrents.len()).map(|i| p.params_for(i)).collect();
                        let tx = tx.clone();
                        let cut = cut_rx.clone();
                        in_flight += 1;
                        tokio::spawn(async move {
                            let r = session::accept_contact(sock, &known, &cut).await;
                            let _ = tx.send(Event::Incoming { from, result: r.map(Box::new) }).await;
                        });
                    }
                }
            }
            _ = tokio::time::sleep_until(wake) => {}
            _ = async {
                match &mut outside_stop {
                    Some(r) => {
                        let _ = r.wait_for(|&s| s).await;
                    }
                    None => std::future::pending().await,
                }
            }, if !stopping && outside_stop.is_some() => {
                stopping = true;
            }
            r = &mut sigint, if !interrupted => {
                if r.is_ok() {
                    eprintln!("swarmtap: interrupted; ending contacts in progress and writing tables");
                }
                interrupted = true;
                stopping = true;
                // A SIGINT during the grace period cuts it short.
                if cut_at.is_some() {
                    cut_at = Some(Instant::now());
                    drain_deadline = Some(Instant::now() + p.s.connect_timeout + Duration::from_secs(5));
                }
            }
        }
    }

    if let Some(u) = &p.utp {
        eprintln!("swarmtap: {}", u.stats().render());
    }
    if let Some(u) = &p.utp6 {
        eprintln!("swarmtap: IPv6 {}", u.stats().render());
    }
    p.summary.elapsed_s = started.elapsed().as_secs_f64();
    p.summary.cpu_s = cpu_seconds() - cpu0;
    p.finish()
}

/// The TCP listeners of `--listen`: IPv4 on `port` (0: one the system
/// picks), and IPv6 on the same port number, bound IPv6-only (IPV6_V6ONLY)
/// as the uTP socket is, so that each family has its own and IPv4 peers
/// never appear as IPv4-mapped addresses. A host without IPv6 listens on
/// IPv4 alone (said on stderr).
pub(crate) async fn listen_tcp(
    port: u16,
) -> Result<(tokio::net::TcpListener, Option<tokio::net::TcpListener>), String> {
    let l4 = tokio::net::TcpListener::bind((std::net::Ipv4Addr::UNSPECIFIED, port))
        .await
        .map_err(|e| format!("cannot listen on port {port}: {e}"))?;
    let port = l4.local_addr().map(|a| a.port()).unwrap_or(port);
    let v6 = || -> std::io::Result<tokio::net::TcpListener> {
        let s = socket2::Socket::new(
            socket2::Domain::IPV6,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        s.set_only_v6(true)?;
        // As tokio's own bind: a restarted probe gets its port back while
        // old connections linger in TIME_WAIT.
        s.set_reuse_address(true)?;
        s.bind(&SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)).into())?;
        s.listen(1024)?;
        s.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(s.into())
    };
    let l6 = match v6() {
        Ok(l) => Some(l),
        Err(e) => {
            eprintln!("swarmtap: no IPv6 TCP listener on port {port} ({e}); incoming IPv6 peers only over uTP");
            None
        }
    };
    Ok((l4, l6))
}

/// The next incoming TCP connection on either listener (IPv4, IPv6).
async fn accept_tcp(ls: &[Option<tokio::net::TcpListener>; 2]) -> std::io::Result<(tokio::net::TcpStream, SocketAddr)> {
    tokio::select! {
        a = accept_on(ls[0].as_ref()) => a,
        a = accept_on(ls[1].as_ref()) => a,
    }
}

async fn accept_on(l: Option<&tokio::net::TcpListener>) -> std::io::Result<(tokio::net::TcpStream, SocketAddr)> {
    match l {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// The next incoming uTP connection on either socket (IPv4, IPv6).
async fn accept_utp(socks: &[Option<std::sync::Arc<utp::UtpSocket>>; 2]) -> Option<utp::UtpStream> {
    let one = |s: &Option<std::sync::Arc<utp::UtpSocket>>| {
        let s = s.clone();
        async move {
            match s {
                Some(u) => u.accept().await,
                None => std::future::pending().await,
            }
        }
    };
    tokio::select! {
        a = one(&socks[0]) => a,
        a = one(&socks[1]) => a,
    }
}

#[allow(clippy::too_many_arguments)]
async fn tracker_loop(
    torrent: u32,
    t: TrackerUrl,
    mut ap: AnnounceParams,
    scrape: bool,
    policy: AddrPolicy,
    min_reannounce: Duration,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    tx: mpsc::Sender<Event>,
    mut stop: watch::Receiver<bool>,
) {
    let mut announced = false;
    let mut failures = 0u32;
    let mut addr: Option<SocketAddr> = None;
    loop {
        if *stop.borrow() {
            break;
        }
        let result = match tracker::resolve(&t).await {
            Err(e) => AnnounceResult {
                ts_us: session::now_us(),
                error: Some(e),
                ..Default::default()
            },
            Ok(addrs) => match addrs.iter().find(|a| policy.refuse(a.ip()).is_none()) {
                None => AnnounceResult {
                    ts_us: session::now_us(),
                    tracker: addrs.first().copied(),
                    error: Some(format!(
                        "not sent: {}",
                        addrs
                            .first()
                            .and_then(|a| policy.refuse(a.ip()))
                            .unwrap_or("no address")
                    )),
                    ..Default::default()
                },
                Some(&a) => {
                    addr = Some(a);
                    if scrape && scrape::has_scrape(&t) {
                        let result = Box::new(scrape::scrape(&t, a, &[ap.info_hash], ap.timeout, tls.as_ref()).await);
                        let (url, udp) = (t.url.clone(), t.udp);
                        let _ = tx
                            .send(Event::Scrape {
                                torrent,
                                url,
                                udp,
                                result,
                            })
                            .await;
                    }
                    if t.udp {
                        tracker::announce_udp(a, &ap).await
                    } else {
                        tracker::announce_http(&t, a, &ap, tls.as_ref()).await
                    }
                }
            },
        };
        let ok = result.error.is_none() && result.failure.is_none();
        let interval = result
            .interval
            .unwrap_or(1800)
            .max(result.min_interval.unwrap_or(0))
            .max(1) as u64;
        let not_sent = result.error.as_deref().is_some_and(|e| e.starts_with("not sent"));
        let _ = tx
            .send(Event::Announce {
                torrent,
                url: t.url.clone(),
                udp: t.udp,
                params: ap.clone(),
                result: Box::new(result),
            })
            .await;
        if not_sent {
            break;
        }
        let wait = if ok {
            announced = true;
            failures = 0;
            ap.event = None;
            Duration::from_secs(interval).max(min_reannounce)
        } else {
            failures += 1;
            (min_reannounce * 2u32.saturating_pow(failures.min(6) - 1)).min(Duration::from_secs(3600))
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => break,
        }
    }
    if announced {
        if let Some(a) = addr {
            ap.event = Some("stopped");
            ap.numwant = 0;
            ap.timeout = ap.timeout.min(Duration::from_secs(3));
            let result = if t.udp {
                tracker::announce_udp(a, &ap).await
            } else {
                tracker::announce_http(&t, a, &ap, tls.as_ref()).await
            };
            let _ = tx
                .send(Event::Announce {
                    torrent,
                    url: t.url.clone(),
                    udp: t.udp,
                    params: ap.clone(),
                    result: Box::new(result),
                })
                .await;
        }
    }
    let _ = tx.send(Event::TrackerEnded).await;
}

/// First time at or above the threshold, and whether the peer was seen
/// below it before (a confirmed download). The same rule as the passive
/// swarm state, applied to visits.
pub fn completion(history: &[(i64, u64)], n_pieces: Option<u64>, threshold: f64) -> (Option<i64>, bool) {
    let Some(n) = n_pieces.filter(|&n| n > 0) else {
        return (None, false);
    };
    let need = threshold * n as f64;
    let mut below = false;
    for &(ts, have) in history {
        if (have as f64) < need {
            below = true;
        } else {
            return (Some(ts), below);
        }
    }
    (None, false)
}

impl Probe {
    fn add_peer(&mut self, torrent: u32, addr: SocketAddr, src: u8, now_us: i64) {
        if let Some(&i) = self.index.get(&(torrent, addr)) {
            self.peers[i as usize].sources |= src;
            return;
        }
        if !targets::contactable(&addr) || self.local_ips.contains(&addr.ip()) {
            return;
        }
        if self.s.policy.refuse(addr.ip()).is_some() {
            self.summary.n_refused_by_policy += 1;
            return;
        }
        if self.peers.len() >= self.s.limits.max_peers {
            self.summary.n_untracked += 1;
            return;
        }
        let i = self.peers.len() as u32;
        self.peers.push(PeerState {
            torrent,
            addr,
            sources: src,
            peer_id: None,
            client: None,
            first_ts: now_us,
            last_ts: now_us,
            history: Vec::new(),
            causes: Vec::new(),
            obs: Vec::new(),
            crypto_ok: None,
            transport_ok: None,
            failures: 0,
            n_visits: 0,
            n_ok: 0,
            done: false,
            in_flight: false,
        });
        self.index.insert((torrent, addr), i);
        self.due.insert((Instant::now(), i));
    }

    fn params_for(&self, ti: usize) -> ContactParams {
        let t = &self.torrents[ti];
        ContactParams {
            info_hash: t.target.info_hash,
            peer_id: self.peer_id,
            n_pieces: t.n_pieces,
            want_metadata: t.meta.is_none(),
            connect_timeout: self.s.connect_timeout,
            handshake_timeout: self.s.handshake_timeout,
            idle_timeout: self.s.idle_timeout,
            max_contact: self.s.limits.max_contact,
            max_msgs: self.s.limits.max_msgs,
            max_metadata_bytes: self.s.limits.max_metadata_bytes,
            max_pieces: self.s.limits.max_pieces,
            max_pex: self.s.limits.max_pex_per_contact,
            max_progress: self.s.limits.max_history.min(256),
            wire: self.s.limits.wire,
            hold: None,
        }
    }

    /// What a contact with `peer` needs to stay open until its crossing.
    fn hold_for(&self, peer: u32) -> Option<schedule::Hold> {
        let ps = &self.peers[peer as usize];
        Some(schedule::Hold {
            threshold: self.s.threshold,
            baseline: schedule::baseline(&ps.obs, self.s.revisit),
            // Nothing known of its rate yet: listen a while.
            sample: if ps.obs.is_empty() {
                schedule::SAMPLE.min(self.s.limits.max_contact)
            } else {
                Duration::ZERO
            },
        })
    }

    /// An incoming contact: the peer is identified by its address and the
    /// listen port of its BEP 10 handshake, so a peer we also contact
    /// ourselves is one peer, never two. A peer that gave no listen port is
    /// kept under its source port and not visited (nobody listens there).
    fn on_incoming(&mut self, ti: usize, from: SocketAddr, a: Attempt) -> Result<(), String> {
        self.summary.n_incoming += 1;
        let by_id = a
            .peer_id
            .and_then(|id| self.by_peer_id.get(&(ti as u32, from.ip(), id)))
            .map(|&i| self.peers[i as usize].addr);
        // Else the one peer of this torrent we know at that address, if
        // exactly one (libtorrent draws a new peer id per connection, and
        // drops a duplicate connection before its BEP 10 handshake).
        let by_ip = || {
            let mut at_ip = self
                .peers
                .iter()
                .filter(|p| p.torrent == ti as u32 && p.addr.ip() == from.ip() && p.sources & SRC_PROBE != 0);
            match (at_ip.next(), at_ip.next()) {
                (Some(p), None) => Some(p.addr),
                _ => None,
            }
        };
        let addr = match (a.listen_port, by_id.or_else(by_ip)) {
            (Some(p), _) => SocketAddr::new(from.ip(), p),
            (None, Some(known)) => known,
            (None, None) => {
                if a.n_pieces_have.is_none() {
                    // Nothing learned and nobody to attach it to: the
                    // attempt is recorded, no peer is made up.
                    self.visit_row_only(ti, from, &a);
                    return self.flush_visits(false);
                }
                from
            }
        };
        let key = (ti as u32, addr);
        if !self.index.contains_key(&key) {
            self.add_peer(ti as u32, addr, SRC_INCOMING, session::now_us());
            if let (None, Some(&i)) = (a.listen_port, self.index.get(&key)) {
                self.peers[i as usize].done = true;
                self.due.retain(|&(_, x)| x != i);
            }
        }
        let Some(&pi) = self.index.get(&key) else {
            return Ok(());
        };
        self.peers[pi as usize].sources |= SRC_INCOMING;
        self.on_visit(pi, vec![a], false, true)
    }

    fn visit_row_only(&mut self, ti: usize, from: SocketAddr, a: &Attempt) {
        let conn_id = self.next_conn_id;
        self.next_conn_id += 1;
        let t = &self.torrents[ti];
        self.rows.probe_visits.push(ProbeVisitRow {
            ts: Ts(a.ts_us),
            peer_ip: from.ip().to_string(),
            peer_port: u32::from(from.port()),
            info_hash: hex(&t.target.info_hash),
            transport: a.transport.name(),
            encrypted: a.encrypted,
            success: a.success,
            outcome: a.outcome.to_string(),
            duration_ms: a.duration_ms,
            n_pieces_have: a.n_pieces_have,
            n_msgs: a.n_msgs,
            conn_id,
            visit: 0,
            attempt: 1,
            crypto: a.crypto.name(),
            mse: a.mse,
            end_reason: a.end_reason,
            detail: a.detail.clone(),
            peer_id: a.peer_id.map(|i| hex(&i)),
            client: a.client.clone(),
            n_pieces: t.n_pieces.map(u64::from),
            max_gap_ms: a.max_gap_ms,
            incoming: true,
        });
    }

    fn launch(&mut self, peer: u32, tx: &mpsc::Sender<Event>, stop: &watch::Receiver<bool>) {
        let mut params = self.params_for(self.peers[peer as usize].torrent as usize);
        params.hold = self.hold_for(peer);
        let ps = &mut self.peers[peer as usize];
        ps.in_flight = true;
        // What worked last time goes first.
        let mut order = self.s.crypto.clone();
        if let Some(c) = ps.crypto_ok {
            order.retain(|&x| x != c);
            order.insert(0, c);
        }
        let mut transports = self.s.transports.clone();
        if let Some(t) = ps.transport_ok.filter(|t| transports.contains(t)) {
            transports.retain(|&x| x != t);
            transports.insert(0, t);
        }
        let addr = ps.addr;
        let tx = tx.clone();
        let stop = stop.clone();
        // The uTP socket of the peer's address family.
        let utp = if addr.is_ipv4() {
            self.utp.clone()
        } else {
            self.utp6.clone()
        };
        tokio::spawn(async move {
            let attempts = session::visit_over(addr, &transports, &order, &params, &stop, utp.as_deref()).await;
            let _ = tx.send(Event::Visit { peer, attempts }).await;
        });
    }

    fn flush_visits(&mut self, force: bool) -> Result<(), String> {
        if self.rows.probe_visits.len() >= self.s.limits.visit_rows_per_batch
            || (force && !self.rows.probe_visits.is_empty())
        {
            let batch = RowBatch {
                probe_visits: std::mem::take(&mut self.rows.probe_visits),
                peer_progress: std::mem::take(&mut self.rows.peer_progress),
                tracker_announces: std::mem::take(&mut self.rows.tracker_announces),
                tracker_peers: std::mem::take(&mut self.rows.tracker_peers),
                tracker_scrapes: std::mem::take(&mut self.rows.tracker_scrapes),
                dht_messages: std::mem::take(&mut self.rows.dht_messages),
                ..RowBatch::default()
            };
            self.sink.send(batch)?;
        }
        Ok(())
    }

    fn on_visit(&mut self, peer: u32, attempts: Vec<Attempt>, stopping: bool, incoming: bool) -> Result<(), String> {
        let threshold = self.s.threshold;
        let pi = peer as usize;
        let ti = self.peers[pi].torrent as usize;
        for a in &attempts {
            if let Some(l) = a.local {
                self.learn_local(l.ip());
            }
        }
        let first_visit = self.peers[pi].n_visits == 0 && !incoming;
        if !incoming {
            self.peers[pi].in_flight = false;
        }
        let cancelled_only = attempts.iter().all(|a| a.outcome == "cancelled");
        if !cancelled_only && !incoming {
            self.peers[pi].n_visits += 1;
            self.summary.n_visits += 1;
        }
        let ok = attempts.iter().find(|a| a.success).cloned();
        let ih = hex(&self.torrents[ti].target.info_hash);
        let ih_raw = self.torrents[ti].target.info_hash;
        let addr = self.peers[pi].addr;
        let mut pex = Vec::new();
        for (k, a) in attempts.iter().enumerate() {
            self.summary.n_attempts += 1;
            let conn_id = self.next_conn_id;
            self.next_conn_id += 1;
            let t = &mut self.torrents[ti];
            if let Some(bits) = a.bitfield_bits {
                t.estimate = t.estimate.max(bits);
            }
            if let Some((_, m)) = &a.metadata {
                if t.meta.is_none() {
                    t.n_pieces = Some(m.n_pieces);
                    t.meta = Some(m.clone());
                    t.metadata_source = "ut_metadata";
                    eprintln!(
                        "swarmtap: metadata of {} fetched from {} ({}, {} pieces)",
                        ih, addr, m.name, m.n_pieces
                    );
                }
            }
            self.rows.probe_visits.push(ProbeVisitRow {
                ts: Ts(a.ts_us),
                peer_ip: addr.ip().to_string(),
                peer_port: u32::from(addr.port()),
                info_hash: ih.clone(),
                transport: a.transport.name(),
                encrypted: a.encrypted,
                success: a.success,
                outcome: a.outcome.to_string(),
                duration_ms: a.duration_ms,
                n_pieces_have: a.n_pieces_have,
                n_msgs: a.n_msgs,
                conn_id,
                visit: u64::from(self.peers[pi].n_visits),
                attempt: k as u32 + 1,
                crypto: a.crypto.name(),
                mse: a.mse,
                end_reason: a.end_reason,
                detail: a.detail.clone(),
                peer_id: a.peer_id.map(|i| hex(&i)),
                client: a.client.clone(),
                n_pieces: t.n_pieces.map(u64::from),
                max_gap_ms: a.max_gap_ms,
                incoming: a.incoming,
            });
            if a.success {
                if let Some(id) = a.peer_id {
                    self.by_peer_id.insert((ti as u32, addr.ip(), id), peer);
                }
                let ps = &mut self.peers[pi];
                ps.last_ts = a.ts_us + (a.duration_ms * 1000.0) as i64;
                ps.sources |= SRC_PROBE;
                ps.n_ok += 1;
                ps.crypto_ok = Some(a.crypto);
                ps.transport_ok = Some(a.transport);
                if a.peer_id.is_some() {
                    ps.peer_id = a.peer_id;
                }
                if let Some(c) = &a.client {
                    ps.client = Some(c.as_str().into());
                }
                t.first_ts.get_or_insert(a.ts_us);
                t.last_ts = Some(a.ts_us);
                for &(ts, h, _) in &a.progress {
                    schedule::observe(&mut ps.obs, ts, h);
                }
                if let Some(h) = a.n_pieces_have {
                    // The count still held when the contact ended: a
                    // silence lowers the rate.
                    schedule::observe(&mut ps.obs, ps.last_ts, h);
                }
                for &(ts, h, cause) in &a.progress {
                    if ps.history.last().map(|x| x.1) == Some(h) {
                        continue;
                    }
                    if ps.history.len() >= self.s.limits.max_history {
                        ps.history.pop();
                        ps.causes.pop();
                    }
                    ps.history.push((ts, h));
                    ps.causes.push(cause);
                    self.rows.peer_progress.push(PeerProgressRow {
                        ts: Ts(ts),
                        frame: 0,
                        conn_id,
                        info_hash: ih_raw,
                        peer_ip: crate::sink::Ip(addr.ip()),
                        peer_port: u32::from(addr.port()),
                        n_pieces_have: Some(h),
                        n_pieces: t.n_pieces.map(u64::from),
                        cause,
                        piece: None,
                        bitfield: None,
                    });
                }
                pex.extend(a.pex.iter().map(|&x| (x, a.pex_utp.contains(&x))));
            }
        }
        if !cancelled_only && first_visit {
            self.summary.n_first_contacts += 1;
            self.summary.n_first_contacts_ok += u64::from(ok.is_some());
        }
        if ok.is_some() && !incoming {
            self.summary.n_visits_ok += 1;
        }
        // Done once at or above the threshold with a known piece count.
        let n = self.torrents[ti].n_pieces.map(u64::from);
        let ps = &mut self.peers[pi];
        if completion(&ps.history, n, threshold).0.is_some() && !ps.done {
            ps.done = true;
            if incoming {
                self.due.retain(|&(_, x)| x != peer);
            }
        }
        let ps = &mut self.peers[pi];
        if !stopping && !ps.done && !incoming {
            let wait = if ok.is_some() {
                ps.failures = 0;
                // Just after the predicted crossing, within the bounds.
                schedule::next_wait(
                    &ps.obs,
                    n,
                    threshold,
                    session::now_us(),
                    self.s.min_revisit,
                    self.s.revisit,
                )
            } else {
                ps.failures += 1;
                (self.s.retry * 2u32.saturating_pow(ps.failures.min(16) - 1)).min(self.s.max_backoff)
            };
            self.due.insert((Instant::now() + wait, peer));
        }
        if self.s.pex {
            let now = session::now_us();
            for (a, utp) in pex {
                self.add_peer(ti as u32, a, SRC_PEX, now);
                // A peer flagged as speaking uTP is tried over it first.
                if let Some(&i) = self.index.get(&(ti as u32, a)).filter(|_| utp) {
                    self.peers[i as usize].transport_ok.get_or_insert(Transport::Utp);
                }
            }
        }
        self.flush_visits(false)
    }

    /// Learns one of our own addresses; peers already tracked at it (listed
    /// back to us before we knew it) are retired.
    fn learn_local(&mut self, ip: IpAddr) {
        if ip.is_unspecified() || !self.local_ips.insert(ip) {
            return;
        }
        for (i, p) in self.peers.iter_mut().enumerate() {
            if p.addr.ip() == ip && !p.done {
                p.done = true;
                self.due.retain(|&(_, x)| x as usize != i);
            }
        }
    }

    fn on_announce(&mut self, torrent: u32, url: &str, udp: bool, ap: &AnnounceParams, r: AnnounceResult) {
        self.summary.n_announces += 1;
        self.summary.n_tls_refused += u64::from(r.tls_refused);
        if let Some(l) = r.local {
            self.learn_local(l.ip());
        }
        let ih = hex(&ap.info_hash);
        let tracker_ip = r.tracker.map(|a| a.ip().to_string()).unwrap_or_default();
        let tracker_port = r.tracker.map(|a| u32::from(a.port())).unwrap_or(0);
        let client_ip = r.local.map(|a| a.ip().to_string()).unwrap_or_default();
        let tu = TrackerUrl::parse(url);
        let path = tu.as_ref().map(|t| t.path.split('?').next().unwrap_or("").to_string());
        let transport = tu.map(|t| t.transport()).unwrap_or(if udp { "udp" } else { "http" });
        self.rows.tracker_announces.push(TrackerAnnounceRow {
            ts: Ts(r.ts_us),
            frame: 0,
            capture: "probe".into(),
            conn_id: 0,
            transport,
            confidence: "certain",
            client_ip: client_ip.clone(),
            client_port: r.local.map(|a| u32::from(a.port())).unwrap_or(0),
            tracker_ip: tracker_ip.clone(),
            tracker_port,
            info_hash: Some(ih.clone()),
            peer_id: Some(hex(&ap.peer_id)),
            client: Some(format!("swarmtap {}", env!("CARGO_PKG_VERSION"))),
            port: Some(u32::from(ap.port)),
            uploaded: Some(0),
            downloaded: Some(0),
            left: Some(ap.left),
            event: ap.event.map(str::to_string),
            numwant: Some(i64::from(ap.numwant)),
            key: Some(format!("{:08x}", ap.key)),
            compact: (!udp).then_some(true),
            no_peer_id: (!udp).then_some(true),
            supportcrypto: (!udp).then_some(true),
            path: if udp { None } else { path },
            response_ts: r.response_ts_us.map(Ts),
            latency_ms: r.response_ts_us.map(|t| (t - r.ts_us) as f64 / 1000.0),
            status: r.status,
            interval: r.interval,
            min_interval: r.min_interval,
            seeders: r.seeders,
            leechers: r.leechers,
            completed: r.completed,
            n_peers_returned: r.response_ts_us.map(|_| r.peers.len() as u64),
            n_peers6_returned: r.response_ts_us.map(|_| r.n_peers6),
            failure_reason: r.failure.clone().or(r.error.clone()),
            warning: r.warning.clone(),
            ..Default::default()
        });
        let now = session::now_us();
        for &a in &r.peers {
            self.rows.tracker_peers.push(TrackerPeerRow {
                ts: Ts(r.response_ts_us.unwrap_or(now)),
                frame: 0,
                capture: "probe".into(),
                conn_id: 0,
                transport,
                info_hash: ih.clone(),
                tracker_ip: tracker_ip.clone(),
                tracker_port,
                client_ip: client_ip.clone(),
                peer_ip: a.ip().to_string(),
                peer_port: u32::from(a.port()),
                peer_id: None,
                format: if a.is_ipv6() { "compact6" } else { "compact" },
            });
            self.add_peer(torrent, a, SRC_TRACKER, now);
        }
    }

    fn finish(mut self) -> Result<ProbeSummary, String> {
        self.flush_visits(true)?;
        let mut per_torrent = vec![(0u64, 0u64); self.torrents.len()];
        let mut peers = std::mem::take(&mut self.peers);
        peers.sort_by_key(|p| (p.torrent, p.addr));
        for p in &peers {
            let t = &self.torrents[p.torrent as usize];
            let n = t.n_pieces.map(u64::from);
            let (completed_ts, confirmed) = completion(&p.history, n, self.s.threshold);
            // The message that showed the crossing, else the last count.
            let at = match completed_ts {
                Some(ts) => p.history.iter().position(|h| h.0 == ts),
                None => p.history.len().checked_sub(1),
            };
            let completion_source = at.and_then(|i| p.causes.get(i).copied());
            per_torrent[p.torrent as usize].0 += 1;
            per_torrent[p.torrent as usize].1 += u64::from(confirmed);
            self.summary.n_confirmed += u64::from(confirmed);
            // Download rate between consecutive visits, from piece counts.
            let max_rate = t.piece_length().and_then(|pl| {
                p.history
                    .windows(2)
                    .filter(|w| w[1].0 > w[0].0 && w[1].1 > w[0].1)
                    .map(|w| (w[1].1 - w[0].1) as f64 * pl as f64 / ((w[1].0 - w[0].0) as f64 / 1e6))
                    .reduce(f64::max)
            });
            let mut sources = Vec::new();
            for (bit, name) in [
                (SRC_TRACKER, "tracker"),
                (SRC_PEX, "pex"),
                (SRC_PROBE, "probe"),
                (SRC_GIVEN, "given"),
                (SRC_INCOMING, "incoming"),
                (SRC_DHT, "dht"),
            ] {
                if p.sources & bit != 0 {
                    sources.push(name.to_string());
                }
            }
            self.rows.peers.push(PeerRow {
                info_hash: hex(&t.target.info_hash),
                peer_ip: p.addr.ip().to_string(),
                peer_port: u32::from(p.addr.port()),
                peer_id: p.peer_id.map(|i| hex(&i)),
                client: p.client.as_deref().map(str::to_string),
                first_ts: Ts(p.first_ts),
                last_ts: Ts(p.last_ts),
                first_pieces: p.history.first().map(|h| h.1),
                last_pieces: p.history.last().map(|h| h.1),
                completion_source,
                n_pieces: n.or((t.estimate > 0).then_some(t.estimate)),
                completed_ts: completed_ts.map(Ts),
                confirmed_download: confirmed,
                uploaded_bytes: 0,
                downloaded_bytes: 0,
                max_rate_bps: max_rate,
                max_upload_rate_bps: None,
                n_connections: u64::from(p.n_ok),
                sources,
                ..Default::default()
            });
        }
        self.summary.n_peers = peers.len();
        self.summary.n_torrents = self.torrents.len();
        for (i, t) in self.torrents.iter().enumerate() {
            let m = t.meta.as_ref();
            self.rows.torrents.push(TorrentRow {
                info_hash: hex(&t.target.info_hash),
                info_hash_v2: m.and_then(|m| m.info_hash_v2).map(|h| hex(&h)),
                name: m.map(|m| m.name.clone()).or_else(|| t.target.name.clone()),
                piece_length: m.map(|m| m.piece_length),
                n_pieces: t.n_pieces.map(u64::from).or((t.estimate > 0).then_some(t.estimate)),
                n_pieces_source: if m.is_some() {
                    t.metadata_source
                } else if t.n_pieces.is_some() {
                    "dataset"
                } else if t.estimate > 0 {
                    "bitfield_estimate"
                } else {
                    "none"
                },
                total_bytes: m.map(|m| m.total_bytes),
                metadata_source: t.metadata_source,
                n_peers: per_torrent[i].0,
                n_confirmed_downloads: per_torrent[i].1,
                piece_bytes: 0,
                first_ts: t.first_ts.map(Ts),
                last_ts: t.last_ts.map(Ts),
                private: m.map(|m| m.private),
                n_files: m.map(|m| m.files.len() as u64),
                ..Default::default()
            });
        }
        let rows = std::mem::take(&mut self.rows);
        self.sink.send(rows)?;
        self.sink.finish()?;
        Ok(self.summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_rule() {
        // Below, then above: confirmed, crossing at the first visit above.
        let h = [(1, 0), (2, 50), (3, 99), (4, 100)];
        assert_eq!(completion(&h, Some(100), 0.98), (Some(3), true));
        // A seeder from the first visit: complete, not a confirmed download.
        assert_eq!(completion(&[(1, 100), (2, 100)], Some(100), 0.98), (Some(1), false));
        // Never crossing.
        assert_eq!(completion(&[(1, 10), (2, 20)], Some(100), 0.98), (None, false));
        // Unknown piece count: no verdict.
        assert_eq!(completion(&h, None, 0.98), (None, false));
    }

    /// `--listen`: one port number for both families; a peer reaching it
    /// over ::1 is served (its handshake, bitfield and BEP 10 listen port
    /// read), as one over 127.0.0.1 is, and each shows its own address
    /// (no IPv4-mapped one).
    #[tokio::test]
    async fn tcp_listen_serves_ipv6_and_ipv4_peers_on_one_port() {
        use session::tests::{no_shutdown, params, remote_initiator};
        let (l4, l6) = listen_tcp(0).await.expect("listen");
        let port = l4.local_addr().expect("addr").port();
        let l6 = l6.expect("an IPv6-only listener beside the IPv4 one");
        assert_eq!(
            l6.local_addr().expect("addr"),
            SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port))
        );
        let ls = [Some(l4), Some(l6)];
        let ih = [0x42u8; 20];
        for (ip, use_mse) in [("::1", false), ("::1", true), ("127.0.0.1", false)] {
            let to = SocketAddr::new(ip.parse().expect("ip"), port);
            let remote = tokio::spawn(remote_initiator(to, ih, use_mse));
            let (sock, from) = accept_tcp(&ls).await.expect("accepted");
            assert_eq!(from.ip(), to.ip());
            let (i, a) = session::accept_contact(sock, &[params([1u8; 20]), params(ih)], &no_shutdown())
                .await
                .expect("served");
            let got = remote.await.expect("remote");
            assert_eq!(&got[28..48], &ih, "our handshake names the torrent");
            assert_eq!(i, 1);
            assert!(a.incoming && a.success, "{a:?}");
            assert_eq!(
                (a.encrypted, a.n_pieces_have, a.listen_port),
                (use_mse, Some(12), Some(7777))
            );
        }
    }

    #[test]
    fn peer_id_prefix() {
        let id = our_peer_id();
        assert_eq!(&id[..8], b"-SW0100-");
        assert!(id[8..].iter().all(|b| b.is_ascii_alphanumeric()));
        assert_eq!(
            crate::proto::client_id::client_from_peer_id(&id).as_deref(),
            Some("swarmtap 0.1.0")
        );
    }
}
