//! Tracker traffic turned into rows, inside the shards.
//!
//! - HTTP trackers (BEP 3, BEP 7, BEP 23, BEP 24, BEP 48): one
//!   [`HttpTracker`] per TCP flow whose first request is a tracker request
//!   (any port; see [`looks_like_tracker_request`]), or that starts with an
//!   HTTP response (a capture begun mid-connection). It drives
//!   [`HttpSession`] (framing both directions, keep-alive, pipelining,
//!   chunked/gzip bodies) and pairs each response with its request by the
//!   request's position on the connection (HTTP/1.x answers in order).
//!   Close-delimited bodies complete only when the flow ends
//!   ([`HttpTracker::finish`]).
//! - UDP trackers (BEP 15, BEP 41): one [`UdpTrackers`] per shard. A request
//!   and its response travel on one UDP flow, hence in one shard, so the
//!   shard's [`PendingUdp`] pairs them by transaction id and endpoints and
//!   learns connection ids; announces whose connect was not captured are
//!   recognised by structure (`confidence` plausible).
//!
//! Every announce is a `tracker_announces` row carrying its response's
//! fields (or nulls when none was captured); every returned peer is a
//! `tracker_peers` row and a `Learned { Tracker }` swarm event, and so is
//! the announcing client itself (its address with the announced port). Each
//! announce also leaves an [`AnnounceMark`] at the request's frame: the
//! audit (`analyze::audit`) reads it in frame order, between the peer-wire
//! transfers, to know exactly which piece bytes came before the announce.
//! Scrapes become `tracker_scrapes` rows, one per info hash.
//!
//! Invariants: no panic on any input; everything held is bounded (pending
//! HTTP requests by `HttpLimits::max_pending_requests`, UDP transactions by
//! `Limits::tracker_udp_pending`, scrape hashes per request by
//! [`MAX_SCRAPE_HASHES_KEPT`]); defects are `anomalies` rows with layer
//! `tracker`.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};

use super::session::{ORIG, RESP};
use super::{Claim, FrameCtx, PeerSource, ShardOut, SwarmEvent, SwarmEventKind};
use crate::flow::Chunk;
use crate::flow::FlowInfo;
use crate::proto::client_id::client_from_peer_id;
use crate::proto::metainfo::hex;
use crate::proto::tracker_http::{
    AnnounceEvent, AnnounceRequest, AnnounceResponse, HttpEvent, HttpLimits, HttpRequest, HttpResponse, HttpSession,
    PeerFormat, PeerHost, ResponseBody, ScrapeResponse, Side, TrackerRequest,
};
use crate::proto::tracker_udp::{
    self as udp, AddrFamily, Confidence, Endpoints, Inserted, PendingLimits, PendingUdp, RequestClass, UdpEvent,
    UdpLimits, UdpRequest, UdpResponse,
};
use crate::proto::utp::{parse_utp, utp_confidence, UtpConfidence, UtpProbeLimits};
use crate::sink::{TrackerAnnounceRow, TrackerPeerRow, TrackerScrapeRow, Ts};

/// Info hashes kept from one UDP scrape request while it waits for its
/// answer: what fits in a 1500-byte datagram ((1500 − 28 − 16) / 20 = 72,
/// BEP 15 says "about 74"). Jumbo requests keep their first 80; the rest
/// are counted (`udp_tracker_scrape_hashes_cut`).
pub const MAX_SCRAPE_HASHES_KEPT: usize = 80;

/// The `event` of an announce, as the audit needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkEvent {
    None,
    Started,
    Completed,
    Stopped,
    Other,
}

impl MarkEvent {
    pub fn from_text(e: Option<&str>) -> Self {
        match e {
            None | Some("") => MarkEvent::None,
            Some("started") => MarkEvent::Started,
            Some("completed") => MarkEvent::Completed,
            Some("stopped") => MarkEvent::Stopped,
            Some(_) => MarkEvent::Other,
        }
    }
}

/// What the audit learns from one announce, at the request's frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnounceMark {
    pub ctx: FrameCtx,
    pub transport: &'static str,
    pub client: IpAddr,
    pub tracker: SocketAddr,
    pub info_hash: [u8; 20],
    pub peer_id: Option<[u8; 20]>,
    pub uploaded: Option<u64>,
    pub downloaded: Option<u64>,
    pub left: Option<u64>,
    pub event: MarkEvent,
    /// Other addresses the client declared for itself (HTTP `ip`, `ipv4`,
    /// `ipv6`; UDP `ip`), at most three: a dual-stack client announces
    /// over one family and may exchange pieces over the other.
    pub declared: Vec<IpAddr>,
}

/// Whether the first bytes a client sent on a TCP connection are an HTTP
/// tracker request: a request line (known method) whose target, within
/// the first line, names `info_hash=`, an `announce` or a `scrape` path
/// (BEP 48 derives one from the other; private trackers add a passkey
/// segment or `.php`, never drop the word). A client's first segment holds
/// its whole request line in practice (under 2 KB for an announce).
pub fn looks_like_tracker_request(d: &[u8]) -> bool {
    crate::dissect::stream::is_tracker_request(d)
}

