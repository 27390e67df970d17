//! Pure protocol parsers: no I/O, no threads, no polars. Each bounds what it
//! holds and never panics on input. (The workspace crate `swarmtap-wire`,
//! reached as `swarmtap::proto`; it depends on nothing else of swarmtap.)
#![forbid(unsafe_code)]

pub mod bencode;
pub mod client_id;
pub mod dht;
pub mod lsd;
pub mod metainfo;
pub mod peer_wire;
pub mod stream;
pub mod tracker_http;
pub mod tracker_udp;
pub mod ut_metadata;
pub mod ut_pex;
pub mod utp;

/// Tests that need ../shared ask this: the same rule as swarmtap's own
/// tests (tests/support/require.rs at the repository root).
#[cfg(test)]
#[path = "../../../tests/support/require.rs"]
pub(crate) mod require;

pub use stream::Chunk;
