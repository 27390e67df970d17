//! Connection rows held until the end of the run (see
//! `stage::hold_unattributed`), packed into one byte buffer.
//!
//! A `ConnectionRow` is ~470 bytes in memory plus its strings and
//! extension lists; the stage holds every row of the run (the peers' ports
//! are known only once the swarm state ends), so on bulk-1g 3,689 rows took
//! ~2 MB that grew with the capture. Packed, a row is its values only:
//! integers as LEB128 varints (most counters, ports and ids are small),
//! absent options as a bit, names as an index into a table of the
//! `'static` names seen. Unpacking gives back rows equal to those packed, in
//! the order they were packed (a unit test round-trips every field).

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use crate::sink::{CommunityId, ConnTransport, ConnectionRow, Ip, Ts};

/// Rows packed back to back, in the order they came.
#[derive(Debug, Default)]
pub struct HeldConns {
    buf: Vec<u8>,
    n: usize,
    /// The `capture` names of the rows held (a handful).
    captures: Vec<Arc<str>>,
    /// `'static` names the rows carried (sources, confidences, extension
    /// names known at compile time).
    names: Vec<&'static str>,
}

// Presence and flag bits of a packed row.
const F_UTP: u32 = 1;
const F_CID: u32 = 1 << 1;
const F_ORIG_PEER_PORT: u32 = 1 << 2;
const F_RESP_PEER_PORT: u32 = 1 << 3;
const F_INFO_HASH: u32 = 1 << 4;
const F_SOURCE: u32 = 1 << 5;
const F_ORIG_PEER_ID: u32 = 1 << 6;
const F_RESP_PEER_ID: u32 = 1 << 7;
const F_ORIG_CLIENT: u32 = 1 << 8;
const F_RESP_CLIENT: u32 = 1 << 9;
const F_ORIG_LTEP_V: u32 = 1 << 10;
const F_RESP_LTEP_V: u32 = 1 << 11;
const F_ORIG_LISTEN: u32 = 1 << 12;
const F_RESP_LISTEN: u32 = 1 << 13;
const F_ENCRYPTED: u32 = 1 << 14;
const F_MSE: u32 = 1 << 15;
const F_MIDSTREAM: u32 = 1 << 16;
const F_UTP_CONN_ID: u32 = 1 << 17;

fn put(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// Signed values (a connection's last time minus its first) as zigzag.
fn put_i(buf: &mut Vec<u8>, v: i64) {
    put(buf, ((v << 1) ^ (v >> 63)) as u64);
}

fn put_bytes(buf: &mut Vec<u8>, b: &[u8]) {
    put(buf, b.len() as u64);
    buf.extend_from_slice(b);
}

fn put_ip(buf: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(a) => {
            buf.push(4);
            buf.extend_from_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            buf.push(6);
            buf.extend_from_slice(&a.octets());
        }
    }
}

/// Reads what [`HeldConns::push`] wrote; the buffer is ours, so a short
/// read is a bug, not input.
struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> u8 {
        let v = self.b[self.at];
        self.at += 1;
        v
    }

    fn get(&mut self) -> u64 {
        let mut v = 0u64;
        let mut shift = 0;
        loop {
            let b = self.byte();
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return v;
            }
            shift += 7;
        }
    }

    fn get_u32(&mut self) -> u32 {
        self.get() as u32
    }

    fn get_i(&mut self) -> i64 {
        let v = self.get();
        ((v >> 1) as i64) ^ -((v & 1) as i64)
    }

    fn take(&mut self, n: usize) -> &[u8] {
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        s
    }

    fn id20(&mut self) -> [u8; 20] {
        let mut a = [0u8; 20];
        a.copy_from_slice(self.take(20));
        a
    }

    fn string(&mut self) -> String {
        let n = self.get() as usize;
        String::from_utf8_lossy(self.take(n)).into_owned()
    }

    fn ip(&mut self) -> IpAddr {
        if self.byte() == 4 {
            let mut a = [0u8; 4];
            a.copy_from_slice(self.take(4));
            IpAddr::V4(Ipv4Addr::from(a))
        } else {
            let mut a = [0u8; 16];
            a.copy_from_slice(self.take(16));
            IpAddr::V6(Ipv6Addr::from(a))
        }
    }
}

impl HeldConns {
    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Bytes the packed rows take (for tests and accounting).
    pub fn packed_bytes(&self) -> usize {
        self.buf.len()
    }

