//! The announce audit: what a client told a tracker against what the wire
//! shows.
//!
//! Sequential, beside the swarm state: the pipeline hands it every batch's
//! swarm events and [`AnnounceMark`]s in frame order ([`Audit::observe`]),
//! then the batch's rows ([`Audit::observe_rows`]: announce responses,
//! unattributable flows). For every (torrent, address) it keeps running totals
//! of the piece bytes seen sent and received (`Transfer` events; keyed by
//! IP, because a client announces its listen port while its outgoing
//! connections use other ports). Each announce snapshots those totals at
//! its request's frame, so the bytes "in the same interval" are exact to
//! the frame. [`Audit::finish`] turns each announce series into an
//! `announce_audit` row with its flags; docs/SCHEMA.md ("The announce
//! audit") states each flag's rule and reason.
//!
//! What a passive capture cannot see bounds what it can judge: a client's
//! traffic with peers outside the tap is invisible, and MSE-encrypted
//! streams carry no visible piece messages. So every series says what the
//! capture saw of the client (`coverage`), bytes on flows of its address
//! that cannot be attributed to a torrent (MSE, unrecognised TCP, peer wire
//! picked up without its handshake) are an upper bound on hidden piece
//! bytes (`opaque_*_bytes`), and
//! the flags that compare with the wire are raised only where the wire
//! could have shown the bytes.
//!
//! Memory is bounded by `Limits`: series (`max_audit_series`), announces per
//! series (`max_audit_announces`), (torrent, address) totals and addresses
//! with unattributable flows (`max_audit_addrs`), spans per address
//! (`max_audit_spans_per_addr`).

use super::keyhash::{Entry, Map};
use std::net::{IpAddr, SocketAddr};

use super::packed::{put_i, put_u, Packed, Reader, Record};
use super::tracker::{AnnounceMark, MarkEvent};
use super::{SwarmEvent, SwarmEventKind};
use crate::config::Limits;
use crate::proto::client_id::client_from_peer_id;
use crate::proto::metainfo::{hex, Metainfo};
use crate::sink::{AnnounceAuditRow, AnomalyRow, ConnTransport, RowBatch, Ts};

/// A piece block (BEP 3 requests are 16 KiB in every client).
pub const BLOCK_BYTES: u64 = 16 * 1024;
/// Relative tolerance of the upload comparison (see [`tolerance`]).
pub const TOLERANCE_FRACTION: f64 = 0.10;
/// Blocks of tolerance per compared interval (see [`tolerance`]).
pub const TOLERANCE_BLOCKS_PER_INTERVAL: u64 = 2;
/// Announce interval assumed when no response gave one (opentracker's and
/// most trackers' 30 minutes).
pub const DEFAULT_INTERVAL_S: i64 = 1800;
/// Distinct addresses remembered per torrent to tell whether a client had
/// anyone to upload to: the client itself and up to three declared
/// addresses may be among them, so five always leave one other if any.
const MAX_WITNESSES: usize = 5;

/// How much reported upload may exceed what the capture could see, for
/// `n_intervals` compared intervals and `seen` bytes (piece bytes observed
/// plus the unattributable-flow bound): max(10 % of `seen`, 2 blocks per
/// interval).
///
/// Why: clients' counters match the wire to a block or two (libtorrent,
/// qBittorrent, rTorrent, aria2), except Transmission, which counts bytes
/// it queued, 2–4 % above the wire (DESIGN.md); 10 % leaves that 2.5×
/// headroom. The per-interval blocks cover the counter being read a little
/// before or after the announce packet crosses the tap (a block in flight
/// at each end of an interval) and blocks cut off by a closing connection,
/// which libtorrent counts as sent.
pub fn tolerance(seen: u64, n_intervals: u64) -> u64 {
    let rel = (seen as f64 * TOLERANCE_FRACTION).ceil() as u64;
    rel.max(TOLERANCE_BLOCKS_PER_INTERVAL * BLOCK_BYTES * n_intervals)
}

/// Running piece-byte totals of one (torrent, address).
#[derive(Debug, Clone, Copy, Default)]
struct Observed {
    up: u64,
    down: u64,
    /// The address took part in this torrent's peer wire.
    wire: bool,
    /// Created while the table still had room: nothing was missed before.
    complete: bool,
}

