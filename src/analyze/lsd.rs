//! Local Service Discovery (BEP 14) above the parser: one `lsd_announces`
//! row per info hash of a BT-SEARCH datagram, and the announcer's listen
//! endpoint as a peer of each torrent (`peers.sources` gets `lsd`). Stateless.

use std::net::SocketAddr;

use super::{FrameCtx, PeerSource, ShardOut, SwarmEvent, SwarmEventKind};
use crate::proto::lsd::{parse_lsd, LsdLimits};
use crate::proto::metainfo::hex;
use crate::sink::{LsdAnnounceRow, Ts};

/// Longest cookie kept (it is an opaque token of a few bytes).
const MAX_COOKIE_BYTES: usize = 256;

/// One datagram that starts like a BT-SEARCH request, sent `src` → `dst` on
/// flow `conn_id`. Returns false when it is not one after all (an anomaly
/// has been written).
pub fn datagram(
    ctx: FrameCtx,
    conn_id: u64,
    src: SocketAddr,
    dst: SocketAddr,
    d: &[u8],
    limits: &LsdLimits,
    out: &mut ShardOut,
) -> bool {
    let a = match parse_lsd(d, limits) {
        Ok(a) => a,
        Err(e) => {
            out.anomaly(
                Some(ctx),
                Some(conn_id),
                "lsd",
                e.kind(),
                Some(format!("{} bytes from {src}", d.len())),
            );
            return false;
        }
    };
    for k in a.anomalies() {
        out.anomaly(Some(ctx), Some(conn_id), "lsd", k.as_str(), None);
    }
    let n_more = a.n_anomalies() as usize - a.anomalies().len();
    if n_more > 0 {
        out.anomaly(
            Some(ctx),
            Some(conn_id),
            "lsd",
            "lsd_more_anomalies",
            Some(format!("{n_more} more anomalies in this announce")),
        );
    }
    let capture = out.capture_name(ctx.capture);
    let cookie = a
        .cookie
        .map(|c| String::from_utf8_lossy(c.get(..MAX_COOKIE_BYTES).unwrap_or(c)).into_owned());
    for ih in a.infohashes() {
        out.rows.lsd_announces.push(LsdAnnounceRow {
            ts: Ts(ctx.ts),
            frame: ctx.frame,
            capture: capture.clone(),
            src_ip: src.ip().to_string(),
            src_port: u32::from(src.port()),
            dst_ip: dst.ip().to_string(),
            port: a.port.map(u32::from),
            info_hash: hex(&ih),
            cookie: cookie.clone(),
            n_infohashes: a.n_infohashes() as u64,
        });
        if let Some(port) = a.port {
            out.events.push(SwarmEvent {
                ctx,
                conn_id,
                info_hash: ih,
                peer: SocketAddr::new(src.ip(), port),
                kind: SwarmEventKind::Learned {
                    source: PeerSource::Lsd,
                },
            });
        }
    }
    true
}
