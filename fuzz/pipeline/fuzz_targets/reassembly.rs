//! TCP and uTP reassembly checked against a model: an obviously-correct map
//! from stream position to the first copy of each byte (TCP) or packet (uTP)
//! that the reassembler accepted.
//!
//! The reassembler decides *when* to give up a hole (buffer full, receiver
//! acknowledged past it, FIN, flush); the model checks everything else,
//! after every call, for the same segment sequence:
//!
//! - every delivered byte (packet) is the model's first copy at that
//!   position: nothing invented, reordered or overwritten by a later copy;
//! - a gap covers only positions the model never received: nothing that
//!   arrived is skipped;
//! - nothing deliverable is sat on: the model holds nothing at the next
//!   position once a call returns;
//! - what the reassembler buffers is exactly what the model holds beyond
//!   the delivery point, within the limits; after a flush, nothing;
//! - a gap given up while a segment is placed is justified: by an ACK that
//!   covers it, or by limits that the segment would otherwise break (TCP);
//!   by a counted buffer skip, ACK skip, sequence jump or close (uTP);
//! - the counters add up to the stream position.
//!
//! Input: the first byte picks TCP or uTP and the limits (small ones make
//! overflow common), then operations, each an opcode followed by its fields.
#![no_main]
use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use swarmtap::flow::reassembly::{ReassemblyLimits, StreamReassembler};
use swarmtap::flow::utp_stream::{CloseReason, Side, UtpEvent, UtpLimits, UtpTracker};
use swarmtap::flow::Chunk;
use swarmtap::proto::utp::parse_utp;

/// Reads the fuzzer's bytes as fields; running out ends the input.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes([self.u8()?, self.u8()?]))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes([self.u8()?, self.u8()?, self.u8()?, self.u8()?]))
    }

    /// A payload of the length byte's size (shorter at the end of input).
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = usize::from(self.u8()?).min(self.0.len());
        let (b, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(b)
    }
}

/// What the reassembler handed out, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Data(Vec<u8>),
    Gap(u64),
}

fn own(c: Chunk<'_>) -> Ev {
    match c {
        Chunk::Data(d) => Ev::Data(d.to_vec()),
        Chunk::Gap(n) => Ev::Gap(n),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let Some(ctl) = input.u8() else { return };
    if ctl & 1 == 0 {
        tcp(ctl >> 1, input);
    } else {
        utp(ctl >> 1, input);
    }
});

// ---------------------------------------------------------------- TCP ----

/// The TCP model: RFC 9293 sequence arithmetic and a byte map.
struct TcpModel {
    started: bool,
    /// Sequence number of stream position 0 (mod 2^32).
    base: u32,
    /// Stream position of the next byte to hand out.
    pos: u64,
    /// First copy of every accepted byte not yet handed out.
    bytes: BTreeMap<u64, u8>,
    /// Highest acknowledged position (an upper bound: the reassembler also
    /// clamps it to the FIN).
    acked: u64,
    max_ahead: u64,
}

impl TcpModel {
    /// Signed distance of `seq` from the next expected sequence number.
    fn rel(&self, seq: u32) -> i64 {
        i64::from(seq.wrapping_sub(self.base.wrapping_add(self.pos as u32)) as i32)
    }

    /// Records a segment's new bytes; returns how many bytes and runs of
    /// bytes it adds beyond the delivery point (what holding it would cost)
    /// and whether it lands ahead of the next position.
    fn segment(&mut self, seq: u32, payload: &[u8]) -> (u64, u64, bool) {
        if payload.is_empty() {
            return (0, 0, false);
        }
        if !self.started {
            self.started = true;
            self.base = seq.wrapping_sub(self.pos as u32);
            self.acked = self.pos;
        }
        let start = self.pos as i128 + i128::from(self.rel(seq));
        let end = start + payload.len() as i128;
        let fresh = start.max(self.pos as i128);
        if end <= fresh || (end - self.pos as i128) as u64 > self.max_ahead {
            // Old, or beyond any window TCP can advertise: dropped whole.
            return (0, 0, false);
        }
        let (mut new_bytes, mut runs, mut in_run) = (0, 0, false);
        for o in fresh..end {
            let o = o as u64;
            let b = payload[(o as i128 - start) as usize];
            let new = !self.bytes.contains_key(&o);
            if new {
                self.bytes.insert(o, b);
                new_bytes += 1;
                if !in_run {
                    runs += 1;
                }
            }
            in_run = new;
        }
        (new_bytes, runs, start > self.pos as i128)
    }