/// What the capture shows of a torrent's swarm.
#[derive(Debug, Clone, Default)]
struct Witness {
    /// Peer-wire traffic of the torrent was captured.
    wire: bool,
    /// Distinct addresses known in the swarm (wire, tracker answers, DHT,
    /// PEX …), at most [`MAX_WITNESSES`].
    addrs: Vec<IpAddr>,
}

/// A flow of an address whose piece bytes cannot be attributed (see
/// [`Audit::observe_rows`]).
#[derive(Debug, Clone, Copy)]
struct Span {
    first_ts: i64,
    last_ts: i64,
    sent: u64,
    received: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct SeriesKey {
    info_hash: [u8; 20],
    client: IpAddr,
    peer_id: Option<[u8; 20]>,
    tracker: SocketAddr,
    transport: &'static str,
}

/// One announce as the audit keeps it.
#[derive(Debug, Clone, Copy)]
struct Obs {
    ts: i64,
    capture: u32,
    uploaded: Option<u64>,
    downloaded: Option<u64>,
    event: MarkEvent,
    /// Observed totals of the client's addresses at the request's frame.
    snap_up: u64,
    snap_down: u64,
}

/// An announce packed: time and the four counters as differences from the
/// announce before, their presence and the event in one byte, the capture
/// as it is (about 12 bytes instead of 64).
impl Record for Obs {
    fn put(&self, prev: Option<&Self>, buf: &mut Vec<u8>) {
        let p = prev.copied().unwrap_or(OBS_ZERO);
        put_i(buf, self.ts.wrapping_sub(p.ts));
        let bits =
            u8::from(self.uploaded.is_some()) | u8::from(self.downloaded.is_some()) << 1 | (self.event as u8) << 2;
        buf.push(bits);
        put_u(buf, u64::from(self.capture));
        for (v, pv) in [(self.uploaded, p.uploaded), (self.downloaded, p.downloaded)] {
            if let Some(v) = v {
                put_i(buf, v.wrapping_sub(pv.unwrap_or(0)) as i64);
            }
        }
        put_i(buf, self.snap_up.wrapping_sub(p.snap_up) as i64);
        put_i(buf, self.snap_down.wrapping_sub(p.snap_down) as i64);
    }

    fn get(prev: Option<&Self>, r: &mut Reader<'_>) -> Self {
        let p = prev.copied().unwrap_or(OBS_ZERO);
        let ts = p.ts.wrapping_add(r.i());
        let bits = r.byte();
        let capture = r.u() as u32;
        let mut counter = |present: bool, pv: Option<u64>| present.then(|| pv.unwrap_or(0).wrapping_add(r.i() as u64));
        let uploaded = counter(bits & 1 != 0, p.uploaded);
        let downloaded = counter(bits & 2 != 0, p.downloaded);
        Obs {
            ts,
            capture,
            uploaded,
            downloaded,
            event: mark_event_from_u8(bits >> 2),
            snap_up: p.snap_up.wrapping_add(r.i() as u64),
            snap_down: p.snap_down.wrapping_add(r.i() as u64),
        }
    }
}

/// What the first announce of a series is packed against.
const OBS_ZERO: Obs = Obs {
    ts: 0,
    capture: 0,
    uploaded: None,
    downloaded: None,
    event: MarkEvent::None,
    snap_up: 0,
    snap_down: 0,
};

/// The inverse of `MarkEvent as u8` (our own bytes hold nothing else).
fn mark_event_from_u8(b: u8) -> MarkEvent {
    match b {
        1 => MarkEvent::Started,
        2 => MarkEvent::Completed,
        3 => MarkEvent::Stopped,
        4 => MarkEvent::Other,
        _ => MarkEvent::None,
    }
}

/// A series' key lives in `series_idx` alone (112 bytes; a series is 88).
#[derive(Debug, Clone)]
struct Series {
    declared: Vec<IpAddr>,
    /// Packed: a series grows by one announce per interval of each client.
    announces: Packed<Obs>,
    max_interval_s: Option<i64>,
    /// Largest seeders + leechers a response reported.
    max_swarm: Option<i64>,
}

/// The audit's state over a run.
pub struct Audit {
    limits: Limits,
    max_link_bps: f64,
    alias: Map<[u8; 20], [u8; 20]>,
    capture_idx: Map<String, u32>,
    observed: Map<([u8; 20], IpAddr), Observed>,
    n_observed_dropped: u64,
    witness: Map<[u8; 20], Witness>,
    opaque: Map<IpAddr, Vec<Span>>,
    n_opaque_dropped: u64,
    series_idx: Map<SeriesKey, usize>,
    series: Vec<Series>,
    n_series_dropped: u64,
    n_announces_merged: u64,
    /// (capture, request frame) → series, until the announce's row brings
    /// the response's fields.
    join: Map<(u32, u64), usize>,
    /// First packet time of each input (by capture index).
    first_ts: Map<u32, i64>,
}

impl Audit {
    /// `captures`: input names by index (rows name their capture); `torrents`:
    /// metainfo from --torrents, whose hashes (a hybrid's v1 and truncated
    /// v2) are audited as one torrent.
    pub fn new(limits: Limits, max_link_bps: f64, captures: &[String], torrents: &[std::sync::Arc<Metainfo>]) -> Self {
        let mut alias = Map::default();
        for m in torrents {
            let hashes = m.wire_hashes();
            if let Some(first) = hashes.first().copied() {
                for h in hashes {
                    alias.insert(h, first);
                }
            }
        }
        let mut capture_idx = Map::default();
        for (i, n) in captures.iter().enumerate() {
            capture_idx.entry(n.clone()).or_insert(i as u32);
        }
        Audit {
            limits,
            max_link_bps,
            alias,
            capture_idx,
            observed: Map::default(),
            n_observed_dropped: 0,
            witness: Map::default(),
            opaque: Map::default(),
            n_opaque_dropped: 0,
            series_idx: Map::default(),
            series: Vec::new(),
            n_series_dropped: 0,
            n_announces_merged: 0,
            join: Map::default(),
            first_ts: Map::default(),
        }
    }

