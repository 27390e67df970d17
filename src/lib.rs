//! swarmtap: a passive BitTorrent traffic analyzer.
//!
//! ```text
//! capture  ->  decode  ->  shard by flow  ->  flow/reassembly  ->  proto (pure parsers)
//!  (file,       (link, IP,    (stable           (TCP, uTP: Data      (bencode, peer_wire,
//!   live)        TCP/UDP)      flow hash)        and Gap chunks)      dht, tracker_*, lsd)
//!                                                      |
//!                                                      v
//!                                      analyze (per-flow sessions + per-swarm state:
//!                                       bitfields, volumes, completion)
//!                                                      |
//!                                                      v
//!                                      sink (rows -> Parquet, own thread)
//! ```
//!
//! `pipeline` is the only module with threads. Parsers in `proto` are pure:
//! no I/O, no threads, bounded memory, no panics on any input.
#![forbid(unsafe_code)]

pub mod analyze;
pub mod capture;
pub mod cli;
pub mod config;
pub mod decode;
pub mod dissect;
pub mod flow;
pub mod geo;
pub mod merge;
pub mod pipeline;
pub mod probe;
/// The pure parsers: the workspace crate `swarmtap-wire` (crates/wire),
/// which depends on nothing else of swarmtap.
pub use swarmtap_wire as proto;
pub mod report;
/// Tests that need ../shared, tshark, root or namespaces ask this (one
/// rule for unit and integration tests: tests/support/require.rs).
#[cfg(test)]
#[path = "../tests/support/require.rs"]
pub(crate) mod require;
pub mod sink;
pub mod summary;
