//! UDP flows. One UDP socket pair carries DHT, UDP-tracker and uTP datagrams
//! side by side, so every datagram is classified on its own; the flow's `app`
//! is the kind that carried most datagrams. KRPC datagrams go to
//! `analyze::dht` (its query table lives in the shard, passed in), LSD
//! announces to `analyze::lsd`, uTP to the flow's own uTP tracker.

use super::table::FlowInfo;
use super::utp_stream::{CloseReason, Side, UtpConnNo, UtpEvent, UtpLimits, UtpTracker};
use crate::analyze::dht::DhtShard;
use crate::analyze::session::{PeerSession, SessionInit, ORIG, RESP};
use crate::analyze::tracker::UdpTrackers;
use crate::analyze::{lsd, FrameCtx, ShardOut};
use crate::config::Limits;
use crate::proto::lsd::looks_like_lsd;
use crate::proto::utp::{parse_utp, utp_confidence, UtpConfidence, UtpProbeLimits};

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

/// BEP 15 connect requests start with this protocol id.
const UDP_TRACKER_MAGIC: [u8; 8] = 0x0417_2710_1980u64.to_be_bytes();

/// Classifies one datagram by content (never by port).
pub fn classify(d: &[u8]) -> UdpKind {
    // KRPC: a bencoded dictionary with a `y` key (BEP 5). Deliberately loose
    // (no check of the last byte): a truncated or malformed message that
    // looks like KRPC is handed to the parser, which reports it.
    if d.first() == Some(&b'd') && memchr::memmem::find(d, b"1:y1:").is_some() {
        return UdpKind::Dht;
    }
    if looks_like_lsd(d) {
        return UdpKind::Lsd;
    }
    if d.len() >= 16 && d[..8] == UDP_TRACKER_MAGIC && d[8..12] == [0, 0, 0, 0] {
        return UdpKind::TrackerUdp;
    }
    // uTP is decided by its parser and plausibility rules (proto::utp).
    UdpKind::Other
}

/// uTP connections of one UDP flow and their peer-wire sessions.
#[derive(Debug)]
struct UtpPart {
    tracker: UtpTracker,
    /// Sessions by tracker connection number, with the tracker side that
    /// originated each; bounded by the tracker's `max_conns`.
    sessions: Vec<(UtpConnNo, Side, PeerSession)>,
    last_expire: i64,
}

/// How often (packet time) idle uTP connections inside a live UDP flow are
/// expired: the flow itself may live for hours (a client's one socket).
const UTP_EXPIRE_EVERY_US: i64 = 10_000_000;

/// Per-flow UDP state.
#[derive(Debug, Default)]
pub struct UdpApp {
    counts: [u64; 5],
    utp: Option<Box<UtpPart>>,
}

/// What the uTP part needs to open sessions.
struct UtpCtx<'a> {
    info: &'a FlowInfo,
    ctx: FrameCtx,
    limits: &'a Limits,
    messages: bool,
}

