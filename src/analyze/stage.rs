//! The sequential analysis stage: everything after the shards that needs
//! the whole capture in order. The pipeline runs the shards over a step's
//! packets (a batch, the flows ended at a capture's end or at the end of
//! input) and hands this stage what they produced ([`StepInput`]); the
//! stage owns the order events are applied in (frame order, held events
//! waited for), the ut_metadata assembly, the attribution of mid-stream
//! and encrypted connections, the audit, the DHT tables and the swarm
//! state, and returns the step's rows. It has no threads and knows nothing
//! of the shards.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use crate::analyze::apps::ShardContext;
use crate::analyze::audit::Audit;
use crate::analyze::dht::{DhtAggregate, DhtObservation};
use crate::analyze::held::HeldConns;
use crate::analyze::metadata::{MetadataAssembler, MetadataPiece};
use crate::analyze::pieces::KnownTorrents;
use crate::analyze::stream::{EV_MSE_BOTH, EV_MSE_NAMED, EV_MSE_ONE_WAY_NAMED};
use crate::analyze::swarm::{EncryptedConn, Swarm, UnattributedEvent};
use crate::analyze::tracker::AnnounceMark;
use crate::analyze::{ConnEnds, SwarmEvent};
use crate::config::Settings;
use crate::dissect::Confidence;
use crate::proto::metainfo::Metainfo;
use crate::proto::peer_wire::TorrentShape;
use crate::sink::typed::{push_hex20, push_ip};
use crate::sink::{AnomalyRow, ConnTransport, ConnectionRow, FlowRow, RowBatch};

/// What the shards produced during one step, in no particular order.
#[derive(Default)]
pub struct StepInput {
    pub rows: RowBatch,
    pub events: Vec<SwarmEvent>,
    /// Events of mid-stream connections whose torrent is not known yet.
    pub unattributed: Vec<UnattributedEvent>,
    pub dht: Vec<DhtObservation>,
    /// ut_metadata pieces for the assembler.
    pub metadata: Vec<MetadataPiece>,
    /// Announces for the audit.
    pub marks: Vec<AnnounceMark>,
    /// Typed ends of the encrypted connection rows without a torrent.
    pub conn_ends: Vec<ConnEnds>,
    /// The oldest (capture, frame) a connection still holds events back
    /// from: no later event is applied before it is released.
    pub held_since: Option<(u32, u64)>,
}

/// Which step: where it stands decides what the stage may still wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    /// A batch of packets, or flows ended in the course of input.
    Batch,
    /// The end of a capture that the next input does not continue: every
    /// held event is applied, encrypted connections are attributed, and
    /// the swarm forgets the capture's listen endpoints.
    SegmentEnd,
    /// The end of input (followed by [`Stage::finish`]).
    Final,
}

/// ut_metadata assembly and the piece hashes the shards verify with.
struct MetaState {
    assembler: MetadataAssembler,
    known: Arc<KnownTorrents>,
    names: Arc<Vec<String>>,
}

impl MetaState {
    /// Takes the shards' metadata pieces to the assembler, in frame order.
    /// A rebuilt dictionary is returned with the (capture, frame) that
    /// completed it, where the swarm state takes it in event order; the
    /// shards verify pieces with it `join_frames` frames later (the new
    /// set is returned when it changed). Counts this step's `pieces` rows
    /// for the torrents' totals.
    fn absorb(
        &mut self,
        mut pieces: Vec<MetadataPiece>,
        join_frames: u64,
        swarm: &mut Swarm,
        rows: &mut RowBatch,
    ) -> (Vec<Rejoin>, Option<Arc<KnownTorrents>>) {
        pieces.sort_by_key(|p| (p.ctx.capture, p.ctx.frame));
        let mut rebuilt = Vec::new();
        for p in pieces {
            if let Some(r) = self.assembler.add(p, &self.names, rows) {
                let m = Arc::new(r.meta);
                if m.wire_hashes().iter().any(|h| self.known.has(h)) {
                    continue;
                }
                let from = (r.ctx.capture, r.ctx.frame.saturating_add(join_frames));
                Arc::make_mut(&mut self.known).insert_from(m.clone(), from);
                rebuilt.push(Rejoin { ctx: r.ctx, meta: m });
            }
        }
        rows.pieces.sort_by_key(|r| r.frame);
        for r in &rows.pieces {
            swarm.note_piece(&r.info_hash, r.verified);
        }
        let known = (!rebuilt.is_empty()).then(|| self.known.clone());
        (rebuilt, known)
    }
}

/// A dictionary rebuilt from ut_metadata, for the swarm state at the frame
/// that completed it.
struct Rejoin {
    ctx: crate::analyze::FrameCtx,
    meta: Arc<Metainfo>,
}

/// Rebuilt metadata by the (capture, frame) that completed it, as the
/// swarm state takes it.
type MetaAt = ((u32, u64), Arc<Metainfo>);

