//! Every output table, declared once: row struct, column order, Parquet
//! schema and the text of docs/SCHEMA.md all come from the declarations
//! below (a test keeps docs/SCHEMA.md equal to [`schema_markdown`]).
//! Column names follow CONTRACT.md; additions are documented here.

use std::sync::Arc;

use polars::prelude::*;

use super::columns::{ColumnValue, Ts};

/// Documentation of one column.
#[derive(Debug, Clone, Copy)]
pub struct ColumnDoc {
    pub name: &'static str,
    pub type_doc: &'static str,
    pub doc: &'static str,
}

/// A row type of one table.
pub trait Row: Sized + Send + 'static {
    const TABLE: &'static str;
    const DOC: &'static str;
    fn columns() -> Vec<ColumnDoc>;
    fn schema() -> Schema;
    fn to_frame(rows: &[Self]) -> PolarsResult<DataFrame>;
}

macro_rules! tables {
    ($(
        $(#[doc = $tdoc:literal])*
        $table:ident => $row:ident {
            $( $col:ident : $ty:ty = $cdoc:literal ),* $(,)?
        }
    )*) => {
        $(
            $(#[doc = $tdoc])*
            #[derive(Debug, Clone, Default, PartialEq)]
            pub struct $row { $( pub $col: $ty ),* }

            impl Row for $row {
                const TABLE: &'static str = stringify!($table);
                const DOC: &'static str = concat!($($tdoc, "\n"),*);
                fn columns() -> Vec<ColumnDoc> {
                    vec![$( ColumnDoc { name: stringify!($col), type_doc: <$ty as ColumnValue>::type_doc(), doc: $cdoc } ),*]
                }
                fn schema() -> Schema {
                    Schema::from_iter([$( Field::new(stringify!($col).into(), <$ty as ColumnValue>::dtype()) ),*])
                }
                fn to_frame(rows: &[Self]) -> PolarsResult<DataFrame> {
                    DataFrame::new(rows.len(), vec![
                        $( <$ty as ColumnValue>::column(stringify!($col), rows.iter().map(|r| &r.$col)) ),*
                    ])
                }
            }
        )*

        /// Rows of every table, as produced by one pipeline step.
        #[derive(Debug, Default)]
        pub struct RowBatch { $( pub $table: Vec<$row> ),* }

        impl RowBatch {
            pub fn is_empty(&self) -> bool { true $( && self.$table.is_empty() )* }
            pub fn len(&self) -> usize { 0 $( + self.$table.len() )* }
            pub fn append(&mut self, other: &mut RowBatch) { $( self.$table.append(&mut other.$table); )* }
        }

        /// Table names in declaration order.
        pub const TABLE_NAMES: &[&str] = &[$( stringify!($table) ),*];

        /// Calls `f` with each table's name, doc and columns.
        pub fn for_each_table(mut f: impl FnMut(&'static str, &'static str, Vec<ColumnDoc>)) {
            $( f(<$row as Row>::TABLE, <$row as Row>::DOC, <$row as Row>::columns()); )*
        }

        /// Per-table writers, generated alongside the tables.
        pub struct TableWriters<W: super::writer::TableSink> { $( pub $table: W::For<$row> ),* }

        impl<W: super::writer::TableSink> TableWriters<W> {
            pub fn open(sink: &mut W) -> PolarsResult<Self> {
                Ok(TableWriters { $( $table: sink.open::<$row>()? ),* })
            }
            pub fn push(&mut self, sink: &mut W, batch: RowBatch) -> PolarsResult<()> {
                $( sink.push(&mut self.$table, batch.$table)?; )*
                Ok(())
            }
            pub fn finish(self, sink: &mut W) -> PolarsResult<()> {
                $( sink.finish(self.$table)?; )*
                Ok(())
            }
        }
    };
}

tables! {
    /// One row per TCP or UDP flow (5-tuple; a reused 4-tuple after a close is a new flow).
    flows => FlowRow {
        conn_id: u64 = "Flow id: (capture index << 40) | frame number of the flow's first packet; shared with `connections` when the flow carries one peer-wire connection.",
        capture: String = "Input file name the flow started in.",
        proto: &'static str = "tcp or udp.",
        orig_ip: String = "Originator address: the side that sent the first SYN, else the first packet.",
        orig_port: u32 = "Originator port.",
        resp_ip: String = "Responder address.",
        resp_port: u32 = "Responder port.",
        first_ts: Ts = "First packet.",
        last_ts: Ts = "Last packet.",
        n_packets: u64 = "Packets in both directions.",
        n_packets_orig: u64 = "Packets from the originator.",
        n_packets_resp: u64 = "Packets from the responder.",
        payload_bytes_orig: u64 = "TCP/UDP payload bytes captured from the originator (retransmissions included).",
        payload_bytes_resp: u64 = "TCP/UDP payload bytes captured from the responder.",
        app: &'static str = "What the flow carries: peer_wire, mse, dht, tracker_http, tracker_udp, utp, lsd, other.",
        midstream: bool = "TCP: no SYN was captured, the flow was picked up mid-connection.",
        gap_bytes: u64 = "TCP: stream bytes never captured (both directions).",
        retrans_bytes: u64 = "TCP: retransmitted payload bytes (both directions).",
        end_reason: &'static str = "fin, rst, idle (expired in packet time), evicted (flow table full), end (input ended).",
    }

    /// One row per BitTorrent peer-wire connection (TCP or uTP, plain or encrypted).
    connections => ConnectionRow {
        conn_id: u64 = "Connection id (see flows.conn_id; for uTP the frame of the connection's first packet).",
        flow_id: u64 = "conn_id of the TCP/UDP flow carrying the connection.",
        capture: String = "Input file name.",
        transport: &'static str = "tcp or utp.",
        orig_ip: String = "Originator (connecting side) address.",
        orig_port: u32 = "Originator port.",
        resp_ip: String = "Responder (accepting side) address.",
        resp_port: u32 = "Responder port.",
        first_ts: Ts = "First packet.",
        last_ts: Ts = "Last packet.",
        info_hash: Option<String> = "Info hash (lowercase hex); null when neither seen nor inferred.",
        info_hash_source: Option<&'static str> = "handshake, or endpoint: a mid-stream connection attributed by an endpoint known as a listen address of exactly one torrent.",
        orig_peer_id: Option<String> = "Originator's peer id (hex).",
        resp_peer_id: Option<String> = "Responder's peer id (hex).",
        orig_client: Option<String> = "Originator's client, from its peer id, else its BEP 10 `v`.",
        resp_client: Option<String> = "Responder's client.",
        orig_ltep_v: Option<String> = "Originator's BEP 10 `v` string.",
        resp_ltep_v: Option<String> = "Responder's BEP 10 `v` string.",
        orig_listen_port: Option<u32> = "Originator's listen port from its BEP 10 `p`.",
        orig_extensions: Vec<String> = "Extension names in the originator's BEP 10 handshake `m`.",
        resp_extensions: Vec<String> = "Extension names in the responder's BEP 10 handshake `m`.",
        encrypted: bool = "The stream is MSE/PE-encrypted (not decodable passively).",
        midstream: bool = "Picked up mid-connection (no handshake seen; framing found by hunting).",
        piece_bytes_orig: u64 = "Block bytes of piece messages sent by the originator (from framed headers; bytes lost in capture gaps inside blocks included).",
        piece_bytes_resp: u64 = "Block bytes of piece messages sent by the responder.",
        payload_bytes_orig: u64 = "Stream bytes from the originator (reassembled, gaps excluded).",
        payload_bytes_resp: u64 = "Stream bytes from the responder.",
        n_msgs_orig: u64 = "Framed messages from the originator (handshake excluded).",
        n_msgs_resp: u64 = "Framed messages from the responder.",
        gap_bytes: u64 = "Stream bytes never captured, both directions.",
        unframed_bytes: u64 = "Bytes passed over while looking for message boundaries, both directions.",
        n_resyncs: u64 = "Times framing was found again (mid-stream start, after gaps).",
    }

    /// One row per peer-wire message (omitted with --no-messages).
    peer_messages => PeerMessageRow {
        ts: Ts = "Time of the packet that completed the message (for piece: its 13-byte header).",
        frame: u64 = "That packet's frame number in its capture.",
        capture: Arc<str> = "Input file name.",
        conn_id: u64 = "Connection.",
        src_ip: Arc<str> = "Sender address.",
        src_port: u32 = "Sender port.",
        dst_ip: Arc<str> = "Receiver address.",
        dst_port: u32 = "Receiver port.",
        info_hash: Option<Arc<str>> = "Info hash of the connection.",
        msg: &'static str = "handshake, keepalive, choke, unchoke, interested, not_interested, have, bitfield, request, piece, cancel, port, suggest, have_all, have_none, reject, allowed_fast, extended, hash_request, hashes, hash_reject, unknown.",
        ext: Option<String> = "For msg=extended: extension name (handshake, ut_metadata, ut_pex, lt_donthave, upload_only, ut_holepunch, …; `id:N` when the name is unknown).",
        piece: Option<u32> = "Piece index (have, request, piece, cancel, reject, suggest, allowed_fast; hash messages: index).",
        begin: Option<u32> = "Offset in the piece (request, piece, cancel, reject).",
        length: Option<u32> = "Block length (request, piece, cancel, reject), or bitfield bytes.",
        wire_len: u64 = "Bytes on the wire, length prefix included.",
    }

    /// One row per change of a peer's known piece set.
    peer_progress => PeerProgressRow {
        ts: Ts = "Time of the message that changed it.",
        frame: u64 = "Its frame.",
        conn_id: u64 = "Connection it came on.",
        info_hash: String = "Torrent.",
        peer_ip: String = "Peer address.",
        peer_port: u32 = "Peer listen port (responder port, or the originator's BEP 10 `p`; else its source port).",
        n_pieces_have: Option<u64> = "Pieces the peer has now (null for have_all while the piece count is unknown).",
        n_pieces: Option<u64> = "Pieces in the torrent when known exactly (.torrent or metadata), else null.",
        cause: &'static str = "bitfield, have, have_all, have_none, dont_have.",
    }

    /// One row per (info_hash, peer_ip, peer_port).
    peers => PeerRow {
        info_hash: String = "Torrent.",
        peer_ip: String = "Peer address.",
        peer_port: u32 = "Peer listen port (see peer_progress.peer_port).",
        peer_id: Option<String> = "Last peer id seen (hex).",
        client: Option<String> = "Client name from peer id or BEP 10 `v`.",
        first_ts: Ts = "First seen.",
        last_ts: Ts = "Last seen.",
        first_pieces: Option<u64> = "Pieces it had when first known.",
        last_pieces: Option<u64> = "Pieces it had when last known.",
        n_pieces: Option<u64> = "Pieces in the torrent: exact when known, else an estimate from bitfield lengths (torrents.n_pieces_source).",
        completed_ts: Option<Ts> = "First time its piece count reached the threshold (--threshold, default 0.98).",
        confirmed_download: bool = "Seen below the threshold and later at or above it.",
        uploaded_bytes: u64 = "Piece block bytes it sent on captured connections.",
        downloaded_bytes: u64 = "Piece block bytes it received on captured connections.",
        max_rate_bps: Option<f64> = "Highest download rate: piece bytes received per tumbling window of --rate-window seconds (default 5) of packet time.",
        max_upload_rate_bps: Option<f64> = "Highest upload rate, same windows.",
        n_connections: u64 = "Captured peer-wire connections it took part in.",
        sources: Vec<String> = "Where it was seen: wire, tracker, dht, pex, lsd, probe.",
    }

    /// One row per torrent (info_hash).
    torrents => TorrentRow {
        info_hash: String = "v1 info hash (or v2 truncated to what the wire carries), lowercase hex.",
        info_hash_v2: Option<String> = "v2 info hash (64 hex) when known.",
        name: Option<String> = "Name from metadata.",
        piece_length: Option<u64> = "Piece length from metadata.",
        n_pieces: Option<u64> = "Piece count: from metadata, else estimated from bitfields.",
        n_pieces_source: &'static str = "torrent_file, ut_metadata, bitfield_estimate, none.",
        total_bytes: Option<u64> = "Total length from metadata.",
        metadata_source: &'static str = "torrent_file, ut_metadata, none.",
        n_peers: u64 = "Rows in peers for this torrent.",
        n_confirmed_downloads: u64 = "Peers with confirmed_download.",
        piece_bytes: u64 = "Piece block bytes seen on the wire for this torrent.",
        first_ts: Option<Ts> = "First seen.",
        last_ts: Option<Ts> = "Last seen.",
    }

    /// One row per tracker announce request, paired with its response.
    tracker_announces => TrackerAnnounceRow {
        ts: Ts = "Request time.",
        frame: u64 = "Request frame.",
        capture: String = "Input file name.",
        transport: &'static str = "http or udp.",
        client_ip: String = "Announcing client address.",
        client_port: u32 = "Its source port.",
        tracker_ip: String = "Tracker address.",
        tracker_port: u32 = "Tracker port.",
        info_hash: String = "Torrent.",
        peer_id: Option<String> = "Peer id (hex).",
        client: Option<String> = "Client from peer id.",
        port: Option<u32> = "Announced listen port.",
        uploaded: Option<u64> = "Reported uploaded bytes.",
        downloaded: Option<u64> = "Reported downloaded bytes.",
        left: Option<u64> = "Reported bytes left.",
        event: Option<String> = "started, completed, stopped, or null.",
        numwant: Option<i64> = "Peers wanted.",
        response_ts: Option<Ts> = "Response time.",
        interval: Option<i64> = "Announce interval (s).",
        seeders: Option<i64> = "complete / seeders.",
        leechers: Option<i64> = "incomplete / leechers.",
        n_peers_returned: Option<u64> = "Peers in the response.",
        failure_reason: Option<String> = "Tracker failure reason.",
    }

    /// One row per peer returned by a tracker.
    tracker_peers => TrackerPeerRow {
        ts: Ts = "Response time.",
        info_hash: String = "Torrent.",
        tracker_ip: String = "Tracker address.",
        tracker_port: u32 = "Tracker port.",
        peer_ip: String = "Returned peer address.",
        peer_port: u32 = "Returned peer port.",
    }

    /// One row per scraped info_hash.
    tracker_scrapes => TrackerScrapeRow {
        ts: Ts = "Response time.",
        transport: &'static str = "http or udp.",
        tracker_ip: String = "Tracker address.",
        info_hash: String = "Torrent.",
        seeders: Option<i64> = "complete.",
        leechers: Option<i64> = "incomplete.",
        completed: Option<i64> = "downloaded.",
    }

    /// One row per (tracker, info_hash, client) announce series.
    announce_audit => AnnounceAuditRow {
        info_hash: String = "Torrent.",
        client_ip: String = "Client address.",
        peer_id: Option<String> = "Peer id (hex).",
        tracker_ip: String = "Tracker address.",
        first_ts: Ts = "First announce.",
        last_ts: Ts = "Last announce.",
        n_announces: u64 = "Announces in the series.",
        reported_uploaded: Option<u64> = "Reported upload delta over the series.",
        observed_uploaded: u64 = "Piece bytes the client was seen sending in the same interval.",
        reported_downloaded: Option<u64> = "Reported download delta.",
        observed_downloaded: u64 = "Piece bytes the client was seen receiving.",
        flags: Vec<String> = "Audit flags (docs/SCHEMA.md lists them).",
        suspicious: bool = "Any flag raised.",
    }

    /// One row per KRPC message.
    dht_messages => DhtMessageRow {
        ts: Ts = "Time.",
        frame: u64 = "Frame.",
        capture: String = "Input file name.",
        src_ip: String = "Sender.",
        src_port: u32 = "Sender port.",
        dst_ip: String = "Receiver.",
        dst_port: u32 = "Receiver port.",
        tid: String = "Transaction id (hex).",
        kind: &'static str = "query, response, error.",
        method: Option<String> = "Query method (also on paired responses and errors).",
        node_id: Option<String> = "Sender node id (hex).",
        target: Option<String> = "find_node target (hex).",
        info_hash: Option<String> = "get_peers / announce_peer info hash (hex).",
        n_nodes: u64 = "Compact nodes returned (nodes + nodes6).",
        n_values: u64 = "Peers returned (values).",
        version: Option<String> = "Client from the `v` key.",
        rtt_ms: Option<f64> = "Response time after its query (paired responses and errors).",
        error_code: Option<i64> = "KRPC error code.",
    }

    /// One row per peer learned from the DHT.
    dht_peers => DhtPeerRow {
        ts: Ts = "Time.",
        info_hash: String = "Torrent.",
        peer_ip: String = "Peer address.",
        peer_port: u32 = "Peer port.",
        via: &'static str = "values (get_peers response) or announce_peer.",
        reporter_ip: String = "Node that reported it.",
    }

    /// One row per peer added or dropped in ut_pex.
    pex_peers => PexPeerRow {
        ts: Ts = "Time.",
        conn_id: u64 = "Connection.",
        info_hash: Option<String> = "Torrent.",
        reporter_ip: String = "Peer that sent the PEX message.",
        peer_ip: String = "Peer added or dropped.",
        peer_port: u32 = "Its port.",
        action: &'static str = "added or dropped.",
        flags: Vec<String> = "Decoded added.f flags: encryption, seed, utp, holepunch, reachable.",
    }

    /// One row per BEP 14 local service discovery announce.
    lsd_announces => LsdAnnounceRow {
        ts: Ts = "Time.",
        src_ip: String = "Announcer.",
        port: u32 = "Announced port.",
        info_hash: String = "Torrent.",
    }

    /// One row per active contact attempt (`swarmtap probe`).
    probe_visits => ProbeVisitRow {
        ts: Ts = "Start of the attempt.",
        peer_ip: String = "Target address.",
        peer_port: u32 = "Target port.",
        info_hash: String = "Torrent.",
        transport: &'static str = "tcp or utp.",
        encrypted: bool = "MSE used.",
        success: bool = "Handshake completed.",
        outcome: String = "ok, timeout, refused, reset, handshake_failed, …",
        duration_ms: f64 = "Duration.",
        n_pieces_have: Option<u64> = "Pieces the peer reported.",
        n_msgs: u64 = "Messages received.",
    }

    /// One row per input file (or live interval).
    capture_stats => CaptureStatsRow {
        capture: String = "Input file name (- for stdin).",
        first_ts: Option<Ts> = "First frame.",
        last_ts: Option<Ts> = "Last frame.",
        n_packets: u64 = "Frames read (before the BPF filter).",
        n_bytes: u64 = "Sum of original frame lengths.",
        n_decode_errors: u64 = "Frames whose headers could not be decoded.",
        n_truncated: u64 = "Frames cut by the snaplen.",
        truncated_tail: bool = "The file ended inside a record.",
        n_anomalies: u64 = "Anomalies counted (including those beyond the per-kind row cap).",
        n_dropped: u64 = "Live capture: packets dropped (ours + kernel + interface).",
        n_filtered_out: u64 = "Frames rejected by -f.",
        n_not_ip: u64 = "Non-IP frames (ARP, …).",
        n_other_ip: u64 = "IP frames neither TCP nor UDP.",
        n_fragments: u64 = "IP fragments (not reassembled).",
        n_tcp: u64 = "TCP packets.",
        n_udp: u64 = "UDP packets.",
    }

    /// One row per malformed or hostile input event (capped per kind; totals in capture_stats).
    anomalies => AnomalyRow {
        ts: Option<Ts> = "Time.",
        frame: Option<u64> = "Frame.",
        capture: String = "Input file name.",
        conn_id: Option<u64> = "Flow/connection, where one applies.",
        layer: &'static str = "capture, decode, tcp, peer_wire, tracker, dht, utp, flow, …",
        kind: String = "What was wrong (snake_case).",
        detail: Option<String> = "Free text.",
    }
}

/// docs/SCHEMA.md, generated from the declarations.
pub fn schema_markdown() -> String {
    let mut s = String::from(
        "# swarmtap output schema\n\n\
         Generated from `src/sink/tables.rs` (a test keeps this file equal to it). \
         Every table is written as `<table>.parquet` by `swarmtap analyze`, always, \
         with its schema even when empty. Timestamps are microseconds, UTC. \
         IP addresses are text. A `?` after a type means the column is nullable.\n",
    );
    for_each_table(|name, doc, cols| {
        s.push_str(&format!("\n## `{name}`\n\n{}\n", doc.trim()));
        s.push_str("\n| column | type | meaning |\n|---|---|---|\n");
        for c in cols {
            s.push_str(&format!("| `{}` | {} | {} |\n", c.name, c.type_doc, c.doc));
        }
    });
    s.push_str(super::SCHEMA_APPENDIX);
    s
}