/// A request path as stored: the query removed, at most 256 characters,
/// and every segment of 16 characters or more (private trackers' passkeys
/// are 32 hex digits, in the path or in a BEP 41 URLData) replaced by `*`.
pub fn redact_path(p: &str) -> String {
    let p = p.split(['?', '#']).next().unwrap_or_default();
    let mut out = String::new();
    for (i, seg) in p.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        if seg.chars().count() >= 16 {
            out.push('*');
        } else {
            out.push_str(seg);
        }
        if out.len() > 256 {
            let mut cut = 256;
            while !out.is_char_boundary(cut) {
                cut -= 1;
            }
            out.truncate(cut);
            break;
        }
    }
    out
}

fn nonneg(v: Option<i64>) -> Option<u64> {
    v.and_then(|v| u64::try_from(v).ok())
}

fn latency_ms(req_ts: i64, resp_ts: i64) -> f64 {
    (resp_ts - req_ts) as f64 / 1000.0
}

/// The announcing client as a peer of the torrent: its address with the
/// port it announced, and what the announce says of its progress (`left`,
/// `event=completed`) as a [`Claim::Tracker`]. Port 0, which qBittorrent
/// sends over UDP, names no listener: no peer is learned, and the claim
/// goes out with port 0 for the swarm state to give to the one peer at
/// that address.
#[allow(clippy::too_many_arguments)]
fn learned_client(
    out: &mut ShardOut,
    ctx: FrameCtx,
    conn_id: u64,
    ih: [u8; 20],
    ip: IpAddr,
    port: Option<u32>,
    left: Option<u64>,
    event: MarkEvent,
) {
    let port = port.and_then(|p| u16::try_from(p).ok()).unwrap_or(0);
    let ev = |kind| SwarmEvent {
        ctx,
        conn_id,
        info_hash: ih,
        peer: SocketAddr::new(ip, port),
        kind,
    };
    if port != 0 {
        out.events.push(ev(SwarmEventKind::Learned {
            source: PeerSource::Tracker,
        }));
    }
    let completed = event == MarkEvent::Completed;
    if left.is_some() || completed {
        out.events
            .push(ev(SwarmEventKind::Claim(Claim::Tracker { left, completed })));
    }
}

/// One returned peer: a `tracker_peers` row and, for an address (not a DNS
/// name) with a port, a `Learned { Tracker }` event.
#[allow(clippy::too_many_arguments)]
fn returned_peer(
    out: &mut ShardOut,
    ctx: FrameCtx,
    row: &TrackerAnnounceRow,
    (ih, ih_text): ([u8; 20], &str),
    host: Result<IpAddr, &str>,
    port: u16,
    peer_id: Option<[u8; 20]>,
    format: &'static str,
) {
    out.rows.tracker_peers.push(TrackerPeerRow {
        ts: Ts(ctx.ts),
        frame: ctx.frame,
        capture: row.capture.clone(),
        conn_id: row.conn_id,
        transport: row.transport,
        info_hash: ih_text.to_string(),
        tracker_ip: row.tracker_ip.clone(),
        tracker_port: row.tracker_port,
        client_ip: row.client_ip.clone(),
        peer_ip: match host {
            Ok(ip) => addr_text(ip),
            Err(name) => name.to_string(),
        },
        peer_port: u32::from(port),
        peer_id: peer_id.map(|p| hex(&p)),
        format,
    });
    if let Ok(ip) = host {
        if port != 0 {
            out.events.push(SwarmEvent {
                ctx,
                conn_id: row.conn_id,
                info_hash: ih,
                peer: SocketAddr::new(ip, port),
                kind: SwarmEventKind::Learned {
                    source: PeerSource::Tracker,
                },
            });
        }
    }
}

/// `ip.to_string()`, with an IPv4 address written digit by digit: a
/// tracker response's peers and every announce's two ends go through it,
/// and `Display`'s formatting machinery costs ~1.2 k instructions an
/// address (bench/README.md "Session 15 — bulk"). IPv6 text (RFC 5952
/// zero runs, embedded IPv4) is left to `Display`.
fn addr_text(ip: IpAddr) -> String {
    let IpAddr::V4(v4) = ip else {
        return ip.to_string();
    };
    let mut s = String::with_capacity(15);
    for (i, o) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            s.push('.');
        }
        if o >= 100 {
            s.push(char::from(b'0' + o / 100));
        }
        if o >= 10 {
            s.push(char::from(b'0' + o / 10 % 10));
        }
        s.push(char::from(b'0' + o % 10));
    }
    s
}