    fn name(&mut self, s: &'static str) -> u64 {
        // Names are few (tens): a scan by address, then by text.
        let i = match self
            .names
            .iter()
            .position(|n| std::ptr::eq(*n, s))
            .or_else(|| self.names.iter().position(|n| *n == s))
        {
            Some(i) => i,
            None => {
                self.names.push(s);
                self.names.len() - 1
            }
        };
        i as u64
    }

    fn capture(&mut self, c: &Arc<str>) -> u64 {
        let i = match self
            .captures
            .iter()
            .position(|x| Arc::ptr_eq(x, c))
            .or_else(|| self.captures.iter().position(|x| x == c))
        {
            Some(i) => i,
            None => {
                self.captures.push(c.clone());
                self.captures.len() - 1
            }
        };
        i as u64
    }

    fn put_exts(&mut self, exts: &[Cow<'static, str>]) {
        put(&mut self.buf, exts.len() as u64);
        for e in exts {
            match e {
                Cow::Borrowed(s) => {
                    let i = self.name(s);
                    put(&mut self.buf, i << 1);
                }
                Cow::Owned(s) => {
                    put(&mut self.buf, 1);
                    put_bytes(&mut self.buf, s.as_bytes());
                }
            }
        }
    }

    /// Packs `row` after the rows held so far.
    pub fn push(&mut self, row: ConnectionRow) {
        // Every field named: a column added to the row without a place
        // here does not compile.
        let ConnectionRow {
            conn_id,
            flow_id,
            capture,
            transport,
            orig_ip,
            orig_port,
            resp_ip,
            resp_port,
            community_id,
            orig_peer_port,
            resp_peer_port,
            first_ts,
            last_ts,
            info_hash,
            info_hash_source,
            attribution_confidence,
            orig_peer_id,
            resp_peer_id,
            orig_client,
            resp_client,
            orig_ltep_v,
            resp_ltep_v,
            orig_listen_port,
            resp_listen_port,
            orig_extensions,
            resp_extensions,
            encrypted,
            mse_handshake,
            midstream,
            utp_conn_id,
            piece_bytes_orig,
            piece_bytes_resp,
            payload_bytes_orig,
            payload_bytes_resp,
            n_msgs_orig,
            n_msgs_resp,
            gap_bytes,
            unframed_bytes,
            n_resyncs,
        } = row;
        let bit = |on: bool, f: u32| if on { f } else { 0 };
        let flags = bit(transport == ConnTransport::Utp, F_UTP)
            | bit(community_id.0.is_some(), F_CID)
            | bit(orig_peer_port.is_some(), F_ORIG_PEER_PORT)
            | bit(resp_peer_port.is_some(), F_RESP_PEER_PORT)
            | bit(info_hash.is_some(), F_INFO_HASH)
            | bit(info_hash_source.is_some(), F_SOURCE)
            | bit(orig_peer_id.is_some(), F_ORIG_PEER_ID)
            | bit(resp_peer_id.is_some(), F_RESP_PEER_ID)
            | bit(orig_client.is_some(), F_ORIG_CLIENT)
            | bit(resp_client.is_some(), F_RESP_CLIENT)
            | bit(orig_ltep_v.is_some(), F_ORIG_LTEP_V)
            | bit(resp_ltep_v.is_some(), F_RESP_LTEP_V)
            | bit(orig_listen_port.is_some(), F_ORIG_LISTEN)
            | bit(resp_listen_port.is_some(), F_RESP_LISTEN)
            | bit(encrypted, F_ENCRYPTED)
            | bit(mse_handshake, F_MSE)
            | bit(midstream, F_MIDSTREAM)
            | bit(utp_conn_id.is_some(), F_UTP_CONN_ID);
        let cap = self.capture(&capture);
        let conf = self.name(attribution_confidence);
        let source = info_hash_source.map(|s| self.name(s));
        let b = &mut self.buf;
        put(b, u64::from(flags));
        put(b, conn_id);
        put(b, flow_id);
        put(b, cap);
        put_ip(b, orig_ip.0);
        put(b, u64::from(orig_port));
        put_ip(b, resp_ip.0);
        put(b, u64::from(resp_port));
        if let Some(c) = community_id.0 {
            b.extend_from_slice(&c);
        }
        for p in [orig_peer_port, resp_peer_port].into_iter().flatten() {
            put(b, u64::from(p));
        }
        put_i(b, first_ts.0);
        put_i(b, last_ts.0.wrapping_sub(first_ts.0));
        if let Some(h) = info_hash {
            b.extend_from_slice(&h);
        }
        if let Some(s) = source {
            put(b, s);
        }
        put(b, conf);
        for id in [orig_peer_id, resp_peer_id].into_iter().flatten() {
            b.extend_from_slice(&id);
        }
        for s in [&orig_client, &resp_client, &orig_ltep_v, &resp_ltep_v]
            .into_iter()
            .flatten()
        {
            put_bytes(b, s.as_bytes());
        }
        for p in [orig_listen_port, resp_listen_port, utp_conn_id].into_iter().flatten() {
            put(b, u64::from(p));
        }
        for v in [
            piece_bytes_orig,
            piece_bytes_resp,
            payload_bytes_orig,
            payload_bytes_resp,
            n_msgs_orig,
            n_msgs_resp,
            gap_bytes,
            unframed_bytes,
            n_resyncs,
        ] {
            put(b, v);
        }
        self.put_exts(&orig_extensions);
        self.put_exts(&resp_extensions);
        self.n += 1;
    }

    /// Every held row, in the order packed; the store is left empty.
    pub fn take_all(&mut self) -> Vec<ConnectionRow> {
        let buf = std::mem::take(&mut self.buf);
        let mut rows = Vec::with_capacity(self.n);
        let mut r = Reader { b: &buf, at: 0 };
        while r.at < buf.len() {
            rows.push(self.read(&mut r));
        }
        self.n = 0;
        // Nothing refers to the capture names now: a live run, which takes
        // the rows at every rotation, does not collect one per input file.
        self.captures.clear();
        rows
    }

    fn read(&self, r: &mut Reader<'_>) -> ConnectionRow {
        let flags = r.get_u32();
        let has = |f: u32| flags & f != 0;
        let conn_id = r.get();
        let flow_id = r.get();
        let capture = self.captures[r.get() as usize].clone();
        let orig_ip = Ip(r.ip());
        let orig_port = r.get_u32();
        let resp_ip = Ip(r.ip());
        let resp_port = r.get_u32();
        let community_id = CommunityId(has(F_CID).then(|| r.id20()));
        let orig_peer_port = has(F_ORIG_PEER_PORT).then(|| r.get_u32());
        let resp_peer_port = has(F_RESP_PEER_PORT).then(|| r.get_u32());
        let first = r.get_i();
        let last = first.wrapping_add(r.get_i());
        let info_hash = has(F_INFO_HASH).then(|| r.id20());
        let info_hash_source = has(F_SOURCE).then(|| self.names[r.get() as usize]);
        let attribution_confidence = self.names[r.get() as usize];
        let orig_peer_id = has(F_ORIG_PEER_ID).then(|| r.id20());
        let resp_peer_id = has(F_RESP_PEER_ID).then(|| r.id20());
        let orig_client = has(F_ORIG_CLIENT).then(|| r.string());
        let resp_client = has(F_RESP_CLIENT).then(|| r.string());
        let orig_ltep_v = has(F_ORIG_LTEP_V).then(|| r.string());
        let resp_ltep_v = has(F_RESP_LTEP_V).then(|| r.string());
        let orig_listen_port = has(F_ORIG_LISTEN).then(|| r.get_u32());
        let resp_listen_port = has(F_RESP_LISTEN).then(|| r.get_u32());
        let utp_conn_id = has(F_UTP_CONN_ID).then(|| r.get_u32());
        let mut c = [0u64; 9];
        for v in c.iter_mut() {
            *v = r.get();
        }
        let orig_extensions = self.read_exts(r);
        let resp_extensions = self.read_exts(r);
        ConnectionRow {
            conn_id,
            flow_id,
            capture,
            transport: if has(F_UTP) {
                ConnTransport::Utp
            } else {
                ConnTransport::Tcp
            },
            orig_ip,
            orig_port,
            resp_ip,
            resp_port,
            community_id,
            orig_peer_port,
            resp_peer_port,
            first_ts: Ts(first),
            last_ts: Ts(last),
            info_hash,
            info_hash_source,
            attribution_confidence,
            orig_peer_id,
            resp_peer_id,
            orig_client,
            resp_client,
            orig_ltep_v,
            resp_ltep_v,
            orig_listen_port,
            resp_listen_port,
            orig_extensions,
            resp_extensions,
            encrypted: has(F_ENCRYPTED),
            mse_handshake: has(F_MSE),
            midstream: has(F_MIDSTREAM),
            utp_conn_id,
            piece_bytes_orig: c[0],
            piece_bytes_resp: c[1],
            payload_bytes_orig: c[2],
            payload_bytes_resp: c[3],
            n_msgs_orig: c[4],
            n_msgs_resp: c[5],
            gap_bytes: c[6],
            unframed_bytes: c[7],
            n_resyncs: c[8],
        }
    }

    fn read_exts(&self, r: &mut Reader<'_>) -> Vec<Cow<'static, str>> {
        let n = r.get() as usize;
        (0..n)
            .map(|_| match r.get() {
                1 => Cow::Owned(r.string()),
                i => Cow::Borrowed(self.names[(i >> 1) as usize]),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full_row() -> ConnectionRow {
        ConnectionRow {
            conn_id: (3u64 << 40) | 123_456_789,
            flow_id: 98_765,
            capture: Arc::from("b.pcap"),
            transport: ConnTransport::Utp,
            orig_ip: Ip("2001:db8::7".parse().unwrap()),
            orig_port: 51_413,
            resp_ip: Ip("10.1.2.3".parse().unwrap()),
            resp_port: 6881,
            community_id: CommunityId(Some([0xab; 20])),
            orig_peer_port: Some(51_413),
            resp_peer_port: Some(u32::MAX),
            first_ts: Ts(1_700_000_000_123_456),
            last_ts: Ts(1_699_999_999_000_000),
            info_hash: Some([1; 20]),
            info_hash_source: Some("endpoint"),
            attribution_confidence: "likely",
            orig_peer_id: Some([2; 20]),
            resp_peer_id: Some([3; 20]),
            orig_client: Some("qBittorrent 4.6.2".into()),
            resp_client: Some(String::new()),
            orig_ltep_v: Some("qBittorrent/4.6.2 é".into()),
            resp_ltep_v: Some("Transmission 4.0".into()),
            orig_listen_port: Some(0),
            resp_listen_port: Some(65_535),
            orig_extensions: vec![
                Cow::Borrowed("ut_pex"),
                Cow::Owned("x_custom".into()),
                Cow::Borrowed("ut_metadata"),
            ],
            resp_extensions: vec![Cow::Borrowed("ut_metadata")],
            encrypted: true,
            mse_handshake: true,
            midstream: true,
            utp_conn_id: Some(u32::MAX),
            piece_bytes_orig: u64::MAX,
            piece_bytes_resp: 1,
            payload_bytes_orig: 1 << 40,
            payload_bytes_resp: 127,
            n_msgs_orig: 128,
            n_msgs_resp: 16_384,
            gap_bytes: 0,
            unframed_bytes: 300,
            n_resyncs: 7,
        }
    }

    /// Every field of a full row, of a default row, and of a row with
    /// every option absent comes back equal, in the order pushed; a row
    /// packs to a fraction of its in-memory size.
    #[test]
    fn rows_come_back_equal_in_order() {
        let full = full_row();
        let mut second = ConnectionRow {
            capture: Arc::from("a.pcap"),
            first_ts: Ts(i64::MIN),
            last_ts: Ts(i64::MAX),
            attribution_confidence: "none",
            ..ConnectionRow::default()
        };
        second.conn_id = 1;
        let rows = vec![full.clone(), ConnectionRow::default(), second, full];
        let mut h = HeldConns::default();
        for r in rows.clone() {
            h.push(r);
        }
        assert_eq!(h.len(), 4);
        let packed = h.packed_bytes();
        let back = h.take_all();
        assert_eq!(back, rows);
        assert!(h.is_empty());
        assert_eq!(h.take_all(), Vec::<ConnectionRow>::new());
        // The full row: 18 varint/flag fields, 5 ids of 20 bytes, 4 strings,
        // 3 extension names: well under a third of the struct.
        assert!(
            packed < 2 * std::mem::size_of::<ConnectionRow>(),
            "{packed} bytes for 4 rows"
        );
        // Packing again after a take starts afresh.
        assert!(h.captures.is_empty());
        h.push(rows[2].clone());
        h.push(rows[0].clone());
        assert_eq!(h.take_all(), vec![rows[2].clone(), rows[0].clone()]);
    }
}