/// What waits in the stage's order: an event, or rebuilt metadata that the
/// swarm state takes between the events before and after it.
enum Ordered {
    Event(SwarmEvent),
    Meta(Rejoin),
}

impl Ordered {
    fn key(&self) -> (u32, u64) {
        match self {
            Ordered::Event(e) => (e.ctx.capture, e.ctx.frame),
            Ordered::Meta(r) => (r.ctx.capture, r.ctx.frame),
        }
    }

    fn ts(&self) -> i64 {
        match self {
            Ordered::Event(e) => e.ctx.ts,
            Ordered::Meta(r) => r.ctx.ts,
        }
    }
}

/// What waits in the stage's order, by (capture, frame, arrival). Nearly
/// everything arrives in that order (a step's events follow the previous
/// step's): it queues at the back of `run`, one move in and one out. What
/// arrives before the run's last (events a connection held back, then
/// released) goes to `late`: sorted runs of their own (a step's late
/// events come in frame order, so each step adds one), merged into one
/// when there are more than [`MAX_LATE_RUNS`]. What is ready comes off the
/// smallest of the fronts, so the order is that of one map over every
/// key. A map for `late` moved ~150-byte events in node shifts: ~1,900
/// instructions a late event (56,719 of them on bulk-1g, ~110 M of the
/// stage's thread); a queue takes one move in and one out.
#[derive(Default)]
struct Waiting {
    run: WaitQueue,
    /// Sorted runs, none empty.
    late: Vec<WaitQueue>,
    n_late: usize,
}

/// (capture, frame, arrival): the order things wait in.
type WaitKey = (u32, u64, u64);

/// Entries in key order, with what waits.
type WaitQueue = VecDeque<(WaitKey, Ordered)>;

/// Sorted runs `Waiting::late` keeps before merging them into one.
const MAX_LATE_RUNS: usize = 16;

impl Waiting {
    fn len(&self) -> usize {
        self.run.len() + self.n_late
    }

    fn is_empty(&self) -> bool {
        self.run.is_empty() && self.n_late == 0
    }

    /// Keys are unique (the arrival counter is their last part).
    fn insert(&mut self, key: (u32, u64, u64), o: Ordered) {
        if self.run.back().is_none_or(|(k, _)| *k < key) {
            self.run.push_back((key, o));
            return;
        }
        self.n_late += 1;
        match self.late.last_mut() {
            Some(last) if last.back().is_some_and(|(k, _)| *k < key) => last.push_back((key, o)),
            _ => {
                if self.late.len() >= MAX_LATE_RUNS {
                    self.merge_late();
                }
                self.late.push(VecDeque::from([(key, o)]));
            }
        }
    }

    /// The late run whose front comes first.
    fn late_first(&self) -> Option<usize> {
        let mut best: Option<(usize, &(u32, u64, u64))> = None;
        for (i, r) in self.late.iter().enumerate() {
            if let Some((k, _)) = r.front() {
                if best.is_none_or(|(_, b)| k < b) {
                    best = Some((i, k));
                }
            }
        }
        best.map(|(i, _)| i)
    }

    /// Merges the late runs into one (each entry moved once).
    fn merge_late(&mut self) {
        let mut merged = VecDeque::with_capacity(self.n_late);
        while let Some(i) = self.late_first() {
            if let Some(e) = self.late.get_mut(i).and_then(VecDeque::pop_front) {
                merged.push_back(e);
            }
        }
        self.late.clear();
        if !merged.is_empty() {
            self.late.push(merged);
        }
    }

    /// Where the first in order is: None for `run`'s front, else the late
    /// run (when both are empty: None).
    fn first_at(&self) -> Option<usize> {
        let late = self.late_first()?;
        let late_key = self.late.get(late).and_then(|r| r.front()).map(|(k, _)| k);
        match (self.run.front(), late_key) {
            (Some((a, _)), Some(b)) if a < b => None,
            _ => Some(late),
        }
    }

    #[cfg(test)]
    fn first(&self) -> Option<(&(u32, u64, u64), &Ordered)> {
        let e = match self.first_at() {
            None => self.run.front(),
            Some(i) => self.late.get(i).and_then(|r| r.front()),
        };
        e.map(|(k, o)| (k, o))
    }

    /// The first in order: where it is (for [`pop_at`](Self::pop_at)),
    /// its key and its packet time.
    fn front(&self) -> Option<(Option<usize>, WaitKey, i64)> {
        let at = self.first_at();
        let e = match at {
            None => self.run.front(),
            Some(i) => self.late.get(i).and_then(|r| r.front()),
        };
        e.map(|(k, o)| (at, *k, o.ts()))
    }

    #[cfg(test)]
    fn pop_first(&mut self) -> Option<Ordered> {
        self.pop_at(self.first_at())
    }

