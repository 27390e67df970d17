//! UDP flows. One UDP socket pair carries DHT, UDP-tracker and uTP datagrams
//! side by side, so every datagram goes through the datagram probes on its
//! own (`dissect::probe_datagram`); the flow's `app` is the kind that
//! carried most datagrams. KRPC datagrams go to `analyze::dht` (its query
//! table lives in the shard, passed in), LSD announces to `analyze::lsd`,
//! BEP 15 to `analyze::tracker`, uTP to the flow's own uTP tracker.
//!
//! uTP is believed only once its headers agree over several packets both
//! ways (`dissect::datagram::UtpConsistency`): until then uTP-shaped
//! datagrams wait, copied, in a bounded buffer, and are replayed into the
//! uTP tracker when the flow is confirmed. Each uTP connection's stream
//! goes to the same stream application as a TCP flow
//! (`analyze::stream`), so MSE over uTP is reported like MSE over TCP.

use crate::analyze::dht::DhtShard;
use crate::analyze::session::{ORIG, RESP};
use crate::analyze::stream::{StreamApp, StreamEnd, StreamEnv, StreamInit};
use crate::analyze::tracker::{RequestSeen, UdpTrackers};
use crate::analyze::{lsd, FrameCtx, ShardOut};
use crate::dissect::datagram::UtpConsistency;
use crate::dissect::{self, Confidence, DatagramProto, Identified, Verdict};
use crate::flow::utp_stream::{Side, UtpConnNo, UtpEvent, UtpLimits, UtpTracker};
use crate::flow::FlowInfo;
use crate::proto::utp::parse_utp;

/// Datagram kinds, in `flows.app` vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpKind {
    Dht,
    TrackerUdp,
    Utp,
    Lsd,
    Other,
}

impl UdpKind {
    pub fn name(self) -> &'static str {
        match self {
            UdpKind::Dht => "dht",
            UdpKind::TrackerUdp => "tracker_udp",
            UdpKind::Utp => "utp",
            UdpKind::Lsd => "lsd",
            UdpKind::Other => "other",
        }
    }
}

/// uTP connections of one UDP flow and their stream applications.
#[derive(Debug)]
struct UtpPart {
    tracker: UtpTracker,
    /// Streams by tracker connection number, with the tracker side that
    /// originated each; bounded by the tracker's `max_conns`.
    sessions: Vec<(UtpConnNo, Side, StreamInit, StreamApp)>,
    last_expire: i64,
    /// A connection carried a plaintext handshake.
    handshake: bool,
}

/// uTP-shaped datagrams waiting for the flow's uTP to be confirmed.
#[derive(Debug, Default)]
struct UtpProbe {
    check: UtpConsistency,
    waiting: Vec<(FrameCtx, usize, Vec<u8>)>,
    waiting_bytes: usize,
    /// The buffer filled up unconfirmed: uTP-shaped datagrams of this flow
    /// are not followed.
    gave_up: bool,
}

impl UdpApp {
    /// Heap bytes this flow's state holds beyond its own size (the flow's
    /// memory account, `Limits::max_memory`): the uTP tracker and its
    /// streams, the datagrams waiting for uTP to be confirmed.
    pub fn heap_bytes(&self) -> usize {
        use crate::flow::alloc_bytes;
        use std::mem::size_of;
        let utp = self.utp.as_ref().map_or(0, |u| {
            alloc_bytes(size_of::<UtpPart>())
                + u.tracker.heap_bytes()
                + alloc_bytes(u.sessions.capacity() * size_of::<(UtpConnNo, Side, StreamInit, StreamApp)>())
                + u.sessions.iter().map(|s| s.3.heap_bytes()).sum::<usize>()
        });
        let probe = self.probe.as_ref().map_or(0, |p| {
            alloc_bytes(size_of::<UtpProbe>())
                + alloc_bytes(p.waiting.capacity() * size_of::<(FrameCtx, usize, Vec<u8>)>())
                + p.waiting.iter().map(|w| alloc_bytes(w.2.capacity())).sum::<usize>()
        });
        utp + probe
    }
}