    /// Audits hash `h` as `canon`: `swarmtap merge` pairs a hybrid
    /// torrent's hashes from the datasets' `torrents` rows, as [`Audit::new`]
    /// pairs them from metainfo.
    pub fn alias_hash(&mut self, h: [u8; 20], canon: [u8; 20]) {
        self.alias.insert(h, canon);
    }

    fn canon(&self, h: [u8; 20]) -> [u8; 20] {
        self.alias.get(&h).copied().unwrap_or(h)
    }

    /// The first packet time of input `capture` (`swarmtap merge`, which
    /// replays announces without the captures: the merge's first capture
    /// time), for `upload_without_started`.
    pub fn note_capture_start(&mut self, capture: u32, ts: i64) {
        self.seen_ts(capture, ts);
    }

    fn seen_ts(&mut self, capture: u32, ts: i64) {
        let f = self.first_ts.entry(capture).or_insert(ts);
        *f = (*f).min(ts);
    }

    /// Totals of (torrent, address); created for peer-wire events while
    /// the table has room (`force`: always, for announcing clients, whose
    /// totals matter from their first announce on).
    fn observed_mut(&mut self, ih: [u8; 20], ip: IpAddr, force: bool) -> Option<&mut Observed> {
        // One hash and probe per call (the entry), not three: every
        // `Transfer` event asks twice.
        let full = self.observed.len() >= self.limits.max_audit_addrs && !force;
        let complete = self.n_observed_dropped == 0;
        match self.observed.entry((ih, ip)) {
            Entry::Occupied(o) => Some(o.into_mut()),
            Entry::Vacant(v) => {
                if full {
                    self.n_observed_dropped += 1;
                    return None;
                }
                Some(v.insert(Observed {
                    complete,
                    ..Default::default()
                }))
            }
        }
    }

    /// Notes `ips` (in order) as addresses of torrent `ih`.
    fn witness_addrs(&mut self, ih: [u8; 20], ips: &[IpAddr], wire: bool) {
        let full = self.witness.len() >= self.limits.max_torrents;
        let w = match self.witness.entry(ih) {
            Entry::Occupied(o) => o.into_mut(),
            Entry::Vacant(v) => {
                if full {
                    return;
                }
                v.insert(Witness::default())
            }
        };
        w.wire |= wire;
        for ip in ips {
            if w.addrs.len() < MAX_WITNESSES && !w.addrs.contains(ip) {
                w.addrs.push(*ip);
            }
        }
    }