    /// Takes the first in order, found by [`front`](Self::front) as `at`.
    fn pop_at(&mut self, at: Option<usize>) -> Option<Ordered> {
        match at {
            None => self.run.pop_front().map(|(_, o)| o),
            Some(i) => {
                let r = self.late.get_mut(i)?;
                let e = r.pop_front();
                if r.is_empty() {
                    self.late.remove(i);
                }
                self.n_late -= usize::from(e.is_some());
                e.map(|(_, o)| o)
            }
        }
    }

    /// Gives back the queue's memory after a burst (up to
    /// `max_waiting_events` entries) instead of keeping it for the run.
    fn trim(&mut self) {
        if self.run.capacity() > 4 * self.run.len() + 1024 {
            self.run.shrink_to(2 * self.run.len());
        }
    }
}

/// The sequential stage (see the module's documentation).
pub struct Stage {
    settings: Settings,
    swarm: Swarm,
    audit: Audit,
    dht: DhtAggregate,
    meta: MetaState,
    /// Connection rows, held for attribution and the peers' ports (packed).
    held_conns: HeldConns,
    /// Typed ends of the encrypted connections not attributed yet, by
    /// conn_id (at most `2 * MAX_HELD_CONNECTIONS`).
    ends: HashMap<u64, ConnEnds>,
    /// peer_messages rows of connections not attributed yet (mid-stream),
    /// released with the info_hash once the swarm state attributes them.
    held_msgs: HeldMessages,
    /// TCP flows with MSE's shape, waiting for the endpoint check.
    mse: MseFlows,
    /// Swarm events later than an event some connection still holds back:
    /// applied once it is released, so that the swarm state sees events in
    /// frame order however batches fall (bounded by `max_waiting_events`).
    waiting: Waiting,
    /// Insertion counter: equal (capture, frame) keys keep their order.
    waiting_seq: u64,
    /// Times the bound forced events out of order.
    n_order_forced: u64,
}

/// What the shards need from the stage to start: the torrents' shapes
/// and the piece hashes known up front.
pub struct ShardSetup {
    pub ctx: ShardContext,
    pub known: Arc<KnownTorrents>,
}

impl Stage {
    /// `names`: the `capture` column by input index; `torrents`: metainfo
    /// from --torrents.
    pub fn new(settings: &Settings, names: Arc<Vec<String>>, torrents: Vec<Metainfo>) -> (Stage, ShardSetup) {
        let mut ctx = ShardContext {
            keep_weak: settings.keep_weak,
            ..ShardContext::default()
        };
        let mut swarm = Swarm::new(settings.limits, settings.threshold, settings.rate_window_s);
        let torrents: Vec<Arc<Metainfo>> = torrents.into_iter().map(Arc::new).collect();
        let audit = Audit::new(settings.limits, settings.audit_max_link_bps, &names, &torrents);
        let dht = DhtAggregate::new(&settings.limits);
        let mut known = KnownTorrents::default();
        let mut assembler = MetadataAssembler::new(&settings.limits);
        for m in torrents {
            known.insert(m.clone());
            for h in m.wire_hashes() {
                assembler.known(h);
            }
            for h in m.wire_hashes() {
                ctx.shapes.insert(
                    h,
                    TorrentShape {
                        n_pieces: Some(m.n_pieces),
                        piece_length: u32::try_from(m.piece_length).ok(),
                    },
                );
            }
            swarm.add_metainfo(m, "torrent_file");
        }
        let meta = MetaState {
            assembler,
            known: Arc::new(known),
            names: names.clone(),
        };
        let setup = ShardSetup {
            ctx,
            known: meta.known.clone(),
        };
        let stage = Stage {
            settings: settings.clone(),
            swarm,
            audit,
            dht,
            meta,
            held_conns: HeldConns::default(),
            ends: HashMap::new(),
            held_msgs: HeldMessages::default(),
            mse: MseFlows::default(),
            waiting: Waiting::default(),
            waiting_seq: 0,
            n_order_forced: 0,
        };
        (stage, setup)
    }

