//! The application side of a flow-table shard ([`FlowApps`]): what the
//! flow layer hands up (stream chunks and gaps of TCP flows, UDP
//! datagrams, flow ends) goes to the dissector registry and the analysis
//! here, which write `flows` rows, connections and everything else into
//! the shard's [`ShardOut`].

use std::collections::HashMap;
use std::sync::Arc;

use super::dht::DhtShard;
use super::stream::{StreamApp, StreamEnd, StreamEnv, StreamInit};
use super::tracker::UdpTrackers;
use super::udp::UdpApp;
use super::{FrameCtx, ShardOut};
use crate::config::Limits;
use crate::dissect::Identified;
use crate::flow::{AppRef, Chunk, FlowApps, FlowInfo, FlowSummary, ORIG, RESP};
use crate::proto::peer_wire::TorrentShape;
use crate::sink::{FlowRow, Ip, RowBatch, Ts};

/// Shared, read-only context for all shards.
#[derive(Debug, Default)]
pub struct ShardContext {
    /// Torrent shapes known from --torrents, by v1 info hash.
    pub shapes: HashMap<[u8; 20], TorrentShape>,
    /// Write connection rows of weak identifications too (`--keep-weak`).
    pub keep_weak: bool,
}

/// What one shard's flows carry, and what they wrote.
pub struct ShardApps {
    limits: Limits,
    messages: bool,
    ctx: Arc<ShardContext>,
    /// Outstanding DHT queries of this shard's UDP flows.
    dht: DhtShard,
    /// UDP tracker transactions of this shard's flows.
    udp_trackers: UdpTrackers,
    pub out: ShardOut,
    /// Peer-wire connections (plaintext, over TCP) that ended.
    pub n_peer_connections: u64,
}

impl ShardApps {
    pub fn new(limits: Limits, n_shards: usize, messages: bool, ctx: Arc<ShardContext>, out: ShardOut) -> Self {
        ShardApps {
            limits,
            messages,
            ctx,
            dht: DhtShard::new(&limits, n_shards),
            udp_trackers: UdpTrackers::new(limits.tracker_udp, limits.tracker_udp_pending),
            out: ShardOut {
                piece_budget: super::pieces::PieceBudget {
                    used: 0,
                    max: limits.max_piece_buffer_total / n_shards.max(1),
                },
                held_since: Default::default(),
                ..out
            },
            n_peer_connections: 0,
        }
    }

    /// The `flows` row of a flow.
    fn flow_row(&self, f: &FlowSummary, app: Identified) -> FlowRow {
        let ends = f.info.ends;
        FlowRow {
            conn_id: f.info.conn_id,
            capture: self.out.capture_arc(f.info.capture),
            proto: if f.tcp { "tcp" } else { "udp" },
            orig_ip: Ip(ends[ORIG].ip()),
            orig_port: u32::from(ends[ORIG].port()),
            resp_ip: Ip(ends[RESP].ip()),
            resp_port: u32::from(ends[RESP].port()),
            first_ts: Ts(f.info.first_ts),
            last_ts: Ts(f.last_ts),
            n_packets: f.n_packets[0] + f.n_packets[1],
            n_packets_orig: f.n_packets[ORIG],
            n_packets_resp: f.n_packets[RESP],
            payload_bytes_orig: f.payload[ORIG],
            payload_bytes_resp: f.payload[RESP],
            app: app.app,
            app_confidence: app.confidence.map(|c| c.name()),
            app_evidence: app.evidence,
            midstream: f.info.midstream,
            gap_bytes: f.gap_bytes,
            retrans_bytes: f.retrans_bytes,
            end_reason: f.end_reason,
            n_bad_checksums: f.n_bad_checksums,
            // Filled by the writer from the 5-tuple (sink::fill_community_ids).
            ..Default::default()
        }
    }

    /// Live capture: the `flows` row (end_reason `open`) and connection
    /// rows of one open flow, as of now.
    pub fn snapshot(&self, f: &FlowSummary, app: AppRef<'_, StreamApp, UdpApp>, rows: &mut RowBatch) {
        let id = match app {
            AppRef::Tcp(t) => {
                if let Some(row) = t.snapshot_row(&stream_init(&f.info), stream_end(f), &self.out) {
                    rows.connections.push(row);
                }
                t.identified()
            }
            AppRef::Udp(u) => {
                u.snapshot(&self.out, &mut rows.connections);
                u.identified()
            }
        };
        rows.flows.push(self.flow_row(f, id));
    }
}