    /// A batch's swarm events and announce marks, each sorted by (capture,
    /// frame): merged in that order.
    pub fn observe(&mut self, events: &[SwarmEvent], marks: &[AnnounceMark]) {
        let mut mi = marks.iter().peekable();
        for ev in events {
            while let Some(m) = mi.next_if(|m| (m.ctx.capture, m.ctx.frame) < (ev.ctx.capture, ev.ctx.frame)) {
                self.mark(m);
            }
            self.event(ev);
        }
        for m in mi {
            self.mark(m);
        }
    }

    fn event(&mut self, ev: &SwarmEvent) {
        let ih = self.canon(ev.info_hash);
        let ip = ev.peer.ip();
        match &ev.kind {
            SwarmEventKind::Seen { .. } => {
                self.witness_addrs(ih, &[ip], true);
                if let Some(o) = self.observed_mut(ih, ip, false) {
                    o.wire = true;
                }
            }
            SwarmEventKind::Transfer { to, bytes, .. } => {
                self.witness_addrs(ih, &[ip, to.ip()], true);
                if let Some(o) = self.observed_mut(ih, ip, false) {
                    o.up += bytes;
                    o.wire = true;
                }
                if let Some(o) = self.observed_mut(ih, to.ip(), false) {
                    o.down += bytes;
                    o.wire = true;
                }
            }
            SwarmEventKind::Learned { .. } => self.witness_addrs(ih, &[ip], false),
            _ => {}
        }
    }

    fn mark(&mut self, m: &AnnounceMark) {
        self.seen_ts(m.ctx.capture, m.ctx.ts);
        let ih = self.canon(m.info_hash);
        let key = SeriesKey {
            info_hash: ih,
            client: m.client,
            peer_id: m.peer_id,
            tracker: m.tracker,
            transport: m.transport,
        };
        let idx = match self.series_idx.get(&key) {
            Some(i) => *i,
            None => {
                if self.series.len() >= self.limits.max_audit_series {
                    self.n_series_dropped += 1;
                    return;
                }
                self.series.push(Series {
                    declared: Vec::new(),
                    announces: Packed::new(),
                    max_interval_s: None,
                    max_swarm: None,
                });
                self.series_idx.insert(key, self.series.len() - 1);
                self.series.len() - 1
            }
        };
        let mut addrs = vec![m.client];
        if let Some(s) = self.series.get_mut(idx) {
            for ip in &m.declared {
                if s.declared.len() < 3 && !s.declared.contains(ip) {
                    s.declared.push(*ip);
                }
            }
            addrs.extend(s.declared.iter().copied());
        }
        let (mut up, mut down) = (0u64, 0u64);
        for ip in addrs {
            if let Some(o) = self.observed_mut(ih, ip, true) {
                up += o.up;
                down += o.down;
            }
        }
        let obs = Obs {
            ts: m.ctx.ts,
            capture: m.ctx.capture,
            uploaded: m.uploaded,
            downloaded: m.downloaded,
            event: m.event,
            snap_up: up,
            snap_down: down,
        };
        let max_ann = self.limits.max_audit_announces.max(2);
        if let Some(s) = self.series.get_mut(idx) {
            if s.announces.len() >= max_ann {
                // Keep the first ones and the newest: deltas stay whole.
                s.announces.pop();
                self.n_announces_merged += 1;
            }
            s.announces.push(obs);
        }
        if self.join.len() < self.limits.max_audit_series {
            self.join.insert((m.ctx.capture, m.ctx.frame), idx);
        }
    }