    /// One step: the shards' output in, the rows to write out (before the
    /// anomaly gate), and the new set of known torrents when rebuilt
    /// metadata changed it. `watermark`: the latest packet time so far.
    pub fn step(&mut self, input: StepInput, kind: StepKind, watermark: i64) -> (RowBatch, Option<Arc<KnownTorrents>>) {
        let StepInput {
            mut rows,
            mut events,
            mut unattributed,
            mut dht,
            metadata,
            mut marks,
            conn_ends,
            held_since,
        } = input;
        for e in conn_ends {
            if self.ends.len() < 2 * MAX_HELD_CONNECTIONS {
                self.ends.insert(e.conn_id, e);
            }
        }
        events.sort_by_key(|e| (e.ctx.capture, e.ctx.frame));
        unattributed.sort_by_key(|e| (e.event.ctx.capture, e.event.ctx.frame));
        // The shards' observations come merged in frame order (see
        // `analyze::order`): checked, not sorted again (the stable sort's
        // pass over a sorted run cost ~20 instructions an observation on
        // dht-125k).
        if !dht.is_sorted_by_key(|o| (o.ctx.capture, o.ctx.frame)) {
            dht.sort_by_key(|o| (o.ctx.capture, o.ctx.frame));
        }
        marks.sort_by_key(|m| (m.ctx.capture, m.ctx.frame));
        let join = self.settings.limits.metadata_join_frames;
        let (rebuilt, known) = self.meta.absorb(metadata, join, &mut self.swarm, &mut rows);
        finish_rows(&mut rows);
        self.audit.observe(&events, &marks);
        self.audit.observe_rows(&rows);
        // MSE flows wait for their endpoint's naming.
        self.mse.hold(&mut rows.flows);
        let all = kind != StepKind::Batch;
        let (ready, metas) = self.ready(events, rebuilt, held_since.filter(|_| !all), watermark);
        self.swarm.apply_with_metadata(ready, unattributed, metas, &mut rows);
        self.dht.apply(dht);
        if kind == StepKind::SegmentEnd {
            let kw = self.settings.keep_weak;
            let strong = &mut self.mse.strong;
            attribute_encrypted(&mut self.swarm, &mut rows.connections, &mut self.ends, kw, strong);
            let mut held = self.held_conns.take_all();
            attribute_encrypted(&mut self.swarm, &mut held, &mut self.ends, kw, strong);
            self.swarm.end_segment(&mut rows);
            // Rows not held are written with this step: their ends go.
            let ids: HashSet<u64> = held.iter().map(|c| c.conn_id).collect();
            self.ends.retain(|id, _| ids.contains(id));
            for c in held {
                self.held_conns.push(c);
            }
        }
        if kind != StepKind::Final {
            // Connections wait for attribution, messages for their
            // connection's.
            hold_unattributed(&mut rows, &mut self.held_conns);
            self.held_msgs
                .step(&mut rows, &self.swarm, self.settings.limits.max_held_messages);
        }
        rows.peer_progress.sort_by_key(|r| r.frame);
        (rows, known)
    }

    /// What the swarm state may take now, in frame order: with what waits,
    /// everything that precedes `cutoff`, the oldest event a connection
    /// still holds back (everything without one, or when more than
    /// `max_waiting_events` wait). Returned as the swarm state takes them:
    /// the events, and rebuilt metadata by the (capture, frame) that
    /// completed it (see [`Swarm::apply_with_metadata`]). A step whose
    /// events are all ready hands its vector on as it came: its events
    /// (~150 bytes each) are not moved twice more through `Ordered`.
    fn ready(
        &mut self,
        events: Vec<SwarmEvent>,
        rebuilt: Vec<Rejoin>,
        cutoff: Option<(u32, u64)>,
        watermark: i64,
    ) -> (Vec<SwarmEvent>, Vec<MetaAt>) {
        if self.waiting.is_empty() && rebuilt.is_empty() {
            let in_order = match cutoff {
                None => true,
                Some(c) => events.last().is_none_or(|e| (e.ctx.capture, e.ctx.frame) < c),
            };
            if in_order {
                return (events, Vec::new());
            }
        }
        // Room for as many ready events as came in (most steps release
        // about that many): `ready` grown one event at a time reallocated
        // and copied its ~150-byte events (bulk-250m: 208 regrowths, 2.49 M
        // instructions; 37 and 1.66 M sized so).
        let n_in = events.len();
        // `Waiting` keeps them in order, and what is ready comes off its
        // front without touching the rest.
        for o in events
            .into_iter()
            .map(Ordered::Event)
            .chain(rebuilt.into_iter().map(Ordered::Meta))
        {
            self.waiting_seq += 1;
            let (cap, frame) = o.key();
            self.waiting.insert((cap, frame, self.waiting_seq), o);
        }
        let over = self.waiting.len() > self.settings.limits.max_waiting_events;
        // Events wait at most `max_event_wait_us` of packet time: a
        // connection that holds events and then only sends keep-alives must
        // not stall the swarm state (live snapshots would lag behind).
        let too_old = watermark.saturating_sub(self.settings.limits.max_event_wait_us);
        let mut ready = Vec::with_capacity(n_in);
        let mut metas = Vec::new();
        let mut forced = false;
        while let Some((at, (cap, frame, _), ts)) = self.waiting.front() {
            let in_order = cutoff.is_none_or(|c| (cap, frame) < c);
            if !in_order {
                if !over && ts >= too_old {
                    break;
                }
                forced = true;
            }
            match self.waiting.pop_at(at) {
                Some(Ordered::Event(e)) => ready.push(e),
                Some(Ordered::Meta(r)) => metas.push(((r.ctx.capture, r.ctx.frame), r.meta)),
                None => {}
            }
        }
        self.waiting.trim();
        if forced {
            self.n_order_forced += 1;
        }
        (ready, metas)
    }

