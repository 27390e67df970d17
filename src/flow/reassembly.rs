//! One direction of a TCP byte stream, put back in stream order for the
//! application framer (peer wire, HTTP tracker) as [`Chunk::Data`] and
//! [`Chunk::Gap`].
//!
//! # What it does
//!
//! [`StreamReassembler`] is fed the payload of every data segment seen in one
//! direction, plus the acknowledgment numbers seen in the other, and calls
//! the framer's callback with the stream in order. The hot path is the
//! in-order segment: it is handed over as a borrowed slice of the packet, with
//! no copy and no allocation. Only data that arrives ahead of a hole is copied,
//! into a buffer bounded by [`ReassemblyLimits`]. Whatever arrives, memory
//! stays within those limits and every call finishes in time bounded by them.
//!
//! # Sequence space (RFC 9293)
//!
//! - Sequence numbers are 32-bit and compared modulo 2^32 (RFC 9293 §3.4). We
//!   unwrap each one into a 64-bit stream offset by taking its signed 32-bit
//!   distance from the next expected sequence number; that is only meaningful
//!   within 2^31 either side, which is why the look-ahead window below must
//!   stay under 2^31.
//! - Offset 0 is the sequence number given to [`StreamReassembler::start_at`]:
//!   ISN+1 after a SYN (the SYN itself occupies the ISN), or the first data
//!   segment's sequence number when the connection is picked up mid-stream.
//! - A segment is acceptable if it overlaps `[next, next + window)`
//!   (RFC 9293 §3.10.7.4, first check). We do not see the receiver's RCV.WND,
//!   so `window` is the largest one TCP can advertise, 2^30 (RFC 7323 §2.3,
//!   shift 14), unless the limits say otherwise. Data beyond it is not TCP and
//!   is counted and dropped, so a forged segment cannot open a huge gap that
//!   would make the real stream look old.
//! - Bytes before `next` are old (retransmissions): a segment that straddles
//!   `next` delivers only its new part, as a zero-copy sub-slice (RFC 9293
//!   §3.4: of a segment straddling old and new, only the new part counts).
//! - An acknowledgment from the other direction is the receiver's RCV.NXT
//!   (RFC 9293 §3.10.7.4, fifth check): every byte below it reached the
//!   receiver, so a hole below it will not be retransmitted and cannot be
//!   filled later in this capture.
//! - A FIN occupies one sequence number after the last data byte (RFC 9293
//!   §3.4), so its ACK is one past the stream's end. [`StreamReassembler::fin`]
//!   records where the stream ends; ACKs beyond that are clamped to it, or
//!   every orderly close would end in a spurious 1-byte gap.
//!
//! # Invariants
//!
//! - `bytes_delivered + gap_bytes` equals the stream offset of `next`: every
//!   offset below `next` was handed out exactly once, as data or as a gap.
//! - Held (buffered) segments are disjoint, sorted by offset, all start after
//!   `next`, and all start after the highest acknowledged offset once a public
//!   call returns (such a hole is never kept waiting behind an ACK).
//! - Held bytes never exceed `max_ooo_bytes` and held segments never exceed
//!   `max_ooo_segments`; when new data would break either, the hole before
//!   the earliest held data is declared a gap and delivery continues.
//! - Overlapping copies: the first copy of a byte wins. A later copy of a
//!   byte still held, or of one of the last `max_compare_bytes` delivered
//!   ones, is compared, and differing bytes are counted as conflicts (a sign
//!   of injection, Ptacek–Newsham's overlap evasion, or of a broken
//!   middlebox); older delivered bytes are gone, so a later copy of them is
//!   only counted as a retransmission.
//! - Stream offsets are 64-bit and saturate rather than wrap: reaching 2^64
//!   takes more than 2^34 forged window-sized jumps, and past it the stream
//!   stalls instead of misplacing data.
//!
//! # Acknowledgments and capture skew
//!
//! A hole below an ACK is declared a gap only when data after it can be
//! delivered (or at [`StreamReassembler::flush`]). Declaring it eagerly would
//! deliver nothing sooner, and captures taken on a tap with one port per
//! direction, or on a multi-queue NIC, often record an ACK slightly before the
//! data it acknowledges; waiting lets that data still arrive in order.

use std::collections::VecDeque;

use super::Chunk;

/// The largest receive window TCP can express: 65535 << 14 (RFC 7323 §2.3),
/// rounded up to a power of two.
const TCP_MAX_WINDOW_BYTES: u32 = 1 << 30;

/// Bounds on what one direction of one TCP connection may hold. Every field is
/// a defence against hostile or broken input; the defaults suit a passive tap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReassemblyLimits {
    /// Most out-of-order payload bytes held, waiting for a hole before them to
    /// be filled. Reordered data in flight cannot exceed the receiver's window,
    /// and a single peer connection rarely runs more than one RTT of data
    /// (5 MiB/s at 50 ms is 256 KiB) past a loss. Default 256 KiB also holds
    /// four 64 KiB GRO/TSO super-segments from a host capture. When it is too
    /// small the cost is a counted gap, which the framer survives, while the
    /// memory is paid per live flow direction that has a hole open.
    pub max_ooo_bytes: u32,
    /// Most out-of-order pieces held. Each costs an allocation and a queue slot
    /// beside its bytes, so without this cap 1-byte segments could hold about
    /// 50 times `max_ooo_bytes` in bookkeeping, and each insertion shifts up to
    /// this many slots. Default 1024: 256 KiB of full 1448-byte segments is
    /// 181, so real reordering with smaller segments still fits.
    pub max_ooo_segments: u32,
    /// How far past the next expected byte a segment's end or an ACK may reach
    /// before it is treated as garbage rather than as a sign of loss. Default
    /// 2^30, the largest window TCP can advertise (RFC 7323 §2.3): no real
    /// sender can be further ahead than that. Values of 2^31 or more disable
    /// the check, since sequence numbers 2^31 or more ahead read as old
    /// (RFC 9293 §3.4).
    pub max_ahead_bytes: u32,
    /// Delivered bytes kept (the most recent ones) to compare a later copy
    /// of them with: a retransmission that differs from what was delivered
    /// is the Ptacek–Newsham overlap evasion (the receiver may have taken
    /// the other copy) and is counted (`overlap_conflict_bytes`, anomaly
    /// `conflicting_overlap`); the first copy stays the one delivered. 4 KiB
    /// holds the last two full segments, where an injected copy and the
    /// real one meet; older retransmissions are counted as such without a
    /// comparison. Kept only for directions that carried data, grown as
    /// data comes (a 67-byte handshake keeps 67 bytes); 0 disables it.
    pub max_compare_bytes: u32,
}

impl Default for ReassemblyLimits {
    fn default() -> Self {
        ReassemblyLimits {
            max_ooo_bytes: 256 * 1024,
            max_ooo_segments: 1024,
            max_ahead_bytes: TCP_MAX_WINDOW_BYTES,
            max_compare_bytes: 4096,
        }
    }
}

/// Counters for one direction, for the `anomalies` table and `capture_stats`.
/// Counts named `n_*` count events; `*_bytes` count stream bytes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReassemblyStats {
    /// Bytes handed to the framer as [`Chunk::Data`].
    pub bytes_delivered: u64,
    /// Bytes handed to the framer as [`Chunk::Gap`] (never seen, or given up).
    pub gap_bytes: u64,
    /// Gaps declared, whatever the reason.
    pub n_gaps: u64,
    /// Gaps declared because the out-of-order buffer was full.
    pub n_overflow_gaps: u64,
    /// Gaps declared because the other direction acknowledged past a hole.
    pub n_ack_gaps: u64,
    /// Gaps declared by [`StreamReassembler::flush`] for holes still open.
    pub n_flush_gaps: u64,
    /// Payload bytes that had already been seen (delivered or held).
    pub retrans_bytes: u64,
    /// Segments that carried at least one already-seen byte.
    pub n_retrans: u64,
    /// Already-seen bytes whose value differed from the first copy (held,
    /// or delivered and still among the last `max_compare_bytes`).
    pub overlap_conflict_bytes: u64,
    /// Of those, bytes that differed from delivered ones.
    pub delivered_conflict_bytes: u64,
    /// Segments of which at least one byte was held out of order.
    pub n_ooo_segments: u64,
    /// Segments dropped because they reach past `max_ahead_bytes`.
    pub n_out_of_window: u64,
    /// Payload bytes of those segments.
    pub out_of_window_bytes: u64,
    /// Acknowledgments ignored because they reach past `max_ahead_bytes`.
    pub n_out_of_window_acks: u64,
    /// Held bytes thrown away because `start_at` restarted a started stream.
    pub discarded_bytes: u64,
    /// High-water mark of held out-of-order bytes.
    pub max_ooo_bytes_seen: u32,
    /// High-water mark of held out-of-order pieces.
    pub max_ooo_segments_seen: u32,
}

/// Why a gap was declared; only for the counters.
#[derive(Debug, Clone, Copy)]
enum GapCause {
    Overflow,
    Ack,
    Flush,
}

/// Out-of-order bytes copied from a segment, at stream offset `start`.
#[derive(Debug, Clone)]
struct Held {
    start: u64,
    data: HeldBytes,
}

/// A held piece's bytes, or only their number once the stream is followed
/// as ranges only ([`StreamReassembler::set_ranges_only`]). The same 16
/// bytes as the box alone (the length sits beside the box's non-null
/// pointer, which tells the two apart).
#[derive(Debug, Clone)]
enum HeldBytes {
    Kept(Box<[u8]>),
    Len(u64),
}

impl HeldBytes {
    fn len(&self) -> u64 {
        match self {
            HeldBytes::Kept(b) => len_u64(b),
            HeldBytes::Len(n) => *n,
        }
    }

    fn bytes(&self) -> Option<&[u8]> {
        match self {
            HeldBytes::Kept(b) => Some(b),
            HeldBytes::Len(_) => None,
        }
    }
}

impl Held {
    fn end(&self) -> u64 {
        self.start.saturating_add(self.data.len())
    }
}

/// The out-of-order queue, allocated at the first held segment: a
/// direction that never holds data (nearly all of them, and every
/// half-open flow of a SYN flood) pays one pointer for it, not a
/// `VecDeque`. Read-only calls on an unallocated queue see it empty.
// The Box is the point: 8 bytes per direction until something is held.
#[allow(clippy::box_collection)]
#[derive(Debug, Clone, Default)]
struct HeldQueue(Option<Box<VecDeque<Held>>>);