/// How often (packet time) idle uTP connections inside a live UDP flow are
/// expired: the flow itself may live for hours (a client's one socket).
const UTP_EXPIRE_EVERY_US: i64 = 10_000_000;

/// Per-flow UDP state.
#[derive(Debug, Default)]
pub struct UdpApp {
    counts: [u64; 5],
    utp: Option<Box<UtpPart>>,
    probe: Option<Box<UtpProbe>>,
    /// A BEP 15 exchange was paired, or a request used a known id.
    tracker_certain: bool,
    /// The first look-alike ruled out (evidence for `other` flows).
    ruled_out: Option<&'static str>,
}

/// What the uTP part needs to open sessions.
struct UtpCtx<'a, 'e> {
    info: &'a FlowInfo,
    ctx: FrameCtx,
    env: &'a StreamEnv<'e>,
}

fn on_utp_event(
    sessions: &mut Vec<(UtpConnNo, Side, StreamInit, StreamApp)>,
    handshake: &mut bool,
    c: &UtpCtx<'_, '_>,
    ev: UtpEvent<'_>,
    out: &mut ShardOut,
) {
    let end = |s: Side| {
        if s == Side::A {
            c.info.ends[ORIG]
        } else {
            c.info.ends[RESP]
        }
    };
    match ev {
        UtpEvent::Opened {
            conn,
            first_from,
            initiator,
            midstream,
        } => {
            let orig = initiator.unwrap_or(first_from);
            let init = StreamInit {
                conn_id: (u64::from(c.ctx.capture) << 40) | c.ctx.frame,
                flow_id: c.info.conn_id,
                capture: c.info.capture,
                transport: crate::sink::ConnTransport::Utp,
                ends: [end(orig), end(orig.other())],
                first_ts: c.ctx.ts,
                midstream,
            };
            sessions.push((conn, orig, init, StreamApp::Undecided));
        }
        UtpEvent::Roles { .. } => {
            // Roles learned late keep the orientation chosen at open: the
            // rows of a connection never change sides midway.
        }
        UtpEvent::Data { conn, from, chunk, .. } => {
            if let Some((_, orig, init, app)) = sessions.iter_mut().find(|(n, ..)| *n == conn) {
                let side = if from == *orig { ORIG } else { RESP };
                app.feed(init, side, chunk, c.ctx, c.env, out);
            }
        }
        UtpEvent::Closed { conn, conn_id, .. } => {
            if let Some(i) = sessions.iter().position(|(n, ..)| *n == conn) {
                let (_, _, init, app) = sessions.swap_remove(i);
                let end = StreamEnd {
                    last_ts: None,
                    gap_bytes: None,
                    payload: None,
                };
                let (id, row) = app.finish(&init, end, c.ctx, c.env, out);
                if id.confidence == Some(Confidence::Certain) {
                    *handshake = true;
                }
                // uTP-shaped but neither peer wire nor MSE in it: nothing
                // to report beyond the flow row.
                if let Some(mut row) = row {
                    row.utp_conn_id = conn_id.map(u32::from);
                    out.push_connection(&init, row);
                }
            }
        }
    }
}