    pub fn n_peers(&self) -> usize {
        self.swarm.n_peers()
    }

    pub fn n_torrents(&self) -> usize {
        self.swarm.n_torrents()
    }

    pub fn n_dht_nodes(&self) -> usize {
        self.dht.n_nodes()
    }

    /// Live capture, at a rotation: `rows` holds the open flows' rows; adds
    /// the rows of the state that spans intervals as it is now, without
    /// ending anything (see [`crate::pipeline::Engine::snapshot`]). Then
    /// state idle for longer than `state_idle_us` of packet time before
    /// `watermark` is dropped.
    pub fn snapshot(&mut self, rows: &mut RowBatch, watermark: i64, state_idle_us: i64) {
        rows.flows.sort_by_key(|r| r.conn_id);
        let mut held = self.held_conns.take_all();
        for c in held.iter_mut().filter(|c| c.info_hash.is_none()) {
            if let Some(h) = self.swarm.attribution(c.conn_id) {
                c.info_hash = Some(h);
                c.info_hash_source = Some("endpoint");
                c.attribution_confidence = "likely";
            }
        }
        let kw = self.settings.keep_weak;
        attribute_encrypted(&mut self.swarm, &mut held, &mut self.ends, kw, &mut self.mse.strong);
        self.ends.clear();
        drop_weak_encrypted(&mut held, kw);
        rows.connections.append(&mut held);
        rows.connections.sort_by_key(|r| r.conn_id);
        self.mse.release(&mut rows.flows);
        rows.flows.sort_by_key(|r| r.conn_id);
        self.swarm.snapshot(rows);
        fill_peer_ports(rows);
        if let Some(geo) = &self.settings.geo {
            geo.annotate_peers(&mut rows.peers);
        }
        self.audit.snapshot(rows);
        self.dht.snapshot(rows);
        if watermark != i64::MIN {
            let cutoff = watermark.saturating_sub(state_idle_us);
            self.swarm.expire_idle(cutoff);
            self.dht.expire_idle(cutoff);
        }
    }

    /// End of input, after the [`StepKind::Final`] step: the held
    /// connections and messages with what the swarm state attributed, then
    /// the swarm, audit and DHT tables.
    pub fn finish(mut self, rows: &mut RowBatch) {
        let n_dropped_peers = self.swarm.n_peers_dropped;
        if self.n_order_forced > 0 {
            rows.anomalies.push(AnomalyRow {
                layer: "analyze",
                kind: "swarm_order_forced".into(),
                detail: Some(format!(
                    "{} batches applied events out of frame order: more than {} waited for held ones (max_waiting_events), or one waited longer than {} s (max_event_wait_us)",
                    self.n_order_forced,
                    self.settings.limits.max_waiting_events,
                    self.settings.limits.max_event_wait_us / 1_000_000
                )),
                ..Default::default()
            });
        }
        // Mid-stream connections held back get the torrent they were attributed
        // to (now or at the swarm's last retry).
        rows.connections.append(&mut self.held_conns.take_all());
        self.swarm.retry_all(rows);
        for c in rows.connections.iter_mut().filter(|c| c.info_hash.is_none()) {
            if let Some(h) = self.swarm.attribution(c.conn_id) {
                c.info_hash = Some(h);
                c.info_hash_source = Some("endpoint");
                c.attribution_confidence = "likely";
            }
        }
        let kw = self.settings.keep_weak;
        attribute_encrypted(
            &mut self.swarm,
            &mut rows.connections,
            &mut self.ends,
            kw,
            &mut self.mse.strong,
        );
        drop_weak_encrypted(&mut rows.connections, kw);
        rows.connections.sort_by_key(|r| r.conn_id);
        self.mse.release(&mut rows.flows);
        rows.flows.sort_by_key(|r| r.conn_id);
        self.held_msgs.release_all(rows, &self.swarm);
        self.swarm.finish(rows, &self.meta.names);
        fill_peer_ports(rows);
        if let Some(geo) = &self.settings.geo {
            geo.annotate_peers(&mut rows.peers);
        }
        self.audit.finish(rows);
        self.dht.finish(rows);
        if n_dropped_peers > 0 {
            rows.anomalies.push(AnomalyRow {
                layer: "analyze",
                kind: "peer_table_full".into(),
                detail: Some(format!("{n_dropped_peers} peer events not tracked (max_peers)")),
                ..Default::default()
            });
        }
    }
}

