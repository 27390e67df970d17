//! Flow tracking and stream reassembly, transport only: the flow table
//! shards (`table`), TCP reassembly per direction (`reassembly`), uTP
//! connection tracking and reassembly (`utp_stream`). Everything here runs
//! inside a shard, in packet-time order, and knows no application: what a
//! flow carries is the business of a [`FlowApps`] implementation (the
//! analysis, `analyze::apps`), which gets each flow's reassembled stream
//! chunks, gaps and datagrams, and its end.

use std::net::SocketAddr;

pub mod reassembly;
pub mod table;
pub mod utp_stream;

/// The stream chunk type lives on the ground floor (the `swarmtap-wire`
/// crate), shared with the framers there.
pub use swarmtap_wire::Chunk;

/// Direction index of the flow's originator (the side that sent the first
/// SYN, else the first packet) and of its responder.
pub const ORIG: usize = 0;
pub const RESP: usize = 1;

/// What the allocator takes for an allocation of `n` bytes: glibc's chunk
/// (the request plus an 8-byte header, rounded up to 16, at least 32).
/// Memory accounts (`Limits::max_memory`) add it up per allocation, so
/// that a flow's account is what it costs, not the sum of its fields.
pub const fn alloc_bytes(n: usize) -> usize {
    if n == 0 {
        0
    } else {
        let c = (n + 8 + 15) & !15;
        if c < 32 {
            32
        } else {
            c
        }
    }
}

/// Where a packet came from: what every row needs to say so.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrameCtx {
    pub ts: i64,
    pub frame: u64,
    pub capture: u32,
}

/// What the application side needs to know about a flow.
#[derive(Debug, Clone, Copy)]
pub struct FlowInfo {
    pub conn_id: u64,
    pub capture: u32,
    /// [originator, responder]
    pub ends: [SocketAddr; 2],
    pub first_ts: i64,
    /// TCP: no SYN was captured, the flow was picked up mid-connection.
    pub midstream: bool,
}

/// A flow's transport facts, at its end (or at a live snapshot).
#[derive(Debug, Clone, Copy)]
pub struct FlowSummary {
    pub info: FlowInfo,
    pub tcp: bool,
    pub last_ts: i64,
    pub n_packets: [u64; 2],
    /// TCP/UDP payload bytes captured per direction (retransmissions
    /// included).
    pub payload: [u64; 2],
    /// TCP: stream bytes never captured, and retransmitted bytes.
    pub gap_bytes: u64,
    pub retrans_bytes: u64,
    /// fin, rst, idle, evicted, end, reused, or open (live snapshot).
    pub end_reason: &'static str,
    /// Packets with a wrong TCP/UDP checksum (`flows.n_bad_checksums`).
    pub n_bad_checksums: u64,
}

/// A flow's application state, borrowed (live snapshots).
#[derive(Debug)]
pub enum AppRef<'a, T, U> {
    Tcp(&'a T),
    Udp(&'a U),
}

/// The application side of a shard's flows. The flow layer owns one `Tcp`
/// state per TCP flow and one `Udp` state per UDP flow and hands them back
/// with every chunk, gap or datagram; the implementation keeps whatever is
/// shared by the shard's flows (its output, pending transactions).
pub trait FlowApps {
    type Tcp: Default;
    type Udp: Default;
    /// A chunk (data or gap) of direction `side` of a TCP flow, in stream
    /// order.
    fn stream(&mut self, info: &FlowInfo, app: &mut Self::Tcp, side: usize, chunk: Chunk<'_>, ctx: FrameCtx);
    /// A UDP datagram of direction `side`.
    fn datagram(&mut self, info: &FlowInfo, app: &mut Self::Udp, side: usize, d: &[u8], ctx: FrameCtx);
    /// The end of a TCP flow (everything reassembled was handed over).
    fn tcp_end(&mut self, flow: &FlowSummary, app: Self::Tcp, ctx: FrameCtx);
    /// The end of a UDP flow.
    fn udp_end(&mut self, flow: &FlowSummary, app: Self::Udp, ctx: FrameCtx);
    /// A transport-level anomaly (overlap conflicts, a full flow table).
    fn anomaly(
        &mut self,
        ctx: Option<FrameCtx>,
        conn_id: Option<u64>,
        layer: &'static str,
        kind: &str,
        detail: Option<String>,
    );
    /// A sweep at packet time `now`; true when the TCP states should be
    /// offered [`FlowApps::release_stale`].
    fn sweep(&mut self, now: i64) -> bool;
    fn release_stale(&mut self, app: &mut Self::Tcp, now: i64);
    /// Whether a TCP flow's application is ruled out for good (identified
    /// as not ours, a state it never leaves). From its next packet on, the
    /// flow layer follows the flow as sequence ranges only
    /// ([`reassembly::StreamReassembler::set_ranges_only`]): a packet costs a
    /// lookup and counters, no payload is copied and nothing more is handed
    /// to `stream` (its end still comes, with exact gap and retransmitted
    /// bytes; overlap conflicts are no longer examined).
    fn tcp_ruled_out(app: &Self::Tcp) -> bool;
    /// Heap bytes a TCP flow's application state holds beyond its own
    /// size, as its buffers' lengths and capacities tell (accounted against
    /// `Limits::max_memory`; an account, not a measurement of the heap).
    fn tcp_heap_bytes(app: &Self::Tcp) -> usize;
    /// The same for a UDP flow's state.
    fn udp_heap_bytes(app: &Self::Udp) -> usize;
    /// End of input, after every flow ended.
    fn finish(&mut self);
}

#[cfg(test)]
mod tests {
    /// The flow layer stays transport only: none of its files names a stage
    /// to its right (analysis, dissectors, output). Tests inside the files
    /// may read shared test helpers.
    #[test]
    fn the_flow_layer_imports_no_analysis_dissector_or_output() {
        let files = [
            ("mod.rs", include_str!("mod.rs")),
            ("table.rs", include_str!("table.rs")),
            ("reassembly.rs", include_str!("reassembly.rs")),
            ("utp_stream.rs", include_str!("utp_stream.rs")),
        ];
        for (name, text) in files {
            let code = text.split("#[cfg(test)]").next().unwrap_or(text);
            for stage in ["analyze", "dissect", "sink", "pipeline", "probe"] {
                let needle = format!("crate::{stage}");
                assert!(!code.contains(&needle), "flow/{name} uses {needle}");
            }
        }
    }
}