impl HeldQueue {
    fn q(&self) -> Option<&VecDeque<Held>> {
        self.0.as_deref()
    }
    fn front(&self) -> Option<&Held> {
        self.q().and_then(VecDeque::front)
    }
    fn pop_front(&mut self) -> Option<Held> {
        self.0.as_deref_mut().and_then(VecDeque::pop_front)
    }
    fn is_empty(&self) -> bool {
        self.q().is_none_or(VecDeque::is_empty)
    }
    fn len(&self) -> usize {
        self.q().map_or(0, VecDeque::len)
    }
    fn capacity(&self) -> usize {
        self.q().map_or(0, VecDeque::capacity)
    }
    fn get(&self, i: usize) -> Option<&Held> {
        self.q().and_then(|q| q.get(i))
    }
    fn partition_point(&self, pred: impl FnMut(&Held) -> bool) -> usize {
        self.q().map_or(0, |q| q.partition_point(pred))
    }
    fn iter(&self) -> impl Iterator<Item = &Held> {
        self.q().into_iter().flatten()
    }
    fn range(&self, from: usize) -> impl Iterator<Item = &Held> {
        self.q().into_iter().flat_map(move |q| q.range(from.min(q.len())..))
    }
    fn iter_mut(&mut self) -> impl Iterator<Item = &mut Held> {
        self.0.as_deref_mut().into_iter().flatten()
    }
    fn insert(&mut self, i: usize, h: Held) {
        self.0.get_or_insert_with(Box::default).insert(i, h);
    }
    /// Empties the queue and gives its memory back.
    fn clear(&mut self) {
        self.0 = None;
    }
}

/// Already-seen bytes found while placing one segment; committed to the stats
/// once per segment so that `n_retrans` counts segments, not pieces.
#[derive(Debug, Default)]
struct Tally {
    dup_bytes: u64,
    conflict_bytes: u64,
}

impl Tally {
    /// Counts `later` against the first copy `first` of the same bytes
    /// (`None`: only its length was kept, nothing to compare).
    fn compare(&mut self, later: &[u8], first: Option<&[u8]>) {
        let Some(first) = first else {
            self.dup_bytes += len_u64(later);
            return;
        };
        let n = later.len().min(first.len());
        self.dup_bytes += n as u64;
        let differing = later.iter().zip(first).filter(|(a, b)| a != b).count();
        self.conflict_bytes += differing as u64;
    }
}

/// Reassembles one direction of a TCP connection. See the module doc.
#[derive(Debug, Clone)]
pub struct StreamReassembler {
    limits: ReassemblyLimits,
    started: bool,
    /// Ranges only (see [`StreamReassembler::set_ranges_only`]).
    ranges_only: bool,
    /// Sequence number of stream offset 0, so offset `o` is at
    /// `base_seq + o (mod 2^32)`.
    base_seq: u32,
    /// Stream offset of the next byte the framer has not been given.
    next: u64,
    /// Highest stream offset acknowledged by the other direction; may lag
    /// behind `next`, which is harmless.
    acked: u64,
    /// Stream offset of the FIN, once one was seen: the stream's length.
    fin_at: Option<u64>,
    /// Out-of-order data: disjoint, sorted by `start`, every `start > next`.
    held: HeldQueue,
    /// Sum of `held[i].data.len()`, at most `limits.max_ooo_bytes`.
    held_bytes: u64,
    /// The last delivered bytes, to compare retransmissions with.
    tail: Tail,
    /// Bytes handed out as data (`ReassemblyStats::bytes_delivered`), the
    /// one counter of the hot path.
    delivered: u64,
    /// Every other counter, allocated at the first event that counts: an
    /// in-order stream (or a half-open connection of a SYN flood) never
    /// pays for them.
    cold: Option<Box<ReassemblyStats>>,
}

/// The most recent delivered bytes of a stream, at most `cap`: stream
/// offsets `[end - len, end)` where `end` is the reassembler's `next`. A
/// ring once full (`start` is the oldest byte), allocated as data comes.
#[derive(Debug, Clone, Default)]
struct Tail {
    buf: Vec<u8>,
    start: usize,
}

impl Tail {
    fn push(&mut self, cap: usize, d: &[u8]) {
        if cap == 0 {
            return;
        }
        let d = d.get(d.len().saturating_sub(cap)..).unwrap_or_default();
        let room = cap - self.buf.len().min(cap);
        let (now, mut rest) = d.split_at(room.min(d.len()));
        if !now.is_empty() {
            if self.buf.capacity() < self.buf.len() + now.len() {
                let want = (self.buf.capacity() * 2).max(self.buf.len() + now.len()).min(cap);
                self.buf.reserve_exact(want - self.buf.len());
            }
            self.buf.extend_from_slice(now);
        }
        // At most two copies (`rest` is at most `cap` bytes): up to the
        // ring's end, then from its start.
        while !rest.is_empty() {
            let n = rest.len().min(cap - self.start);
            let (now, later) = rest.split_at(n);
            if let Some(dst) = self.buf.get_mut(self.start..self.start + n) {
                dst.copy_from_slice(now);
            }
            rest = later;
            self.start += n;
            if self.start >= cap {
                self.start = 0;
            }
        }
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.start = 0;
    }

    /// Whether the ring holds `cap` bytes (a push then only overwrites).
    fn is_full(&self, cap: usize) -> bool {
        cap > 0 && self.buf.len() >= cap
    }

    /// Compares `later`, a copy of stream offsets `[at, at + len)` that all
    /// lie below `end`, with the kept bytes: `(compared, differing)`.
    fn compare(&self, end: u64, at: u64, later: &[u8]) -> (u64, u64) {
        let len = self.buf.len() as u64;
        let kept_from = end.saturating_sub(len);
        let from = at.max(kept_from);
        let to = at.saturating_add(len_u64(later)).min(end);
        if from >= to {
            return (0, 0);
        }
        let mut differing = 0u64;
        for o in from..to {
            let idx = usize::try_from(o - kept_from).unwrap_or(0);
            let phys = (self.start + idx) % self.buf.len();
            let a = later.get(usize::try_from(o - at).unwrap_or(usize::MAX));
            if a != self.buf.get(phys) {
                differing += 1;
            }
        }
        (to - from, differing)
    }
}

impl StreamReassembler {
    /// A reassembler that has not been told where the stream starts yet.
    pub fn new(limits: ReassemblyLimits) -> Self {
        StreamReassembler {
            limits,
            started: false,
            ranges_only: false,
            base_seq: 0,
            next: 0,
            acked: 0,
            fin_at: None,
            held: HeldQueue::default(),
            held_bytes: 0,
            tail: Tail::default(),
            delivered: 0,
            cold: None,
        }
    }

    /// Sets the next expected sequence number: ISN+1 after a SYN, or the first
    /// data segment's sequence number when the connection is picked up
    /// mid-stream ([`segment`](Self::segment) does the latter by itself if
    /// this was never called). Calling it again restarts the stream at `seq`
    /// (the stream offset keeps counting); held data is discarded and counted
    /// in `discarded_bytes`, so call [`flush`](Self::flush) first to keep it.
    pub fn start_at(&mut self, seq: u32) {
        if self.started {
            if self.held_bytes > 0 {
                let n = self.held_bytes;
                self.cold().discarded_bytes += n;
            }
            self.held.clear();
            self.held_bytes = 0;
            self.tail.clear();
        }
        self.started = true;
        // Keep offsets monotonic across restarts so the accounting invariant
        // (delivered + gaps == next) survives them.
        self.base_seq = seq.wrapping_sub(self.next as u32);
        self.acked = self.next;
        self.fin_at = None;
    }

    /// From now on, follows the stream as sequence ranges only, for a flow
    /// whose application was ruled out (nothing will read its bytes): no
    /// payload byte is copied (held pieces keep their length, the compare
    /// tail is given back), and nothing is delivered as data. Every offset,
    /// gap and retransmission is placed and counted exactly as before, so
    /// `gap_bytes`, `retrans_bytes`, `next_seq` and `stream_offset` stay
    /// what they would have been; only overlap conflicts are no longer
    /// examined (there is no first copy to compare with). Only gaps are
    /// still handed to `out`.
    pub fn set_ranges_only(&mut self) {
        if self.ranges_only {
            return;
        }
        self.ranges_only = true;
        self.tail = Tail::default();
        for h in self.held.iter_mut() {
            h.data = HeldBytes::Len(h.data.len());
        }
    }

    /// Whether [`set_ranges_only`](Self::set_ranges_only) was called.
    pub fn is_ranges_only(&self) -> bool {
        self.ranges_only
    }

    /// Whether the stream position is known (`start_at` or a first segment).
    pub fn is_started(&self) -> bool {
        self.started
    }

    /// The next sequence number the framer is waiting for, once started.
    pub fn next_seq(&self) -> Option<u32> {
        self.started.then(|| self.next_seq_raw())
    }

    /// Stream bytes handed out so far, as data or gaps: the stream offset at
    /// which the next chunk starts.
    pub fn stream_offset(&self) -> u64 {
        self.next
    }

    /// The counters so far.
    pub fn stats(&self) -> ReassemblyStats {
        let mut s = self.cold.as_deref().cloned().unwrap_or_default();
        s.bytes_delivered = self.delivered;
        s
    }

    fn cold(&mut self) -> &mut ReassemblyStats {
        self.cold.get_or_insert_with(Box::default)
    }

    /// Heap bytes this direction holds (accounted against
    /// `Limits::max_memory`): the held segments (their bytes, an
    /// allocation each, and the queue's slots), the compare tail, and the
    /// counters once allocated.
    pub fn heap_bytes(&self) -> usize {
        // O(1), as it runs per packet: a chunk's header and rounding are
        // 8 to 23 bytes, taken as 16.
        // Ranges only: the pieces hold no bytes and no allocation.
        let held = if self.ranges_only {
            0
        } else {
            usize::try_from(self.held_bytes).unwrap_or(usize::MAX) + self.held.len() * 16
        };
        let slots = if self.held.0.is_some() {
            super::alloc_bytes(std::mem::size_of::<VecDeque<Held>>())
                + super::alloc_bytes(self.held.capacity() * std::mem::size_of::<Held>())
        } else {
            0
        };
        let cold = if self.cold.is_some() {
            super::alloc_bytes(std::mem::size_of::<ReassemblyStats>())
        } else {
            0
        };
        held + slots + super::alloc_bytes(self.tail.buf.capacity()) + cold
    }

    /// Out-of-order payload bytes held now (never above `max_ooo_bytes`).
    pub fn buffered_bytes(&self) -> u32 {
        u32::try_from(self.held_bytes).unwrap_or(u32::MAX)
    }

    /// Out-of-order pieces held now (never above `max_ooo_segments`).
    pub fn buffered_segments(&self) -> u32 {
        u32::try_from(self.held.len()).unwrap_or(u32::MAX)
    }