/// MSE-encrypted connections carry no readable info hash: each is
/// attributed to the torrent whose listen endpoint one of its ends is
/// (known from plaintext sightings: trackers, DHT, PEX, LSD, other
/// connections), with confidence `likely`, and what the choice of
/// encryption says about its peers goes to the swarm state.
///
/// Over TCP that endpoint is also what makes an MSE-shaped flow BitTorrent
/// at all (`strong` collects their ids): a shape seen both ways and an
/// address alone are weak, and a weak flow neither gets a torrent nor
/// tells the swarm anything unless `keep_weak`. Over uTP the transport
/// itself was confirmed, and an address is enough.
fn attribute_encrypted(
    swarm: &mut Swarm,
    conns: &mut [ConnectionRow],
    ends: &mut HashMap<u64, ConnEnds>,
    keep_weak: bool,
    strong: &mut HashSet<u64>,
) {
    if !conns.iter().any(|c| c.encrypted && c.info_hash.is_none()) {
        return;
    }
    let by_ip = swarm.torrents_by_ip();
    let mut noted = Vec::new();
    for c in conns.iter_mut().filter(|c| c.encrypted && c.info_hash.is_none()) {
        let Some(e) = ends.get(&c.conn_id).copied() else {
            continue;
        };
        let [o, r] = e.ends;
        let by_endpoint = swarm.attribute_endpoints(e.capture, o, r);
        // By address: one end's address takes part in exactly one torrent,
        // and the other's in no other.
        let by_address = match (by_ip.get(&o.ip()), by_ip.get(&r.ip())) {
            (Some(x), Some(y)) if x != y => None,
            (Some(x), _) | (_, Some(x)) => Some(*x),
            _ => None,
        };
        let tcp = !e.utp;
        let (h, source, confidence) = match (by_endpoint, by_address) {
            (Some(h), _) => (h, "endpoint", "likely"),
            (None, Some(h)) if !tcp || keep_weak => (h, "address", "weak"),
            _ => continue,
        };
        if tcp && source == "endpoint" {
            strong.insert(c.conn_id);
        }
        ends.remove(&c.conn_id);
        c.info_hash = Some(h);
        c.info_hash_source = Some(source);
        c.attribution_confidence = confidence;
        noted.push(EncryptedConn {
            info_hash: h,
            conn_id: c.conn_id,
            orig: o,
            resp: r,
            utp: e.utp,
            first_ts: c.first_ts.0,
            last_ts: c.last_ts.0,
            payload_bytes_orig: c.payload_bytes_orig,
            payload_bytes_resp: c.payload_bytes_resp,
        });
    }
    swarm.note_encrypted(&noted);
}

/// peer_messages rows without an info_hash, held by connection until the
/// swarm state attributes it (see `Limits::max_held_messages`). Each step
/// looks at the held connections, not at every held row.
#[derive(Default)]
struct HeldMessages {
    /// By conn_id (the frame of a connection's first packet: oldest first).
    by_conn: BTreeMap<u64, Vec<crate::sink::PeerMessageRow>>,
    n_held: usize,
    /// Rows written without an info_hash because the bound was reached.
    n_released: u64,
}

impl HeldMessages {
    /// Fills and releases the held rows whose connection is attributed
    /// now, then holds this step's rows that have no info_hash; past
    /// `max`, the oldest connections' rows go out as they are.
    fn step(&mut self, rows: &mut RowBatch, swarm: &Swarm, max: usize) {
        let mut released = false;
        let ready: Vec<(u64, [u8; 20])> = self
            .by_conn
            .keys()
            .filter_map(|c| swarm.attribution(*c).map(|h| (*c, h)))
            .collect();
        for (c, h) in ready {
            for mut r in self.by_conn.remove(&c).unwrap_or_default() {
                r.info_hash = Some(h);
                rows.peer_messages.push(r);
                self.n_held -= 1;
                released = true;
            }
        }
        if rows.peer_messages.iter().any(|r| r.info_hash.is_none()) {
            let mut own: HashMap<u64, Option<[u8; 20]>> = HashMap::new();
            let msgs = std::mem::take(&mut rows.peer_messages);
            let mut out = Vec::with_capacity(msgs.len());
            for mut r in msgs {
                if r.info_hash.is_none() {
                    let h = *own.entry(r.conn_id).or_insert_with(|| swarm.attribution(r.conn_id));
                    match h {
                        Some(h) => r.info_hash = Some(h),
                        None => {
                            self.by_conn.entry(r.conn_id).or_default().push(r);
                            self.n_held += 1;
                            continue;
                        }
                    }
                }
                out.push(r);
            }
            rows.peer_messages = out;
        }
        while self.n_held > max {
            let Some((_, group)) = self.by_conn.pop_first() else {
                break;
            };
            self.n_held -= group.len();
            self.n_released += group.len() as u64;
            rows.peer_messages.extend(group);
            released = true;
        }
        if released {
            rows.peer_messages.sort_by_key(|r| r.frame);
        }
    }

    /// End of input: every held row goes out, with the info_hash where the
    /// connection was attributed.
    fn release_all(&mut self, rows: &mut RowBatch, swarm: &Swarm) {
        // Rows of connections never attributed are not counted: only those
        // the bound sent out early.
        let n = self.n_released;
        self.step(rows, swarm, 0);
        self.n_released = n;
        if self.n_released > 0 {
            let n = self.n_released;
            rows.anomalies.push(AnomalyRow {
                layer: "analyze",
                kind: "held_messages_released".into(),
                detail: Some(format!(
                    "{n} peer_messages rows of connections picked up mid-stream written before their connection was attributed (past max_held_messages), without an info_hash"
                )),
                ..Default::default()
            });
        }
    }
}