/// The announce row's fields every transport fills the same way.
fn base_row(
    ctx: FrameCtx,
    out: &ShardOut,
    conn_id: u64,
    transport: &'static str,
    client: SocketAddr,
    tracker: SocketAddr,
) -> TrackerAnnounceRow {
    TrackerAnnounceRow {
        ts: Ts(ctx.ts),
        frame: ctx.frame,
        capture: out.capture_name(ctx.capture),
        conn_id,
        transport,
        confidence: "certain",
        client_ip: addr_text(client.ip()),
        client_port: u32::from(client.port()),
        tracker_ip: addr_text(tracker.ip()),
        tracker_port: u32::from(tracker.port()),
        ..Default::default()
    }
}

fn mark_of(
    ctx: FrameCtx,
    row: &TrackerAnnounceRow,
    client: IpAddr,
    tracker: SocketAddr,
    ih: [u8; 20],
    peer_id: Option<[u8; 20]>,
    declared: Vec<IpAddr>,
) -> AnnounceMark {
    AnnounceMark {
        ctx,
        transport: row.transport,
        client,
        tracker,
        info_hash: ih,
        peer_id,
        uploaded: row.uploaded,
        downloaded: row.downloaded,
        left: row.left,
        event: MarkEvent::from_text(row.event.as_deref()),
        declared,
    }
}

// ---------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------

/// A request waiting for its response.
#[derive(Debug)]
struct PendingHttp {
    /// `HttpRequest::index` on this connection.
    index: u64,
    ctx: FrameCtx,
    what: PendingWhat,
}

#[derive(Debug)]
enum PendingWhat {
    Announce(Box<TrackerAnnounceRow>, Option<[u8; 20]>),
    Scrape(Vec<[u8; 20]>),
    Other,
}

#[derive(Debug)]
struct HttpState {
    conn_id: u64,
    client: SocketAddr,
    server: SocketAddr,
    /// The flow side (ORIG/RESP) that sends requests.
    client_side: usize,
    /// A tracker request or response was seen (anomalies are reported from
    /// then on; the flow's app is `tracker_http`).
    confirmed: bool,
    max_pending: usize,
    pending: VecDeque<PendingHttp>,
}

/// The HTTP tracker side of one TCP flow.
#[derive(Debug)]
pub struct HttpTracker {
    session: HttpSession,
    st: HttpState,
}

impl HttpTracker {
    /// Bytes the HTTP framing holds (a flow's memory account).
    pub fn buffered_bytes(&self) -> usize {
        self.session.buffered_bytes()
    }

    /// `client_side`: the flow side that sends requests. `confirmed`: the
    /// first request already showed it is tracker traffic.
    pub fn new(info: &FlowInfo, client_side: usize, confirmed: bool, limits: HttpLimits) -> Self {
        let server_side = if client_side == ORIG { RESP } else { ORIG };
        HttpTracker {
            session: HttpSession::new(limits),
            st: HttpState {
                conn_id: info.conn_id,
                client: info.ends[client_side],
                server: info.ends[server_side],
                client_side,
                confirmed,
                max_pending: limits.max_pending_requests.max(1),
                pending: VecDeque::new(),
            },
        }
    }

    /// Whether the flow carried tracker messages.
    pub fn is_tracker(&self) -> bool {
        self.st.confirmed
    }

    /// Stream bytes (or a hole) from flow side `side`.
    pub fn feed(&mut self, side: usize, chunk: Chunk<'_>, ctx: FrameCtx, out: &mut ShardOut) {
        let hs = if side == self.st.client_side {
            Side::Client
        } else {
            Side::Server
        };
        let HttpTracker { session, st } = self;
        match chunk {
            Chunk::Data(d) => session.feed(hs, d, &mut |_, ev| st.on_event(ev, ctx, out)),
            Chunk::Gap(n) => session.gap(hs, n, &mut |_, ev| st.on_event(ev, ctx, out)),
        }
    }

    /// End of the flow: close-delimited bodies complete, truncated messages
    /// are reported, requests still waiting become rows without a response.
    pub fn finish(&mut self, ctx: FrameCtx, out: &mut ShardOut) {
        let HttpTracker { session, st } = self;
        session.finish(&mut |_, ev| st.on_event(ev, ctx, out));
        while let Some(p) = st.pending.pop_front() {
            st.unanswered(p, out);
        }
    }
}

impl HttpState {
    fn on_event(&mut self, ev: HttpEvent, ctx: FrameCtx, out: &mut ShardOut) {
        match ev {
            HttpEvent::Request(r) => self.request(*r, ctx, out),
            HttpEvent::Response(r) => self.response(*r, ctx, out),
            HttpEvent::Anomaly(a) => {
                if self.confirmed {
                    let detail = Some(a.to_string()).filter(|d| d != a.kind());
                    out.anomaly(Some(ctx), Some(self.conn_id), "tracker", a.kind(), detail);
                }
            }
        }
    }