fn on_utp_event(
    sessions: &mut Vec<(UtpConnNo, Side, PeerSession)>,
    c: &UtpCtx<'_>,
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
            let s = PeerSession::new(
                SessionInit {
                    conn_id: (u64::from(c.ctx.capture) << 40) | c.ctx.frame,
                    flow_id: c.info.conn_id,
                    capture: c.info.capture,
                    transport: "utp",
                    orig: end(orig),
                    resp: end(orig.other()),
                    first_ts: c.ctx.ts,
                    midstream,
                },
                c.limits,
                c.messages,
            );
            sessions.push((conn, orig, s));
        }
        UtpEvent::Roles { .. } => {
            // Roles learned late keep the orientation chosen at open: the
            // rows of a connection never change sides midway.
        }
        UtpEvent::Data { conn, from, chunk, .. } => {
            if let Some((_, orig, s)) = sessions.iter_mut().find(|(n, _, _)| *n == conn) {
                let side = if from == *orig { ORIG } else { RESP };
                s.feed(side, chunk, c.ctx, out);
            }
        }
        UtpEvent::Closed { conn, reason, .. } => {
            if let Some(i) = sessions.iter().position(|(n, _, _)| *n == conn) {
                let (_, _, mut s) = sessions.swap_remove(i);
                let is_bt = s.is_peer_wire();
                let row = s.finish(c.ctx, out);
                if is_bt {
                    out.rows.connections.push(row);
                } else if reason != CloseReason::Evicted {
                    // uTP-shaped but no peer wire in it: nothing to report
                    // beyond the flow row.
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
        limits: &Limits,
        messages: bool,
        dht: &mut DhtShard,
        trackers: &mut UdpTrackers,
        out: &mut ShardOut,
    ) {
        let mut k = classify(d);
        let src = info.ends[side & 1];
        let dst = info.ends[(side & 1) ^ 1];
        match k {
            UdpKind::Dht => {
                dht.datagram(ctx, info.conn_id, src, dst, d, out);
            }
            UdpKind::Lsd if !lsd::datagram(ctx, info.conn_id, src, dst, d, &limits.lsd, out) => {
                k = UdpKind::Other;
            }
            _ => {}
        }
        if k == UdpKind::TrackerUdp || k == UdpKind::Other {
            // BEP 15 on any port: requests by structure, answers by pairing.
            k = if trackers.datagram(ctx, info, side, d, out) {
                UdpKind::TrackerUdp
            } else {
                UdpKind::Other
            };
        }
        if k == UdpKind::Utp || k == UdpKind::Other {
            k = UdpKind::Other;
            if let Ok(pkt) = parse_utp(d) {
                let conf = utp_confidence(d, &pkt, &UtpProbeLimits::default());
                let accept = match conf {
                    UtpConfidence::Likely => true,
                    UtpConfidence::Unsure => true,
                    UtpConfidence::NotUtp => false,
                };
                if accept {
                    k = UdpKind::Utp;
                    let part = self.utp.get_or_insert_with(|| {
                        Box::new(UtpPart {
                            tracker: UtpTracker::new(UtpLimits::default()),
                            sessions: Vec::new(),
                            last_expire: ctx.ts,
                        })
                    });
                    let c = UtpCtx {
                        info,
                        ctx,
                        limits,
                        messages,
                    };
                    let sessions = &mut part.sessions;
                    part.tracker.packet(ctx.ts, side == ORIG, &pkt, &mut |ev| {
                        on_utp_event(sessions, &c, ev, out)
                    });
                    if ctx.ts - part.last_expire > UTP_EXPIRE_EVERY_US {
                        part.last_expire = ctx.ts;
                        let sessions = &mut part.sessions;
                        part.tracker
                            .expire(ctx.ts, &mut |ev| on_utp_event(sessions, &c, ev, out));
                    }
                }
            }
        }
        self.counts[k as usize] += 1;
    }

    /// Ends the flow; returns its `app`.
    pub fn finish(
        &mut self,
        ctx: FrameCtx,
        info: &FlowInfo,
        limits: &Limits,
        messages: bool,
        out: &mut ShardOut,
    ) -> &'static str {
        if let Some(part) = self.utp.as_mut() {
            let c = UtpCtx {
                info,
                ctx,
                limits,
                messages,
            };
            let sessions = &mut part.sessions;
            part.tracker.flush(&mut |ev| on_utp_event(sessions, &c, ev, out));
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
        self.app_name()
    }

    /// The flow's `app`: the kind most of its datagrams had.
    pub fn app_name(&self) -> &'static str {
        let kinds = [UdpKind::Dht, UdpKind::TrackerUdp, UdpKind::Utp, UdpKind::Lsd];
        let best = kinds
            .iter()
            .max_by_key(|k| (self.counts[**k as usize], std::cmp::Reverse(**k as usize)))
            .copied()
            .unwrap_or(UdpKind::Other);
        if self.counts[best as usize] == 0 {
            UdpKind::Other.name()
        } else {
            best.name()
        }
    }

    /// Rows of the flow's open uTP peer-wire connections as of now (live
    /// snapshot; nothing is flushed or closed).
    pub fn snapshot(&self, out: &ShardOut, rows: &mut Vec<crate::sink::ConnectionRow>) {
        if let Some(part) = &self.utp {
            for (_, _, s) in &part.sessions {
                if s.is_peer_wire() {
                    rows.push(s.snapshot_row(out));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_by_content() {
        assert_eq!(
            classify(b"d1:ad2:id20:aaaaaaaaaaaaaaaaaaaae1:q4:ping1:t2:aa1:y1:qe"),
            UdpKind::Dht
        );
        assert_eq!(
            classify(b"BT-SEARCH * HTTP/1.1\r\nHost: 239.192.152.143:6771\r\n"),
            UdpKind::Lsd
        );
        let mut c = UDP_TRACKER_MAGIC.to_vec();
        c.extend([0, 0, 0, 0, 1, 2, 3, 4]);
        assert_eq!(classify(&c), UdpKind::TrackerUdp);
        assert_eq!(classify(b"hello"), UdpKind::Other);
    }
}