/// TCP flows with MSE's shape: their `flows` rows wait until the end of the
/// run (or a live snapshot), when an endpoint named as a peer elsewhere in
/// the capture makes them `strong`. An opening to a named listen endpoint
/// that was never answered (a client trying MSE with a plaintext-only peer)
/// counts too: the endpoint is the corroboration, and such attempts are
/// common in real swarms.
#[derive(Debug, Default)]
struct MseFlows {
    held: Vec<FlowRow>,
    /// conn_ids of TCP MSE connections attributed by endpoint.
    strong: HashSet<u64>,
}

impl MseFlows {
    /// Takes the rows that may still become strong out of `flows`.
    fn hold(&mut self, flows: &mut Vec<FlowRow>) {
        let before = flows.len();
        let mut i = 0;
        while i < flows.len() {
            let f = &flows[i];
            if f.proto == "tcp" && f.app == "mse" && self.held.len() < MAX_HELD_CONNECTIONS {
                self.held.push(flows.swap_remove(i));
            } else {
                i += 1;
            }
        }
        if flows.len() != before {
            flows.sort_by_key(|r| r.conn_id);
        }
    }

    /// Writes the held rows, strong where their endpoint was named.
    fn release(&mut self, flows: &mut Vec<FlowRow>) {
        for mut f in self.held.drain(..) {
            if self.strong.contains(&f.conn_id) {
                f.app_confidence = Some(Confidence::Strong.name());
                f.app_evidence = Some(if f.app_evidence == Some(EV_MSE_BOTH) {
                    EV_MSE_NAMED
                } else {
                    EV_MSE_ONE_WAY_NAMED
                });
            }
            flows.push(f);
        }
    }
}

/// Encrypted TCP connections no endpoint corroborated are weak: no row
/// unless `keep_weak` (their flow stays in `flows`, app `mse`, weak).
fn drop_weak_encrypted(conns: &mut Vec<ConnectionRow>, keep_weak: bool) {
    if !keep_weak {
        conns.retain(|c| !(c.encrypted && c.transport == ConnTransport::Tcp && c.info_hash.is_none()));
    }
}

/// Connection rows are held until the end of the run (live: the next
/// snapshot), when the swarm state may have attributed those picked up
/// mid-stream and knows the peers rows of both ends; past this many they
/// are written as they are (packed, ~100-200 bytes each: under 13 MB; see
/// [`HeldConns`]).
const MAX_HELD_CONNECTIONS: usize = 65_536;

fn hold_unattributed(rows: &mut RowBatch, held: &mut HeldConns) {
    // Every connection row is held (not only those without an info_hash):
    // its orig/resp_peer_port name the peers rows of the swarm state as it
    // ends (see `fill_peer_ports`), after every merge of endpoints.
    let mut i = 0;
    while i < rows.connections.len() {
        if held.len() < MAX_HELD_CONNECTIONS {
            held.push(rows.connections.swap_remove(i));
        } else {
            i += 1;
        }
    }
    rows.connections.sort_by_key(|r| r.conn_id);
}

/// Names the peers rows of both ends of every connection (orig_peer_port,
/// resp_peer_port), from the peers rows of the same step: a peer lists the
/// connections it took part in (conn_ids).
fn fill_peer_ports(rows: &mut RowBatch) {
    if rows.connections.is_empty() {
        return;
    }
    let mut ends: HashMap<u64, Vec<(&str, &str, u32)>> = HashMap::new();
    for p in &rows.peers {
        for c in &p.conn_ids {
            ends.entry(*c)
                .or_default()
                .push((p.info_hash.as_str(), p.peer_ip.as_str(), p.peer_port));
        }
    }
    // The peers rows carry text: each connection's hash and addresses are
    // written once into these buffers to be compared with it.
    let (mut hb, mut ob, mut rb) = (Vec::new(), Vec::new(), Vec::new());
    for c in rows.connections.iter_mut() {
        let Some(h) = &c.info_hash else { continue };
        let Some(e) = ends.get(&c.conn_id) else { continue };
        for (b, f) in [(&mut hb, None), (&mut ob, Some(c.orig_ip)), (&mut rb, Some(c.resp_ip))] {
            b.clear();
            match f {
                None => push_hex20(b, h),
                Some(ip) => push_ip(b, ip.0),
            }
        }
        let mine: Vec<(&str, u32)> = e
            .iter()
            .filter(|x| x.0.as_bytes() == hb.as_slice())
            .map(|x| (x.1, x.2))
            .collect();
        // The responder's row is its accepting endpoint when it has one
        // (picked up mid-stream, the listen port of its BEP 10 `p`: see
        // `session::State::peer_addr`); the originator's is the other row
        // of its address.
        let is = |x: &(&str, u32), b: &[u8]| x.0.as_bytes() == b;
        let resp_listen = if c.midstream { c.resp_listen_port } else { None };
        let resp = mine
            .iter()
            .find(|x| is(x, &rb) && (resp_listen == Some(x.1) || (resp_listen.is_none() && x.1 == c.resp_port)))
            .or_else(|| mine.iter().find(|x| is(x, &rb) && x.1 == c.resp_port))
            .or_else(|| mine.iter().find(|x| is(x, &rb) && c.orig_ip != c.resp_ip))
            .copied();
        let orig = mine.iter().find(|x| is(x, &ob) && Some(**x) != resp).copied();
        c.resp_peer_port = resp.map(|x| x.1);
        c.orig_peer_port = orig.map(|x| x.1);
    }
}

