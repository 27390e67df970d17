//! Flow tracking and stream reassembly: the flow table shards (`table`),
//! TCP reassembly per direction (`reassembly`), UDP datagram classification
//! (`udp`). Everything here runs inside a shard, in packet-time order.

pub mod reassembly;
pub mod table;
pub mod udp;
pub mod utp_stream;

/// The stream chunk type lives on the ground floor (the `swarmtap-wire`
/// crate), shared with the framers there.
pub use swarmtap_wire::Chunk;