impl UdpApp {
    /// One datagram of the flow, sent by `side` (0 = originator).
    #[allow(clippy::too_many_arguments)]
    pub fn datagram(
        &mut self,
        ctx: FrameCtx,
        info: &FlowInfo,
        side: usize,
        d: &[u8],
        env: &StreamEnv<'_>,
        dht: &mut DhtShard,
        trackers: &mut UdpTrackers,
        out: &mut ShardOut,
    ) {
        let src = info.ends[side & 1];
        let dst = info.ends[(side & 1) ^ 1];
        let verdict = dissect::probe_datagram(d, &mut || trackers.answer(ctx, info, side, d, out));
        let k = match verdict {
            Verdict::Certain(DatagramProto::Dht, _) => {
                dht.datagram(ctx, info.conn_id, src, dst, d, out);
                UdpKind::Dht
            }
            Verdict::Certain(DatagramProto::Lsd, _) => {
                if lsd::datagram(ctx, info.conn_id, src, dst, d, &env.limits.lsd, out) {
                    UdpKind::Lsd
                } else {
                    UdpKind::Other
                }
            }
            Verdict::Certain(DatagramProto::TrackerUdpAnswer, _) => {
                self.tracker_certain = true;
                UdpKind::TrackerUdp
            }
            Verdict::Certain(DatagramProto::TrackerUdpRequest, _) => {
                match trackers.request_seen(ctx, info, side, d, out) {
                    RequestSeen::Confirmed => {
                        self.tracker_certain = true;
                        UdpKind::TrackerUdp
                    }
                    RequestSeen::Unconfirmed => UdpKind::TrackerUdp,
                    RequestSeen::No => self.utp_datagram(ctx, info, side, d, env, out),
                }
            }
            Verdict::Certain(DatagramProto::Utp, _) => self.utp_datagram(ctx, info, side, d, env, out),
            Verdict::NotYet => UdpKind::Other,
            Verdict::NotMine(why) => {
                if self.ruled_out.is_none() && why != "no BitTorrent shape" {
                    self.ruled_out = Some(why);
                }
                UdpKind::Other
            }
        };
        self.counts[k as usize] += 1;
    }

    /// A datagram that may be uTP: straight to the uTP tracker once the
    /// flow's uTP is confirmed, else to the consistency check.
    fn utp_datagram(
        &mut self,
        ctx: FrameCtx,
        info: &FlowInfo,
        side: usize,
        d: &[u8],
        env: &StreamEnv<'_>,
        out: &mut ShardOut,
    ) -> UdpKind {
        let Ok(pkt) = parse_utp(d) else { return UdpKind::Other };
        if !dissect::datagram::is_utp_shape(d) {
            return UdpKind::Other;
        }
        let probe = self.probe.get_or_insert_with(Box::default);
        if probe.gave_up {
            return UdpKind::Utp;
        }
        if !probe.check.is_confirmed() {
            let confirmed = probe.check.packet(side, &pkt);
            if !confirmed {
                let limits = env.limits;
                if probe.waiting.len() >= limits.utp_probe_max_datagrams
                    || probe.waiting_bytes + d.len() > limits.utp_probe_max_bytes
                {
                    probe.gave_up = true;
                    probe.waiting = Vec::new();
                    return UdpKind::Utp;
                }
                probe.waiting_bytes += d.len();
                probe.waiting.push((ctx, side, d.to_vec()));
                return UdpKind::Utp;
            }
            // Confirmed: what waited goes first, each at its own frame.
            let waiting = std::mem::take(&mut probe.waiting);
            probe.waiting_bytes = 0;
            for (wctx, wside, wd) in &waiting {
                if let Ok(wp) = parse_utp(wd) {
                    self.utp_packet(*wctx, info, *wside, &wp, env, out);
                }
            }
        }
        self.utp_packet(ctx, info, side, &pkt, env, out);
        UdpKind::Utp
    }

    fn utp_packet(
        &mut self,
        ctx: FrameCtx,
        info: &FlowInfo,
        side: usize,
        pkt: &crate::proto::utp::UtpPacket<'_>,
        env: &StreamEnv<'_>,
        out: &mut ShardOut,
    ) {
        let part = self.utp.get_or_insert_with(|| {
            Box::new(UtpPart {
                tracker: UtpTracker::new(UtpLimits::default()),
                sessions: Vec::new(),
                last_expire: ctx.ts,
                handshake: false,
            })
        });
        let c = UtpCtx { info, ctx, env };
        let (sessions, handshake) = (&mut part.sessions, &mut part.handshake);
        part.tracker.packet(ctx.ts, side == ORIG, pkt, &mut |ev| {
            on_utp_event(sessions, handshake, &c, ev, out)
        });
        if ctx.ts - part.last_expire > UTP_EXPIRE_EVERY_US {
            part.last_expire = ctx.ts;
            let (sessions, handshake) = (&mut part.sessions, &mut part.handshake);
            part.tracker
                .expire(ctx.ts, &mut |ev| on_utp_event(sessions, handshake, &c, ev, out));
        }
    }