    fn request(&mut self, r: HttpRequest, ctx: FrameCtx, out: &mut ShardOut) {
        let what = match &r.tracker {
            TrackerRequest::Announce(a) => {
                self.confirmed = true;
                let (row, ih) = self.announce_row(&r, a, ctx, out);
                PendingWhat::Announce(Box::new(row), ih)
            }
            TrackerRequest::Scrape(s) => {
                self.confirmed = true;
                PendingWhat::Scrape(s.info_hashes.clone())
            }
            TrackerRequest::Other => PendingWhat::Other,
        };
        if self.pending.len() >= self.max_pending {
            if let Some(p) = self.pending.pop_front() {
                self.unanswered(p, out);
            }
        }
        self.pending.push_back(PendingHttp {
            index: r.index,
            ctx,
            what,
        });
    }

    fn announce_row(
        &self,
        r: &HttpRequest,
        a: &AnnounceRequest,
        ctx: FrameCtx,
        out: &mut ShardOut,
    ) -> (TrackerAnnounceRow, Option<[u8; 20]>) {
        let mut row = base_row(ctx, out, self.conn_id, "http", self.client, self.server);
        row.info_hash = a.info_hash.map(|h| hex(&h));
        row.peer_id = a.peer_id.map(|p| hex(&p));
        row.client = a.peer_id.and_then(|p| client_from_peer_id(&p));
        row.port = a.port.map(u32::from);
        row.uploaded = nonneg(a.uploaded);
        row.downloaded = nonneg(a.downloaded);
        row.left = nonneg(a.left);
        row.event = match &a.event {
            None | Some(AnnounceEvent::Empty) => None,
            Some(e) => Some(e.as_str().to_string()),
        };
        row.numwant = a.numwant;
        row.key = a.key.clone();
        row.compact = a.compact;
        row.no_peer_id = a.no_peer_id;
        row.supportcrypto = a.supportcrypto;
        row.requirecrypto = a.requirecrypto;
        row.corrupt = nonneg(a.corrupt);
        row.redundant = nonneg(a.redundant);
        row.trackerid = a.trackerid.clone();
        let declared_text: Vec<&str> = [&a.ip, &a.ipv4, &a.ipv6]
            .into_iter()
            .flatten()
            .map(|s| s.as_str())
            .collect();
        if !declared_text.is_empty() {
            row.declared_ip = Some(declared_text.join(","));
        }
        row.path = Some(redact_path(&r.path));
        row.host = r.host.clone();
        row.user_agent = r.user_agent.clone();
        if let Some(ih) = a.info_hash {
            // `ipv6=` may carry a port ([addr]:port or addr); keep the address.
            let declared: Vec<IpAddr> = declared_text
                .iter()
                .filter_map(|s| {
                    s.parse::<IpAddr>()
                        .ok()
                        .or_else(|| s.parse::<SocketAddr>().ok().map(|a| a.ip()))
                })
                .filter(|ip| *ip != self.client.ip())
                .take(3)
                .collect();
            out.marks.push(mark_of(
                ctx,
                &row,
                self.client.ip(),
                self.server,
                ih,
                a.peer_id,
                declared,
            ));
            learned_client(
                out,
                ctx,
                self.conn_id,
                ih,
                self.client.ip(),
                row.port,
                row.left,
                MarkEvent::from_text(row.event.as_deref()),
            );
        }
        (row, a.info_hash)
    }

    fn response(&mut self, r: HttpResponse, ctx: FrameCtx, out: &mut ShardOut) {
        if r.interim {
            return;
        }
        if matches!(r.body, ResponseBody::Announce(_) | ResponseBody::Scrape(_)) {
            self.confirmed = true;
        }
        let Some(idx) = r.request_index else {
            // The request was not captured: a scrape answer still names its
            // torrents; an announce answer cannot be attributed.
            if let ResponseBody::Scrape(s) = &r.body {
                self.scrape_rows(None, &[], Some(s), ctx, out);
            }
            return;
        };
        while self.pending.front().is_some_and(|p| p.index < idx) {
            if let Some(p) = self.pending.pop_front() {
                self.unanswered(p, out);
            }
        }
        if self.pending.front().is_none_or(|p| p.index != idx) {
            return;
        }
        let Some(p) = self.pending.pop_front() else { return };
        match p.what {
            PendingWhat::Announce(mut row, ih) => {
                row.response_ts = Some(Ts(ctx.ts));
                row.latency_ms = Some(latency_ms(p.ctx.ts, ctx.ts));
                row.status = Some(u32::from(r.status));
                if let ResponseBody::Announce(a) = &r.body {
                    fill_http_answer(&mut row, a);
                    if let Some(ih) = ih {
                        let ih_text = hex(&ih);
                        for peer in &a.peers {
                            let host = match &peer.host {
                                PeerHost::Ip(ip) => Ok(*ip),
                                PeerHost::Name(n) => Err(n.as_str()),
                            };
                            let format = match peer.format {
                                PeerFormat::Compact => "compact",
                                PeerFormat::Compact6 => "compact6",
                                PeerFormat::Dict => "dict",
                            };
                            returned_peer(out, ctx, &row, (ih, &ih_text), host, peer.port, peer.peer_id, format);
                        }
                    }
                }
                out.rows.tracker_announces.push(*row);
            }
            PendingWhat::Scrape(hashes) => {
                let body = match &r.body {
                    ResponseBody::Scrape(s) => Some(s),
                    _ => None,
                };
                self.scrape_rows(Some(p.ctx), &hashes, body, ctx, out);
            }
            PendingWhat::Other => {}
        }
    }

