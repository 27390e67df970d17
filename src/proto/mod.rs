//! Pure protocol parsers: no I/O, no threads, no polars. Each bounds what it
//! holds and never panics on input.

pub mod bencode;
pub mod client_id;
pub mod dht;
pub mod lsd;
pub mod metainfo;
pub mod peer_wire;
pub mod tracker_http;
pub mod tracker_udp;
pub mod ut_metadata;
pub mod ut_pex;
pub mod utp;