    /// Ends the flow; returns its identification.
    pub fn finish(&mut self, ctx: FrameCtx, info: &FlowInfo, env: &StreamEnv<'_>, out: &mut ShardOut) -> Identified {
        // Never confirmed: with --keep-weak, what waited is followed anyway.
        let unconfirmed = self.probe.as_mut().filter(|p| !p.check.is_confirmed());
        if let (true, Some(p)) = (env.keep_weak, unconfirmed) {
            let waiting = std::mem::take(&mut p.waiting);
            for (wctx, wside, wd) in &waiting {
                if let Ok(wp) = parse_utp(wd) {
                    self.utp_packet(*wctx, info, *wside, &wp, env, out);
                }
            }
        }
        if let Some(part) = self.utp.as_mut() {
            let c = UtpCtx { info, ctx, env };
            let (sessions, handshake) = (&mut part.sessions, &mut part.handshake);
            part.tracker
                .flush(&mut |ev| on_utp_event(sessions, handshake, &c, ev, out));
            let st = part.tracker.stats();
            if st.gap_packets > 0 {
                out.anomaly(
                    Some(ctx),
                    Some(info.conn_id),
                    "utp",
                    "lost_packets",
                    Some(format!("{} packets never captured", st.gap_packets)),
                );
            }
        }
        self.identified()
    }

    /// The flow's kind: the one most of its datagrams had.
    fn kind(&self) -> UdpKind {
        let kinds = [UdpKind::Dht, UdpKind::TrackerUdp, UdpKind::Utp, UdpKind::Lsd];
        let best = kinds
            .iter()
            .max_by_key(|k| (self.counts[**k as usize], std::cmp::Reverse(**k as usize)))
            .copied()
            .unwrap_or(UdpKind::Other);
        if self.counts[best as usize] == 0 {
            UdpKind::Other
        } else {
            best
        }
    }

    /// The flow's `app`, with how sure and why.
    pub fn identified(&self) -> Identified {
        match self.kind() {
            UdpKind::Dht => Identified::bt("dht", Confidence::Certain, "KRPC dictionary"),
            UdpKind::Lsd => Identified::bt("lsd", Confidence::Certain, "LSD BT-SEARCH"),
            UdpKind::TrackerUdp if self.tracker_certain => {
                Identified::bt("tracker_udp", Confidence::Certain, "BEP 15 exchange")
            }
            UdpKind::TrackerUdp => Identified::bt("tracker_udp", Confidence::Weak, "BEP 15 request shape, unanswered"),
            UdpKind::Utp if self.utp.as_ref().is_some_and(|p| p.handshake) => Identified::bt(
                "utp",
                Confidence::Certain,
                "uTP headers consistent both ways, plaintext handshake",
            ),
            UdpKind::Utp if self.probe.as_ref().is_some_and(|p| p.check.is_confirmed()) => {
                Identified::bt("utp", Confidence::Strong, "uTP headers consistent both ways")
            }
            UdpKind::Utp => Identified::bt("utp", Confidence::Weak, "uTP header shape only"),
            UdpKind::Other => Identified::other("other", self.ruled_out),
        }
    }

    /// Rows of the flow's open uTP connections as of now (live snapshot;
    /// nothing is flushed or closed).
    pub fn snapshot(&self, out: &ShardOut, rows: &mut Vec<crate::sink::ConnectionRow>) {
        if let Some(part) = &self.utp {
            for (conn, _, init, app) in &part.sessions {
                let end = StreamEnd {
                    last_ts: None,
                    gap_bytes: None,
                    payload: None,
                };
                if let Some(mut row) = app.snapshot_row(init, end, out) {
                    // The id as the closed row will carry it, once both
                    // sides' ids were seen: without it `swarmtap merge`
                    // joins an hourly snapshot to any uTP connection of
                    // the flow (docs/MERGE.md section 2).
                    row.utp_conn_id = part.tracker.conn_info(*conn).and_then(|c| c.pair_id).map(u32::from);
                    rows.push(row);
                }
            }
        }
    }
}