    /// Rows of an answered scrape (`req`: the request's time, if captured):
    /// one per torrent in the answer, and one with null counts per
    /// requested torrent the answer left out.
    fn scrape_rows(
        &self,
        req: Option<FrameCtx>,
        asked: &[[u8; 20]],
        body: Option<&ScrapeResponse>,
        ctx: FrameCtx,
        out: &mut ShardOut,
    ) {
        let base = TrackerScrapeRow {
            ts: Ts(ctx.ts),
            frame: ctx.frame,
            capture: out.capture_name(ctx.capture),
            conn_id: self.conn_id,
            transport: "http",
            client_ip: self.client.ip().to_string(),
            tracker_ip: self.server.ip().to_string(),
            tracker_port: u32::from(self.server.port()),
            request_ts: req.map(|c| Ts(c.ts)),
            answered: true,
            failure_reason: body.and_then(|b| b.failure_reason.clone()),
            ..Default::default()
        };
        let files = body.map(|b| b.files.as_slice()).unwrap_or_default();
        for f in files {
            out.rows.tracker_scrapes.push(TrackerScrapeRow {
                info_hash: hex(&f.info_hash),
                seeders: f.complete,
                leechers: f.incomplete,
                completed: f.downloaded,
                name: f.name.clone(),
                ..base.clone()
            });
        }
        for h in asked {
            if !files.iter().any(|f| f.info_hash == *h) {
                out.rows.tracker_scrapes.push(TrackerScrapeRow {
                    info_hash: hex(h),
                    ..base.clone()
                });
            }
        }
    }

    /// A request that got no captured answer.
    fn unanswered(&self, p: PendingHttp, out: &mut ShardOut) {
        match p.what {
            PendingWhat::Announce(row, _) => out.rows.tracker_announces.push(*row),
            PendingWhat::Scrape(hashes) => {
                for h in hashes {
                    out.rows.tracker_scrapes.push(TrackerScrapeRow {
                        ts: Ts(p.ctx.ts),
                        frame: p.ctx.frame,
                        capture: out.capture_name(p.ctx.capture),
                        conn_id: self.conn_id,
                        transport: "http",
                        client_ip: self.client.ip().to_string(),
                        tracker_ip: self.server.ip().to_string(),
                        tracker_port: u32::from(self.server.port()),
                        info_hash: hex(&h),
                        request_ts: Some(Ts(p.ctx.ts)),
                        answered: false,
                        ..Default::default()
                    });
                }
            }
            PendingWhat::Other => {}
        }
    }
}

fn fill_http_answer(row: &mut TrackerAnnounceRow, a: &AnnounceResponse) {
    row.failure_reason = a.failure_reason.clone();
    row.warning = a.warning_message.clone();
    row.interval = a.interval;
    row.min_interval = a.min_interval;
    row.seeders = a.complete;
    row.leechers = a.incomplete;
    row.completed = a.downloaded;
    row.tracker_id = a.tracker_id.clone();
    row.external_ip = a.external_ip.map(|ip| ip.to_string());
    row.n_peers_returned = Some(a.peers.len() as u64);
    row.n_peers6_returned = Some(
        a.peers
            .iter()
            .filter(|p| matches!(p.host, PeerHost::Ip(IpAddr::V6(_))))
            .count() as u64,
    );
}

// ---------------------------------------------------------------------------
// UDP
// ---------------------------------------------------------------------------

/// What a UDP request leaves waiting for its answer.
#[derive(Debug)]
pub enum UdpPending {
    Connect,
    /// The row, the info hash, and what waits for the answer when the
    /// request was only plausible (its connect not captured): a request
    /// recognised by its structure alone is believed once answered.
    Announce(Box<TrackerAnnounceRow>, [u8; 20], Option<Box<Deferred>>),
    Scrape(Box<UdpScrape>),
}

/// What a plausible announce writes only once it is answered.
#[derive(Debug)]
pub struct Deferred {
    mark: AnnounceMark,
    port: Option<u32>,
}

/// What a datagram was to the UDP tracker side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestSeen {
    /// Not a BEP 15 request.
    No,
    /// A request by its structure only (a connect, or an announce or
    /// scrape whose connection id the capture never saw handed out): it
    /// writes rows only once answered.
    Unconfirmed,
    /// An announce or scrape with a connection id known from a captured
    /// exchange.
    Confirmed,
}

