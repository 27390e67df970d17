//! Every output table, declared once: row struct, column order, Parquet
//! schema and the text of docs/SCHEMA.md all come from the declarations
//! below (a test keeps docs/SCHEMA.md equal to [`schema_markdown`]).
//! Column names follow CONTRACT.md; additions are documented here.

use std::sync::Arc;

use polars::prelude::*;

use std::borrow::Cow;

use polars_arrow::array::Array;

use super::columns::{ColumnBuilder, ColumnSpec, Ts, I32};
use super::typed::{CidText, CommunityId, ConnTransport, Hex, Ip, IpText, ShortBytes};

/// Documentation of one column.
#[derive(Debug, Clone, Copy)]
pub struct ColumnDoc {
    pub name: &'static str,
    pub type_doc: &'static str,
    pub doc: &'static str,
}

/// The column every table ends with: the `--sensor` name of the run
/// (CONTRACT "sensor"), added by the writer, not carried by the rows.
pub const SENSOR_COLUMN: &str = "sensor";

const SENSOR_DOC: ColumnDoc = ColumnDoc {
    name: SENSOR_COLUMN,
    type_doc: "string",
    doc: "Sensor that saw the row (`--sensor`, default the host name), so that datasets of several sensors merge.",
};

/// A row type of one table.
pub trait Row: Sized + Send + 'static {
    const TABLE: &'static str;
    const DOC: &'static str;
    /// One column builder per column (see [`super::columns::ColumnBuilder`]).
    type Builders: Default + Send;
    /// Every column, `sensor` last.
    fn columns() -> Vec<ColumnDoc>;
    /// The Parquet schema: the row's columns, then `sensor`.
    fn schema() -> Schema;
    /// Appends the row's values to the builders.
    fn push_row(b: &mut Self::Builders, row: &Self);
    /// Rows pushed since the last [`Row::finish_arrays`].
    fn builder_rows(b: &Self::Builders) -> usize;
    /// Heap bytes the builders hold, exactly.
    fn builder_bytes(b: &Self::Builders) -> usize;
    /// The rows pushed so far as one array per column (without `sensor`),
    /// of the types of `fields` (the file's Arrow fields, the row's columns
    /// first); the builders are left empty.
    fn finish_arrays(b: &mut Self::Builders, fields: &[ArrowField]) -> PolarsResult<Vec<Box<dyn Array>>>;
    /// The row's columns (without `sensor`) as a DataFrame.
    fn to_frame(rows: &[Self]) -> PolarsResult<DataFrame> {
        let mut b = Self::Builders::default();
        for r in rows {
            Self::push_row(&mut b, r);
        }
        let fields = super::writer::arrow_fields::<Self>(&Self::schema());
        let arrays = Self::finish_arrays(&mut b, &fields)?;
        let cols = fields
            .iter()
            .zip(arrays)
            .map(|(f, a)| {
                // Names are built dictionary-encoded: their text here.
                let a = match a.dtype() {
                    ArrowDataType::Dictionary(..) => super::columns::names_as_text(&*a)?,
                    _ => a,
                };
                Series::from_arrow(f.name.clone(), a).map(Column::from)
            })
            .collect::<PolarsResult<Vec<_>>>()?;
        DataFrame::new(rows.len(), cols)
    }
}

/// Rows pushed into one table between two checks of the writer's buffer
/// budget (see `TableWriters::push`).
pub const BUDGET_CHECK_ROWS: usize = 1024;

/// The type a column is written with: the field's own, or a marker's.
macro_rules! spec {
    ($ty:ty) => {
        $ty
    };
    ($ty:ty, $w:ty) => {
        $w
    };
}