/// A TCP flow as a stream for the application layer.
fn stream_init(info: &FlowInfo) -> StreamInit {
    StreamInit {
        conn_id: info.conn_id,
        flow_id: info.conn_id,
        capture: info.capture,
        transport: crate::sink::ConnTransport::Tcp,
        ends: info.ends,
        first_ts: info.first_ts,
        midstream: info.midstream,
    }
}

fn stream_end(f: &FlowSummary) -> StreamEnd {
    StreamEnd {
        last_ts: Some(f.last_ts),
        gap_bytes: Some(f.gap_bytes),
        payload: Some(f.payload),
    }
}

impl FlowApps for ShardApps {
    type Tcp = StreamApp;
    type Udp = UdpApp;

    fn stream(&mut self, info: &FlowInfo, app: &mut StreamApp, side: usize, chunk: Chunk<'_>, ctx: FrameCtx) {
        let env = StreamEnv {
            limits: &self.limits,
            messages: self.messages,
            keep_weak: self.ctx.keep_weak,
            shapes: &self.ctx.shapes,
        };
        app.feed(&stream_init(info), side, chunk, ctx, &env, &mut self.out);
    }

    fn datagram(&mut self, info: &FlowInfo, app: &mut UdpApp, side: usize, d: &[u8], ctx: FrameCtx) {
        let env = StreamEnv {
            limits: &self.limits,
            messages: self.messages,
            keep_weak: self.ctx.keep_weak,
            shapes: &self.ctx.shapes,
        };
        app.datagram(
            ctx,
            info,
            side,
            d,
            &env,
            &mut self.dht,
            &mut self.udp_trackers,
            &mut self.out,
        );
    }

    fn tcp_end(&mut self, f: &FlowSummary, app: StreamApp, ctx: FrameCtx) {
        let env = StreamEnv {
            limits: &self.limits,
            messages: self.messages,
            keep_weak: self.ctx.keep_weak,
            shapes: &self.ctx.shapes,
        };
        let init = stream_init(&f.info);
        let (id, row) = app.finish(&init, stream_end(f), ctx, &env, &mut self.out);
        if let Some(row) = row {
            if !row.encrypted {
                self.n_peer_connections += 1;
            }
            self.out.push_connection(&init, row);
        }
        let row = self.flow_row(f, id);
        self.out.rows.flows.push(row);
    }

    fn udp_end(&mut self, f: &FlowSummary, mut app: UdpApp, ctx: FrameCtx) {
        let env = StreamEnv {
            limits: &self.limits,
            messages: self.messages,
            keep_weak: self.ctx.keep_weak,
            shapes: &self.ctx.shapes,
        };
        let id = app.finish(ctx, &f.info, &env, &mut self.out);
        let row = self.flow_row(f, id);
        self.out.rows.flows.push(row);
    }

    fn anomaly(
        &mut self,
        ctx: Option<FrameCtx>,
        conn_id: Option<u64>,
        layer: &'static str,
        kind: &str,
        detail: Option<String>,
    ) {
        self.out.anomaly(ctx, conn_id, layer, kind, detail);
    }

    fn sweep(&mut self, now: i64) -> bool {
        self.udp_trackers.sweep(now, &mut self.out);
        // Connections holding swarm events for too long release them, so
        // the swarm state's frame order is not held up (Limits::max_hold_us).
        self.out.oldest_held().is_some()
    }

    fn tcp_ruled_out(app: &StreamApp) -> bool {
        matches!(app, StreamApp::Other(_))
    }

    fn release_stale(&mut self, app: &mut StreamApp, now: i64) {
        app.release_stale(now, self.limits.max_hold_us, &mut self.out);
    }

    fn tcp_heap_bytes(app: &StreamApp) -> usize {
        app.heap_bytes()
    }

    fn udp_heap_bytes(app: &UdpApp) -> usize {
        app.heap_bytes()
    }

    fn finish(&mut self) {
        self.udp_trackers.finish(&mut self.out);
    }
}