#[derive(Debug)]
pub struct UdpScrape {
    ctx: FrameCtx,
    conn_id: u64,
    client: SocketAddr,
    tracker: SocketAddr,
    hashes: Vec<[u8; 20]>,
    /// The request's connection id was known (else: rows only if answered).
    confirmed: bool,
}

/// UDP tracker exchanges of one shard.
#[derive(Debug)]
pub struct UdpTrackers {
    pending: PendingUdp<UdpPending>,
    limits: UdpLimits,
}

impl UdpTrackers {
    pub fn new(limits: UdpLimits, pending: PendingLimits) -> Self {
        UdpTrackers {
            pending: PendingUdp::new(pending),
            limits,
        }
    }

    /// Datagram `d` of flow `info`, sent by flow side `side`, as the
    /// answer to a pending request. The pairing is stronger evidence than
    /// any structural test (a scrape answer can have the shape of a scrape
    /// request), so it runs first.
    pub fn answer(&mut self, ctx: FrameCtx, info: &FlowInfo, side: usize, d: &[u8], out: &mut ShardOut) -> bool {
        let ep = Endpoints {
            client: info.ends[1 - side],
            tracker: info.ends[side],
        };
        let handled = self.response(ctx, info, ep, d, out);
        self.flush(out);
        handled
    }

    /// Datagram `d` of flow `info`, sent by flow side `side`, as a request
    /// (BEP 15 on any port, by its structure).
    pub fn request_seen(
        &mut self,
        ctx: FrameCtx,
        info: &FlowInfo,
        side: usize,
        d: &[u8],
        out: &mut ShardOut,
    ) -> RequestSeen {
        let ep = Endpoints {
            client: info.ends[side],
            tracker: info.ends[1 - side],
        };
        let seen = self.request(ctx, info, ep, d, out);
        self.flush(out);
        seen
    }

    /// Drops what is older than the limits at packet time `now`; unanswered
    /// requests become rows.
    pub fn sweep(&mut self, now: i64, out: &mut ShardOut) {
        self.pending.expire(now);
        self.flush(out);
    }

    /// End of input: every request still waiting becomes a row.
    pub fn finish(&mut self, out: &mut ShardOut) {
        self.pending.drain();
        self.flush(out);
        let st = self.pending.stats();
        if st.n_evicted > 0 {
            out.anomaly(
                None,
                None,
                "tracker",
                "udp_tracker_pending_full",
                Some(format!(
                    "{} requests evicted unanswered (tracker_udp_pending)",
                    st.n_evicted
                )),
            );
        }
    }

    fn flush(&mut self, out: &mut ShardOut) {
        for u in self.pending.take_unanswered() {
            match u.value {
                UdpPending::Connect => {}
                // Plausible by structure and never answered: not believed.
                UdpPending::Announce(_, _, Some(_)) => {}
                UdpPending::Scrape(s) if !s.confirmed => {}
                UdpPending::Announce(row, _, None) => out.rows.tracker_announces.push(*row),
                UdpPending::Scrape(s) => {
                    for h in &s.hashes {
                        out.rows.tracker_scrapes.push(TrackerScrapeRow {
                            ts: Ts(s.ctx.ts),
                            frame: s.ctx.frame,
                            capture: out.capture_name(s.ctx.capture),
                            conn_id: s.conn_id,
                            transport: "udp",
                            client_ip: s.client.ip().to_string(),
                            tracker_ip: s.tracker.ip().to_string(),
                            tracker_port: u32::from(s.tracker.port()),
                            info_hash: hex(h),
                            request_ts: Some(Ts(s.ctx.ts)),
                            answered: false,
                            ..Default::default()
                        });
                    }
                }
            }
        }
    }