/// Orders the rows of one step: per-message tables by frame (stable: rows of
/// one frame keep their order), per-flow tables by id.
fn finish_rows(rows: &mut RowBatch) {
    rows.peer_messages.sort_by_key(|r| r.frame);
    // KRPC rows are many and wide (~40 columns): sort their keys and move
    // each row once, instead of moving rows in every merge pass of the
    // shards' runs (stable, as sort_by_key).
    if !rows.dht_messages.is_sorted_by_key(|r| r.frame) {
        rows.dht_messages.sort_by_cached_key(|r| r.frame);
    }
    rows.dht_peers.sort_by_key(|r| r.frame);
    rows.lsd_announces.sort_by_key(|r| r.frame);
    // No frame column: by time, then connection (the shard a flow lands in
    // depends on the capture's hash key, so the order they come in does too).
    rows.pex_peers.sort_by_key(|r| (r.ts, r.conn_id));
    rows.anomalies.sort_by_key(|r| r.frame);
    rows.tracker_announces.sort_by_key(|r| (r.ts, r.frame));
    rows.tracker_peers.sort_by_key(|r| (r.ts, r.frame));
    rows.tracker_scrapes.sort_by_key(|r| (r.ts, r.frame));
    // Flows end in sweep order, not in id order, and their rows are wide
    // (text columns): sorted as the KRPC rows, by key, each row moved once.
    if !rows.flows.is_sorted_by_key(|r| r.conn_id) {
        rows.flows.sort_by_cached_key(|r| r.conn_id);
    }
    rows.connections.sort_by_key(|r| r.conn_id);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::{FrameCtx, SwarmEventKind};

    fn event(capture: u32, frame: u64, id: u64) -> Ordered {
        Ordered::Event(SwarmEvent {
            ctx: FrameCtx {
                ts: frame as i64,
                frame,
                capture,
            },
            conn_id: id,
            info_hash: [0; 20],
            peer: "10.0.0.1:6881".parse().unwrap(),
            kind: SwarmEventKind::HaveAll,
        })
    }

    fn id(o: &Ordered) -> u64 {
        match o {
            Ordered::Event(e) => e.conn_id,
            Ordered::Meta(_) => u64::MAX,
        }
    }

    /// Oracle: `Waiting` gives everything back in the order of one map
    /// over (capture, frame, arrival), for arrivals mostly in order with
    /// some earlier ones (released held events), ties, and a second
    /// capture, taken off in steps as the stage does.
    #[test]
    fn waiting_pops_in_the_order_of_one_map() {
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for _ in 0..200 {
            let mut w = Waiting::default();
            let mut oracle: BTreeMap<(u32, u64, u64), u64> = BTreeMap::new();
            let (mut seq, mut frame) = (0u64, 0u64);
            for _ in 0..20 {
                for _ in 0..next() % 40 {
                    seq += 1;
                    frame += next() % 3;
                    let capture = u32::from(next() % 16 == 0);
                    // One in five arrives earlier than the newest so far.
                    let f = if next() % 5 == 0 {
                        frame.saturating_sub(next() % 50)
                    } else {
                        frame
                    };
                    w.insert((capture, f, seq), event(capture, f, seq));
                    oracle.insert((capture, f, seq), seq);
                }
                assert_eq!(w.len(), oracle.len());
                for _ in 0..next() % 50 {
                    let want = oracle.pop_first().map(|(_, v)| v);
                    assert_eq!(w.first().map(|(_, o)| id(o)), want);
                    let got = if want.is_some_and(|v| v % 2 == 0) {
                        w.pop_first()
                    } else {
                        let at = w.front().and_then(|(at, _, _)| at);
                        w.pop_at(at)
                    };
                    assert_eq!(got.as_ref().map(id), want);
                }
                w.trim();
            }
            while let Some((_, v)) = oracle.pop_first() {
                assert_eq!(w.pop_first().as_ref().map(id), Some(v));
            }
            assert!(w.is_empty());
        }
    }
}