macro_rules! tables {
    ($(
        $(#[doc = $tdoc:literal])*
        $table:ident => $row:ident {
            $( $col:ident : $ty:ty $(as $w:ty)? = $cdoc:literal ),* $(,)?
        }
    )*) => {
        $(
            $(#[doc = $tdoc])*
            #[derive(Debug, Clone, Default, PartialEq)]
            pub struct $row { $( pub $col: $ty ),* }

            impl Row for $row {
                const TABLE: &'static str = stringify!($table);
                const DOC: &'static str = concat!($($tdoc, "\n"),*);
                type Builders = row_builders::$table;
                fn columns() -> Vec<ColumnDoc> {
                    vec![$( ColumnDoc { name: stringify!($col), type_doc: <spec!($ty $(, $w)?) as ColumnSpec<$ty>>::type_doc(), doc: $cdoc }, )* SENSOR_DOC]
                }
                fn schema() -> Schema {
                    Schema::from_iter([$( Field::new(stringify!($col).into(), <spec!($ty $(, $w)?) as ColumnSpec<$ty>>::dtype()), )*
                        Field::new(SENSOR_COLUMN.into(), DataType::String)])
                }
                #[inline]
                fn push_row(b: &mut Self::Builders, row: &Self) {
                    $( ColumnBuilder::<$ty>::push(&mut b.$col, &row.$col); )*
                    b.n_rows += 1;
                }
                fn builder_rows(b: &Self::Builders) -> usize {
                    b.n_rows
                }
                fn builder_bytes(b: &Self::Builders) -> usize {
                    0 $( + ColumnBuilder::<$ty>::bytes(&b.$col) )*
                }
                fn finish_arrays(b: &mut Self::Builders, fields: &[ArrowField]) -> PolarsResult<Vec<Box<dyn Array>>> {
                    let mut fields = fields.iter();
                    let mut next = || fields.next().map(|f| &f.dtype).ok_or_else(|| PolarsError::ComputeError("fewer fields than columns".into()));
                    let arrays = vec![$( ColumnBuilder::<$ty>::finish(&mut b.$col, stringify!($col), next()?)? ),*];
                    b.n_rows = 0;
                    Ok(arrays)
                }
            }
        )*

        /// Each table's column builders (see [`Row::Builders`]).
        #[doc(hidden)]
        pub mod row_builders {
            use super::*;
            $(
                #[allow(non_camel_case_types)]
                #[derive(Default)]
                pub struct $table {
                    $( pub $col: <spec!($ty $(, $w)?) as ColumnSpec<$ty>>::Builder, )*
                    pub n_rows: usize,
                }
            )*
        }

        /// Rows of every table, as produced by one pipeline step.
        #[derive(Debug, Default)]
        pub struct RowBatch { $( pub $table: Vec<$row> ),* }

        impl RowBatch {
            pub fn is_empty(&self) -> bool { true $( && self.$table.is_empty() )* }
            pub fn len(&self) -> usize { 0 $( + self.$table.len() )* }
            pub fn append(&mut self, other: &mut RowBatch) { $( self.$table.append(&mut other.$table); )* }
            /// Moves `other`'s rows to the end of these, as `append`, and
            /// leaves `other` without buffers: a producer that refills its
            /// batch every step (a shard) does not keep the capacity of its
            /// largest step for the rest of the run.
            pub fn take_from(&mut self, other: &mut RowBatch) { $( move_rows(&mut self.$table, &mut other.$table); )* }
            /// [`RowBatch::take_from`] each of `others` in turn, with each
            /// table reserved once for all of them (appending shard by
            /// shard regrew and copied it up to once per shard).
            pub fn take_all_from(&mut self, others: &mut [&mut RowBatch]) {
                $( take_all_rows(&mut self.$table, &mut others.iter_mut().map(|o| &mut o.$table).collect::<Vec<_>>()); )*
            }
        }

        /// Table names in declaration order.
        pub const TABLE_NAMES: &[&str] = &[$( stringify!($table) ),*];

        /// Calls `f` with each table's name, doc and columns.
        pub fn for_each_table(mut f: impl FnMut(&'static str, &'static str, Vec<ColumnDoc>)) {
            $( f(<$row as Row>::TABLE, <$row as Row>::DOC, <$row as Row>::columns()); )*
        }

        /// Writes `df` as `table`'s Parquet file `path` with the table's
        /// schema ([`super::writer::write_frame`]); false for an unknown table.
        pub fn write_table_frame(table: &str, path: &std::path::Path, df: &DataFrame) -> PolarsResult<bool> {
            match table {
                $( stringify!($table) => super::writer::write_frame::<$row>(path, df).map(|()| true), )*
                _ => Ok(false),
            }
        }

        /// The Parquet schema of `table` (its columns, `sensor` last).
        pub fn table_schema(table: &str) -> Option<Schema> {
            match table {
                $( stringify!($table) => Some(<$row as Row>::schema()), )*
                _ => None,
            }
        }

        /// Per-table writers, generated alongside the tables.
        pub struct TableWriters { $( pub $table: super::writer::TableFile<$row> ),* }

        impl TableWriters {
            pub fn open<W: super::writer::TableSink>(sink: &mut W) -> PolarsResult<Self> {
                Ok(TableWriters { $( $table: sink.open::<$row>()? ),* })
            }
            /// Pushes every row into its table's builders (a table's rows are dropped
            /// once pushed; full row groups are written), keeping the builders
            /// within `budget` bytes: checked every [`BUDGET_CHECK_ROWS`]
            /// rows, so a large batch cannot pass it by more than that.
            pub fn push<W: super::writer::TableSink>(&mut self, sink: &mut W, batch: RowBatch, budget: usize) -> PolarsResult<()> {
                $(
                    for rows in batch.$table.chunks(BUDGET_CHECK_ROWS) {
                        sink.push(&mut self.$table, rows.iter())?;
                        self.enforce_budget(sink, budget)?;
                    }
                    drop(batch.$table);
                )*
                Ok(())
            }
            /// Bytes buffered over all tables: the builders' heap, exactly.
            pub fn buffered_bytes<W: super::writer::TableSink>(&self, sink: &W) -> usize {
                0 $( + sink.buffered_bytes(&self.$table) )*
            }
            /// While the tables together buffer more than `budget` bytes,
            /// writes out the largest buffer as a row group: tables that
            /// fill slowly would otherwise each hold up to a full row group
            /// until the end, and memory would grow with the capture.
            pub fn enforce_budget<W: super::writer::TableSink>(&mut self, sink: &mut W, budget: usize) -> PolarsResult<()> {
                while self.buffered_bytes(sink) > budget {
                    let mut largest = (0usize, "");
                    $( let b = sink.buffered_bytes(&self.$table);
                       if b > largest.0 { largest = (b, stringify!($table)); } )*
                    match largest.1 {
                        "" => break,
                        $( stringify!($table) => sink.flush(&mut self.$table)?, )*
                        _ => break,
                    }
                }
                Ok(())
            }
            /// Writes every buffered row out.
            pub fn flush_all<W: super::writer::TableSink>(&mut self, sink: &mut W) -> PolarsResult<()> {
                $( sink.flush(&mut self.$table)?; )*
                Ok(())
            }
            pub fn finish<W: super::writer::TableSink>(self, sink: &mut W) -> PolarsResult<()> {
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
        capture: Arc<str> = "Input file name the flow started in.",
        proto: &'static str = "tcp or udp.",
        orig_ip: Ip as IpText = "Originator address: the side that sent the first SYN, else the first packet.",
        orig_port: u32 as I32 = "Originator port.",
        resp_ip: Ip as IpText = "Responder address.",
        resp_port: u32 as I32 = "Responder port.",
        community_id: CommunityId as CidText = "Community ID v1 (seed 0) of the 5-tuple: the same value Zeek (`conn.log` community_id), Suricata and Arkime give this flow.",
        first_ts: Ts = "First packet.",
        last_ts: Ts = "Last packet.",
        n_packets: u64 = "Packets in both directions.",
        n_packets_orig: u64 = "Packets from the originator.",
        n_packets_resp: u64 = "Packets from the responder.",
        payload_bytes_orig: u64 = "TCP/UDP payload bytes captured from the originator (retransmissions included).",
        payload_bytes_resp: u64 = "TCP/UDP payload bytes captured from the responder.",
        app: &'static str = "What the flow carries: peer_wire, mse, dht, tracker_http, tracker_udp, utp, lsd, http, other.",
        app_confidence: Option<&'static str> = "BitTorrent apps: certain (the bytes prove it: plaintext handshake, KRPC, BEP 15 exchange, LSD, tracker request), strong (structure both ways plus corroboration: MSE with an endpoint named as a peer in the capture, uTP headers consistent both ways, mid-stream peer wire framed in a run both ways), weak (structure alone; no connection, peer, torrent or audit rows unless --keep-weak). Null for other apps.",
        app_evidence: Option<&'static str> = "Why: what the probe saw, or the look-alike ruled out for other flows (tls, ssh, http, dns, dhcp, ...).",
        midstream: bool = "TCP: no SYN was captured, the flow was picked up mid-connection.",
        gap_bytes: u64 = "TCP: stream bytes never captured (both directions).",
        retrans_bytes: u64 = "TCP: retransmitted payload bytes (both directions).",
        end_reason: &'static str = "fin, rst, idle (expired in packet time), evicted (flow table full, or the flows' memory past --max-memory: least recently active first), end (input ended), reused (a SYN answered by a SYN-ACK started a new connection on the 4-tuple before this one was seen to close), open (live snapshot: still open when the interval was written).",
        n_bad_checksums: u64 = "Packets whose TCP/UDP checksum is wrong (offload patterns of the capturing host excepted, see capture_stats.n_bad_checksums); with --verify-checksums they are dropped (only counted here and there).",
    }

    /// One row per BitTorrent peer-wire connection (TCP or uTP, plain or encrypted).
    connections => ConnectionRow {
        conn_id: u64 = "Connection id (see flows.conn_id; for uTP the frame of the connection's first packet).",
        flow_id: u64 = "conn_id of the TCP/UDP flow carrying the connection.",
        capture: Arc<str> = "Input file name.",
        transport: ConnTransport = "tcp or utp.",
        orig_ip: Ip as IpText = "Originator (connecting side) address.",
        orig_port: u32 as I32 = "Originator port.",
        resp_ip: Ip as IpText = "Responder (accepting side) address.",
        resp_port: u32 as I32 = "Responder port.",
        community_id: CommunityId as CidText = "Community ID v1 (seed 0) of the flow carrying the connection (TCP, or UDP for uTP): joins with Zeek, Suricata and Arkime records.",
        orig_peer_port: Option<u32> as I32 = "The originator's row in `peers` is (info_hash, orig_ip, orig_peer_port): its listen port (BEP 10 `p`, or the endpoint the swarm state merged it into), else its source port; null when the originator has no peers row (no info_hash; or past the bound on connection rows held until the end of the run).",
        resp_peer_port: Option<u32> as I32 = "The responder's row in `peers` is (info_hash, resp_ip, resp_peer_port): the port it accepted on (resp_port), or the endpoint the swarm state merged it into; on a connection picked up mid-stream, the port of the responder's BEP 10 `p` when it sent one (resp_listen_port); null as for orig_peer_port.",
        first_ts: Ts = "First packet.",
        last_ts: Ts = "Last packet.",
        info_hash: Option<[u8; 20]> as Hex = "Info hash (lowercase hex); null when neither seen nor inferred.",
        info_hash_source: Option<&'static str> = "handshake; endpoint: a mid-stream or MSE-encrypted connection attributed by an endpoint known as a listen address of exactly one torrent; address: an encrypted connection one of whose addresses takes part in exactly one torrent.",
        attribution_confidence: &'static str = "How sure info_hash is: exact (a handshake carried it), likely (info_hash_source endpoint: from the endpoint's plaintext sightings in tracker, DHT, PEX, LSD or other connections), weak (info_hash_source address), none (no info_hash).",
        orig_peer_id: Option<[u8; 20]> as Hex = "Originator's peer id (hex).",
        resp_peer_id: Option<[u8; 20]> as Hex = "Responder's peer id (hex).",
        orig_client: Option<String> = "Originator's client, from its peer id, else its BEP 10 `v`.",
        resp_client: Option<String> = "Responder's client.",
        orig_ltep_v: Option<String> = "Originator's BEP 10 `v` string.",
        resp_ltep_v: Option<String> = "Responder's BEP 10 `v` string.",
        orig_listen_port: Option<u32> as I32 = "Originator's listen port from its BEP 10 `p`. The originator's events name it at this port (`orig_peer_port`, its `peers` row) from the connection's start: they are held until its BEP 10 handshake comes. When some went out at its source port first (a connection picked up mid-stream settles at once; the hold bounds `max_held_events`, `max_hold_us` release them), the `p` adds a listen sighting at this port, and the rows at the source port join it (same peer id, or the address's one listen endpoint), as a mid-stream responder's do.",
        resp_listen_port: Option<u32> as I32 = "Responder's listen port from its BEP 10 `p`. On a connection picked up mid-stream (`midstream`) the responder is a guess (the receiver of the first packet seen) and may be the side that connected: its transport port may be ephemeral, and its `p` names its listen endpoint: `resp_peer_port` and its `peers` row take this port. On a connection whose start was seen, `resp_port` is its listen endpoint and this column is only recorded. `swarmtap merge` reads it (docs/MERGE.md, peers 1).",
        orig_extensions: Vec<Cow<'static, str>> = "Extension names in the originator's BEP 10 handshake `m`.",
        resp_extensions: Vec<Cow<'static, str>> = "Extension names in the responder's BEP 10 handshake `m`.",
        encrypted: bool = "The stream is MSE/PE-encrypted (not decodable passively).",
        mse_handshake: bool = "An MSE/PE key exchange opened the stream (true with encrypted = false: it selected plaintext and the rest is decoded).",
        midstream: bool = "Picked up mid-connection (no handshake seen; framing found by hunting).",
        utp_conn_id: Option<u32> as I32 = "uTP only: the connection's id, the lower of its two BEP 29 `connection_id`s (the initiator's SYN announces it; the initiator's later packets carry it + 1); null for TCP or when one side's id was never seen (in a live snapshot of a connection still open: not seen yet). uTP connections share their UDP flow's community_id: `swarmtap merge` tells them apart by it (docs/MERGE.md section 2).",
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
        src_ip: Ip as IpText = "Sender address.",
        src_port: u32 as I32 = "Sender port.",
        dst_ip: Ip as IpText = "Receiver address.",
        dst_port: u32 as I32 = "Receiver port.",
        info_hash: Option<[u8; 20]> as Hex = "Info hash of the connection.",
        msg: &'static str = "handshake, keepalive, choke, unchoke, interested, not_interested, have, bitfield, request, piece, cancel, port, suggest, have_all, have_none, reject, allowed_fast, extended, hash_request, hashes, hash_reject, unknown.",
        ext: Option<Cow<'static, str>> = "For msg=extended: extension name (handshake, ut_metadata, ut_pex, lt_donthave, upload_only, ut_holepunch, …; `id:N` when the name is unknown).",
        piece: Option<u32> = "Piece index (have, request, piece, cancel, reject, suggest, allowed_fast; hash messages: index).",
        begin: Option<u32> = "Offset in the piece (request, piece, cancel, reject).",
        length: Option<u32> = "Block length (request, piece, cancel, reject), or bitfield bytes.",
        wire_len: u64 = "Bytes on the wire, length prefix included.",
    }

    /// One row per change of a peer's known piece set, and per change of what another signal (tracker announce, upload_only, ut_pex seed flag, DHT seed) says of it.
    peer_progress => PeerProgressRow {
        ts: Ts = "Time of the message that changed it.",
        frame: u64 = "Its frame.",
        conn_id: u64 = "Connection it came on.",
        info_hash: [u8; 20] as Hex = "Torrent.",
        peer_ip: Ip as IpText = "Peer address.",
        peer_port: u32 as I32 = "Peer listen port (responder port, or the originator's BEP 10 `p`, or the BEP 10 `p` of either side of a connection picked up mid-stream; else its source port).",
        n_pieces_have: Option<u64> = "Pieces the peer has now (null for have_all while the piece count is unknown).",
        n_pieces: Option<u64> = "Pieces in the torrent when known exactly (.torrent or metadata), else null.",
        cause: &'static str = "Signal, as peers.completion_source: bitfield, have, have_all, have_none, dont_have (the peer's own messages; a row when its piece set changed), tracker_left, tracker_completed, upload_only, pex_seed, dht_seed (claims; a row when that source's word changed, n_pieces_have being what it says). The probe adds no_bitfield.",
        piece: Option<u32> = "Piece index of a have or dont_have row (null for other causes): `swarmtap merge` uses it to tell a piece a later time piece sees announced again (clients send `have` to each peer a little apart) from a new one.",
        bitfield: Option<String> = "The bitfield a bitfield row received, as sent (hex; null for other causes): with `piece`, `swarmtap merge` rebuilds the peer's piece set across time pieces exactly as one run does.",
    }

    /// One row per (info_hash, peer_ip, peer_port).
    peers => PeerRow {
        info_hash: String = "Torrent.",
        peer_ip: String = "Peer address.",
        peer_port: u32 as I32 = "Peer listen port (see peer_progress.peer_port).",
        peer_id: Option<String> = "Last peer id seen (hex).",
        client: Option<String> = "Client name from peer id or BEP 10 `v`.",
        first_ts: Ts = "First seen.",
        last_ts: Ts = "Last seen.",
        first_pieces: Option<u64> = "Pieces it had when first known, fused from every signal (see completion_source).",
        last_pieces: Option<u64> = "Pieces it had when last known, fused from every signal: its own peer-wire messages, and claims (tracker left/completed, upload_only, ut_pex seed flag, BEP 33 seed) that the wire did not contradict later.",
        n_pieces: Option<u64> = "Pieces in the torrent: exact when known, else an estimate from bitfield lengths (torrents.n_pieces_source).",
        completed_ts: Option<Ts> = "First time its piece count reached the threshold (--threshold, default 0.98), by the first signal that showed it.",
        confirmed_download: bool = "Seen below the threshold and later at or above it.",
        completion_source: Option<&'static str> = "Signal that decided last_pieces and completed_ts, fused from every signal (the highest word of each source counts): for a peer that reached the threshold the first to show it there, else the one behind last_pieces. Its own peer-wire messages: bitfield, have, have_all, have_none, dont_have; tracker_left (an announce's left against the torrent's length), tracker_completed (event=completed), upload_only (its BEP 10 upload_only), pex_seed (a ut_pex seed flag another peer gave for it), dht_seed (BEP 33 seed in its DHT announce_peer). `swarmtap probe`: the message of a contact that showed it (bitfield, have, have_all, have_none, no_bitfield). Null with no progress signal.",
        uploaded_bytes: u64 = "Piece block bytes it sent on captured connections.",
        downloaded_bytes: u64 = "Piece block bytes it received on captured connections.",
        max_rate_bps: Option<f64> = "Highest download rate: piece bytes received per tumbling window of --rate-window seconds (default 5) of packet time. The rest of a block cut off by the end of its connection counts in the byte totals, not here (it is known only when the flow ends).",
        max_upload_rate_bps: Option<f64> = "Highest upload rate, same windows.",
        n_connections: u64 = "Captured peer-wire connections it took part in.",
        conn_ids: Vec<u64> = "connections.conn_id of those connections, ascending (the first 1024; n_connections counts them all): `explode` it to join `connections`.",
        sources: Vec<String> = "Where it was seen: wire, tracker, dht, pex, lsd, probe.",
        country: Option<String> = "ISO 3166-1 country code of peer_ip (`--geoip` City or Country database; null without one, and for private addresses).",
        city: Option<String> = "City (English name) from a `--geoip` City database.",
        latitude: Option<f64> = "Approximate latitude from a `--geoip` City database.",
        longitude: Option<f64> = "Approximate longitude from a `--geoip` City database.",
        asn: Option<u64> = "Autonomous system number from a `--geoip` ASN database.",
        as_org: Option<String> = "Autonomous system organisation from a `--geoip` ASN database.",
        prefers_encryption: Option<bool> = "Prefers MSE encryption: its BEP 10 `e` key; else true when a PEX message flagged it so or it opened an MSE-encrypted connection attributed to this torrent, false when PEX flags said otherwise; null when nothing said.",
        utp: Option<bool> = "Seen using uTP: true when a captured connection of it ran over uTP or a PEX message flagged it uTP; false when it was seen only over TCP or flagged without uTP; null when unknown.",
        encrypted_bytes_sent: u64 = "Payload bytes it sent on MSE-encrypted connections attributed to this torrent (connections.attribution_confidence likely or weak): piece data and protocol together, unreadable; an upper bound of what it uploaded there. Those connections also count in n_connections and add `wire` to sources.",
        encrypted_bytes_received: u64 = "Payload bytes it received on such connections.",
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
        private: Option<bool> = "BEP 27 private flag from metadata.",
        n_files: Option<u64> = "Files in the torrent, from metadata.",
        files: Vec<String> = "File paths from metadata (first 1000; see n_files).",
        n_peers_encryption_known: u64 = "Peers whose encryption preference is known (peers.prefers_encryption not null).",
        n_peers_prefer_encryption: u64 = "Of those, peers that prefer encryption.",
        n_peers_utp_known: u64 = "Peers whose transport is known (peers.utp not null).",
        n_peers_utp: u64 = "Of those, peers seen using uTP.",
        n_pieces_verified: u64 = "Whole pieces seen on the wire whose SHA-1 matched (pieces table).",
        n_pieces_failed: u64 = "Whole pieces seen on the wire whose SHA-1 did not match.",
    }

    /// One row per tracker announce request (HTTP or UDP, recognised by content on any port), paired with its response. Rows of requests that were never answered have null response columns.
    tracker_announces => TrackerAnnounceRow {
        ts: Ts = "Request time (the packet completing the request).",
        frame: u64 = "Request frame.",
        capture: String = "Input file name.",
        conn_id: u64 = "Flow carrying the exchange (flows.conn_id).",
        transport: &'static str = "http or udp; https for `swarmtap probe`'s exchanges with https trackers (a tap sees only TLS there).",
        confidence: &'static str = "certain (HTTP; UDP with its connection id seen in a captured connect or answer) or plausible (UDP announce recognised by its structure alone: its connect was not captured).",
        client_ip: String = "Announcing client address (the request's source).",
        client_port: u32 as I32 = "Its source port.",
        tracker_ip: String = "Tracker address.",
        tracker_port: u32 as I32 = "Tracker port.",
        info_hash: Option<String> = "Torrent (null when the request's info_hash is missing or not 20 bytes).",
        peer_id: Option<String> = "Peer id (hex).",
        client: Option<String> = "Client from the peer id.",
        port: Option<u32> as I32 = "Announced listen port.",
        uploaded: Option<u64> = "Reported uploaded bytes (null when absent or negative).",
        downloaded: Option<u64> = "Reported downloaded bytes.",
        left: Option<u64> = "Reported bytes left.",
        event: Option<String> = "started, completed, stopped, paused (BEP 21), another value as sent, or null for a regular announce.",
        numwant: Option<i64> = "Peers wanted (-1: tracker default).",
        key: Option<String> = "The client's `key` (HTTP: as sent; UDP: 8 hex digits).",
        compact: Option<bool> = "HTTP `compact`.",
        no_peer_id: Option<bool> = "HTTP `no_peer_id`.",
        supportcrypto: Option<bool> = "HTTP `supportcrypto`.",
        requirecrypto: Option<bool> = "HTTP `requirecrypto`.",
        corrupt: Option<u64> = "HTTP `corrupt` (bytes that failed the hash check).",
        redundant: Option<u64> = "HTTP `redundant` (bytes received twice).",
        trackerid: Option<String> = "HTTP `trackerid` sent back to the tracker.",
        declared_ip: Option<String> = "Addresses the client declared (HTTP `ip`, `ipv4`, `ipv6`; UDP `ip` when not 0), comma-separated.",
        path: Option<String> = "Request path without the query (UDP: the BEP 41 URLData path). Path segments of 16 characters or more (private trackers' passkeys) are replaced by `*`; the query is never stored, only the parameters in these columns.",
        host: Option<String> = "HTTP Host header.",
        user_agent: Option<String> = "HTTP User-Agent.",
        response_ts: Option<Ts> = "Response time (HTTP: the packet completing the response; close-delimited bodies complete at the connection's end).",
        latency_ms: Option<f64> = "response_ts - ts, milliseconds.",
        status: Option<u32> as I32 = "HTTP status code of the response.",
        interval: Option<i64> = "Announce interval (s).",
        min_interval: Option<i64> = "HTTP `min interval` (s).",
        seeders: Option<i64> = "complete / seeders.",
        leechers: Option<i64> = "incomplete / leechers.",
        completed: Option<i64> = "HTTP `downloaded`: completed downloads the tracker counted.",
        n_peers_returned: Option<u64> = "Peers in the response (HTTP peers + peers6; UDP peers, 6 bytes each over IPv4, 18 over IPv6).",
        n_peers6_returned: Option<u64> = "Of those, IPv6 peers.",
        failure_reason: Option<String> = "HTTP `failure reason`, or a UDP error message.",
        warning: Option<String> = "HTTP `warning message`.",
        tracker_id: Option<String> = "HTTP `tracker id` in the response.",
        external_ip: Option<String> = "HTTP `external ip` (BEP 24): the client's address as the tracker saw it.",
    }

    /// One row per peer returned by a tracker (HTTP compact, peers6 or dictionary model; UDP compact).
    tracker_peers => TrackerPeerRow {
        ts: Ts = "Response time.",
        frame: u64 = "Response frame.",
        capture: String = "Input file name.",
        conn_id: u64 = "Flow carrying the exchange.",
        transport: &'static str = "http or udp; https for `swarmtap probe`'s exchanges with https trackers (a tap sees only TLS there).",
        info_hash: String = "Torrent.",
        tracker_ip: String = "Tracker address.",
        tracker_port: u32 as I32 = "Tracker port.",
        client_ip: String = "Client the list was sent to.",
        peer_ip: String = "Returned peer address (a DNS name when a dictionary-model tracker sent one).",
        peer_port: u32 as I32 = "Returned peer port.",
        peer_id: Option<String> = "Peer id (dictionary model only, hex).",
        format: &'static str = "compact (6-byte), compact6 (18-byte: HTTP peers6, UDP over IPv6) or dict.",
    }

    /// One row per scraped info_hash (HTTP BEP 48 `files`, UDP BEP 15 scrape, the probe's BEP 33 DHT scrape); rows of unanswered scrapes have null counts.
    tracker_scrapes => TrackerScrapeRow {
        ts: Ts = "Response time (request time when unanswered).",
        frame: u64 = "Response frame (request frame when unanswered).",
        capture: String = "Input file name.",
        conn_id: u64 = "Flow carrying the exchange.",
        transport: &'static str = "http or udp; https for `swarmtap probe`'s scrapes of https trackers; dht for `swarmtap probe`'s BEP 33 scrapes (one per DHT lookup, the IPv4 and IPv6 nodes' each: tracker_ip empty, counts estimated from the union of the answers' bloom filters).",
        client_ip: String = "Scraping client.",
        tracker_ip: String = "Tracker address.",
        tracker_port: u32 as I32 = "Tracker port.",
        info_hash: String = "Torrent.",
        request_ts: Option<Ts> = "Request time (null for a response whose request was not captured).",
        answered: bool = "A response was captured.",
        seeders: Option<i64> = "complete (dht: seeds estimated from BFsd).",
        leechers: Option<i64> = "incomplete (dht: downloaders estimated from BFpe).",
        completed: Option<i64> = "downloaded.",
        name: Option<String> = "HTTP `name` (unofficial).",
        failure_reason: Option<String> = "HTTP `failure reason`, or a UDP error message.",
    }

    /// One row per announce series: (tracker, transport, info_hash, client address, peer_id). Compares what the client reported with the piece bytes the capture saw its address send and receive in the same interval (docs/SCHEMA.md, "The announce audit").
    announce_audit => AnnounceAuditRow {
        info_hash: String = "Torrent (the v1 hash when --torrents links a hybrid's two hashes).",
        client_ip: String = "Client address (announce source).",
        peer_id: Option<String> = "Peer id (hex).",
        client: Option<String> = "Client from the peer id.",
        tracker_ip: String = "Tracker address.",
        tracker_port: u32 as I32 = "Tracker port.",
        transport: &'static str = "http or udp.",
        first_ts: Ts = "First announce.",
        last_ts: Ts = "Last announce.",
        n_announces: u64 = "Announces in the series.",
        n_intervals: u64 = "Intervals compared: consecutive announce pairs within one client session (a `started` opens a new session).",
        started_seen: bool = "A `started` announce is in the series.",
        first_uploaded: Option<u64> = "`uploaded` of the first announce.",
        last_uploaded: Option<u64> = "`uploaded` of the last announce.",
        reported_uploaded: Option<u64> = "Reported upload over the compared intervals (sum of increases).",
        observed_uploaded: u64 = "Piece bytes the capture saw the client's address send for this torrent in the same intervals.",
        opaque_sent_bytes: u64 = "Bytes the client's address sent, overlapping the series, on flows whose piece bytes cannot be attributed to a torrent: payload of MSE-encrypted and unrecognised TCP flows, piece bytes of peer-wire connections whose handshake was not captured. An upper bound on piece bytes it may have sent unseen.",
        reported_downloaded: Option<u64> = "Reported download over the compared intervals.",
        observed_downloaded: u64 = "Piece bytes the capture saw the client's address receive for this torrent in the same intervals.",
        opaque_received_bytes: u64 = "Same, received.",
        tolerance_bytes: u64 = "Allowed excess of reported over observed upload: max(10 % of observed + opaque, 2 blocks of 16 KiB per interval).",
        excess_uploaded: Option<i64> = "reported_uploaded - (observed_uploaded + opaque_sent_bytes).",
        max_upload_bps: Option<f64> = "Highest reported upload rate over one interval of 1 s or more.",
        coverage: &'static str = "What the capture saw of this client's peer wire: client (its address took part in this torrent's captured peer wire, or in unattributable flows), swarm (not the client, but the torrent's peer wire), none (no peer wire of the torrent: a tap at the tracker), unknown (the audit's address table was full).",
        flags: Vec<String> = "Audit flags (docs/SCHEMA.md lists them with their reasons).",
        suspicious: bool = "Any flag raised.",
    }

    /// One row per KRPC message (BEP 5; BEP 32, 33, 42, 43, 44, 51 fields).
    dht_messages => DhtMessageRow {
        ts: Ts = "Time.",
        frame: u64 = "Frame.",
        capture: Arc<str> = "Input file name.",
        src_ip: Ip as IpText = "Sender.",
        src_port: u32 as I32 = "Sender port.",
        dst_ip: Ip as IpText = "Receiver.",
        dst_port: u32 as I32 = "Receiver port.",
        tid: ShortBytes as Hex = "Transaction id (hex).",
        kind: &'static str = "query, response, error.",
        method: Option<Cow<'static, str>> = "Query method (ping, find_node, get_peers, announce_peer, get, put, sample_infohashes, else the name sent); on responses and errors, the method of the paired query ('other' for an unknown one).",
        node_id: Option<[u8; 20]> as Hex = "Sender node id (`a.id` / `r.id`, hex).",
        target: Option<[u8; 20]> as Hex = "find_node / get / sample_infohashes target (hex).",
        info_hash: Option<[u8; 20]> as Hex = "get_peers / announce_peer info hash (hex).",
        n_nodes: u64 = "Compact nodes returned (nodes + nodes6).",
        n_nodes6: u64 = "Of which IPv6 (`nodes6`, BEP 32).",
        n_values: u64 = "Peers returned (values).",
        version: Option<Arc<str>> = "Client from the top-level `v` key (two letters + version).",
        version_raw: Option<ShortBytes> as Hex = "`v` as sent (hex).",
        rtt_ms: Option<f64> = "Response time after its query (paired responses and errors).",
        query_frame: Option<u64> = "Frame of the paired query.",
        error_code: Option<i64> = "KRPC error code.",
        error_msg: Option<String> = "KRPC error message (first 256 bytes).",
        read_only: bool = "BEP 43: top-level `ro` = 1.",
        external_ip: Option<Ip> as IpText = "BEP 42: top-level `ip`, the receiver's address as the sender sees it.",
        external_port: Option<u32> as I32 = "Port of `ip`.",
        port: Option<u32> as I32 = "announce_peer `port`.",
        implied_port: Option<bool> = "announce_peer `implied_port` (the peer's port is the UDP source port).",
        seed: Option<bool> = "announce_peer `seed` (BEP 33).",
        name: Option<String> = "Torrent name sent along (`n` / `name`; first 256 bytes).",
        want: Vec<String> = "BEP 32 `want` (n4, n6).",
        scrape: Option<bool> = "BEP 33 `scrape` flag of a get_peers query.",
        scrape_seeds: Option<u64> = "BEP 33: seeds estimated from the `BFsd` bloom filter.",
        scrape_peers: Option<u64> = "BEP 33: downloaders estimated from the `BFpe` bloom filter.",
        bep44_key: Option<String> = "BEP 44 `k` (ed25519 public key, hex).",
        bep44_seq: Option<i64> = "BEP 44 `seq`.",
        n_samples: Option<u64> = "BEP 51: info hashes in `samples`.",
        sample_num: Option<i64> = "BEP 51 `num`: info hashes the node stores.",
        sample_interval: Option<i64> = "BEP 51 `interval` (s).",
        unknown_keys: Vec<String> = "Keys outside BEP 5/32/33/42/43/44/51 (`a.` / `r.` prefix inside the query arguments / response; at most 32 listed).",
        n_unknown_keys: u64 = "Number of unknown keys.",
        n_anomalies: u64 = "Anomalies in this message (details in `anomalies`, layer dht).",
    }

    /// One row per peer learned from the DHT.
    dht_peers => DhtPeerRow {
        ts: Ts = "Time.",
        frame: u64 = "Frame.",
        capture: Arc<str> = "Input file name.",
        info_hash: Option<[u8; 20]> as Hex = "Torrent (null for `values` whose get_peers query was not captured).",
        peer_ip: Ip as IpText = "Peer address.",
        peer_port: u32 as I32 = "Peer port.",
        via: &'static str = "values (get_peers response) or announce_peer.",
        reporter_ip: Ip as IpText = "Node that reported it (for announce_peer: the peer itself).",
        reporter_port: u32 as I32 = "Its UDP port.",
    }

    /// One row per DHT node (node id and address) seen sending or listed in `nodes` / `nodes6`.
    dht_nodes => DhtNodeRow {
        node_id: [u8; 20] as Hex = "Node id (hex).",
        node_ip: Ip as IpText = "Address.",
        node_port: u32 as I32 = "UDP port.",
        first_ts: Ts = "First seen (sending, or listed by another node).",
        last_ts: Ts = "Last seen.",
        n_messages: u64 = "KRPC messages it sent (n_queries + n_responses + n_errors).",
        n_queries: u64 = "Queries it sent.",
        n_responses: u64 = "Responses it sent.",
        n_errors: u64 = "Errors it sent.",
        n_reported: u64 = "Times other nodes listed it in `nodes` / `nodes6`.",
        version: Option<String> = "Client from the last `v` it sent.",
        version_raw: Option<String> = "That `v` (hex).",
        bep42_valid: bool = "BEP 42: its id follows from its address (bare check, see bep42_exempt).",
        bep42_exempt: bool = "BEP 42 does not apply: a local address (10/8, 172.16/12, 192.168/16, 169.254/16, 127/8; IPv6 loopback, fe80::/10, fc00::/7).",
        read_only: bool = "BEP 43: it sent `ro` = 1.",
    }

    /// One row per info hash named in the DHT (get_peers, announce_peer, BEP 51 samples).
    dht_infohashes => DhtInfohashRow {
        info_hash: [u8; 20] as Hex = "Torrent.",
        first_ts: Ts = "First named.",
        last_ts: Ts = "Last named.",
        n_get_peers: u64 = "get_peers queries for it.",
        n_announce_peer: u64 = "announce_peer queries for it.",
        n_values: u64 = "Peers returned for it (values of paired get_peers responses).",
        n_samples: u64 = "Times it appeared in BEP 51 samples.",
        name: Option<String> = "Torrent name sent along with a query, if any.",
    }

    /// One row per peer added or dropped in ut_pex.
    pex_peers => PexPeerRow {
        ts: Ts = "Time.",
        conn_id: u64 = "Connection.",
        info_hash: Option<String> = "Torrent.",
        reporter_ip: String = "Peer that sent the PEX message.",
        peer_ip: String = "Peer added or dropped.",
        peer_port: u32 as I32 = "Its port.",
        action: &'static str = "added or dropped.",
        flags: Vec<String> = "Decoded added.f flags: encryption, seed, utp, holepunch, reachable.",
    }

    /// One row per whole piece seen passing on one connection from one sender, when the torrent's piece hashes are known (--torrents, or metadata rebuilt from ut_metadata: used for pieces whose first block comes 2,048 frames after the one that completed it or later (`metadata_join_frames`), and at once on the connection that carried it when it fits one metadata piece). Pieces cut by a capture gap are not rows.
    pieces => PieceRow {
        ts: Ts = "Time of the packet completing the piece.",
        frame: u64 = "That frame.",
        capture: Arc<str> = "Input file name.",
        conn_id: u64 = "Connection.",
        info_hash: String = "Torrent.",
        piece: u32 = "Piece index.",
        sender_ip: String = "Address that sent the piece.",
        sender_port: u32 as I32 = "Its port on this connection.",
        receiver_ip: String = "Address that received it.",
        receiver_port: u32 as I32 = "Its port on this connection.",
        bytes: u64 = "Piece length.",
        verified: bool = "SHA-1 of the bytes equals the piece hash (false: corrupt or poisoned).",
    }

    /// One row per info hash in a BEP 14 local service discovery announce.
    lsd_announces => LsdAnnounceRow {
        ts: Ts = "Time.",
        frame: u64 = "Frame.",
        capture: String = "Input file name.",
        src_ip: String = "Announcer.",
        src_port: u32 as I32 = "Its UDP source port.",
        dst_ip: String = "Destination (239.192.152.143 or ff15::efc0:988f for multicast).",
        port: Option<u32> as I32 = "Announced listen port (null when missing or invalid).",
        info_hash: String = "Torrent.",
        cookie: Option<String> = "`cookie` header (first 256 bytes).",
        n_infohashes: u64 = "Info hashes in the datagram.",
    }

    /// One row per active contact attempt (`swarmtap probe`).
    probe_visits => ProbeVisitRow {
        ts: Ts = "Start of the attempt.",
        peer_ip: String = "Target address.",
        peer_port: u32 as I32 = "Target port.",
        info_hash: String = "Torrent.",
        transport: &'static str = "tcp or utp.",
        encrypted: bool = "MSE used.",
        success: bool = "Handshake completed.",
        outcome: String = "ok, timeout, refused, reset, handshake_failed, …",
        duration_ms: f64 = "Duration.",
        n_pieces_have: Option<u64> = "Pieces the peer reported (bitfield, have, have_all, have_none; null when it reported none, or have_all while the piece count is unknown).",
        n_msgs: u64 = "Messages received.",
        conn_id: u64 = "Id of this attempt (peer_progress.conn_id of the changes it saw).",
        visit: u64 = "Visit number of this peer (1 = first contact); the attempts of one visit share it.",
        attempt: u32 as I32 = "Attempt within the visit (1-based): a visit falls back to the next crypto mode when the peer drops the previous one.",
        crypto: &'static str = "How the attempt opened the stream: plain (BitTorrent handshake), rc4 (MSE offering RC4), mse-plain (MSE offering plaintext), mse (MSE offering both).",
        mse: bool = "An MSE key exchange completed (encrypted tells whether RC4 was then selected).",
        end_reason: Option<&'static str> = "Why a contact that got past the handshake ended: idle (idle timeout; a peer expected to cross the threshold before --max-contact is held open through silences), crossed (seen below, then at or above the threshold in this contact), closed, reset, msg_cap, time_cap, shutdown.",
        detail: Option<String> = "Error text or protocol detail for failed attempts.",
        peer_id: Option<String> = "Peer id from its handshake (hex).",
        client: Option<String> = "Client from the peer id, else the BEP 10 `v`.",
        n_pieces: Option<u64> = "Pieces in the torrent when known at the time of the attempt.",
        max_gap_ms: Option<f64> = "Longest silence between two messages received (calibrates the idle timeout).",
        incoming: bool = "The peer connected to our listen port (--listen); the peer is identified by its BEP 10 listen port, so a peer contacted both ways is one peer.",
    }

    /// One row per input file (or live interval; n_packets, n_bytes and the drop counts are then the interval's).
    capture_stats => CaptureStatsRow {
        capture: String = "Input file name (- for stdin).",
        first_ts: Option<Ts> = "First frame.",
        last_ts: Option<Ts> = "Last frame.",
        n_packets: u64 = "Frames read (before the BPF filter).",
        n_bytes: u64 = "Sum of original frame lengths.",
        n_decode_errors: u64 = "Frames whose headers could not be decoded.",
        n_truncated: u64 = "Frames cut by the snaplen.",
        truncated_tail: bool = "The file ended inside a record.",
        n_anomalies: u64 = "Rows of `anomalies` with this capture, plus those of its rows the per-kind cap (Limits.max_anomaly_rows_per_kind, 10,000 per layer and kind over the run) left out: without the cap, exactly its rows. A row that sums several events (a table that filled up, malformed blocks, out-of-range times) counts once; its detail gives their number. Rows with an empty capture are in no capture's count: layer sink (written after capture_stats), and run-level rows (a table that filled up, the audit's totals) of a run over several inputs; with one input (and live) those are its capture's.",
        n_dropped: u64 = "Live capture: packets dropped (ours + kernel + interface).",
        n_filtered_out: u64 = "Frames rejected by -f.",
        n_not_ip: u64 = "Non-IP frames (ARP, …).",
        n_other_ip: u64 = "IP frames neither TCP nor UDP.",
        n_fragments: u64 = "IP fragments (not reassembled).",
        n_tcp: u64 = "TCP packets.",
        n_udp: u64 = "UDP packets.",
        interval_start: Option<Ts> = "Live: start of the interval (wall clock); null for files.",
        interval_end: Option<Ts> = "Live: end of the interval (rotation, signal or end of run); null for files.",
        n_dropped_ours: Option<u64> = "Live: packets dropped because the analysis queue was full (the capture thread never waits).",
        n_dropped_kernel: Option<u64> = "Live: packets the kernel dropped (capture buffer full; libpcap ps_drop).",
        n_dropped_ifdrop: Option<u64> = "Live: packets the interface or driver dropped (libpcap ps_ifdrop).",
        n_flows_live: Option<u64> = "Live: flows in the flow table at the interval's end.",
        n_peers_live: Option<u64> = "Live: peers in the swarm state at the interval's end.",
        n_torrents_live: Option<u64> = "Live: torrents in the swarm state at the interval's end.",
        n_dht_nodes_live: Option<u64> = "Live: DHT nodes tracked at the interval's end.",
        n_ts_backwards: u64 = "Frames whose timestamp is earlier than the previous frame's (the flow clock does not go back with them).",
        n_ts_jumps: u64 = "Frames more than Limits.max_clock_jump_us (10 min) after the previous frame: taken as clock steps, not as time that passed (idle expiry does not see them).",
        n_bad_checksums: u64 = "TCP/UDP packets with a wrong checksum. Checksum-offload patterns (0, or the pseudo-header sum) count only from sources whose first packet did not carry one; a source whose first packet did is the capturing host (or one of its namespaces), whose own packets never had their checksum filled in. With --verify-checksums these packets are dropped.",
        n_flows_evicted: u64 = "Flows ended early (flows.end_reason evicted) because the flow table was full (--max-flows) or the flows' accounted memory passed --max-memory: the least recently active first (last packet, then conn_id), the same flows in every run. Each round is an anomaly flow_table_full or flow_memory_full.",
        max_flow_memory: u64 = "Highest memory (bytes) the flows' state and buffers were accounted for, as checked before each batch against --max-memory (default 128 MiB; it may pass it by what one batch adds before eviction brings it under).",
    }

    /// One row per malformed or hostile input event (capped per kind; totals in capture_stats).
    anomalies => AnomalyRow {
        ts: Option<Ts> = "Time.",
        frame: Option<u64> = "Frame of the packet it is about: for what a flow's end finds (idle, closed, end of input, eviction), the flow's last packet; for a swarm conflict, the claim's packet. Null for run-level rows (totals over the run).",
        capture: String = "Input file name; empty for run-level rows of a run over several inputs and for layer sink (see capture_stats.n_anomalies).",
        conn_id: Option<u64> = "Flow/connection, where one applies.",
        layer: &'static str = "capture, decode, tcp, peer_wire, tracker, dht, utp, flow, …",
        kind: String = "What was wrong (snake_case).",
        detail: Option<String> = "Free text.",
    }
}

/// docs/schema.json, generated from the declarations: `{table: [[column,
/// type], ...]}` with the types of docs/SCHEMA.md, for tools (the notebooks
/// build empty tables from it).
pub fn schema_json() -> String {
    let mut s = String::from("{\n");
    let mut first = true;
    for_each_table(|name, _, cols| {
        if !first {
            s.push_str(",\n");
        }
        first = false;
        s.push_str(&format!("  \"{name}\": ["));
        let cols: Vec<String> = cols
            .iter()
            .map(|c| format!("[\"{}\", \"{}\"]", c.name, c.type_doc))
            .collect();
        s.push_str(&cols.join(", "));
        s.push(']');
    });
    s.push_str("\n}\n");
    s
}

/// docs/SCHEMA.md, generated from the declarations.
pub fn schema_markdown() -> String {
    let mut s = String::from(
        "# swarmtap output schema\n\n\
         Generated from `src/sink/tables.rs` (a test keeps this file equal to it). \
         Every table is written as `<table>.parquet` by `swarmtap analyze`, always, \
         with its schema even when empty. Timestamps are microseconds, UTC. \
         IP addresses are text. Types are Arrow's names (see \"Column types in each engine\" \
         for what they are in polars, pandas, DuckDB and Spark); a `?` after a type means \
         the column is nullable, and only those columns are.\n",
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

/// Moves `src`'s items to the end of `dst` and frees `src`'s buffer; into
/// an empty `dst` the buffer itself moves (no copy).
/// [`move_rows`] from each of `srcs` in turn, `dst` reserved once for all.
pub fn take_all_rows<T>(dst: &mut Vec<T>, srcs: &mut [&mut Vec<T>]) {
    let n: usize = srcs.iter().map(|s| s.len()).sum();
    let non_empty = srcs.iter().filter(|s| !s.is_empty()).count();
    if dst.is_empty() && non_empty <= 1 {
        // At most one source: its vector becomes dst's, nothing is copied.
        for s in srcs.iter_mut() {
            move_rows(dst, s);
        }
        return;
    }
    dst.reserve(n);
    for s in srcs.iter_mut() {
        dst.append(s);
        **s = Vec::new();
    }
}

pub fn move_rows<T>(dst: &mut Vec<T>, src: &mut Vec<T>) {
    if dst.is_empty() {
        *dst = std::mem::take(src);
    } else {
        dst.append(src);
        *src = Vec::new();
    }
}