    fn ack(&mut self, ack: u32) {
        if !self.started {
            return;
        }
        let rel = self.rel(ack);
        if rel > 0 && rel.unsigned_abs() <= self.max_ahead {
            self.acked = self.acked.max(self.pos + rel.unsigned_abs());
        }
    }

    fn start_at(&mut self, seq: u32) {
        if self.started {
            // Held data is discarded by a restart.
            self.bytes.clear();
        }
        self.started = true;
        self.base = seq.wrapping_sub(self.pos as u32);
        self.acked = self.pos;
    }

    /// Checks one call's output; `justify` says whether gaps must be
    /// explained by the ACK (segment and ack calls without overflow).
    fn check(&mut self, evs: &[Ev], gaps_need_ack: bool) {
        for e in evs {
            match e {
                Ev::Data(d) => {
                    assert!(!d.is_empty(), "empty data chunk");
                    for (i, b) in d.iter().enumerate() {
                        let o = self.pos + i as u64;
                        assert_eq!(self.bytes.get(&o), Some(b), "byte at {o} is not the first copy");
                    }
                    self.pos += d.len() as u64;
                }
                Ev::Gap(n) => {
                    assert!(*n > 0, "empty gap");
                    let end = self.pos.saturating_add(*n);
                    assert!(
                        self.bytes.range(self.pos..end).next().is_none(),
                        "gap [{}, {end}) skips received bytes",
                        self.pos
                    );
                    if gaps_need_ack {
                        assert!(end <= self.acked, "gap to {end} beyond the ACK {}", self.acked);
                    }
                    self.pos = end;
                }
            }
        }
        self.bytes = self.bytes.split_off(&self.pos);
        assert!(
            !self.bytes.contains_key(&self.pos),
            "deliverable byte at {} held back",
            self.pos
        );
    }
}

fn tcp(ctl: u8, mut input: Input<'_>) {
    let limits = ReassemblyLimits {
        max_ooo_bytes: [24, 600, 1 << 20][usize::from(ctl % 3)],
        max_ooo_segments: [2, 8, 1024][usize::from(ctl / 3 % 3)],
        max_ahead_bytes: [700, 1 << 30, 1 << 31][usize::from(ctl / 9 % 3)],
    };
    let Some(isn) = input.u32() else { return };
    let mut r = StreamReassembler::new(limits);
    let mut m = TcpModel {
        started: false,
        base: 0,
        pos: 0,
        bytes: BTreeMap::new(),
        acked: 0,
        max_ahead: u64::from(limits.max_ahead_bytes),
    };
    let mut evs = Vec::new();
    // Sequence numbers near the ISN (16-bit offsets) so that segments
    // overlap and fill holes; opcode 6 reaches anywhere in the space.
    let near = |off: u16| isn.wrapping_add(u32::from(off)).wrapping_sub(0x1000);
    while let Some(op) = input.u8() {
        evs.clear();
        let before = r.stats().clone();
        let held_bytes = u64::from(r.buffered_bytes());
        let held_segs = u64::from(r.buffered_segments());
        let mut out = |c: Chunk<'_>| evs.push(own(c));
        let mut gaps_need_ack = true;
        let mut flushed = false;
        match op % 8 {
            0..=2 | 6 => {
                let Some(seq) = (if op % 8 == 6 {
                    input.u32()
                } else {
                    input.u16().map(near)
                }) else {
                    break;
                };
                let Some(payload) = input.bytes() else { break };
                let (new_bytes, new_runs, ahead) = m.segment(seq, payload);
                r.segment(seq, payload, &mut out);
                if r.stats().n_overflow_gaps > before.n_overflow_gaps {
                    assert!(ahead, "overflow gap for a segment at the delivery point");
                    assert!(
                        held_bytes + new_bytes > u64::from(limits.max_ooo_bytes)
                            || held_segs + new_runs > u64::from(limits.max_ooo_segments),
                        "overflow gap while {held_bytes} + {new_bytes} bytes, {held_segs} + {new_runs} pieces fit"
                    );
                    gaps_need_ack = false;
                }
            }
            3 | 7 => {
                let Some(ack) = input.u16().map(near) else { break };
                m.ack(ack);
                r.acked(ack, &mut out);
            }
            4 => {
                let Some(seq) = input.u16().map(near) else { break };
                if !m.started {
                    m.start_at(seq);
                }
                r.fin(seq, &mut out);
                flushed = true;
            }
            _ => {
                if op & 0x80 == 0 {
                    r.flush(&mut out);
                    flushed = true;
                } else {
                    let Some(seq) = input.u16().map(near) else { break };
                    m.start_at(seq);
                    r.start_at(seq);
                }
            }
        }
        m.check(&evs, gaps_need_ack && !flushed);
        if flushed {
            assert!(m.bytes.is_empty(), "flush left {} bytes held", m.bytes.len());
        }
        let s = r.stats();
        assert_eq!(r.stream_offset(), m.pos);
        assert_eq!(s.bytes_delivered + s.gap_bytes, m.pos);
        assert_eq!(
            u64::from(r.buffered_bytes()),
            m.bytes.len() as u64,
            "held bytes differ from the model"
        );
        assert!(r.buffered_bytes() <= limits.max_ooo_bytes);
        assert!(r.buffered_segments() <= limits.max_ooo_segments);
        assert_eq!(r.is_started(), m.started);
    }
    evs.clear();
    r.flush(&mut |c| evs.push(own(c)));
    m.check(&evs, false);
    assert!(m.bytes.is_empty());
    assert_eq!(r.buffered_bytes(), 0);
}

