//! Flow tracking and stream reassembly: the flow table shards (`table`),
//! TCP reassembly per direction (`reassembly`), UDP datagram classification
//! (`udp`). Everything here runs inside a shard, in packet-time order.

pub mod reassembly;
pub mod table;
pub mod udp;
pub mod utp_stream;

/// A piece of a reassembled byte stream, handed to the application framer in
/// stream order. `Gap(n)` says that `n` bytes of the stream were never seen
/// (lost in capture, or given up on when the out-of-order buffer was full);
/// the framer decides whether it can keep its framing across them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk<'a> {
    Data(&'a [u8]),
    Gap(u64),
}