    /// A batch's rows: announce responses (interval, swarm size) and the
    /// flows whose piece bytes cannot be attributed to a torrent.
    pub fn observe_rows(&mut self, rows: &RowBatch) {
        for f in &rows.flows {
            if let Some(cap) = self.capture_idx.get(&*f.capture).copied() {
                self.seen_ts(cap, f.first_ts.0);
            }
            // Unrecognised TCP: any of its payload may be piece bytes; so
            // may an MSE-shaped flow's (encrypted over TCP: counted here,
            // from the flow, whether or not its connection row is written).
            if f.proto == "tcp" && (f.app == "other" || f.app == "mse") {
                self.add_spans(
                    f.orig_ip.0,
                    f.resp_ip.0,
                    (f.first_ts.0, f.last_ts.0),
                    f.payload_bytes_orig,
                    f.payload_bytes_resp,
                );
            }
        }
        for c in &rows.connections {
            if c.encrypted && c.transport == ConnTransport::Tcp {
                // Counted from its flow above.
            } else if c.encrypted {
                // MSE: payload bytes bound the piece bytes inside.
                self.add_spans(
                    c.orig_ip.0,
                    c.resp_ip.0,
                    (c.first_ts.0, c.last_ts.0),
                    c.payload_bytes_orig,
                    c.payload_bytes_resp,
                );
            } else if c.info_hash.is_none() {
                // Peer wire whose handshake was not captured (picked up
                // mid-connection): its piece bytes are known, its torrent
                // is not.
                self.add_spans(
                    c.orig_ip.0,
                    c.resp_ip.0,
                    (c.first_ts.0, c.last_ts.0),
                    c.piece_bytes_orig,
                    c.piece_bytes_resp,
                );
            }
        }
        for r in &rows.tracker_announces {
            let Some(cap) = self.capture_idx.get(&r.capture).copied() else {
                continue;
            };
            let Some(idx) = self.join.remove(&(cap, r.frame)) else {
                continue;
            };
            let Some(s) = self.series.get_mut(idx) else { continue };
            if let Some(i) = r.interval {
                s.max_interval_s = Some(s.max_interval_s.map_or(i, |m| m.max(i)));
            }
            if r.seeders.is_some() || r.leechers.is_some() {
                let n = r.seeders.unwrap_or(0).saturating_add(r.leechers.unwrap_or(0));
                s.max_swarm = Some(s.max_swarm.map_or(n, |m| m.max(n)));
            }
        }
    }

    /// Spans for both ends of a flow that sent `from_orig` / `from_resp`.
    fn add_spans(&mut self, o: IpAddr, r: IpAddr, (first_ts, last_ts): (i64, i64), from_orig: u64, from_resp: u64) {
        if from_orig + from_resp == 0 {
            return;
        }
        for (ip, sent, received) in [(o, from_orig, from_resp), (r, from_resp, from_orig)] {
            self.add_span(
                ip,
                Span {
                    first_ts,
                    last_ts,
                    sent,
                    received,
                },
            );
        }
    }

    fn add_span(&mut self, ip: IpAddr, span: Span) {
        if !self.opaque.contains_key(&ip) && self.opaque.len() >= self.limits.max_audit_addrs {
            self.n_opaque_dropped += 1;
            return;
        }
        let max = self.limits.max_audit_spans_per_addr.max(2);
        let v = self.opaque.entry(ip).or_default();
        if v.len() >= max {
            // Merge the two oldest into one span covering both.
            let b = v.remove(1);
            if let Some(a) = v.first_mut() {
                a.first_ts = a.first_ts.min(b.first_ts);
                a.last_ts = a.last_ts.max(b.last_ts);
                a.sent += b.sent;
                a.received += b.received;
            }
        }
        v.push(span);
    }

    /// Bytes sent and received on unattributable flows of `addrs`
    /// overlapping [from, to].
    fn opaque_between(&self, addrs: &[IpAddr], from: i64, to: i64) -> (u64, u64) {
        let (mut s, mut r) = (0, 0);
        for ip in addrs {
            for sp in self.opaque.get(ip).map(Vec::as_slice).unwrap_or_default() {
                if sp.last_ts >= from && sp.first_ts <= to {
                    s += sp.sent;
                    r += sp.received;
                }
            }
        }
        (s, r)
    }

    /// Live capture: the `announce_audit` rows as of now (state unchanged).
    pub fn snapshot(&self, rows: &mut RowBatch) {
        self.series_rows(rows);
    }

    fn series_rows(&self, rows: &mut RowBatch) {
        // By key (every series has one in series_idx, each its own).
        let mut order: Vec<(SeriesKey, usize)> = self.series_idx.iter().map(|(k, &i)| (*k, i)).collect();
        order.sort_unstable();
        for (k, i) in order {
            let Some(s) = self.series.get(i) else { continue };
            if let Some(row) = self.row(k, s) {
                rows.announce_audit.push(row);
            }
        }
    }