// ---------------------------------------------------------------- uTP ----

const SEQ_HALF: u16 = 0x8000;

/// The model of one direction of one uTP connection: packets by position
/// (sequence numbers unwrapped from the delivery point).
#[derive(Default)]
struct UtpDir {
    /// Sequence number of position 0, once the direction has started.
    base: Option<u16>,
    pos: u64,
    /// First copy of every accepted packet not yet handed out.
    pkts: BTreeMap<u64, Vec<u8>>,
    /// Position of the FIN (`eof_pkt`): nothing at or after it is data.
    eof: Option<u64>,
    /// A FIN carried data: where the stream ends then depends on how far
    /// delivery got inside that very call, which the model does not follow,
    /// so the checks that need the end are skipped for this direction.
    eof_unknown: bool,
}

impl UtpDir {
    /// Forward distance of `seq` from the next expected one.
    fn off(&self, seq: u16) -> Option<u16> {
        let base = self.base?;
        Some(seq.wrapping_sub(base.wrapping_add(self.pos as u16)))
    }

    fn start(&mut self, seq: u16) {
        if self.base.is_none() {
            self.base = Some(seq.wrapping_sub(self.pos as u16));
        }
    }

    fn data(&mut self, seq: u16, payload: &[u8]) {
        if payload.is_empty() {
            return;
        }
        self.start(seq);
        let Some(off) = self.off(seq) else { return };
        if off >= SEQ_HALF {
            return; // behind: a retransmission
        }
        let p = self.pos + u64::from(off);
        if self.eof.is_some_and(|e| p >= e) {
            return;
        }
        self.pkts.entry(p).or_insert_with(|| payload.to_vec());
    }

    fn fin(&mut self, seq: u16, max_seq_ahead: u16) {
        self.start(seq);
        if self.eof.is_some() || self.eof_unknown {
            return;
        }
        let Some(off) = self.off(seq) else { return };
        if off >= SEQ_HALF || off > max_seq_ahead {
            return;
        }
        let e = self.pos + u64::from(off);
        self.eof = Some(e);
        self.pkts.split_off(&e);
    }

    fn gap(&mut self, lost: u32, bytes: u64) {
        assert!(lost > 0 && bytes > 0, "empty gap");
        let end = self.pos + u64::from(lost);
        assert!(
            self.pkts.range(self.pos..end).next().is_none(),
            "gap [{}, {end}) skips received packets",
            self.pos
        );
        if let (Some(e), false) = (self.eof, self.eof_unknown) {
            assert!(end <= e, "gap past the FIN");
        }
        self.pos = end;
    }