    fn request(&mut self, ctx: FrameCtx, info: &FlowInfo, ep: Endpoints, d: &[u8], out: &mut ShardOut) -> RequestSeen {
        let Some((class, conf)) = self.pending.classify_request(ctx.ts, ep, d, &self.limits) else {
            return RequestSeen::No;
        };
        if class == RequestClass::Scrape && conf == Confidence::Plausible && is_likely_utp(d) {
            // A bare size-and-action match is weak; uTP with a recognised
            // structure wins.
            return RequestSeen::No;
        }
        let known = conf == Confidence::Certain && class != RequestClass::Connect;
        let req = match udp::parse_request(d, &self.limits) {
            Ok(r) => r,
            Err(e) if known => {
                out.anomaly(Some(ctx), Some(info.conn_id), "tracker", e.kind(), Some(e.to_string()));
                return RequestSeen::Confirmed;
            }
            // A datagram with a request's shape that does not parse, from
            // a client the capture never saw connect: not a tracker's.
            Err(_) => return RequestSeen::No,
        };
        // Defects of a request believed by its structure alone are not
        // reported: it may be another protocol's datagram.
        if known {
            for a in req.anomalies().iter() {
                out.anomaly(Some(ctx), Some(info.conn_id), "tracker", a.kind(), None);
            }
        }
        let mut mark = None;
        let value = match &req {
            UdpRequest::Connect(_) => UdpPending::Connect,
            UdpRequest::Announce(a) => {
                let mut row = base_row(ctx, out, info.conn_id, "udp", ep.client, ep.tracker);
                row.confidence = match conf {
                    Confidence::Certain => "certain",
                    Confidence::Plausible => "plausible",
                };
                row.info_hash = Some(hex(&a.info_hash));
                row.peer_id = Some(hex(&a.peer_id));
                row.client = client_from_peer_id(&a.peer_id);
                row.port = Some(u32::from(a.port));
                // BEP 15's fields read as unsigned 64-bit, as trackers
                // (opentracker) read them: a value at or above 2^63 is kept
                // as sent, flagged udp_tracker_amount_out_of_range, so a
                // cheater cannot hide a claim by its size.
                row.uploaded = Some(a.uploaded as u64);
                row.downloaded = Some(a.downloaded as u64);
                row.left = Some(a.left as u64);
                row.event = match a.event {
                    UdpEvent::None => None,
                    UdpEvent::Other(v) => Some(v.to_string()),
                    e => Some(e.as_str().to_string()),
                };
                row.numwant = Some(i64::from(a.num_want));
                row.key = Some(format!("{:08x}", a.key));
                let declared: Vec<IpAddr> = (!a.ip.is_unspecified())
                    .then_some(IpAddr::V4(a.ip))
                    .into_iter()
                    .filter(|ip| *ip != ep.client.ip())
                    .collect();
                if !a.ip.is_unspecified() {
                    row.declared_ip = Some(a.ip.to_string());
                }
                row.path = a.options.url_data().map(|p| redact_path(&p));
                mark = Some(mark_of(
                    ctx,
                    &row,
                    ep.client.ip(),
                    ep.tracker,
                    a.info_hash,
                    Some(a.peer_id),
                    declared,
                ));
                UdpPending::Announce(Box::new(row), a.info_hash, None)
            }
            UdpRequest::Scrape(s) => {
                if s.info_hashes.len() > MAX_SCRAPE_HASHES_KEPT {
                    out.anomaly(
                        Some(ctx),
                        Some(info.conn_id),
                        "tracker",
                        "udp_tracker_scrape_hashes_cut",
                        Some(format!("{} hashes, {MAX_SCRAPE_HASHES_KEPT} kept", s.info_hashes.len())),
                    );
                }
                UdpPending::Scrape(Box::new(UdpScrape {
                    ctx,
                    conn_id: info.conn_id,
                    client: ep.client,
                    tracker: ep.tracker,
                    hashes: s.info_hashes.iter().take(MAX_SCRAPE_HASHES_KEPT).collect(),
                    confirmed: known,
                }))
            }
        };
        let port = match &value {
            UdpPending::Announce(row, _, _) => row.port,
            _ => None,
        };
        let mut value = value;
        if !known {
            if let (UdpPending::Announce(_, _, deferred), Some(m)) = (&mut value, mark.take()) {
                *deferred = Some(Box::new(Deferred { mark: m, port }));
            }
        }
        let inserted = self.pending.on_request(ctx.ts, ep, &req, value);
        if inserted != Inserted::Retransmit {
            if let Some(m) = mark {
                learned_client(
                    out,
                    ctx,
                    info.conn_id,
                    m.info_hash,
                    ep.client.ip(),
                    port,
                    m.left,
                    m.event,
                );
                out.marks.push(m);
            }
        }
        if known {
            RequestSeen::Confirmed
        } else {
            RequestSeen::Unconfirmed
        }
    }