    /// A data segment at sequence number `seq`. Delivers in-order bytes through
    /// `out`: borrowed from `payload` when possible, then any held data that
    /// became contiguous. Old bytes are dropped and counted; overlaps keep the
    /// first copy and count differing bytes; data ahead of a hole is held
    /// within the limits; when holding it would break them, the hole before
    /// the earliest held data is declared a gap and delivery continues. Empty
    /// payloads do nothing. An unstarted reassembler starts at `seq`.
    #[inline]
    pub fn segment(&mut self, seq: u32, payload: &[u8], out: &mut impl FnMut(Chunk<'_>)) {
        self.segment_with(seq, payload, || false, out);
    }

    /// [`segment`](Self::segment), told whether the payload's copy into
    /// the compare tail is `superseded` (asked only when the answer
    /// matters: an in-order segment, a full tail, not ranges only; the
    /// caller's scan of its batch runs only then): in-order data of this direction
    /// that follows in the same batch will push at least
    /// `max_compare_bytes` more before anything can read the tail (see
    /// [`superseded_tail_pushes`]). Then an in-order segment skips the
    /// copy once the tail is full (its capacity, the only thing of it
    /// the memory account sees, is already final): the bytes it would
    /// have written are overwritten before any comparison.
    #[inline]
    pub fn segment_with(
        &mut self,
        seq: u32,
        payload: &[u8],
        superseded: impl FnOnce() -> bool,
        out: &mut impl FnMut(Chunk<'_>),
    ) {
        if payload.is_empty() {
            return;
        }
        if !self.started {
            self.start_at(seq);
        }
        let len = len_u64(payload);
        // The overwhelmingly common case: exactly the next bytes, nothing held
        // that they could overlap. One comparison chain, no copy.
        if seq == self.next_seq_raw() && self.held.is_empty() && len <= u64::from(self.limits.max_ahead_bytes) {
            self.next = self.next.saturating_add(len);
            self.delivered += len;
            if !self.ranges_only {
                let cap = self.limits.max_compare_bytes as usize;
                if !(self.tail.is_full(cap) && superseded()) {
                    self.tail.push(cap, payload);
                }
                out(Chunk::Data(payload));
            }
            return;
        }
        self.segment_slow(seq, payload, out);
    }

    /// The other direction acknowledged `ack`: every byte before it reached
    /// the receiver, so a hole below it will never be filled in this capture.
    /// Such holes are declared gaps as soon as held data after them can be
    /// delivered (see the module doc on capture skew). ACKs at or below the
    /// stream position, before the start, or beyond the window are ignored
    /// (the last ones counted).
    pub fn acked(&mut self, ack: u32, out: &mut impl FnMut(Chunk<'_>)) {
        if !self.started {
            return;
        }
        let rel = self.rel(ack);
        if rel <= 0 {
            return;
        }
        let ahead = rel.unsigned_abs();
        if ahead > self.max_ahead() {
            self.cold().n_out_of_window_acks += 1;
            return;
        }
        let mut ack_off = self.next.saturating_add(ahead);
        if let Some(end) = self.fin_at {
            // The FIN's own sequence number is not a stream byte.
            ack_off = ack_off.min(end);
        }
        self.acked = self.acked.max(ack_off);
        self.settle(out);
    }

    /// A FIN at sequence number `seq` (the segment's seq plus its payload
    /// length): the stream ends there. Records the end, so that the FIN's ACK
    /// is not read as a missing byte and a tail the capture missed becomes a
    /// gap, then flushes. Call it after the segment's payload. A FIN behind
    /// delivered data or beyond the window does not move the end (it is
    /// garbage or a stale copy) but still flushes.
    pub fn fin(&mut self, seq: u32, out: &mut impl FnMut(Chunk<'_>)) {
        if !self.started {
            self.start_at(seq);
        }
        let rel = self.rel(seq);
        if self.fin_at.is_none() && rel >= 0 && rel.unsigned_abs() <= self.max_ahead() {
            let end = self.next.saturating_add(rel.unsigned_abs());
            self.fin_at = Some(end);
            self.acked = self.acked.min(end);
        }
        self.flush(out);
    }

    /// RST, idle expiry or end of input (and [`fin`](Self::fin)): delivers
    /// everything held, holes before it as gaps, then a last gap up to the
    /// FIN or the highest acknowledged byte if the capture missed the
    /// stream's tail. The reassembler stays usable.
    pub fn flush(&mut self, out: &mut impl FnMut(Chunk<'_>)) {
        while let Some(front) = self.held.front().map(|h| h.start) {
            self.gap_to(front, GapCause::Flush, out);
            self.drain_contiguous(out);
        }
        match self.fin_at {
            Some(end) => self.gap_to(end, GapCause::Flush, out),
            None => self.gap_to(self.acked, GapCause::Ack, out),
        }
    }

    fn next_seq_raw(&self) -> u32 {
        // Truncation is the point: offsets are sequence numbers mod 2^32.
        self.base_seq.wrapping_add(self.next as u32)
    }

    /// Signed distance of `seq` from the next expected sequence number, in
    /// [-2^31, 2^31): RFC 9293 §3.4 comparison made into arithmetic.
    fn rel(&self, seq: u32) -> i64 {
        i64::from(seq.wrapping_sub(self.next_seq_raw()) as i32)
    }

    fn max_ahead(&self) -> u64 {
        u64::from(self.limits.max_ahead_bytes)
    }

    #[inline(never)]
    fn segment_slow(&mut self, seq: u32, payload: &[u8], out: &mut impl FnMut(Chunk<'_>)) {
        let len = len_u64(payload);
        let rel = self.rel(seq);
        // Split off the part below `next` (old bytes) and place the rest.
        let (old_len, ahead) = if rel < 0 {
            (rel.unsigned_abs().min(len), 0)
        } else {
            (0, rel.unsigned_abs())
        };
        let fresh = skip(payload, old_len);
        if old_len > 0 && !self.ranges_only {
            // The old part against what was delivered: first copy wins,
            // differences are counted.
            let at = self.next.saturating_sub(rel.unsigned_abs());
            let (_, differing) = self.tail.compare(self.next, at, sub(payload, 0, old_len));
            if differing > 0 {
                let c = self.cold();
                c.overlap_conflict_bytes += differing;
                c.delivered_conflict_bytes += differing;
            }
        }
        if fresh.is_empty() {
            let c = self.cold();
            c.retrans_bytes += len;
            c.n_retrans += 1;
            return;
        }
        // A segment reaching past the window is dropped whole: it is garbage
        // (or a length no IP packet can carry), and holding it would let it
        // force a gap that makes the real stream look old.
        if ahead.saturating_add(len_u64(fresh)) > self.max_ahead() {
            let c = self.cold();
            c.n_out_of_window += 1;
            c.out_of_window_bytes += len;
            return;
        }
        let mut tally = Tally {
            dup_bytes: old_len,
            conflict_bytes: 0,
        };
        let start = self.next.saturating_add(ahead);
        if ahead == 0 || start <= self.acked {
            // In order, or only acknowledged (hence lost) holes before it.
            self.walk(start, fresh, GapCause::Ack, &mut tally, out);
            self.settle(out);
        } else {
            self.hold_or_overflow(start, fresh, &mut tally, out);
        }
        if tally.dup_bytes > 0 {
            let c = self.cold();
            c.retrans_bytes += tally.dup_bytes;
            c.n_retrans += 1;
        }
        if tally.conflict_bytes > 0 {
            self.cold().overlap_conflict_bytes += tally.conflict_bytes;
        }
    }

    /// Holds `data` (at offset `start > next`), making room first if the
    /// limits require it by giving up the earliest hole, then the next, until
    /// it fits or has become deliverable. Each round delivers at least one held
    /// piece, so this ends within `max_ooo_segments` rounds.
    fn hold_or_overflow(&mut self, start: u64, data: &[u8], tally: &mut Tally, out: &mut impl FnMut(Chunk<'_>)) {
        loop {
            let (new_bytes, new_pieces) = self.plan(start, data);
            if new_bytes == 0 {
                // Entirely a copy of held data.
                self.insert(start, data, tally);
                return;
            }
            let fits = self.held_bytes + new_bytes <= u64::from(self.limits.max_ooo_bytes)
                && (self.held.len() as u64) + new_pieces <= u64::from(self.limits.max_ooo_segments);
            if fits {
                self.insert(start, data, tally);
                let (bytes, segments) = (self.buffered_bytes(), self.buffered_segments());
                let c = self.cold();
                c.n_ooo_segments += 1;
                c.max_ooo_bytes_seen = c.max_ooo_bytes_seen.max(bytes);
                c.max_ooo_segments_seen = c.max_ooo_segments_seen.max(segments);
                return;
            }
            match self.held.front().map(|h| h.start) {
                Some(front) if front < start => {
                    if self.contiguous_end() >= start {
                        // Giving up the first hole makes this segment
                        // deliverable together with the run that reaches it.
                        self.walk(start, data, GapCause::Overflow, tally, out);
                        self.settle(out);
                        return;
                    }
                    self.gap_to(front, GapCause::Overflow, out);
                    self.drain_contiguous(out);
                }
                _ => {
                    // This segment is the earliest data: give up the hole
                    // before it and deliver it straight from the packet.
                    self.walk(start, data, GapCause::Overflow, tally, out);
                    self.settle(out);
                    return;
                }
            }
        }
    }

    /// New bytes and new pieces that holding `[start, start + data.len())`
    /// would add, given what is already held.
    fn plan(&self, start: u64, data: &[u8]) -> (u64, u64) {
        let end = start.saturating_add(len_u64(data));
        let first = self.held.partition_point(|h| h.end() <= start);
        let mut cursor = start;
        let mut new_bytes = 0;
        let mut new_pieces = 0;
        for h in self.held.range(first) {
            if h.start >= end {
                break;
            }
            if h.start > cursor {
                new_bytes += h.start - cursor;
                new_pieces += 1;
            }
            cursor = cursor.max(h.end());
        }
        if cursor < end {
            new_bytes += end - cursor;
            new_pieces += 1;
        }
        (new_bytes, new_pieces)
    }

    /// Holds the parts of `data` (at `start`) not already held, one piece per
    /// hole it covers; parts already held keep their first copy and are
    /// compared into `tally`. The caller has checked the limits with `plan`.
    fn insert(&mut self, start: u64, data: &[u8], tally: &mut Tally) {
        let end = start.saturating_add(len_u64(data));
        let mut i = self.held.partition_point(|h| h.end() <= start);
        let mut cursor = start;
        while cursor < end && i <= self.held.len() {
            let from = cursor - start;
            match self.held.get(i) {
                Some(h) if h.start <= cursor => {
                    let to = h.end().min(end);
                    tally.compare(
                        sub(data, from, to - start),
                        h.data.bytes().map(|b| sub(b, cursor - h.start, to - h.start)),
                    );
                    cursor = to;
                    i += 1;
                }
                next_held => {
                    let to = next_held.map_or(end, |h| h.start.min(end));
                    let piece = sub(data, from, to - start);
                    self.held_bytes += len_u64(piece);
                    let data = if self.ranges_only {
                        HeldBytes::Len(len_u64(piece))
                    } else {
                        HeldBytes::Kept(piece.into())
                    };
                    self.held.insert(i, Held { start: cursor, data });
                    cursor = to;
                    i += 1;
                }
            }
        }
    }

    /// Delivers, from `next` on, the union of held data and `data` (at offset
    /// `start >= next`) until `data` is used up: held bytes win where both
    /// cover the same offset (first copy), and holes before `start` become
    /// gaps of the given cause. Nothing is copied.
    fn walk(
        &mut self,
        mut start: u64,
        mut rest: &[u8],
        cause: GapCause,
        tally: &mut Tally,
        out: &mut impl FnMut(Chunk<'_>),
    ) {
        while !rest.is_empty() {
            if start < self.next {
                // Already delivered from a held piece (and compared then).
                rest = skip(rest, self.next - start);
                start = self.next;
                continue;
            }
            let front = self.held.front().map(|h| h.start);
            match front {
                Some(f) if f <= self.next => {
                    if let Some(h) = self.held.pop_front() {
                        let overlap_from = start.max(h.start);
                        let overlap_to = h.end().min(start.saturating_add(len_u64(rest)));
                        if overlap_from < overlap_to {
                            tally.compare(
                                sub(rest, overlap_from - start, overlap_to - start),
                                h.data
                                    .bytes()
                                    .map(|b| sub(b, overlap_from - h.start, overlap_to - h.start)),
                            );
                        }
                        self.deliver_held(h, out);
                    }
                }
                _ if start == self.next => {
                    // Up to the next held piece, straight from the packet.
                    let room = front.map_or(u64::MAX, |f| f - self.next);
                    let take = room.min(len_u64(rest));
                    let now = sub(rest, 0, take);
                    rest = skip(rest, take);
                    start = start.saturating_add(take);
                    self.next = self.next.saturating_add(take);
                    self.delivered += take;
                    if !self.ranges_only {
                        self.tail.push(self.limits.max_compare_bytes as usize, now);
                        out(Chunk::Data(now));
                    }
                }
                _ => {
                    let to = front.map_or(start, |f| f.min(start));
                    self.gap_to(to, cause, out);
                }
            }
        }
    }

    /// Delivers held pieces while they are contiguous with `next`, then, while
    /// the next held piece starts at or below the highest ACK, gives up the
    /// hole before it. Restores the invariant that held data starts after
    /// both `next` and `acked`.
    fn settle(&mut self, out: &mut impl FnMut(Chunk<'_>)) {
        loop {
            self.drain_contiguous(out);
            match self.held.front().map(|h| h.start) {
                Some(front) if front <= self.acked => self.gap_to(front, GapCause::Ack, out),
                _ => return,
            }
        }
    }

    /// Delivers held pieces while the first one starts at or below `next`.
    fn drain_contiguous(&mut self, out: &mut impl FnMut(Chunk<'_>)) {
        while self.held.front().is_some_and(|h| h.start <= self.next) {
            if let Some(h) = self.held.pop_front() {
                self.deliver_held(h, out);
            }
        }
    }

    /// End offset of the run of contiguous held pieces starting at the first.
    fn contiguous_end(&self) -> u64 {
        let mut iter = self.held.iter();
        let Some(first) = iter.next() else {
            return self.next;
        };
        let mut end = first.end();
        for h in iter {
            if h.start > end {
                break;
            }
            end = end.max(h.end());
        }
        end
    }

    /// Hands out a piece just taken off the queue, minus any part below
    /// `next` (none while the invariants hold).
    fn deliver_held(&mut self, h: Held, out: &mut impl FnMut(Chunk<'_>)) {
        self.held_bytes = self.held_bytes.saturating_sub(h.data.len());
        let below = self.next.saturating_sub(h.start);
        let Some(bytes) = h.data.bytes() else {
            // Ranges only: the piece's place, no bytes to hand out.
            let len = h.data.len().saturating_sub(below);
            self.next = self.next.saturating_add(len);
            self.delivered += len;
            return;
        };
        let fresh = skip(bytes, below);
        if fresh.is_empty() {
            return;
        }
        let len = len_u64(fresh);
        self.next = self.next.saturating_add(len);
        self.delivered += len;
        self.tail.push(self.limits.max_compare_bytes as usize, fresh);
        out(Chunk::Data(fresh));
    }

    /// Declares `[next, to)` a gap, if it is not empty.
    fn gap_to(&mut self, to: u64, cause: GapCause, out: &mut impl FnMut(Chunk<'_>)) {
        if to <= self.next {
            return;
        }
        let n = to - self.next;
        self.next = to;
        self.tail.clear();
        let c = self.cold();
        c.gap_bytes = c.gap_bytes.saturating_add(n);
        c.n_gaps += 1;
        match cause {
            GapCause::Overflow => c.n_overflow_gaps += 1,
            GapCause::Ack => c.n_ack_gaps += 1,
            GapCause::Flush => c.n_flush_gaps += 1,
        }
        out(Chunk::Gap(n));
    }
}

/// A TCP segment of one shard's batch as [`superseded_tail_pushes`] sees
/// it: its direction, its sequence number, the payload bytes the flow
/// table will hand to [`StreamReassembler::segment_with`], and whether it
/// may break a run of in-order data (SYN, FIN or RST, or dropped for a
/// wrong checksum).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentView {
    /// IPv4 source << 32 | destination (IPv6 segments are not followed:
    /// none of their copies is skipped).
    pub addrs: u64,
    /// Source port << 16 | destination port.
    pub ports: u32,
    pub seq: u32,
    pub len: u32,
    pub breaks: bool,
}

/// Directions followed per call of [`superseded_tail_pushes`]: a shard's
/// part of a batch of bulk traffic has a few; past this many, a
/// direction's pushes are all made (it costs a copy, never a wrong
/// comparison), and the scan stays a few comparisons per segment.
const MAX_SUPERSEDE_DIRECTIONS: usize = 8;

/// For each segment of one shard's part of a batch (in the order the flow
/// table takes them), whether its copy into the compare tail is
/// superseded: the payload segments of its direction that follow it in
/// the part are each at the sequence number where the one before ends,
/// none breaks the run (see [`SegmentView::breaks`]), and they carry at
/// least `cap` (`max_compare_bytes`) bytes. Each of them then arrives in
/// order at the same reassembler (one that took this segment on the fast
/// path has nothing held, and only a segment of its direction, a FIN, a
/// restart or the flow's end changes that, the last three ending the run
/// or dropping the tail), so the tail's last `cap` bytes come from them
/// alone and the skipped bytes are never compared: the counts are those
/// of copying every segment. A bulk transfer's direction delivers ~250
/// segments a batch; only those in its last `cap` bytes are copied
/// (bench/README.md "Session 10 — bulk").
/// `seg(k)` is the `k`-th of the part's `n` packets (None: not TCP, or a
/// bare ACK without SYN, FIN or RST, which leaves its direction's
/// reassembler as it is); it is asked from the last to the first, once
/// each, and not at all when `n < 2` or `cap` is 0.
pub fn superseded_tail_pushes(cap: u32, n: usize, seg: impl Fn(usize) -> Option<SegmentView>) -> Vec<bool> {
    let mut out = vec![false; n];
    if cap == 0 || n < 2 {
        return out;
    }
    /// A direction's run, seen from its end: the sequence number of its
    /// first segment so far and the payload bytes from there on.
    struct Run {
        addrs: u64,
        ports: u32,
        head: Option<u32>,
        bytes: u64,
    }
    let mut runs: Vec<Run> = Vec::new();
    // The run of the last segment taken: a direction's segments mostly
    // follow one another (the other's bare ACKs are not asked about).
    let mut last = usize::MAX;
    for pos in (0..n).rev() {
        let Some(s) = seg(pos) else { continue };
        if s.len == 0 && !s.breaks {
            continue;
        }
        let same = |r: &Run| r.ports == s.ports && r.addrs == s.addrs;
        let found = match runs.get(last) {
            Some(r) if same(r) => Some(last),
            _ => runs.iter().position(same),
        };
        let idx = match found {
            Some(i) => i,
            None if runs.len() < MAX_SUPERSEDE_DIRECTIONS => {
                runs.push(Run {
                    addrs: s.addrs,
                    ports: s.ports,
                    head: None,
                    bytes: 0,
                });
                runs.len() - 1
            }
            // Not followed: every push of this direction is made.
            None => continue,
        };
        last = idx;
        let Some(r) = runs.get_mut(idx) else { continue };
        if s.breaks {
            r.head = None;
            r.bytes = 0;
            continue;
        }
        let after = match r.head {
            Some(h) if s.seq.wrapping_add(s.len) == h => r.bytes,
            _ => 0,
        };
        if let Some(o) = out.get_mut(pos) {
            *o = after >= u64::from(cap);
        }
        r.head = Some(s.seq);
        r.bytes = after.saturating_add(u64::from(s.len));
    }
    out
}

fn len_u64(bytes: &[u8]) -> u64 {
    bytes.len() as u64
}

/// `bytes[n..]`, or empty when `n` is past the end.
fn skip(bytes: &[u8], n: u64) -> &[u8] {
    usize::try_from(n).ok().and_then(|n| bytes.get(n..)).unwrap_or_default()
}

/// `bytes[from..to]`, or empty when the range is not inside `bytes`.
fn sub(bytes: &[u8], from: u64, to: u64) -> &[u8] {
    match (usize::try_from(from), usize::try_from(to)) {
        (Ok(from), Ok(to)) => bytes.get(from..to).unwrap_or_default(),
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the framer saw, adjacent data merged and adjacent gaps summed, so
    /// that fixtures do not depend on where chunk boundaries fall.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Ev {
        D(Vec<u8>),
        G(u64),
    }

    fn d(bytes: &[u8]) -> Ev {
        Ev::D(bytes.to_vec())
    }

    fn g(n: u64) -> Ev {
        Ev::G(n)
    }

    #[derive(Debug, Default)]
    struct Framer {
        evs: Vec<Ev>,
    }

    impl Framer {
        fn take(&mut self, chunk: Chunk<'_>) {
            match chunk {
                Chunk::Data(bytes) => {
                    assert!(!bytes.is_empty(), "empty Data chunk");
                    match self.evs.last_mut() {
                        Some(Ev::D(v)) => v.extend_from_slice(bytes),
                        _ => self.evs.push(d(bytes)),
                    }
                }
                Chunk::Gap(n) => {
                    assert!(n > 0, "empty Gap chunk");
                    match self.evs.last_mut() {
                        Some(Ev::G(m)) => *m += n,
                        _ => self.evs.push(g(n)),
                    }
                }
            }
        }

        /// One slot per stream byte: the byte, or `None` inside a gap.
        fn slots(&self) -> Vec<Option<u8>> {
            let mut slots = Vec::new();
            for ev in &self.evs {
                match ev {
                    Ev::D(v) => slots.extend(v.iter().copied().map(Some)),
                    Ev::G(n) => slots.resize(slots.len() + *n as usize, None),
                }
            }
            slots
        }
    }

    /// The promises that cost O(1) to check: accounting and the limits.
    fn check_bounds(r: &StreamReassembler) {
        let s = r.stats();
        assert_eq!(s.bytes_delivered + s.gap_bytes, r.next, "accounting");
        assert!(r.held_bytes <= u64::from(r.limits.max_ooo_bytes), "byte limit");
        assert!(
            r.held.len() as u64 <= u64::from(r.limits.max_ooo_segments),
            "segment limit"
        );
    }

    /// Every structural promise of the module doc.
    fn check_invariants(r: &StreamReassembler) {
        check_bounds(r);
        let sum: u64 = r.held.iter().map(|h| h.data.len()).sum();
        assert_eq!(sum, r.held_bytes, "held byte count");
        let mut prev_end = r.next;
        for (i, h) in r.held.iter().enumerate() {
            assert!(h.data.len() > 0, "empty held piece");
            if i == 0 {
                assert!(h.start > r.next, "held piece not after next");
            } else {
                assert!(h.start >= prev_end, "held pieces overlap or unsorted");
            }
            assert!(h.start > r.acked, "held piece behind an ACK");
            prev_end = h.end();
        }
    }

    /// A reassembler plus a framer, addressed in stream offsets from `isn`.
    struct Rig {
        r: StreamReassembler,
        f: Framer,
        isn: u32,
        calls: u64,
    }

    impl Rig {
        fn new(limits: ReassemblyLimits, isn: u32) -> Self {
            let mut r = StreamReassembler::new(limits);
            r.start_at(isn);
            Rig {
                r,
                f: Framer::default(),
                isn,
                calls: 0,
            }
        }

        /// Bounds after every call; the O(held) walk when it is cheap or
        /// every 64th call, so that debug-build tests stay quick.
        fn check(&mut self) {
            self.calls += 1;
            if self.r.held.len() <= 32 || self.calls.is_multiple_of(64) {
                check_invariants(&self.r);
            } else {
                check_bounds(&self.r);
            }
        }

        fn seq(&self, off: u64) -> u32 {
            self.isn.wrapping_add(off as u32)
        }

        fn seg(&mut self, off: u64, data: &[u8]) {
            let seq = self.seq(off);
            let f = &mut self.f;
            self.r.segment(seq, data, &mut |c| f.take(c));
            self.check();
        }

        fn ack(&mut self, off: u64) {
            let ack = self.seq(off);
            let f = &mut self.f;
            self.r.acked(ack, &mut |c| f.take(c));
            self.check();
        }

        fn flush(&mut self) {
            let f = &mut self.f;
            self.r.flush(&mut |c| f.take(c));
            self.check();
            assert_eq!(self.r.buffered_bytes(), 0);
        }

        fn out(&mut self) -> Vec<Ev> {
            std::mem::take(&mut self.f.evs)
        }

        fn stats(&self) -> ReassemblyStats {
            self.r.stats()
        }
    }

    fn fresh() -> Rig {
        Rig::new(ReassemblyLimits::default(), 1000)
    }

    // ---- byte fixtures ----

    #[test]
    fn in_order_is_delivered_zero_copy() {
        let mut r = StreamReassembler::new(ReassemblyLimits::default());
        r.start_at(1000);
        let hello = b"hello ".to_vec();
        let mut ptrs = Vec::new();
        r.segment(1000, &hello, &mut |c| {
            if let Chunk::Data(b) = c {
                ptrs.push(b.as_ptr());
            }
        });
        assert_eq!(ptrs, vec![hello.as_ptr()], "not borrowed from the packet");

        let mut rig = fresh();
        rig.seg(0, b"hello ");
        rig.seg(6, b"world");
        assert_eq!(rig.out(), vec![d(b"hello world")]);
        assert_eq!(rig.stats().bytes_delivered, 11);
        assert_eq!(rig.r.next_seq(), Some(1011));
        assert_eq!(rig.r.stream_offset(), 11);
        assert_eq!(rig.r.buffered_bytes(), 0);
    }

    #[test]
    fn retransmission_is_dropped_and_counted() {
        let mut rig = fresh();
        rig.seg(0, b"hello");
        rig.seg(0, b"hello");
        rig.seg(2, b"ll");
        assert_eq!(rig.out(), vec![d(b"hello")]);
        assert_eq!(rig.stats().retrans_bytes, 7);
        assert_eq!(rig.stats().n_retrans, 2);
        assert_eq!(rig.stats().overlap_conflict_bytes, 0);
    }

    #[test]
    fn partial_overlap_delivers_only_the_new_part_zero_copy() {
        let mut r = StreamReassembler::new(ReassemblyLimits::default());
        r.start_at(1000);
        r.segment(1000, b"hello", &mut |_| {});
        let second = b"lo world".to_vec();
        let mut got = Vec::new();
        r.segment(1003, &second, &mut |c| {
            if let Chunk::Data(b) = c {
                got.push((b.as_ptr(), b.to_vec()));
            }
        });
        assert_eq!(got, vec![(second[2..].as_ptr(), b" world".to_vec())]);
        assert_eq!(r.stats().retrans_bytes, 2);
        assert_eq!(r.stats().n_retrans, 1);
        assert_eq!(r.stats().bytes_delivered, 11);
    }

    #[test]
    fn conflicting_overlap_keeps_first_copy_and_counts() {
        // Held first copy against a later in-order copy.
        let mut rig = fresh();
        rig.seg(5, b"FGHIJ");
        assert_eq!(rig.out(), vec![]);
        rig.seg(0, b"abcdeXXXXXk");
        assert_eq!(rig.out(), vec![d(b"abcdeFGHIJk")]);
        assert_eq!(rig.stats().overlap_conflict_bytes, 5);
        assert_eq!(rig.stats().retrans_bytes, 5);
        assert_eq!(rig.stats().n_retrans, 1);

        // Held first copy against a later out-of-order copy.
        let mut rig = fresh();
        rig.seg(5, b"FGHIJ");
        rig.seg(7, b"hiJKL");
        assert_eq!(rig.stats().overlap_conflict_bytes, 2);
        assert_eq!(rig.stats().retrans_bytes, 3);
        rig.seg(0, b"abcde");
        assert_eq!(rig.out(), vec![d(b"abcdeFGHIJKL")]);

        // A later copy that is entirely held data adds nothing.
        let mut rig = fresh();
        rig.seg(5, b"FGHIJ");
        rig.seg(6, b"gh");
        assert_eq!(rig.r.buffered_bytes(), 5);
        assert_eq!(rig.stats().overlap_conflict_bytes, 2);
        assert_eq!(rig.stats().n_ooo_segments, 1);
    }

    /// The compare tail holds exactly the last `cap` bytes pushed, through
    /// the fill and the ring's wrap: for slices of every length up to past
    /// `cap`, compared with a plain copy of the stream (equal bytes: none
    /// differ; each byte changed: all differ).
    #[test]
    fn tail_keeps_exactly_the_last_cap_bytes() {
        for cap in [1usize, 7, 16] {
            let mut t = Tail::default();
            let mut stream: Vec<u8> = Vec::new();
            let mut x = 0x2545_F491_4F6C_DD1Du64;
            for round in 0..400 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let n = (x % (2 * cap as u64 + 3)) as usize;
                let d: Vec<u8> = (0..n).map(|i| (round * 31 + i) as u8).collect();
                t.push(cap, &d);
                stream.extend_from_slice(&d);
                let end = stream.len() as u64;
                let kept = stream.len().min(cap);
                assert_eq!(t.buf.len(), kept, "cap {cap} round {round}");
                let last = &stream[stream.len() - kept..];
                let at = end - kept as u64;
                assert_eq!(t.compare(end, at, last), (kept as u64, 0), "cap {cap} round {round}");
                let flipped: Vec<u8> = last.iter().map(|b| !b).collect();
                assert_eq!(
                    t.compare(end, at, &flipped),
                    (kept as u64, kept as u64),
                    "cap {cap} round {round}"
                );
            }
        }
    }

    #[test]
    fn conflicting_copy_of_delivered_bytes_is_counted_first_copy_stays() {
        let mut rig = fresh();
        rig.seg(0, b"GET /good");
        // A copy of delivered bytes that differs in 4 (injected, or the
        // real one after an injected first copy), straddling new data.
        rig.seg(5, b"evilXX");
        assert_eq!(rig.out(), vec![d(b"GET /goodXX")]);
        assert_eq!(rig.stats().overlap_conflict_bytes, 4);
        assert_eq!(rig.stats().delivered_conflict_bytes, 4);
        // An identical copy is a plain retransmission.
        rig.seg(0, b"GET /goodXX");
        assert_eq!(rig.stats().overlap_conflict_bytes, 4);
        assert_eq!(rig.stats().retrans_bytes, 15);
        // Past the kept tail nothing is compared (nothing claimed either).
        let mut r = StreamReassembler::new(ReassemblyLimits {
            max_compare_bytes: 8,
            ..ReassemblyLimits::default()
        });
        r.start_at(0);
        r.segment(0, b"0123456789abcdef", &mut |_| {});
        r.segment(20, b"ghij", &mut |_| {});
        r.segment(16, b"wxyz", &mut |_| {});
        assert_eq!(r.stats().bytes_delivered, 24);
        r.segment(0, b"XXXXXXXXXXXXXXXXXXXXXXXX", &mut |_| {});
        // Offsets 16..24 are kept: "wxyzghij" against 8 X's.
        assert_eq!(r.stats().delivered_conflict_bytes, 8);
        assert_eq!(r.stats().retrans_bytes, 24);
    }

    #[test]
    fn out_of_order_then_fill() {
        let mut rig = fresh();
        rig.seg(6, b"world");
        rig.seg(11, b"!");
        assert_eq!(rig.out(), vec![]);
        assert_eq!(rig.r.buffered_bytes(), 6);
        assert_eq!(rig.r.buffered_segments(), 2);
        rig.seg(0, b"hello ");
        assert_eq!(rig.out(), vec![d(b"hello world!")]);
        assert_eq!(rig.r.buffered_bytes(), 0);
        assert_eq!(rig.stats().n_ooo_segments, 2);
        assert_eq!(rig.stats().max_ooo_bytes_seen, 6);
        assert_eq!(rig.stats().max_ooo_segments_seen, 2);
        assert_eq!(rig.stats().n_gaps, 0);

        // A segment spanning several held pieces fills only the holes.
        let mut rig = fresh();
        rig.seg(2, b"C");
        rig.seg(5, b"F");
        rig.seg(1, b"bcdefg");
        assert_eq!(rig.r.buffered_segments(), 5);
        assert_eq!(rig.r.buffered_bytes(), 6);
        assert_eq!(rig.stats().overlap_conflict_bytes, 2);
        rig.seg(0, b"a");
        assert_eq!(rig.out(), vec![d(b"abCdeFg")]);
    }

    #[test]
    fn gap_by_ack() {
        let mut rig = fresh();
        rig.seg(0, b"hello");
        rig.seg(10, b"world");
        rig.ack(10);
        assert_eq!(rig.out(), vec![d(b"hello"), g(5), d(b"world")]);
        assert_eq!(rig.stats().n_ack_gaps, 1);

        // An ACK with nothing held after the hole waits for data ...
        rig.ack(20);
        assert_eq!(rig.out(), vec![]);
        // ... so data it covers that was captured late still arrives ...
        rig.seg(15, b"12345");
        assert_eq!(rig.out(), vec![d(b"12345")]);
        // ... and data beyond a hole below it is delivered at once.
        rig.ack(30);
        rig.seg(25, b"xy");
        assert_eq!(rig.out(), vec![g(5), d(b"xy")]);
        // Data held beyond the ACK waits for the hole above the ACK.
        rig.seg(45, b"far");
        rig.ack(35);
        assert_eq!(rig.out(), vec![]);
        rig.seg(35, b"0123456789");
        assert_eq!(rig.out(), vec![g(8), d(b"0123456789far")]);
        // Stale and duplicate ACKs do nothing.
        rig.ack(3);
        rig.ack(48);
        assert_eq!(rig.out(), vec![]);
        assert_eq!(rig.stats().gap_bytes, 18);
    }

    #[test]
    fn gap_by_overflow() {
        let limits = ReassemblyLimits {
            max_ooo_bytes: 10,
            ..ReassemblyLimits::default()
        };
        let mut rig = Rig::new(limits, 1000);
        rig.seg(0, b"ab");
        rig.seg(5, b"FGHIJ");
        rig.seg(12, b"MNOPQ");
        assert_eq!(rig.r.buffered_bytes(), 10);
        rig.seg(20, b"UV");
        assert_eq!(rig.out(), vec![d(b"ab"), g(3), d(b"FGHIJ")]);
        assert_eq!(rig.stats().n_overflow_gaps, 1);
        assert_eq!(rig.r.buffered_bytes(), 7);
        rig.flush();
        assert_eq!(rig.out(), vec![g(2), d(b"MNOPQ"), g(3), d(b"UV")]);
        assert_eq!(rig.stats().n_flush_gaps, 2);

        // Too big to ever hold: the hole before it goes, the packet is
        // delivered straight through.
        let mut rig = Rig::new(limits, 1000);
        rig.seg(3, b"0123456789ABC");
        assert_eq!(rig.out(), vec![g(3), d(b"0123456789ABC")]);

        // Overflow where giving up the first hole reaches the segment: the
        // held run and the segment are delivered together, first copy wins.
        let mut rig = Rig::new(limits, 1000);
        rig.seg(2, b"cdefghij");
        rig.seg(8, b"IJKLMN");
        assert_eq!(rig.out(), vec![g(2), d(b"cdefghijKLMN")]);
        assert_eq!(rig.stats().overlap_conflict_bytes, 2);
        assert_eq!(rig.stats().n_overflow_gaps, 1);

        // The piece limit overflows the same way.
        let limits = ReassemblyLimits {
            max_ooo_segments: 2,
            ..ReassemblyLimits::default()
        };
        let mut rig = Rig::new(limits, 1000);
        rig.seg(2, b"c");
        rig.seg(4, b"e");
        rig.seg(6, b"g");
        assert_eq!(rig.out(), vec![g(2), d(b"c")]);
        assert_eq!(rig.r.buffered_segments(), 2);
        // A later segment before every held piece is delivered past its hole.
        let limits = ReassemblyLimits {
            max_ooo_segments: 1,
            ..ReassemblyLimits::default()
        };
        let mut rig = Rig::new(limits, 1000);
        rig.seg(8, b"i");
        rig.seg(3, b"de");
        assert_eq!(rig.out(), vec![g(3), d(b"de")]);
        rig.flush();
        assert_eq!(rig.out(), vec![g(3), d(b"i")]);
    }

    #[test]
    fn no_buffer_at_all_still_delivers() {
        let limits = ReassemblyLimits {
            max_ooo_bytes: 0,
            max_ooo_segments: 0,
            ..ReassemblyLimits::default()
        };
        let mut rig = Rig::new(limits, 7);
        rig.seg(4, b"efg");
        rig.seg(0, b"abcd");
        assert_eq!(rig.out(), vec![g(4), d(b"efg")]);
        assert_eq!(rig.stats().retrans_bytes, 4);
    }

    #[test]
    fn wraparound_across_2_pow_32() {
        let isn = u32::MAX - 3;
        let mut r = StreamReassembler::new(ReassemblyLimits::default());
        let mut f = Framer::default();
        r.start_at(isn);
        // Held across the wrap first, then the segment that crosses it.
        r.segment(4, b"ijkl", &mut |c| f.take(c));
        r.segment(isn.wrapping_add(12), b"mn", &mut |c| f.take(c));
        r.segment(isn, b"abcdefgh", &mut |c| f.take(c));
        check_invariants(&r);
        assert_eq!(f.evs, vec![d(b"abcdefghijklmn")]);
        assert_eq!(r.next_seq(), Some(10));
        assert_eq!(r.stream_offset(), 14);
        // A retransmission from before the wrap is still old.
        r.segment(u32::MAX, b"defg", &mut |c| f.take(c));
        assert_eq!(r.stats().retrans_bytes, 4);
        // An ACK from after the wrap gaps the hole.
        r.segment(20, b"uv", &mut |c| f.take(c));
        r.acked(20, &mut |c| f.take(c));
        assert_eq!(f.evs, vec![d(b"abcdefghijklmn"), g(10), d(b"uv")]);
        check_invariants(&r);
    }

    #[test]
    fn flush_with_holes() {
        let mut rig = fresh();
        rig.seg(0, b"ab");
        rig.seg(4, b"ef");
        rig.seg(8, b"i");
        rig.flush();
        assert_eq!(rig.out(), vec![d(b"ab"), g(2), d(b"ef"), g(2), d(b"i")]);
        assert_eq!(rig.stats().n_flush_gaps, 2);
        // A missed tail that the peer acknowledged ends the stream as a gap.
        rig.ack(12);
        rig.flush();
        assert_eq!(rig.out(), vec![g(3)]);
        assert_eq!(rig.r.stream_offset(), 12);
        // Usable after a flush.
        rig.seg(12, b"m");
        assert_eq!(rig.out(), vec![d(b"m")]);
    }

    #[test]
    fn fin_ends_the_stream_and_its_ack_is_not_a_gap() {
        // Orderly close: data, FIN, then the ACK of the FIN (one past the end).
        let mut rig = fresh();
        rig.seg(0, b"bye");
        let (f, fin_seq) = (&mut rig.f, rig.isn.wrapping_add(3));
        rig.r.fin(fin_seq, &mut |c| f.take(c));
        rig.ack(4);
        rig.flush();
        assert_eq!(rig.out(), vec![d(b"bye")]);
        assert_eq!(rig.stats().n_gaps, 0);

        // The FIN's ACK captured before the FIN: clamped all the same.
        let mut rig = fresh();
        rig.seg(0, b"bye");
        rig.ack(4);
        let (f, fin_seq) = (&mut rig.f, rig.isn.wrapping_add(3));
        rig.r.fin(fin_seq, &mut |c| f.take(c));
        check_invariants(&rig.r);
        rig.flush();
        assert_eq!(rig.out(), vec![d(b"bye")]);

        // A FIN after a missed tail: the tail is a gap, held data delivered.
        let mut rig = fresh();
        rig.seg(0, b"ab");
        rig.seg(4, b"ef");
        let (f, fin_seq) = (&mut rig.f, rig.isn.wrapping_add(10));
        rig.r.fin(fin_seq, &mut |c| f.take(c));
        check_invariants(&rig.r);
        assert_eq!(rig.out(), vec![d(b"ab"), g(2), d(b"ef"), g(4)]);
        assert_eq!(rig.r.stream_offset(), 10);
    }

    #[test]
    fn far_ahead_and_absurd_input_is_dropped_and_counted() {
        let mut rig = fresh();
        rig.seg(0, b"ab");
        let next = 2;
        // Ending past the 2^30 window: garbage, no gap, nothing held.
        rig.seg(next + (1 << 30), b"x");
        rig.seg(next + (1 << 30) - 1, b"xy");
        assert_eq!(rig.stats().n_out_of_window, 2);
        assert_eq!(rig.stats().out_of_window_bytes, 3);
        // Ending just inside it: held.
        rig.seg(next + (1 << 30) - 1, b"z");
        assert_eq!(rig.r.buffered_bytes(), 1);
        // Over 2^31 ahead reads as old (RFC 9293 §3.4).
        rig.seg(next + (1 << 31) + 5, b"old");
        assert_eq!(rig.stats().retrans_bytes, 3);
        rig.ack(next + (1 << 30) + 1);
        rig.ack(next + (1 << 31));
        assert_eq!(rig.stats().n_out_of_window_acks, 1);
        assert_eq!(rig.out(), vec![d(b"ab")]);
        assert_eq!(rig.stats().n_gaps, 0);
    }

    #[test]
    fn empty_payloads_and_unstarted_streams() {
        let mut r = StreamReassembler::new(ReassemblyLimits::default());
        let mut f = Framer::default();
        r.segment(5, b"", &mut |c| f.take(c));
        r.acked(9, &mut |c| f.take(c));
        r.flush(&mut |c| f.take(c));
        assert!(!r.is_started());
        assert_eq!(r.next_seq(), None);
        // The first data segment picks the stream up mid-way.
        r.segment(77, b"abc", &mut |c| f.take(c));
        assert!(r.is_started());
        r.segment(80, b"", &mut |c| f.take(c));
        assert_eq!(f.evs, vec![d(b"abc")]);
        let only_delivery = ReassemblyStats {
            bytes_delivered: 3,
            ..ReassemblyStats::default()
        };
        assert_eq!(r.stats(), only_delivery);
    }

    #[test]
    fn restart_discards_held_and_keeps_counting() {
        let mut rig = fresh();
        rig.seg(0, b"ab");
        rig.seg(5, b"xyz");
        rig.r.start_at(5000);
        assert_eq!(rig.stats().discarded_bytes, 3);
        assert_eq!(rig.r.buffered_bytes(), 0);
        let f = &mut rig.f;
        rig.r.segment(5000, b"new", &mut |c| f.take(c));
        check_invariants(&rig.r);
        assert_eq!(rig.out(), vec![d(b"abnew")]);
        assert_eq!(rig.r.stream_offset(), 5);
    }

    #[test]
    fn every_split_and_order_gives_the_same_stream() {
        let msg: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(37)).collect();
        for k in 1..msg.len() {
            for swap in [false, true] {
                let mut rig = fresh();
                let (a, b) = msg.split_at(k);
                if swap {
                    rig.seg(k as u64, b);
                    rig.seg(0, a);
                } else {
                    rig.seg(0, a);
                    rig.seg(k as u64, b);
                }
                assert_eq!(rig.out(), vec![d(&msg)], "split at {k}, swapped {swap}");
            }
        }
    }

    // ---- oracle: random captures against an obviously-correct model ----

    /// xorshift64*: enough randomness for shuffling, no dependency.
    struct Rng(u64);

    impl Rng {
        fn new(seed: u64) -> Self {
            Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
        }

        fn next_u64(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            x.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next_u64() % n.max(1) as u64) as usize
        }

        fn pct(&mut self, p: usize) -> bool {
            self.below(100) < p
        }

        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next_u64() as u8).collect()
        }
    }

    /// How a capture mangles the sender's segments.
    #[derive(Clone, Copy)]
    struct Shape {
        drop_pct: usize,
        dup_pct: usize,
        overlap_pct: usize,
        reorder_window: usize,
        /// Duplicates and overlaps carry different bytes from the original.
        conflict: bool,
    }

    const SHAPE: Shape = Shape {
        drop_pct: 5,
        dup_pct: 5,
        overlap_pct: 5,
        reorder_window: 24,
        conflict: false,
    };

    /// One captured segment: stream offset and bytes.
    struct Arrival {
        off: usize,
        data: Vec<u8>,
    }

    /// Cuts `stream` into segments, drops, duplicates, re-cuts overlapping
    /// copies and reorders them within a window, as a lossy capture would.
    fn capture(rng: &mut Rng, stream: &[u8], shape: Shape) -> Vec<Arrival> {
        let copy = |rng: &mut Rng, a: usize, b: usize| {
            if shape.conflict {
                rng.bytes(b - a)
            } else {
                stream[a..b].to_vec()
            }
        };
        let mut keyed = Vec::new();
        let mut off = 0;
        let mut i = 0;
        while off < stream.len() {
            // Mostly MSS-sized or smaller; now and then a GRO super-segment.
            let want = if rng.pct(5) {
                1 + rng.below(9000)
            } else {
                1 + rng.below(1448)
            };
            let end = (off + want).min(stream.len());
            let mut push = |rng: &mut Rng, a: Arrival| {
                let key = i + rng.below(shape.reorder_window);
                keyed.push((key, a));
            };
            if !rng.pct(shape.drop_pct) {
                push(
                    rng,
                    Arrival {
                        off,
                        data: stream[off..end].to_vec(),
                    },
                );
            }
            if rng.pct(shape.dup_pct) {
                let data = copy(rng, off, end);
                push(rng, Arrival { off, data });
            }
            if rng.pct(shape.overlap_pct) {
                let a = off.saturating_sub(rng.below(3000));
                let b = (end + rng.below(3000)).min(stream.len());
                let data = copy(rng, a, b);
                push(rng, Arrival { off: a, data });
            }
            off = end;
            i += 1;
        }
        keyed.sort_by_key(|(key, _)| *key);
        keyed.into_iter().map(|(_, a)| a).collect()
    }

    /// Limits that a few hundred KB of stream can never overflow.
    const ROOMY: ReassemblyLimits = ReassemblyLimits {
        max_ooo_bytes: 64 << 20,
        max_ooo_segments: 1 << 20,
        max_ahead_bytes: TCP_MAX_WINDOW_BYTES,
        max_compare_bytes: 4096,
    };

    fn isn_for(seed: u64, rng: &mut Rng) -> u32 {
        // One seed in three starts just before the wrap, so the stream
        // crosses 2^32.
        if seed.is_multiple_of(3) {
            u32::MAX - 1000 - rng.below(500) as u32
        } else {
            rng.next_u64() as u32
        }
    }

    /// Without ACKs and with room to hold everything, the output must be the
    /// stream with every byte no segment covered replaced by a gap mark, up
    /// to the last covered byte; with ACKs that never run ahead of data still
    /// to come, the same, up to the end of the stream.
    fn oracle_run(seed: u64, with_acks: bool) -> ReassemblyStats {
        let mut rng = Rng::new(seed);
        let len = 100_000 + rng.below(300_000);
        let stream = rng.bytes(len);
        let arrivals = capture(&mut rng, &stream, SHAPE);
        let isn = isn_for(seed, &mut rng);

        let mut covered = vec![false; len];
        for a in &arrivals {
            covered[a.off..a.off + a.data.len()].fill(true);
        }
        let end = if with_acks {
            len
        } else {
            covered.iter().rposition(|&c| c).map_or(0, |p| p + 1)
        };
        let model: Vec<Option<u8>> = (0..end).map(|p| covered[p].then(|| stream[p])).collect();

        // An ACK may only cover bytes whose captured copies have all arrived:
        // the lowest offset still to come bounds it.
        let mut still_to_come = vec![len; arrivals.len() + 1];
        for (i, a) in arrivals.iter().enumerate().rev() {
            still_to_come[i] = still_to_come[i + 1].min(a.off);
        }

        let mut rig = Rig::new(ROOMY, isn);
        for (i, a) in arrivals.iter().enumerate() {
            rig.seg(a.off as u64, &a.data);
            if with_acks && rng.pct(30) {
                rig.ack(still_to_come[i + 1] as u64);
            }
        }
        if with_acks {
            rig.ack(len as u64);
        }
        rig.flush();

        let got = rig.f.slots();
        assert_eq!(got.len(), model.len(), "seed {seed}: stream length");
        if let Some(p) = (0..got.len()).find(|&p| got[p] != model[p]) {
            panic!(
                "seed {seed}: first difference at offset {p}: got {:?}, model {:?}",
                got[p], model[p]
            );
        }
        let s = rig.stats();
        assert_eq!(s.bytes_delivered + s.gap_bytes, end as u64, "seed {seed}");
        assert_eq!(s.bytes_delivered, covered[..end].iter().filter(|&&c| c).count() as u64);
        assert_eq!(s.overlap_conflict_bytes, 0, "seed {seed}");
        assert_eq!(s.n_overflow_gaps, 0, "seed {seed}");
        s.clone()
    }

    /// Sums the counters the oracle runs must have exercised.
    fn exercised(runs: impl Iterator<Item = ReassemblyStats>) -> ReassemblyStats {
        runs.fold(ReassemblyStats::default(), |mut sum, s| {
            sum.n_gaps += s.n_gaps;
            sum.n_ack_gaps += s.n_ack_gaps;
            sum.n_flush_gaps += s.n_flush_gaps;
            sum.n_overflow_gaps += s.n_overflow_gaps;
            sum.n_retrans += s.n_retrans;
            sum.n_ooo_segments += s.n_ooo_segments;
            sum
        })
    }

    #[test]
    fn oracle_random_captures_without_acks() {
        let sum = exercised((0..60).map(|seed| oracle_run(seed, false)));
        assert!(sum.n_flush_gaps > 0 && sum.n_retrans > 0 && sum.n_ooo_segments > 0);
        assert_eq!(sum.n_ack_gaps, 0);
    }

    #[test]
    fn oracle_random_captures_with_acks() {
        let sum = exercised((1000..1060).map(|seed| oracle_run(seed, true)));
        assert!(sum.n_ack_gaps > 0 && sum.n_retrans > 0 && sum.n_ooo_segments > 0);
    }

    /// Copies that disagree: whatever the arrival order, each byte must come
    /// from the first segment that carried it.
    #[test]
    fn oracle_conflicting_copies_first_wins() {
        let shape = Shape {
            dup_pct: 15,
            overlap_pct: 15,
            conflict: true,
            ..SHAPE
        };
        let mut total_conflicts = 0;
        for seed in 2000..2040 {
            let mut rng = Rng::new(seed);
            let len = 50_000 + rng.below(150_000);
            let stream = rng.bytes(len);
            let arrivals = capture(&mut rng, &stream, shape);
            let isn = isn_for(seed, &mut rng);

            let mut first: Vec<Option<u8>> = vec![None; len];
            for a in &arrivals {
                for (slot, &b) in first[a.off..].iter_mut().zip(&a.data) {
                    slot.get_or_insert(b);
                }
            }
            let end = first.iter().rposition(Option::is_some).map_or(0, |p| p + 1);

            let mut rig = Rig::new(ROOMY, isn);
            for a in &arrivals {
                rig.seg(a.off as u64, &a.data);
            }
            rig.flush();
            assert_eq!(rig.f.slots(), first[..end].to_vec(), "seed {seed}");
            total_conflicts += rig.stats().overlap_conflict_bytes;
        }
        assert!(total_conflicts > 0, "conflicts never detected");
    }

    /// Tight limits: which bytes survive depends on timing, but every byte
    /// delivered must be the stream's own at its offset, the stream must be
    /// accounted for to its end, and the limits must hold after every call.
    #[test]
    fn oracle_tight_limits_never_corrupt() {
        let mut overflow_gaps = 0;
        for seed in 3000..3060 {
            let mut rng = Rng::new(seed);
            let len = 50_000 + rng.below(200_000);
            let stream = rng.bytes(len);
            let arrivals = capture(&mut rng, &stream, SHAPE);
            let isn = isn_for(seed, &mut rng);
            let limits = ReassemblyLimits {
                max_ooo_bytes: rng.below(20_000) as u32,
                max_ooo_segments: rng.below(40) as u32,
                max_ahead_bytes: TCP_MAX_WINDOW_BYTES,
                max_compare_bytes: rng.below(3000) as u32,
            };
            let mut rig = Rig::new(limits, isn);
            for a in &arrivals {
                rig.seg(a.off as u64, &a.data);
                if rng.pct(10) {
                    // Any ACK the receiver could send: up to what was sent.
                    let sent = a.off + a.data.len();
                    rig.ack(rng.below(sent + 1) as u64);
                }
            }
            rig.ack(len as u64);
            rig.flush();
            let got = rig.f.slots();
            assert_eq!(got.len(), len, "seed {seed}");
            for (p, slot) in got.iter().enumerate() {
                if let Some(b) = slot {
                    assert_eq!(*b, stream[p], "seed {seed}: corrupted byte at {p}");
                }
            }
            overflow_gaps += rig.stats().n_overflow_gaps;
        }
        assert!(overflow_gaps > 0, "limits never overflowed");
    }

    /// Issue 15: a stream switched to ranges only at any point (here:
    /// random, tight and roomy limits, conflicting copies, ACKs) keeps its
    /// position and every counter of the sighted run but the overlap
    /// conflicts, copies no byte after the switch and delivers no data.
    #[test]
    fn ranges_only_counts_what_the_full_run_counts() {
        let mut switched_with_held = 0;
        for seed in 5000..5060 {
            let mut rng = Rng::new(seed);
            let len = 50_000 + rng.below(150_000);
            let stream = rng.bytes(len);
            let shape = Shape {
                conflict: seed % 2 == 0,
                ..SHAPE
            };
            let arrivals = capture(&mut rng, &stream, shape);
            let isn = isn_for(seed, &mut rng);
            let limits = if seed % 3 == 0 {
                ReassemblyLimits {
                    max_ooo_bytes: rng.below(20_000) as u32,
                    max_ooo_segments: rng.below(40) as u32,
                    max_ahead_bytes: TCP_MAX_WINDOW_BYTES,
                    max_compare_bytes: rng.below(3000) as u32,
                }
            } else {
                ROOMY
            };
            let switch_at = rng.below(arrivals.len() + 1);
            let mut full = Rig::new(limits, isn);
            let mut blind = Rig::new(limits, isn);
            let mut data_after = 0usize;
            for (i, a) in arrivals.iter().enumerate() {
                if i == switch_at {
                    switched_with_held += usize::from(!blind.r.held.is_empty());
                    blind.r.set_ranges_only();
                    assert_eq!(blind.r.tail.buf.capacity(), 0);
                    data_after = blind.f.evs.len();
                }
                let ack = rng.pct(10).then(|| rng.below(a.off + a.data.len() + 1) as u64);
                for rig in [&mut full, &mut blind] {
                    rig.seg(a.off as u64, &a.data);
                    if let Some(ack) = ack {
                        rig.ack(ack);
                    }
                }
                assert_eq!(full.r.next, blind.r.next, "seed {seed} arrival {i}");
                assert_eq!(full.r.next_seq(), blind.r.next_seq(), "seed {seed} arrival {i}");
                assert_eq!(full.r.held_bytes, blind.r.held_bytes, "seed {seed} arrival {i}");
            }
            for rig in [&mut full, &mut blind] {
                rig.ack(len as u64);
                rig.flush();
            }
            let (f, b) = (full.stats(), blind.stats());
            assert_eq!(f.gap_bytes, b.gap_bytes, "seed {seed}");
            assert_eq!(f.retrans_bytes, b.retrans_bytes, "seed {seed}");
            assert_eq!(f.n_retrans, b.n_retrans, "seed {seed}");
            assert_eq!(f.bytes_delivered, b.bytes_delivered, "seed {seed}");
            assert_eq!(f.n_gaps, b.n_gaps, "seed {seed}");
            assert!(b.overlap_conflict_bytes <= f.overlap_conflict_bytes, "seed {seed}");
            if switch_at < arrivals.len() {
                // After the switch only gaps reach the framer, and no held
                // piece keeps bytes.
                let after = blind.f.evs.get(data_after..).unwrap_or_default();
                assert!(after.iter().all(|e| matches!(e, Ev::G(_))), "seed {seed}");
                assert!(blind.r.held.iter().all(|h| h.data.bytes().is_none()));
            }
        }
        assert!(switched_with_held > 0, "never switched with pieces held");
        assert_eq!(std::mem::size_of::<Held>(), 24);
    }

    // ---- hostile input ----

    #[test]
    fn hostile_tiny_out_of_order_segments() {
        let limits = ReassemblyLimits::default();
        // Every other byte after a hole: one held piece per byte, so the
        // piece limit is what overflows, over and over.
        let mut rig = Rig::new(limits, u32::MAX - 50_000);
        for k in 0..100_000u64 {
            rig.seg(1 + 2 * k, &[k as u8]);
        }
        assert!(rig.stats().n_overflow_gaps > 0);
        assert!(rig.r.buffered_segments() <= limits.max_ooo_segments);
        rig.flush();

        // Descending offsets: every insertion lands before all held pieces.
        let mut rig = Rig::new(limits, 0);
        for k in (0..100_000u64).rev() {
            rig.seg(1 + 2 * k, &[1]);
        }
        assert!(rig.r.buffered_segments() <= limits.max_ooo_segments);
        rig.flush();
        let s = rig.stats();
        assert_eq!(s.bytes_delivered + s.gap_bytes, rig.r.stream_offset());
    }

    #[test]
    fn hostile_random_input_never_panics_and_stays_bounded() {
        for seed in 0..4u64 {
            let mut rng = Rng::new(seed + 77);
            let limits = if seed % 2 == 0 {
                ReassemblyLimits::default()
            } else {
                ReassemblyLimits {
                    max_ooo_bytes: 4096,
                    max_ooo_segments: 16,
                    max_ahead_bytes: rng.next_u64() as u32,
                    max_compare_bytes: 64,
                }
            };
            let mut r = StreamReassembler::new(limits);
            let big = rng.bytes(70_000);
            let mut chunks = 0u64;
            let mut out = |_: Chunk<'_>| chunks += 1;
            for i in 0..100_000 {
                let next = r.next_seq().unwrap_or(0);
                let seq = match rng.below(6) {
                    0 => rng.next_u64() as u32,
                    1 => next.wrapping_add(rng.below(1 << 16) as u32),
                    2 => next.wrapping_sub(rng.below(1 << 16) as u32),
                    3 => next.wrapping_add((1 << 30) - rng.below(1 << 12) as u32),
                    4 => next.wrapping_add((1 << 31) - rng.below(3) as u32),
                    _ => next.wrapping_add(rng.below(64) as u32),
                };
                let len = match rng.below(10) {
                    0 => 0,
                    1 => rng.below(big.len() + 1),
                    _ => rng.below(64),
                };
                match rng.below(20) {
                    0 => r.acked(seq, &mut out),
                    1 if rng.pct(2) => r.fin(seq, &mut out),
                    1 if rng.pct(5) => r.flush(&mut out),
                    2 if rng.pct(1) => r.start_at(seq),
                    _ => r.segment(seq, &big[..len], &mut out),
                }
                if r.is_started() {
                    check_bounds(&r);
                    if r.held.len() <= 32 || i % 64 == 0 {
                        check_invariants(&r);
                    }
                }
            }
            r.flush(&mut out);
            check_invariants(&r);
            assert!(chunks > 0);
        }
    }

    // ---- micro-benchmark (run with --release -- --ignored --nocapture) ----

    #[test]
    #[ignore = "benchmark; run with --release -- --ignored --nocapture"]
    fn bench_in_order_throughput() {
        use std::hint::black_box;
        use std::time::Instant;

        const MSS: usize = 1448;
        let buf = Rng::new(1).bytes(64 << 20);
        let rounds = 20;

        // In order: the zero-copy fast path.
        let mut r = StreamReassembler::new(ReassemblyLimits::default());
        r.start_at(12345);
        let mut seq = 12345u32;
        let mut seen = 0usize;
        let t = Instant::now();
        for _ in 0..rounds {
            for seg in buf.chunks(MSS) {
                r.segment(black_box(seq), black_box(seg), &mut |c| {
                    if let Chunk::Data(b) = c {
                        seen += b.len();
                    }
                });
                seq = seq.wrapping_add(seg.len() as u32);
            }
        }
        let secs = t.elapsed().as_secs_f64();
        let bytes = (buf.len() * rounds) as f64;
        assert_eq!(seen as f64, bytes);
        let segs = bytes / MSS as f64;
        println!(
            "in order, {MSS}-byte segments: {:.1} GB/s, {:.2} ns/segment",
            bytes / secs / 1e9,
            secs * 1e9 / segs
        );

        // Pairwise swapped: every other segment is copied, held, released.
        let mut r = StreamReassembler::new(ReassemblyLimits::default());
        r.start_at(0);
        let mut seen = 0usize;
        let segs: Vec<&[u8]> = buf.chunks(MSS).collect();
        let t = Instant::now();
        for round in 0..rounds {
            let base = (round * buf.len()) as u32;
            let mut off = 0u32;
            for pair in segs.chunks(2) {
                let first_len = pair[0].len() as u32;
                for (j, seg) in pair.iter().enumerate().rev() {
                    let at = if j == 0 { off } else { off + first_len };
                    r.segment(base.wrapping_add(at), seg, &mut |c| {
                        if let Chunk::Data(b) = c {
                            seen += b.len();
                        }
                    });
                }
                off += pair.iter().map(|s| s.len() as u32).sum::<u32>();
            }
        }
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(seen as f64, bytes);
        println!("pairwise reordered (half copied): {:.1} GB/s", bytes / secs / 1e9);
    }

    /// Skipping superseded tail copies changes nothing anyone sees: a
    /// direction fed with and without the skips (flags from
    /// `superseded_tail_pushes` per batch) delivers the same chunks with
    /// the same counters and memory account after every call, over
    /// streams with retransmissions (some altered: conflicts), holes,
    /// reordering, ACKs, run breaks and segments larger than the tail.
    #[test]
    fn superseded_tail_copies_change_no_count() {
        let (skipped, conflicts) = check_superseded_tails(0x9e37_79b9, 40);
        assert!(skipped > 1_000, "copies skipped: {skipped}");
        assert!(conflicts > 1_000, "conflicting bytes compared: {conflicts}");
    }

    /// The same over many seeds (a bounded fuzz run of the skips):
    /// `SUPERSEDE_SEEDS=N cargo test --release --lib superseded_stress -- --ignored`.
    #[test]
    #[ignore]
    fn superseded_stress() {
        let n: u32 = std::env::var("SUPERSEDE_SEEDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(200);
        for seed in 1..=n {
            check_superseded_tails(seed.wrapping_mul(0x2545_f491) | 1, 8);
        }
    }

    /// Feeds `rounds` random streams through a reassembler with and
    /// without the skips; returns the copies skipped and the conflicting
    /// bytes counted.
    fn check_superseded_tails(seed: u32, rounds: u32) -> (usize, u64) {
        let mut x: u32 = seed;
        let mut rnd = |n: u32| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x % n.max(1)
        };
        let (src, other, dst) = (0x0a00_0001u64, 0x0a00_0003u64, 0x0a00_0002u64);
        let mut skipped = 0usize;
        let mut conflicts = 0u64;
        for round in 0..rounds {
            let cap = [4096u32, 1000, 1, 0][round as usize % 4];
            let limits = ReassemblyLimits {
                max_compare_bytes: cap,
                max_ooo_bytes: 64 * 1024,
                max_ooo_segments: 64,
                ..ReassemblyLimits::default()
            };
            let stream: Vec<u8> = (0..400_000u32).map(|_| rnd(256) as u8).collect();
            // Segments: (seq offset, len, altered, breaks, from another direction).
            let mut segs: Vec<(u32, u32, bool, bool, bool)> = Vec::new();
            let mut next = 0u32;
            while next < 300_000 {
                let len = match rnd(10) {
                    0 => 1 + rnd(40),
                    1 => 3000 + rnd(9000),
                    _ => 1448,
                };
                match rnd(20) {
                    // A retransmission of recent bytes, sometimes altered.
                    0 | 1 => {
                        let back = rnd(6000).min(next);
                        segs.push((next - back, len.min(back.max(1)), rnd(2) == 0, false, false));
                    }
                    // Out of order: the next two swapped.
                    2 => {
                        segs.push((next + len, len, false, false, false));
                        segs.push((next, len, false, false, false));
                        next += 2 * len;
                    }
                    // A hole (filled by nothing).
                    3 => next += len,
                    4 => segs.push((next, len, false, true, false)),
                    5 => segs.push((next, len, false, false, true)),
                    _ => {
                        segs.push((next, len, false, false, false));
                        next += len;
                    }
                }
            }
            let base: u32 = rnd(u32::MAX);
            let mut plain = StreamReassembler::new(limits);
            let mut fast = StreamReassembler::new(limits);
            let mut at = 0;
            while at < segs.len() {
                let batch = &segs[at..(at + 1 + rnd(300) as usize).min(segs.len())];
                at += batch.len();
                let views: Vec<Option<SegmentView>> = batch
                    .iter()
                    .map(|&(off, len, _, breaks, foreign)| {
                        Some(SegmentView {
                            addrs: (if foreign { other } else { src }) << 32 | dst,
                            ports: 1 << 16 | 2,
                            seq: base.wrapping_add(off),
                            len,
                            breaks,
                        })
                    })
                    .collect();
                let flags = superseded_tail_pushes(cap, views.len(), |k| views[k]);
                for (k, &(off, len, altered, _, foreign)) in batch.iter().enumerate() {
                    if foreign {
                        // Another direction's segment: not fed here (it
                        // only shows that other directions do not link).
                        continue;
                    }
                    let from = off as usize;
                    let mut payload = stream[from..from + len as usize].to_vec();
                    if altered {
                        payload[0] ^= 0x5a;
                    }
                    let seq = base.wrapping_add(off);
                    let (mut a, mut b) = (Vec::new(), Vec::new());
                    plain.segment(seq, &payload, &mut |c| a.push(format!("{c:?}")));
                    let flag = flags[k];
                    skipped += usize::from(flag && cap > 0);
                    fast.segment_with(seq, &payload, || flag, &mut |c| b.push(format!("{c:?}")));
                    assert_eq!(a, b, "round {round}, segment at {off}");
                    if rnd(50) == 0 {
                        let ack = seq.wrapping_add(len + rnd(3000));
                        plain.acked(ack, &mut |c| a.push(format!("{c:?}")));
                        fast.acked(ack, &mut |c| b.push(format!("{c:?}")));
                        assert_eq!(a, b, "round {round}, ack {ack}");
                    }
                    assert_eq!(plain.stats(), fast.stats(), "round {round}, segment at {off}");
                    assert_eq!(plain.heap_bytes(), fast.heap_bytes(), "round {round}");
                }
            }
            let (mut a, mut b) = (Vec::new(), Vec::new());
            plain.flush(&mut |c| a.push(format!("{c:?}")));
            fast.flush(&mut |c| b.push(format!("{c:?}")));
            assert_eq!(a, b);
            assert_eq!(plain.stats(), fast.stats(), "round {round}");
            conflicts += plain.stats().overlap_conflict_bytes;
        }
        (skipped, conflicts)
    }
}