    fn delivered(&mut self, d: &[u8]) {
        let first = self.pkts.remove(&self.pos);
        assert_eq!(
            first.as_deref(),
            Some(d),
            "packet at {} is not the first copy",
            self.pos
        );
        if let (Some(e), false) = (self.eof, self.eof_unknown) {
            assert!(self.pos < e, "data at or after the FIN");
        }
        self.pos += 1;
    }

    /// After every call: nothing deliverable is held back.
    fn settled(&self) {
        if self.base.is_some() && !self.eof_unknown && self.eof.is_none_or(|e| self.pos < e) {
            assert!(
                !self.pkts.contains_key(&self.pos),
                "deliverable packet at {} held back",
                self.pos
            );
        }
    }

    /// After the connection closed: everything delivered, up to the FIN.
    fn drained(&self) {
        if self.eof_unknown {
            return;
        }
        assert!(self.pkts.is_empty(), "closed with {} packets held", self.pkts.len());
        if let Some(e) = self.eof {
            assert_eq!(self.pos, e, "closed before the FIN");
        }
    }

    fn held_bytes(&self) -> usize {
        self.pkts.values().map(Vec::len).sum()
    }
}

/// An owned tracker event.
enum UEv {
    Data(Side, Vec<u8>),
    Gap(Side, u32, u64),
    Closed(CloseReason),
    Other,
}

/// Collects the tracker's events; there is only ever connection 0.
fn collector(evs: &mut Vec<UEv>) -> impl FnMut(UtpEvent<'_>) + '_ {
    move |e: UtpEvent<'_>| {
        let (conn, ev) = match e {
            UtpEvent::Data {
                conn,
                from,
                chunk: Chunk::Data(d),
                lost_pkts,
            } => {
                assert_eq!(lost_pkts, 0);
                (conn, UEv::Data(from, d.to_vec()))
            }
            UtpEvent::Data {
                conn,
                from,
                chunk: Chunk::Gap(n),
                lost_pkts,
            } => (conn, UEv::Gap(from, lost_pkts, n)),
            UtpEvent::Closed { conn, reason, .. } => (conn, UEv::Closed(reason)),
            UtpEvent::Opened { conn, .. } | UtpEvent::Roles { conn, .. } => (conn, UEv::Other),
        };
        assert_eq!(conn, 0, "a second connection");
        evs.push(ev);
    }
}