    fn response(&mut self, ctx: FrameCtx, info: &FlowInfo, ep: Endpoints, d: &[u8], out: &mut ShardOut) -> bool {
        let family = AddrFamily::of(ep.tracker.ip());
        let Ok(resp) = udp::parse_response(d, family, &self.limits) else {
            return false;
        };
        let Some(m) = self.pending.on_response(ctx.ts, ep, &resp) else {
            return false;
        };
        for a in resp.anomalies().iter() {
            out.anomaly(Some(ctx), Some(info.conn_id), "tracker", a.kind(), None);
        }
        let error = match &resp {
            UdpResponse::Error(e) => {
                Some(String::from_utf8_lossy(e.message.get(..1024).unwrap_or(e.message)).into_owned())
            }
            _ => None,
        };
        match m.value {
            UdpPending::Connect => {}
            UdpPending::Announce(mut row, ih, deferred) => {
                if let Some(d) = deferred {
                    // Answered: the plausible request is believed now, at
                    // its own frame.
                    let Deferred { mark, port } = *d;
                    learned_client(
                        out,
                        mark.ctx,
                        row.conn_id,
                        mark.info_hash,
                        mark.client,
                        port,
                        mark.left,
                        mark.event,
                    );
                    out.marks.push(mark);
                }
                row.response_ts = Some(Ts(ctx.ts));
                row.latency_ms = Some(latency_ms(m.request_ts_us, ctx.ts));
                row.failure_reason = error;
                if let UdpResponse::Announce(a) = &resp {
                    row.interval = Some(i64::from(a.interval));
                    row.seeders = Some(i64::from(a.seeders));
                    row.leechers = Some(i64::from(a.leechers));
                    row.n_peers_returned = Some(a.peers.len() as u64);
                    let v6 = a.peers.family() == AddrFamily::V6;
                    row.n_peers6_returned = Some(if v6 { a.peers.len() as u64 } else { 0 });
                    let format = if v6 { "compact6" } else { "compact" };
                    let ih_text = hex(&ih);
                    for p in a.peers.iter() {
                        returned_peer(out, ctx, &row, (ih, &ih_text), Ok(p.ip()), p.port(), None, format);
                    }
                }
                out.rows.tracker_announces.push(*row);
            }
            UdpPending::Scrape(s) => {
                let base = TrackerScrapeRow {
                    ts: Ts(ctx.ts),
                    frame: ctx.frame,
                    capture: out.capture_name(ctx.capture),
                    conn_id: s.conn_id,
                    transport: "udp",
                    client_ip: s.client.ip().to_string(),
                    tracker_ip: s.tracker.ip().to_string(),
                    tracker_port: u32::from(s.tracker.port()),
                    request_ts: Some(Ts(s.ctx.ts)),
                    answered: true,
                    failure_reason: error,
                    ..Default::default()
                };
                // BEP 15: the answer lists the torrents in request order.
                let mut entries = match &resp {
                    UdpResponse::Scrape(r) => Some(r.entries.iter()),
                    _ => None,
                };
                for h in &s.hashes {
                    let e = entries.as_mut().and_then(|it| it.next());
                    out.rows.tracker_scrapes.push(TrackerScrapeRow {
                        info_hash: hex(h),
                        seeders: e.map(|e| i64::from(e.seeders)),
                        leechers: e.map(|e| i64::from(e.leechers)),
                        completed: e.map(|e| i64::from(e.completed)),
                        ..base.clone()
                    });
                }
            }
        }
        true
    }
}

fn is_likely_utp(d: &[u8]) -> bool {
    parse_utp(d).is_ok_and(|p| utp_confidence(d, &p, &UtpProbeLimits::default()) == UtpConfidence::Likely)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `addr_text` writes what `to_string` writes: every value of each
    /// octet position (the others varied), 20,000 xorshift addresses, and
    /// IPv6 ones (mapped, compressed, plain).
    #[test]
    fn addr_text_is_display() {
        let mut n = 0;
        for v in 0..=255u8 {
            for pos in 0..4 {
                let mut o = [1, 10, 100, 255];
                o[pos] = v;
                o[(pos + 1) % 4] = v.wrapping_mul(7);
                let ip = IpAddr::from(o);
                assert_eq!(addr_text(ip), ip.to_string());
                n += 1;
            }
        }
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let ip = IpAddr::from((x as u32).to_be_bytes());
            assert_eq!(addr_text(ip), ip.to_string());
            n += 1;
        }
        for t in [
            "::ffff:10.0.0.1",
            "2001:db8::1",
            "::",
            "fe80::1:2:3:4:5",
            "1:2:3:4:5:6:7:8",
        ] {
            let ip: IpAddr = t.parse().unwrap();
            assert_eq!(addr_text(ip), t);
            n += 1;
        }
        assert_eq!(n, 21_029);
        assert_eq!(addr_text(IpAddr::from([0, 9, 99, 200])), "0.9.99.200");
    }

    #[test]
    fn passkeys_are_redacted() {
        assert_eq!(redact_path("/announce"), "/announce");
        assert_eq!(
            redact_path("/0123456789abcdef0123456789abcdef/announce.php"),
            "/*/announce.php"
        );
        assert_eq!(redact_path("/announce?passkey=secret"), "/announce");
        assert_eq!(redact_path("/a/b"), "/a/b");
        assert!(redact_path(&"/x".repeat(500)).len() <= 256);
    }

    #[test]
    fn tracker_requests_are_recognised_by_content() {
        assert!(looks_like_tracker_request(b"GET /announce?info_hash=%12 HTTP/1.1\r\n"));
        assert!(looks_like_tracker_request(
            b"GET /x?info_hash=%12&peer_id=a HTTP/1.0\r\n"
        ));
        assert!(looks_like_tracker_request(b"GET /scrape.php HTTP/1.1\r\n"));
        assert!(looks_like_tracker_request(
            b"GET http://t.example/ANNOUNCE?x HTTP/1.1\r\n"
        ));
        assert!(!looks_like_tracker_request(
            b"GET /index.html HTTP/1.1\r\nReferer: /announce\r\n"
        ));
        assert!(!looks_like_tracker_request(b"HTTP/1.1 200 OK\r\n"));
    }
}