    /// One `announce_audit` row per series, in a fixed order.
    pub fn finish(self, rows: &mut RowBatch) {
        self.series_rows(rows);
        let mut note = |kind: &str, detail: String| {
            rows.anomalies.push(AnomalyRow {
                layer: "audit",
                kind: kind.into(),
                detail: Some(detail),
                ..Default::default()
            })
        };
        if self.n_series_dropped > 0 {
            note(
                "audit_series_full",
                format!(
                    "{} announces of series not audited (max_audit_series)",
                    self.n_series_dropped
                ),
            );
        }
        if self.n_announces_merged > 0 {
            note(
                "audit_announces_merged",
                format!(
                    "{} announces replaced by later ones (max_audit_announces)",
                    self.n_announces_merged
                ),
            );
        }
        if self.n_observed_dropped + self.n_opaque_dropped > 0 {
            note(
                "audit_addrs_full",
                format!(
                    "{} peer-wire events and {} unattributable flows not counted (max_audit_addrs)",
                    self.n_observed_dropped, self.n_opaque_dropped
                ),
            );
        }
    }

    fn row(&self, k: SeriesKey, s: &Series) -> Option<AnnounceAuditRow> {
        let announces = s.announces.to_vec();
        let first = announces.first()?;
        let last = announces.last()?;
        let mut addrs = vec![k.client];
        addrs.extend(s.declared.iter().copied());

        let mut n_intervals = 0u64;
        let (mut rep_up, mut rep_down): (Option<u64>, Option<u64>) = (None, None);
        let (mut obs_up, mut obs_down) = (0u64, 0u64);
        let mut backwards = false;
        let mut max_bps: Option<f64> = None;
        for w in announces.windows(2) {
            let [p, q] = w else { continue };
            if q.event == MarkEvent::Started {
                // A new client session: its counters start again.
                continue;
            }
            n_intervals += 1;
            obs_up += q.snap_up.saturating_sub(p.snap_up);
            obs_down += q.snap_down.saturating_sub(p.snap_down);
            if let (Some(a), Some(b)) = (p.uploaded, q.uploaded) {
                backwards |= b < a;
                let inc = b.saturating_sub(a);
                rep_up = Some(rep_up.unwrap_or(0).saturating_add(inc));
                let dur_us = q.ts - p.ts;
                if dur_us >= 1_000_000 && inc > 0 {
                    let bps = inc as f64 / (dur_us as f64 / 1e6);
                    max_bps = Some(max_bps.map_or(bps, |m: f64| m.max(bps)));
                }
            }
            if let (Some(a), Some(b)) = (p.downloaded, q.downloaded) {
                backwards |= b < a;
                rep_down = Some(rep_down.unwrap_or(0).saturating_add(b.saturating_sub(a)));
            }
        }
        let (opaque_sent, opaque_received) = self.opaque_between(&addrs, first.ts, last.ts);
        let tol = tolerance(obs_up + opaque_sent, n_intervals);

        let obs_of = |ip: &IpAddr| self.observed.get(&(k.info_hash, *ip));
        let complete = obs_of(&k.client).is_none_or(|o| o.complete);
        let client_wire = addrs.iter().any(|ip| obs_of(ip).is_some_and(|o| o.wire));
        let w = self.witness.get(&k.info_hash);
        let coverage = if !complete {
            "unknown"
        } else if client_wire || opaque_sent + opaque_received > 0 {
            "client"
        } else if w.is_some_and(|w| w.wire) {
            "swarm"
        } else {
            "none"
        };

        let rep = rep_up.unwrap_or(0);
        let mut flags: Vec<String> = Vec::new();
        // started: an announce claiming upload with no `started` at or
        // before it, where the capture (the input holding the series' first
        // announce) ran at least one announce interval before the series
        // began (else the `started` may predate the capture).
        let interval_us = s.max_interval_s.unwrap_or(DEFAULT_INTERVAL_S).max(1) * 1_000_000;
        let captured_before = self
            .first_ts
            .get(&first.capture)
            .is_some_and(|t0| first.ts - t0 >= interval_us);
        let mut started = false;
        let mut claim_before_started = false;
        for a in &announces {
            started |= a.event == MarkEvent::Started;
            if !started && a.uploaded.is_some_and(|u| u > 0) {
                claim_before_started = true;
            }
        }
        if claim_before_started && captured_before {
            flags.push("upload_without_started".into());
        }
        if backwards {
            flags.push("counters_backwards".into());
        }
        let nobody_else = w.is_none_or(|w| w.addrs.iter().all(|ip| addrs.contains(ip)));
        if rep > 0 && nobody_else && s.max_swarm.is_none_or(|n| n <= 1) {
            flags.push("upload_without_peers".into());
        }
        if coverage == "client" && rep > obs_up + opaque_sent + tol {
            flags.push("upload_above_wire".into());
        }
        if max_bps.is_some_and(|b| b > self.max_link_bps) {
            flags.push("upload_rate_above_link".into());
        }
        if matches!(coverage, "client" | "swarm") && obs_up == 0 && opaque_sent == 0 && rep > tol {
            flags.push("upload_not_on_wire".into());
        }
        Some(AnnounceAuditRow {
            info_hash: hex(&k.info_hash),
            client_ip: k.client.to_string(),
            peer_id: k.peer_id.map(|p| hex(&p)),
            client: k.peer_id.and_then(|p| client_from_peer_id(&p)),
            tracker_ip: k.tracker.ip().to_string(),
            tracker_port: u32::from(k.tracker.port()),
            transport: k.transport,
            first_ts: Ts(first.ts),
            last_ts: Ts(last.ts),
            n_announces: s.announces.len() as u64,
            n_intervals,
            started_seen: started,
            first_uploaded: first.uploaded,
            last_uploaded: last.uploaded,
            reported_uploaded: rep_up,
            observed_uploaded: obs_up,
            opaque_sent_bytes: opaque_sent,
            reported_downloaded: rep_down,
            observed_downloaded: obs_down,
            opaque_received_bytes: opaque_received,
            tolerance_bytes: tol,
            excess_uploaded: rep_up.map(|r| {
                let e = i128::from(r) - i128::from(obs_up) - i128::from(opaque_sent);
                i64::try_from(e).unwrap_or(if e < 0 { i64::MIN } else { i64::MAX })
            }),
            max_upload_bps: max_bps,
            suspicious: !flags.is_empty(),
            coverage,
            flags,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::FrameCtx;
    use crate::sink::Ip;

    /// Announces come back from their packed series as they went in:
    /// every event, counters absent or present, going down as well as up.
    #[test]
    fn announces_pack_and_come_back_equal() {
        let events = [
            MarkEvent::None,
            MarkEvent::Started,
            MarkEvent::Completed,
            MarkEvent::Stopped,
            MarkEvent::Other,
        ];
        let items: Vec<Obs> = (0..20u64)
            .map(|i| Obs {
                ts: 1_700_000_000_000_000 + (i as i64 - 3) * 1_800_000_000,
                capture: (i % 3) as u32,
                uploaded: (i % 4 != 1).then_some(if i == 7 { u64::MAX } else { 1000 * (20 - i) }),
                downloaded: (i % 5 != 2).then_some(i << 40),
                event: events[i as usize % 5],
                snap_up: if i == 9 { u64::MAX } else { 16384 * i },
                snap_down: 0,
            })
            .collect();
        let p = Packed::from_slice(&items);
        let back = p.to_vec();
        assert_eq!(back.len(), items.len());
        for (a, b) in items.iter().zip(&back) {
            assert_eq!(
                (
                    a.ts,
                    a.capture,
                    a.uploaded,
                    a.downloaded,
                    a.event,
                    a.snap_up,
                    a.snap_down
                ),
                (
                    b.ts,
                    b.capture,
                    b.uploaded,
                    b.downloaded,
                    b.event,
                    b.snap_up,
                    b.snap_down
                )
            );
        }
    }

    fn ctx(frame: u64, ts_s: i64) -> FrameCtx {
        FrameCtx {
            ts: ts_s * 1_000_000,
            frame,
            capture: 0,
        }
    }

    fn mark(frame: u64, ts_s: i64, up: u64, event: MarkEvent) -> AnnounceMark {
        AnnounceMark {
            ctx: ctx(frame, ts_s),
            transport: "http",
            client: "10.0.0.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0])),
            tracker: SocketAddr::from(([10, 0, 0, 9], 6969)),
            info_hash: [7; 20],
            peer_id: Some([b'a'; 20]),
            uploaded: Some(up),
            downloaded: Some(0),
            left: Some(0),
            event,
            declared: Vec::new(),
        }
    }

    fn transfer(frame: u64, ts_s: i64, bytes: u64) -> SwarmEvent {
        SwarmEvent {
            ctx: ctx(frame, ts_s),
            conn_id: 1,
            info_hash: [7; 20],
            peer: SocketAddr::from(([10, 0, 0, 1], 50000)),
            kind: SwarmEventKind::Transfer {
                to: SocketAddr::from(([10, 0, 0, 2], 6881)),
                bytes,
                cut_off: false,
            },
        }
    }

    fn run(events: &[SwarmEvent], marks: &[AnnounceMark]) -> AnnounceAuditRow {
        let mut a = Audit::new(Limits::default(), 1.25e9, &["x".into()], &[]);
        a.observe(events, marks);
        let mut rows = RowBatch::default();
        a.finish(&mut rows);
        rows.announce_audit.into_iter().next().unwrap_or_default()
    }

    #[test]
    fn honest_series_matches_the_wire() {
        let ev: Vec<_> = (0..40).map(|i| transfer(10 + i, 10 + i as i64, 16384)).collect();
        let r = run(
            &ev,
            &[
                mark(1, 1, 0, MarkEvent::Started),
                mark(30, 30, 20 * 16384, MarkEvent::None),
                mark(60, 60, 40 * 16384, MarkEvent::Stopped),
            ],
        );
        assert_eq!(r.observed_uploaded, 40 * 16384);
        assert_eq!(r.reported_uploaded, Some(40 * 16384));
        assert_eq!(r.n_intervals, 2);
        assert_eq!(r.coverage, "client");
        assert!(r.flags.is_empty(), "{:?}", r.flags);
    }

    #[test]
    fn inflated_upload_is_flagged() {
        let ev: Vec<_> = (0..40).map(|i| transfer(10 + i, 10 + i as i64, 16384)).collect();
        let r = run(
            &ev,
            &[
                mark(1, 1, 0, MarkEvent::Started),
                mark(60, 60, 4 * 40 * 16384, MarkEvent::None),
            ],
        );
        assert_eq!(r.flags, ["upload_above_wire"]);
        assert!(r.suspicious);
        assert_eq!(r.excess_uploaded, Some(3 * 40 * 16384));
    }

    #[test]
    fn backwards_without_peers_and_too_fast() {
        let r = run(
            &[],
            &[
                mark(1, 1, 0, MarkEvent::Started),
                mark(2, 3, 10_000_000_000, MarkEvent::None),
                mark(3, 5, 5, MarkEvent::None),
            ],
        );
        assert!(r.flags.contains(&"counters_backwards".to_string()), "{:?}", r.flags);
        assert!(r.flags.contains(&"upload_without_peers".to_string()), "{:?}", r.flags);
        assert!(r.flags.contains(&"upload_rate_above_link".to_string()), "{:?}", r.flags);
        assert_eq!(r.coverage, "none");
    }

    #[test]
    fn tolerance_is_the_larger_of_the_two_terms() {
        assert_eq!(tolerance(0, 3), 6 * BLOCK_BYTES);
        assert_eq!(tolerance(10_000_000, 1), 1_000_000);
    }

    #[test]
    fn encrypted_payload_bounds_what_an_encrypted_client_uploaded() {
        // The client's only connection is MSE-encrypted: no piece message
        // is visible, its 1 MB of payload sent is the upper bound. A claim
        // within it (piece data plus protocol overhead) passes; four times
        // it is flagged.
        let conn = crate::sink::ConnectionRow {
            encrypted: true,
            // Over TCP the flow's row counts it; this is the connection's own path.
            transport: ConnTransport::Utp,
            orig_ip: Ip(IpAddr::from([10, 0, 0, 1])),
            resp_ip: Ip(IpAddr::from([10, 0, 0, 2])),
            first_ts: Ts(2_000_000),
            last_ts: Ts(50_000_000),
            payload_bytes_orig: 1_000_000,
            payload_bytes_resp: 20_000,
            ..Default::default()
        };
        for (claim, flagged) in [(950_000u64, false), (4_000_000, true)] {
            let mut a = Audit::new(Limits::default(), 1.25e9, &["x".into()], &[]);
            a.observe(
                &[],
                &[
                    mark(1, 1, 0, MarkEvent::Started),
                    mark(60, 60, claim, MarkEvent::Stopped),
                ],
            );
            a.observe_rows(&RowBatch {
                connections: vec![conn.clone()],
                ..Default::default()
            });
            let mut rows = RowBatch::default();
            a.finish(&mut rows);
            let r = rows.announce_audit.into_iter().next().unwrap_or_default();
            assert_eq!((r.observed_uploaded, r.opaque_sent_bytes), (0, 1_000_000));
            assert_eq!(r.coverage, "client");
            assert_eq!(
                r.flags.contains(&"upload_above_wire".to_string()),
                flagged,
                "{claim}: {:?}",
                r.flags
            );
        }
    }
}