fn utp(ctl: u8, mut input: Input<'_>) {
    let limits = UtpLimits {
        max_ooo_pkts_per_dir: [2, 16, 256][usize::from(ctl % 3)],
        max_ooo_bytes_per_dir: [300, 4096, 256 << 10][usize::from(ctl / 3 % 3)],
        max_ooo_bytes_per_flow: [400, 512 << 10][usize::from(ctl / 9 % 2)],
        max_seq_ahead: [8, 1024][usize::from(ctl / 18 % 2)],
        ..UtpLimits::default()
    };
    let (Some(id), Some(syn_seq)) = (input.u16(), input.u16()) else {
        return;
    };
    let mut t = UtpTracker::new(limits);
    let mut dirs = [UtpDir::default(), UtpDir::default()];
    let idx = |s: Side| usize::from(s == Side::B);
    let mut evs: Vec<UEv> = Vec::new();
    // The initiator (side A) sends the SYN with id X and then uses X+1; the
    // acceptor (side B) uses X (BEP 29).
    let syn = header(0x4, id, syn_seq, 0, &[]);
    let p = parse_utp(&syn).expect("our SYN parses");
    t.packet(0, true, &p, &mut collector(&mut evs));
    dirs[0].base = Some(syn_seq.wrapping_add(1));
    let mut closed = false;
    let mut ts = 0i64;
    while let Some(op) = input.u8() {
        let from = if op & 0x10 == 0 { Side::A } else { Side::B };
        let kind = op % 8;
        let Some(seq_off) = input.u16() else { break };
        let Some(ack_off) = input.u16() else { break };
        let payload = if kind <= 3 || kind == 5 {
            input.bytes()
        } else {
            Some(&[][..])
        };
        let Some(payload) = payload else { break };
        let d = &mut dirs[idx(from)];
        // Sequence numbers relative to where the direction started (the
        // SYN's for A, the first packet's for B), so that packets overlap.
        let base = d.base.unwrap_or(syn_seq ^ 0x5555);
        let seq = base.wrapping_add(seq_off);
        let other = &dirs[idx(from.other())];
        let ack = other.base.unwrap_or(syn_seq).wrapping_add(ack_off);
        let ty = match kind {
            0..=3 => 0x0, // ST_DATA
            4 => 0x2,     // ST_STATE
            5 | 6 => 0x1, // ST_FIN, with or without data
            _ => 0x3,     // ST_RESET
        };
        let send_id = if from == Side::A { id.wrapping_add(1) } else { id };
        let dgram = header(ty, send_id, seq, ack, payload);
        let p = parse_utp(&dgram).expect("our packets parse");
        if !closed {
            let d = &mut dirs[idx(from)];
            match ty {
                0x0 => d.data(seq, payload),
                0x2 => d.start(seq),
                0x1 if payload.is_empty() => d.fin(seq, limits.max_seq_ahead),
                0x1 => {
                    // A copy of the FIN that already ended the stream is
                    // dropped whole (its data was delivered before the end).
                    let again = matches!((d.base, d.eof), (Some(b), Some(e)) if b.wrapping_add(e as u16) == seq.wrapping_add(1));
                    if !again {
                        d.data(seq, payload);
                        d.start(seq);
                        if d.eof.is_none() {
                            d.eof_unknown = true;
                        }
                    }
                }
                _ => {}
            }
        }
        let stats_before = *t.stats();
        evs.clear();
        ts += 1000;
        t.packet(ts, from == Side::A, &p, &mut collector(&mut evs));
        if closed {
            assert!(evs.is_empty(), "events after the connection closed");
            continue;
        }
        let s = t.stats();
        let skips = (s.buffer_skips + s.acked_skips + s.seq_jumps)
            - (stats_before.buffer_skips + stats_before.acked_skips + stats_before.seq_jumps);
        let closes_now = evs.iter().any(|e| matches!(e, UEv::Closed(_)));
        let mut any_gap = false;
        for e in &evs {
            match e {
                UEv::Data(s, d) => dirs[idx(*s)].delivered(d),
                UEv::Gap(s, lost, n) => {
                    any_gap = true;
                    dirs[idx(*s)].gap(*lost, *n);
                }
                UEv::Closed(reason) => {
                    closed = true;
                    dirs.iter().for_each(UtpDir::drained);
                    if *reason == CloseReason::Fin {
                        assert!(dirs.iter().all(|d| d.eof_unknown || d.eof == Some(d.pos)));
                    }
                }
                UEv::Other => {}
            }
        }
        if any_gap {
            assert!(skips > 0 || closes_now, "a gap without a skip, a jump or a close");
        }
        dirs.iter().for_each(UtpDir::settled);
        if !closed && !dirs.iter().any(|d| d.eof_unknown) {
            let model: usize = dirs.iter().map(UtpDir::held_bytes).sum();
            assert_eq!(t.buffered_bytes(), model, "held bytes differ from the model");
        }
        assert!(t.buffered_bytes() <= limits.max_ooo_bytes_per_flow);
    }
    evs.clear();
    t.flush(&mut collector(&mut evs));
    for e in &evs {
        match e {
            UEv::Data(s, d) => dirs[idx(*s)].delivered(d),
            UEv::Gap(s, lost, n) => dirs[idx(*s)].gap(*lost, *n),
            UEv::Closed(_) | UEv::Other => {}
        }
    }
    dirs.iter().for_each(UtpDir::drained);
    assert_eq!(t.buffered_bytes(), 0);
    assert_eq!(t.n_tracked(), 0);
}

/// A uTP datagram: the 20-byte header (no extensions) and the payload.
fn header(ty: u8, conn_id: u16, seq: u16, ack: u16, payload: &[u8]) -> Vec<u8> {
    let mut d = Vec::with_capacity(20 + payload.len());
    d.push(ty << 4 | 1);
    d.push(0);
    d.extend(conn_id.to_be_bytes());
    d.extend(1_000_000u32.to_be_bytes()); // timestamp
    d.extend(0u32.to_be_bytes()); // timestamp difference
    d.extend(0x10_0000u32.to_be_bytes()); // window: 1 MiB, as libutp
    d.extend(seq.to_be_bytes());
    d.extend(ack.to_be_bytes());
    d.extend_from_slice(payload);
    d
}
