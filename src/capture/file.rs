//! pcap and pcapng record parsing over a byte stream.
//!
//! This is the inner loop of [`super::CaptureReader`]: it owns one large read
//! buffer, pulls bytes from any [`Read`] (file, stdin, a decompressor; none of
//! them needs to be seekable) and hands out one record at a time as a slice of
//! that buffer; the caller pins the records it keeps, and the buffer itself
//! becomes the batch's data (see [`InBuf`]), so frames are not copied.
//!
//! # Formats
//!
//! * pcap (libpcap savefile, draft-ietf-opsawg-pcap): a 24-byte file header
//!   (magic, version, zone, sigfigs, snaplen, link type) then records of a
//!   16-byte header (seconds, fraction, captured length, original length) and
//!   the captured bytes. The magic tells the byte order and whether the
//!   fraction counts microseconds (`a1b2c3d4`) or nanoseconds (`a1b23c4d`).
//!   `a1b2cd34` is Kuznetsov's "modified" pcap whose record header carries 8
//!   more bytes (interface index, protocol, packet type, padding) that we skip.
//!   Only the low 16 bits of the link-type field are the link type; the upper
//!   bits carry FCS information that readers must mask off.
//!   Files older than version 2.3 may have the two lengths swapped, as libpcap
//!   notes; we swap them back when the captured one is the larger.
//! * pcapng (draft-ietf-opsawg-pcapng): a sequence of blocks, each
//!   `type u32, total_length u32, body, total_length u32`, where total_length
//!   is a multiple of 4 and at least 12. A Section Header Block (SHB) starts
//!   every section, gives the byte order through its byte-order magic
//!   `1a2b3c4d`, and forgets every interface of the previous section.
//!   Interface Description Blocks (IDB) number the interfaces of a section in
//!   order and give each its link type, snaplen and the options
//!   `if_tsresol` (code 9: 10^-n seconds, or 2^-n when the top bit is set;
//!   default 10^-6) and `if_tsoffset` (code 14: seconds added to every
//!   timestamp). Packets come in Enhanced Packet Blocks (EPB), Simple Packet
//!   Blocks (SPB: interface 0, no timestamp, captured length =
//!   min(original length, snaplen, block room)) and obsolete Packet Blocks
//!   (OPB, a 16-bit interface id). Every other block (name resolution,
//!   interface statistics, decryption secrets, custom, unknown) is skipped by
//!   its length.
//!
//! # Invariants
//!
//! * No input can make this code panic: every read of a header field goes
//!   through a bounds-checked accessor, and every length taken from the file
//!   is checked against [`ReaderLimits`] before the buffer grows to hold it,
//!   so the buffer never exceeds twice its block target (a batch's bytes
//!   plus an eighth plus one read), or twice the batch's frame bytes and
//!   the framing between neighbouring frames (at most `MAX_RUN_GAP` bytes
//!   a frame) plus one `max_block_len` record plus one read when more is
//!   needed.
//! * A record that cannot be trusted ends the file: a pcap record header with
//!   impossible lengths (no way to find the next record), a pcapng block whose
//!   length is malformed or whose trailing copy disagrees. A pcapng packet
//!   block whose framing is sound but whose content is not (unknown
//!   interface, lengths that do not fit) is skipped and the file goes on.
//!   Both cases count in `n_bad_blocks`; the first is described in
//!   `bad_block_detail`.
//! * A stream that ends inside a record or block sets `truncated_tail`;
//!   everything before it has been delivered.
//! * Frame numbers count well-formed packet records from 1, the way
//!   Wireshark's `frame.number` does; skipped malformed blocks take none.
//! * Timestamps are microseconds since the Unix epoch, rounded toward
//!   negative infinity when the file is finer than that.

use std::io::{self, Read};

use super::{FrameMeta, ReaderLimits, ReaderStats};

/// pcap magic, microsecond timestamps.
pub(crate) const PCAP_MAGIC_US: u32 = 0xa1b2_c3d4;
/// pcap magic, nanosecond timestamps.
pub(crate) const PCAP_MAGIC_NS: u32 = 0xa1b2_3c4d;
/// Kuznetsov's modified pcap (microseconds, 24-byte record headers).
pub(crate) const PCAP_MAGIC_MODIFIED: u32 = 0xa1b2_cd34;
/// pcapng Section Header Block type; the same bytes in both byte orders.
pub(crate) const PCAPNG_SHB: u32 = 0x0a0d_0d0a;

const PCAPNG_BYTE_ORDER_MAGIC: u32 = 0x1a2b_3c4d;
const BLOCK_IDB: u32 = 1;
const BLOCK_OPB: u32 = 2;
const BLOCK_SPB: u32 = 3;
const BLOCK_EPB: u32 = 6;

/// Length of the pcap file header.
const PCAP_FILE_HEADER_LEN: usize = 24;
/// Length of a standard pcap record header.
const PCAP_RECORD_HEADER_LEN: usize = 16;
/// Length of a modified-pcap record header (16 + ifindex, protocol, type, pad).
const PCAP_MODIFIED_RECORD_HEADER_LEN: usize = 24;
/// Smallest pcapng block: type, length, trailing length.
const PCAPNG_MIN_BLOCK_LEN: u32 = 12;
/// Smallest SHB: 12 framing bytes + byte-order magic, versions, section length.
const PCAPNG_MIN_SHB_LEN: u32 = 28;
/// Fixed fields of an EPB or OPB body before the packet data.
const PACKET_BLOCK_FIXED_LEN: usize = 20;
/// Fixed fields of an IDB body before its options.
const IDB_FIXED_LEN: usize = 8;
/// if_tsresol option code.
const OPT_IF_TSRESOL: u16 = 9;
/// if_tsoffset option code.
const OPT_IF_TSOFFSET: u16 = 14;
/// opt_endofopt.
const OPT_END: u16 = 0;

/// Byte order of the fields of a pcap file or of one pcapng section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Endian {
    Little,
    Big,
}

impl Endian {
    fn u16(self, b: [u8; 2]) -> u16 {
        match self {
            Endian::Little => u16::from_le_bytes(b),
            Endian::Big => u16::from_be_bytes(b),
        }
    }

    fn u32(self, b: [u8; 4]) -> u32 {
        match self {
            Endian::Little => u32::from_le_bytes(b),
            Endian::Big => u32::from_be_bytes(b),
        }
    }

    fn u64(self, b: [u8; 8]) -> u64 {
        match self {
            Endian::Little => u64::from_le_bytes(b),
            Endian::Big => u64::from_be_bytes(b),
        }
    }
}

/// `N` bytes at `off`, or `None` past the end (never panics).
fn bytes_at<const N: usize>(b: &[u8], off: usize) -> Option<[u8; N]> {
    b.get(off..off.checked_add(N)?)?.try_into().ok()
}

fn u16_at(e: Endian, b: &[u8], off: usize) -> Option<u16> {
    bytes_at::<2>(b, off).map(|x| e.u16(x))
}

fn u32_at(e: Endian, b: &[u8], off: usize) -> Option<u32> {
    bytes_at::<4>(b, off).map(|x| e.u32(x))
}

fn u64_at(e: Endian, b: &[u8], off: usize) -> Option<u64> {
    bytes_at::<8>(b, off).map(|x| e.u64(x))
}

/// The byte stream under the parser, and whether its errors can be content
/// errors of a decompressor rather than I/O failures.
pub(crate) struct Source {
    pub(crate) inner: Box<dyn Read + Send>,
    /// True when `inner` is a decompressor: its errors without an OS error
    /// code mean corrupt or truncated compressed data, which is malformed
    /// content (counted, ends the file), not an I/O failure.
    pub(crate) compressed: bool,
}

/// Largest single `read()` asked of the source, whatever `read_buf_bytes`
/// says: it bounds the bytes read past the end of a batch (copied into the
/// next block, see [`InBuf::take_block`]) and keeps every offset into a
/// block within `u32` (2 GiB of frames + a 1 GiB record + this < 4 GiB).
const MAX_READ_CHUNK: usize = 64 << 20;

/// Largest gap between two pinned frames that still keeps them in one
/// [`Run`]: a pcap record header (16 or 24 bytes) or a pcapng packet
/// block's framing (28 to 35 bytes, a few bytes of options). Compaction
/// moves a run whole, gaps included, so a compacted block holds at most
/// this many bytes per frame beyond the frames themselves.
const MAX_RUN_GAP: usize = 64;

/// Neighbouring frames pinned for a batch: the bytes `off..off + len` of
/// the buffer hold `frames` frames (the first starts at `off`, the last
/// ends at `off + len`) and the record framing between them. Each frame's
/// `data_start` is written once, when it is pinned; `moved` counts the
/// bytes compaction has since moved the run toward the front, which
/// [`InBuf::take_block`] takes off them. One run per stretch of records
/// rather than one entry per frame: pinning a frame that follows the last
/// one only moves the run's end.
#[derive(Clone, Copy, Debug)]
struct Run {
    off: usize,
    len: usize,
    frames: usize,
    moved: usize,
}

/// The read buffer, which is also the data of the batch being filled.
///
/// `buf[pos..end]` holds bytes read but not yet consumed. Records are parsed
/// in place: a frame kept for the batch is *pinned* (its offset in `buf`
/// becomes its `data_start`, and its range joins the batch's [`Run`]s) and
/// stays where it was read, so that when the batch is complete
/// the whole buffer becomes the batch's data ([`InBuf::take_block`]) and
/// only the bytes read past the batch's last record are copied, into the
/// next block. Without pinned frames, consumed bytes are discarded as in any
/// read buffer. With pinned frames the buffer grows up to twice its block
/// target; past that (a file of mostly skipped blocks or filtered-out
/// frames) the pinned runs are packed to the front (one copy, as a
/// copying reader would make), so a block holds at most about twice the
/// batch's frame bytes and the framing between neighbouring frames, plus
/// one record plus one read.
pub(crate) struct InBuf {
    buf: Vec<u8>,
    pos: usize,
    end: usize,
    /// Stream offset of `buf[0]`, for messages about where a bad block is.
    base: u64,
    eof: bool,
    /// Bytes asked of the source per `read()`.
    read_chunk: usize,
    /// Size a block is given (and grows to) for one batch; see
    /// [`InBuf::set_block_target`].
    block_target: usize,
    /// The batch's frames as runs of neighbouring frames, in order (see
    /// [`Run`]): what compaction moves and what it shifted.
    runs: Vec<Run>,
    /// Frames pinned for the batch being filled.
    n_pinned: usize,
    /// Sum of the pinned lengths.
    pinned_bytes: usize,
    /// Sum of the runs' lengths: the pinned frames and the framing
    /// between neighbours, what a compaction keeps.
    run_bytes: usize,
    /// Whether a compaction moved frames of the batch being filled (their
    /// `data_start`s are put right in [`InBuf::take_block`]).
    moved: bool,
    /// Runs a compaction moved, for the tests to see that it happened.
    #[cfg(test)]
    n_runs_moved: u64,
    /// The batch's bounds (see [`InBuf::set_block_target`]): with
    /// `record_avg` they size the reads near a batch's end.
    batch_bytes: usize,
    batch_frames: usize,
    /// Stream bytes per pinned frame in the last batch (record headers and
    /// skipped records included); 0 before the first batch ends.
    record_avg: usize,
    /// Stream offset where the current batch began.
    batch_began: u64,
}

impl InBuf {
    pub(crate) fn new(capacity: usize) -> Self {
        let read_chunk = capacity.clamp(1, MAX_READ_CHUNK);
        InBuf {
            buf: vec![0; read_chunk],
            pos: 0,
            end: 0,
            base: 0,
            eof: false,
            read_chunk,
            block_target: read_chunk,
            runs: Vec::new(),
            n_pinned: 0,
            pinned_bytes: 0,
            run_bytes: 0,
            moved: false,
            #[cfg(test)]
            n_runs_moved: 0,
            batch_bytes: usize::MAX,
            batch_frames: usize::MAX,
            record_avg: 0,
            batch_began: 0,
        }
    }

    /// The unconsumed bytes.
    pub(crate) fn avail(&self) -> &[u8] {
        self.buf.get(self.pos..self.end).unwrap_or(&[])
    }

    fn avail_len(&self) -> usize {
        self.end.saturating_sub(self.pos)
    }

    /// Stream offset of the first unconsumed byte.
    fn offset(&self) -> u64 {
        self.base.saturating_add(self.pos as u64)
    }

    fn consume(&mut self, n: usize) {
        self.pos = self.pos.saturating_add(n).min(self.end);
    }

    /// Sets the block size for batches of up to `batch_bytes` frame bytes
    /// and `batch_frames` frames: those bytes, an eighth more for record
    /// headers, and one read.
    pub(crate) fn set_block_target(&mut self, batch_bytes: usize, batch_frames: usize) {
        // A block never starts larger than this, whatever `batch_bytes`
        // says; it grows only as records arrive.
        let b = batch_bytes.min(MAX_READ_CHUNK);
        self.block_target = b.saturating_add(b / 8).saturating_add(self.read_chunk);
        self.batch_bytes = batch_bytes;
        self.batch_frames = batch_frames;
    }

    /// Bytes to ask of the source when `short` more are needed. A full
    /// read, except in a batch under way: what a read brings beyond the
    /// batch's last record is copied into the next block
    /// ([`InBuf::take_block`]), half a read per batch on average, so a
    /// read is cut to what the rest of the batch should take (its frames
    /// left at the last batch's bytes per frame, or its bytes left) and a
    /// page more. An estimate that falls short costs one more read, never
    /// a wrong batch: batches end where records say. (An eighth more, as
    /// before, left 15.8 MB to copy on mixed-250m in 1,675 reads; without
    /// it 8.9 MB in 1,734: bench/README.md "Session 13 — reader".)
    fn read_size(&self, short: usize) -> usize {
        let mut want = self.read_chunk;
        if self.n_pinned > 0 && self.record_avg > 0 {
            let frames_left = self.batch_frames.saturating_sub(self.n_pinned);
            let bytes_left = self.batch_bytes.saturating_sub(self.pinned_bytes);
            let est = frames_left
                .saturating_mul(self.record_avg)
                .min(bytes_left.saturating_add(bytes_left / 8))
                .saturating_sub(self.avail_len());
            want = want.min(est.saturating_add(4096));
        }
        want.max(short)
    }

    /// Keeps the frame at `buf[off..off + len]` (already consumed) for the
    /// batch; its offset in the block, for its [`FrameMeta::data_start`],
    /// or `None` when the range is not in the buffer or not addressable by
    /// a `u32` (unreachable with the clamped limits).
    pub(crate) fn pin(&mut self, off: usize, len: usize) -> Option<u32> {
        let end = off.checked_add(len).filter(|&e| e <= self.pos)?;
        u32::try_from(end).ok()?;
        self.add_run(off, end, 1, len);
        u32::try_from(off).ok()
    }

    /// Adds `frames` frames (`bytes` of them) lying in `buf[off..end]` to
    /// the batch: they extend the last run when they follow it closely
    /// enough (at most [`MAX_RUN_GAP`] bytes after it) and it was not
    /// moved, else they start a run.
    #[inline]
    fn add_run(&mut self, off: usize, end: usize, frames: usize, bytes: usize) {
        self.n_pinned += frames;
        self.pinned_bytes += bytes;
        if let Some(last) = self.runs.last_mut() {
            let last_end = last.off + last.len;
            if last.moved == 0 && off >= last_end && off - last_end <= MAX_RUN_GAP {
                self.run_bytes += end - last_end;
                last.len = end - last.off;
                last.frames += frames;
                return;
            }
        }
        self.run_bytes += end - off;
        self.runs.push(Run {
            off,
            len: end - off,
            frames,
            moved: 0,
        });
    }

    /// Ends the batch: returns the block holding its pinned frames, whose
    /// `data_start`s (`frames`: the batch's frames, in pin order) are set
    /// right where a compaction moved them. The unconsumed bytes move to
    /// the front of `fresh` (a recycled block, or an empty vector), which
    /// becomes the read buffer.
    pub(crate) fn take_block(&mut self, mut fresh: Vec<u8>, frames: &mut [FrameMeta]) -> Vec<u8> {
        let rem = self.avail_len();
        let want = self.block_target.max(rem.saturating_add(self.read_chunk));
        if fresh.len() < want {
            if fresh.capacity() >= want {
                fresh.resize(want, 0);
            } else {
                // Zeroed allocation: fresh pages, no memset.
                fresh = vec![0; want];
            }
        }
        if let (Some(dst), Some(src)) = (fresh.get_mut(..rem), self.buf.get(self.pos..self.end)) {
            dst.copy_from_slice(src);
        }
        let block = std::mem::replace(&mut self.buf, fresh);
        self.base = self.base.saturating_add(self.pos as u64);
        self.pos = 0;
        self.end = rem;
        if self.moved {
            let mut i = 0usize;
            for r in &self.runs {
                let run = frames.get_mut(i..).unwrap_or_default();
                let n = r.frames.min(run.len());
                if r.moved > 0 {
                    for m in run.iter_mut().take(n) {
                        // Moved toward the front: never below 0.
                        m.data_start = m.data_start.saturating_sub(r.moved as u32);
                    }
                }
                i += n;
            }
        }
        let began = std::mem::replace(&mut self.batch_began, self.base);
        if let Some(avg) = self.base.saturating_sub(began).checked_div(self.n_pinned as u64) {
            self.record_avg = usize::try_from(avg).unwrap_or(usize::MAX);
        }
        self.runs.clear();
        self.n_pinned = 0;
        self.pinned_bytes = 0;
        self.run_bytes = 0;
        self.moved = false;
        block
    }

    /// Packs the pinned runs to the front of the buffer, then the
    /// unconsumed bytes behind them.
    fn compact_pinned(&mut self) {
        let mut cur = 0;
        for r in &mut self.runs {
            if r.off > cur {
                self.buf.copy_within(r.off..r.off + r.len, cur);
                r.moved += r.off - cur;
                self.moved = true;
                #[cfg(test)]
                {
                    self.n_runs_moved += 1;
                }
            }
            r.off = cur;
            cur += r.len;
        }
        let rem = self.avail_len();
        self.buf.copy_within(self.pos..self.end, cur);
        self.base = self.base.saturating_add((self.pos - cur) as u64);
        self.pos = cur;
        self.end = cur + rem;
    }

    /// Makes at least `need` bytes available; `Ok(false)` when the stream
    /// ends first. Callers bound `need` by the limits before calling.
    #[inline]
    pub(crate) fn fill(&mut self, src: &mut Source, st: &mut ReaderStats, need: usize) -> io::Result<bool> {
        if self.avail_len() >= need {
            return Ok(true);
        }
        self.fill_slow(src, st, need)
    }

    #[inline(never)]
    fn fill_slow(&mut self, src: &mut Source, st: &mut ReaderStats, need: usize) -> io::Result<bool> {
        if self.eof {
            return Ok(false);
        }
        if self.n_pinned == 0 {
            // Nothing to keep: move the partial record to the front when it
            // would not fit behind `pos`, or for free when nothing is
            // pending, so reads stay large.
            if self.pos == self.end || self.buf.len().saturating_sub(self.pos) < need {
                self.buf.copy_within(self.pos..self.end, 0);
                self.base = self.base.saturating_add(self.pos as u64);
                self.end -= self.pos;
                self.pos = 0;
            }
        } else if self.buf.len().saturating_sub(self.pos) < need {
            // The batch's frames stay in place: grow the block (large
            // reallocations remap pages rather than copy them), up to twice
            // its target; beyond, pack the frames instead, unless that
            // would free less than half of what lies before `pos` (the
            // runs keep the record framing between neighbouring frames:
            // a batch of tiny frames is mostly framing, and packing it
            // again at every read would copy it again and again). So the
            // block stays within twice its target, or twice the runs'
            // bytes (the batch's frames and up to `MAX_RUN_GAP` bytes per
            // frame) plus one record and one read.
            let grown = self
                .pos
                .saturating_add(need)
                .saturating_add(self.read_chunk)
                .max(self.block_target);
            if grown <= self.block_target.saturating_mul(2) || self.run_bytes >= self.pos / 2 {
                self.buf.resize(grown, 0);
            } else {
                self.compact_pinned();
            }
        }
        let min_len = self.pos.saturating_add(need);
        if self.buf.len() < min_len {
            self.buf.resize(min_len, 0);
        }
        while self.avail_len() < need {
            let want = self.read_size(need - self.avail_len());
            let stop = self.end.saturating_add(want).min(self.buf.len());
            let Some(dst) = self.buf.get_mut(self.end..stop) else {
                break;
            };
            let room = dst.len();
            match src.inner.read(dst) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => self.end += n.min(room),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if src.compressed && e.raw_os_error().is_none() => {
                    // Corrupt or cut compressed data: the capture ends here,
                    // like a truncated file, and the reason is kept.
                    if st.stream_error.is_none() {
                        st.stream_error = Some(e.to_string());
                    }
                    self.eof = true;
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(self.avail_len() >= need)
    }
}

/// Timestamp unit of one interface, reduced to one cheap operation that maps
/// a raw count to microseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TsScale {
    /// Units coarser than 1 µs: multiply.
    Mul(u64),
    /// Units of 10^-n s with n > 6: floor-divide.
    Div(u64),
    /// Units of 2^-n s: times 10^6, then shift right by n (a floor).
    Shift(u32),
    /// Units so fine (10^-n, n > 25) that every 64-bit count is under 1 µs.
    Zero,
}

impl TsScale {
    const MICROS: TsScale = TsScale::Mul(1);

    /// From the `if_tsresol` byte. Every byte value has a meaning, so this
    /// never fails.
    fn from_tsresol(v: u8) -> TsScale {
        if v & 0x80 == 0 {
            let n = u32::from(v);
            if n <= 6 {
                TsScale::Mul(10u64.pow(6 - n))
            } else {
                10u64.checked_pow(n - 6).map_or(TsScale::Zero, TsScale::Div)
            }
        } else {
            TsScale::Shift(u32::from(v & 0x7f))
        }
    }

    #[inline]
    fn to_us(self, t: u64) -> i64 {
        // Nanoseconds and microseconds are nearly every file: dividing by a
        // constant compiles to a multiply, a runtime divisor to a slow div.
        match self {
            TsScale::Div(1000) => i64::try_from(t / 1000).unwrap_or(i64::MAX),
            TsScale::Mul(1) => i64::try_from(t).unwrap_or(i64::MAX),
            _ => self.to_us_general(t),
        }
    }

    #[inline(never)]
    fn to_us_general(self, t: u64) -> i64 {
        let us: u128 = match self {
            TsScale::Mul(m) => u128::from(t) * u128::from(m),
            TsScale::Div(d) => u128::from(t / d.max(1)),
            TsScale::Shift(n) => (u128::from(t) * 1_000_000) >> n.min(127),
            TsScale::Zero => 0,
        };
        i64::try_from(us).unwrap_or(i64::MAX)
    }
}

/// One capture interface: the pcap file itself, or one pcapng IDB.
#[derive(Clone, Copy, Debug)]
struct Iface {
    link_type: u16,
    snaplen: u32,
    scale: TsScale,
    offset_us: i64,
    /// False for an IDB too short to hold its fixed fields: it keeps its
    /// place in the numbering, and packets on it are skipped as bad.
    valid: bool,
    /// Whether libpcap knows the link type (see `n_unknown_link_type`).
    known: bool,
}

#[derive(Clone, Copy, Debug)]
enum Format {
    Pcap {
        endian: Endian,
        nanos: bool,
        record_header_len: usize,
        /// Pre-2.3 files may have captured and original length swapped.
        maybe_swapped_lens: bool,
    },
    Pcapng {
        endian: Endian,
    },
}

/// Which container format the stream holds (from its first four bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaptureFormat {
    /// libpcap savefile (any byte order, µs or ns, or modified).
    Pcap,
    /// pcapng.
    PcapNg,
}

impl CaptureFormat {
    /// Recognises the first four bytes of a capture.
    pub(crate) fn detect(head: [u8; 4]) -> Option<CaptureFormat> {
        let le = u32::from_le_bytes(head);
        let be = u32::from_be_bytes(head);
        if [PCAP_MAGIC_US, PCAP_MAGIC_NS, PCAP_MAGIC_MODIFIED]
            .iter()
            .any(|&m| m == le || m == be)
        {
            Some(CaptureFormat::Pcap)
        } else if le == PCAPNG_SHB {
            Some(CaptureFormat::PcapNg)
        } else {
            None
        }
    }
}

/// One packet record, borrowed from the read buffer.
pub(crate) struct Record<'a> {
    pub(crate) ts_us: i64,
    pub(crate) frame_no: u64,
    pub(crate) link_type: u16,
    pub(crate) orig_len: u32,
    pub(crate) data: &'a [u8],
    /// Offset of `data` in the read buffer, for [`Parser::pin`].
    pub(crate) off: usize,
}

/// What [`Parser::next`] found.
pub(crate) enum Step<'a> {
    Frame(Record<'a>),
    /// The next frame is larger than the room the caller gave; it stays
    /// buffered for the next call.
    NoRoom,
    /// End of the capture (clean, truncated, or stopped at a bad record).
    End,
}

/// Outcome of one scan, as positions rather than borrows so that the loop
/// over skipped blocks needs no borrow of the buffer.
enum Scan {
    Frame {
        off: usize,
        cap_len: usize,
        orig_len: u32,
        ts_us: i64,
        link_type: u16,
        frame_no: u64,
    },
    /// A block or header was handled; look again.
    Continue,
    /// Priming stopped in front of the first packet block.
    AtPacket,
    NoRoom,
    End,
}

/// The record parser: format state, interfaces of the current section, and
/// the read buffer.
pub(crate) struct Parser {
    inb: InBuf,
    format: Format,
    ifaces: Vec<Iface>,
    limits: ReaderLimits,
    done: bool,
    /// Whether the pcap file header or the first pcapng SHB was accepted.
    header_done: bool,
    /// Timestamp of the last record, given to SPBs, which carry none, so
    /// that packet time does not jump back to 1970.
    last_ts_us: Option<i64>,
}

/// Whether libpcap names a link type; memoised per interface, not per frame.
type KnownFn = fn(u16) -> bool;

impl Parser {
    /// Whether the next record (pcap) or block (pcapng) is whole in the
    /// read buffer, so that parsing it needs no read (or the stream has
    /// ended). A stream read as it arrives (stdin) hands over its batch
    /// instead of waiting for a record that is not there yet.
    pub(crate) fn next_record_buffered(&self) -> bool {
        if self.done {
            return true;
        }
        let a = self.inb.avail();
        match self.format {
            Format::Pcap {
                endian,
                record_header_len: hl,
                maybe_swapped_lens,
                ..
            } => {
                let (Some(cap), Some(orig)) = (u32_at(endian, a, 8), u32_at(endian, a, 12)) else {
                    return false;
                };
                let cap = if maybe_swapped_lens { cap.min(orig) } else { cap };
                a.len() >= hl.saturating_add(cap as usize)
            }
            Format::Pcapng { endian } => u32_at(endian, a, 4).is_some_and(|len| a.len() >= len as usize),
        }
    }

    /// A parser over `inb`, which already holds the stream's first bytes.
    pub(crate) fn new(format: CaptureFormat, inb: InBuf, limits: ReaderLimits) -> Parser {
        let head = bytes_at::<4>(inb.avail(), 0).unwrap_or([0; 4]);
        let format = match format {
            CaptureFormat::Pcap => {
                let endian = if [PCAP_MAGIC_US, PCAP_MAGIC_NS, PCAP_MAGIC_MODIFIED].contains(&u32::from_le_bytes(head))
                {
                    Endian::Little
                } else {
                    Endian::Big
                };
                let magic = endian.u32(head);
                Format::Pcap {
                    endian,
                    nanos: magic == PCAP_MAGIC_NS,
                    record_header_len: if magic == PCAP_MAGIC_MODIFIED {
                        PCAP_MODIFIED_RECORD_HEADER_LEN
                    } else {
                        PCAP_RECORD_HEADER_LEN
                    },
                    maybe_swapped_lens: false,
                }
            }
            // Replaced by the first SHB's byte-order magic.
            CaptureFormat::PcapNg => Format::Pcapng { endian: Endian::Little },
        };
        Parser {
            inb,
            format,
            ifaces: Vec::new(),
            limits,
            done: false,
            header_done: false,
            last_ts_us: None,
        }
    }

    /// See [`InBuf::set_block_target`].
    pub(crate) fn set_block_target(&mut self, batch_bytes: usize, batch_frames: usize) {
        self.inb.set_block_target(batch_bytes, batch_frames);
    }

    /// Keeps the record just returned by [`Parser::next`] (its `off` and
    /// length) for the batch being filled; see [`InBuf::pin`].
    pub(crate) fn pin(&mut self, off: usize, len: usize) -> Option<u32> {
        self.inb.pin(off, len)
    }

    /// Ends the batch; see [`InBuf::take_block`].
    pub(crate) fn take_block(&mut self, fresh: Vec<u8>, frames: &mut [FrameMeta]) -> Vec<u8> {
        self.inb.take_block(fresh, frames)
    }

    /// Distinct link types of the interfaces known so far.
    pub(crate) fn link_types(&self) -> Vec<u16> {
        let mut v: Vec<u16> = self.ifaces.iter().filter(|i| i.valid).map(|i| i.link_type).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Reads the pcap file header, or for pcapng every block up to the first
    /// packet block, so that the link types present at the start are known
    /// when the filter is compiled. `Err` is a one-line reason why the
    /// stream is not a usable capture at all.
    pub(crate) fn prime(
        &mut self,
        src: &mut Source,
        st: &mut ReaderStats,
        known: KnownFn,
    ) -> io::Result<Result<(), String>> {
        if let Format::Pcap { .. } = self.format {
            return self.read_pcap_header(src, st, known);
        }
        loop {
            match self.scan_pcapng(src, st, usize::MAX, true, known)? {
                Scan::Continue => continue,
                Scan::AtPacket => break,
                // A bad or cut block before the first packet ends the file
                // now, so that it is counted once. (Frame and NoRoom cannot
                // happen while priming.)
                Scan::Frame { .. } | Scan::NoRoom | Scan::End => {
                    self.done = true;
                    break;
                }
            }
        }
        if self.header_done {
            Ok(Ok(()))
        } else {
            let why = st
                .bad_block_detail
                .clone()
                .unwrap_or_else(|| "truncated pcapng section header block".to_string());
            Ok(Err(why))
        }
    }

    fn read_pcap_header(
        &mut self,
        src: &mut Source,
        st: &mut ReaderStats,
        known: KnownFn,
    ) -> io::Result<Result<(), String>> {
        let Format::Pcap { endian, .. } = self.format else {
            return Ok(Err("internal: not a pcap stream".to_string()));
        };
        if !self.inb.fill(src, st, PCAP_FILE_HEADER_LEN)? {
            self.done = true;
            return Ok(Err(format!(
                "truncated pcap file header ({} of {PCAP_FILE_HEADER_LEN} bytes)",
                self.inb.avail_len()
            )));
        }
        let h = self.inb.avail();
        let major = u16_at(endian, h, 4).unwrap_or(0);
        let minor = u16_at(endian, h, 6).unwrap_or(0);
        let snaplen = u32_at(endian, h, 16).unwrap_or(0);
        // Only the low 16 bits are the link type; the rest is FCS info.
        let link_type = (u32_at(endian, h, 20).unwrap_or(0) & 0xffff) as u16;
        if major != 2 {
            self.done = true;
            return Ok(Err(format!("pcap version {major}.{minor} is not supported")));
        }
        if let Format::Pcap { maybe_swapped_lens, .. } = &mut self.format {
            *maybe_swapped_lens = minor < 3;
        }
        self.inb.consume(PCAP_FILE_HEADER_LEN);
        self.ifaces.push(Iface {
            link_type,
            snaplen,
            scale: TsScale::MICROS,
            offset_us: 0,
            valid: true,
            known: known(link_type),
        });
        st.n_interfaces += 1;
        self.header_done = true;
        Ok(Ok(()))
    }

    /// The next packet record whose captured length is at most `room`
    /// (callers pass `usize::MAX` when their batch is empty, so that one
    /// frame always fits).
    pub(crate) fn next<'a>(
        &'a mut self,
        src: &mut Source,
        st: &mut ReaderStats,
        room: usize,
        known: KnownFn,
    ) -> io::Result<Step<'a>> {
        if self.done || !self.header_done {
            return Ok(Step::End);
        }
        let scan = loop {
            let s = match self.format {
                Format::Pcap { .. } => self.scan_pcap(src, st, room)?,
                Format::Pcapng { .. } => self.scan_pcapng(src, st, room, false, known)?,
            };
            match s {
                Scan::Continue | Scan::AtPacket => continue,
                other => break other,
            }
        };
        match scan {
            Scan::Frame {
                off,
                cap_len,
                orig_len,
                ts_us,
                link_type,
                frame_no,
            } => {
                let data = off
                    .checked_add(cap_len)
                    .and_then(|e| self.inb.buf.get(off..e))
                    .unwrap_or(&[]);
                Ok(Step::Frame(Record {
                    ts_us,
                    frame_no,
                    link_type,
                    orig_len,
                    data,
                    off,
                }))
            }
            Scan::NoRoom => Ok(Step::NoRoom),
            _ => {
                self.done = true;
                Ok(Step::End)
            }
        }
    }

    /// The packet records of a pcap stream that lie whole in the read
    /// buffer, parsed in one loop without reading: the frames a batch gets
    /// from [`Parser::next`] one call at a time, pinned and counted alike,
    /// with the batch's bounds checked as the caller checks them (a batch
    /// ends after `max_frames` frames or once `n_bytes` reaches
    /// `max_bytes`; a frame that does not fit the room left is not taken).
    /// It stops in front of anything else (a record not yet whole in the
    /// buffer, a record header that cannot be right, the batch full), and
    /// leaves a batch's first frame and the file's first record to
    /// [`Parser::next`] too: that takes them, with its reads and its
    /// reasons, exactly as it does when called alone.
    ///
    /// Standard record headers only (16 bytes, lengths in their places):
    /// a modified pcap or a file before version 2.3 goes through
    /// [`Parser::next`] frame by frame, which reads them the same way.
    pub(crate) fn pcap_run(
        &mut self,
        st: &mut ReaderStats,
        frames: &mut Vec<FrameMeta>,
        max_frames: usize,
        max_bytes: usize,
        n_bytes: &mut usize,
    ) {
        let Format::Pcap {
            endian,
            nanos,
            record_header_len,
            maybe_swapped_lens,
        } = self.format
        else {
            return;
        };
        if self.done
            || !self.header_done
            || frames.is_empty()
            || st.last_ts_us.is_none()
            || maybe_swapped_lens
            || record_header_len != PCAP_RECORD_HEADER_LEN
        {
            return;
        }
        // One loop per byte order and timestamp unit, each reading its
        // words directly: fewer values live in the loop.
        match (endian, nanos) {
            (Endian::Little, false) => {
                self.pcap_run_in::<false>(st, frames, max_frames, max_bytes, n_bytes, u32::from_le_bytes)
            }
            (Endian::Little, true) => {
                self.pcap_run_in::<true>(st, frames, max_frames, max_bytes, n_bytes, u32::from_le_bytes)
            }
            (Endian::Big, false) => {
                self.pcap_run_in::<false>(st, frames, max_frames, max_bytes, n_bytes, u32::from_be_bytes)
            }
            (Endian::Big, true) => {
                self.pcap_run_in::<true>(st, frames, max_frames, max_bytes, n_bytes, u32::from_be_bytes)
            }
        }
    }

    #[inline(always)]
    fn pcap_run_in<const NANOS: bool>(
        &mut self,
        st: &mut ReaderStats,
        frames: &mut Vec<FrameMeta>,
        max_frames: usize,
        max_bytes: usize,
        n_bytes: &mut usize,
        word: fn([u8; 4]) -> u32,
    ) {
        const HL: usize = PCAP_RECORD_HEADER_LEN;
        let (Some(mut last), Some(mut lo), Some(mut hi)) = (st.last_ts_us, st.min_ts_us, st.max_ts_us) else {
            return;
        };
        let (link_type, known) = self.ifaces.first().map_or((0, false), |i| (i.link_type, i.known));
        let max_cap = self.limits.max_cap_len;
        let inb = &mut self.inb;
        // Records are taken only below `u32::MAX`: every frame's offset
        // and end fit a `u32` without a check per record.
        let end = inb.end.min(inb.buf.len()).min(u32::MAX as usize);
        let buf = inb.buf.get(..end).unwrap_or_default();
        let first = inb.pos;
        let mut pos = first;
        // `account`'s counts, in locals for the run.
        // (Frame numbers follow from the frames' count and the captured
        // bytes from the batch's: fewer values to carry through the loop.)
        let (mut n_orig, mut n_cut, mut n_back) = (st.n_bytes, st.n_snaplen_cut, st.n_ts_backwards);
        let mut taken = *n_bytes;
        let (taken_before, frames_before) = (taken, frames.len());
        let first_no = st.n_records + 1 - frames_before as u64;
        while frames.len() < max_frames && taken < max_bytes {
            let Some(h) = buf.get(pos..pos + HL).and_then(|a| bytes_at::<16>(a, 0)) else {
                break;
            };
            let cap_len = word([h[8], h[9], h[10], h[11]]);
            let orig_len = word([h[12], h[13], h[14], h[15]]);
            let cap = cap_len as usize;
            // `taken + cap` cannot overflow: both are below 2^32.
            if cap_len > max_cap || cap_len > orig_len || taken + cap > max_bytes {
                break;
            }
            let off = pos + HL;
            let rec_end = off + cap;
            if rec_end > end {
                break;
            }
            pos = rec_end;
            let ts_sec = word([h[0], h[1], h[2], h[3]]);
            let ts_frac = word([h[4], h[5], h[6], h[7]]);
            let frac_us = if NANOS { ts_frac / 1000 } else { ts_frac };
            let ts_us = i64::from(ts_sec) * 1_000_000 + i64::from(frac_us);
            n_orig += u64::from(orig_len);
            n_cut += u64::from(cap_len < orig_len);
            n_back += u64::from(ts_us < last);
            last = ts_us;
            lo = lo.min(ts_us);
            hi = hi.max(ts_us);
            frames.push(FrameMeta {
                ts_us,
                frame_no: first_no + frames.len() as u64,
                link_type,
                // Below `end`, itself at most `u32::MAX`.
                data_start: off as u32,
                cap_len,
                orig_len,
            });
            taken += cap;
        }
        let n = frames.len() - frames_before;
        if n == 0 {
            return;
        }
        // The run's frames: from the first one's data (behind its header)
        // to the last one's end.
        inb.add_run(first + HL, pos, n, taken - taken_before);
        let cap_bytes = taken - taken_before;
        let n = n as u64;
        *n_bytes = taken;
        inb.pos = pos;
        st.n_records += n;
        st.n_bytes = n_orig;
        st.n_cap_bytes += cap_bytes as u64;
        st.n_snaplen_cut = n_cut;
        st.n_ts_backwards = n_back;
        if !known {
            st.n_unknown_link_type += n;
        }
        st.last_ts_us = Some(last);
        st.min_ts_us = Some(lo);
        st.max_ts_us = Some(hi);
        self.last_ts_us = Some(last);
    }

    /// Counts a well-formed packet record and returns its frame number.
    fn account(&mut self, st: &mut ReaderStats, ts_us: i64, cap_len: u32, orig_len: u32, known: bool) -> u64 {
        st.n_records += 1;
        st.n_bytes += u64::from(orig_len);
        st.n_cap_bytes += u64::from(cap_len);
        if cap_len < orig_len {
            st.n_snaplen_cut += 1;
        }
        if !known {
            st.n_unknown_link_type += 1;
        }
        if st.first_ts_us.is_none() {
            st.first_ts_us = Some(ts_us);
        }
        if let Some(prev) = st.last_ts_us {
            if ts_us < prev {
                st.n_ts_backwards += 1;
            }
        }
        st.last_ts_us = Some(ts_us);
        st.min_ts_us = Some(st.min_ts_us.map_or(ts_us, |m| m.min(ts_us)));
        st.max_ts_us = Some(st.max_ts_us.map_or(ts_us, |m| m.max(ts_us)));
        self.last_ts_us = Some(ts_us);
        st.n_records
    }

    /// Counts a malformed record or block; the first one is described.
    fn bad(&self, st: &mut ReaderStats, what: impl FnOnce() -> String) {
        st.n_bad_blocks += 1;
        if st.bad_block_detail.is_none() {
            st.bad_block_detail = Some(format!("at byte {}: {}", self.inb.offset(), what()));
        }
    }

    fn scan_pcap(&mut self, src: &mut Source, st: &mut ReaderStats, room: usize) -> io::Result<Scan> {
        let Format::Pcap {
            endian,
            nanos,
            record_header_len: hl,
            maybe_swapped_lens,
        } = self.format
        else {
            return Ok(Scan::End);
        };
        if !self.inb.fill(src, st, hl)? {
            if self.inb.avail_len() > 0 {
                st.truncated_tail = true;
            }
            return Ok(Scan::End);
        }
        let Some(h) = bytes_at::<16>(self.inb.avail(), 0) else {
            return Ok(Scan::End);
        };
        let ts_sec = endian.u32([h[0], h[1], h[2], h[3]]);
        let ts_frac = endian.u32([h[4], h[5], h[6], h[7]]);
        let mut cap_len = endian.u32([h[8], h[9], h[10], h[11]]);
        let mut orig_len = endian.u32([h[12], h[13], h[14], h[15]]);
        if maybe_swapped_lens && cap_len > orig_len {
            std::mem::swap(&mut cap_len, &mut orig_len);
        }
        // pcap has no trailing length: a record header that cannot be
        // right leaves no way to find the next one, so the file ends.
        if cap_len > self.limits.max_cap_len {
            let max = self.limits.max_cap_len;
            self.bad(st, || {
                format!("pcap record captured length {cap_len} exceeds the limit {max}")
            });
            return Ok(Scan::End);
        }
        if cap_len > orig_len {
            self.bad(st, || {
                format!("pcap record captured length {cap_len} exceeds its original length {orig_len}")
            });
            return Ok(Scan::End);
        }
        let cap = cap_len as usize;
        if cap > room {
            return Ok(Scan::NoRoom);
        }
        if !self.inb.fill(src, st, hl + cap)? {
            st.truncated_tail = true;
            return Ok(Scan::End);
        }
        let off = self.inb.pos + hl;
        self.inb.consume(hl + cap);
        let frac_us = if nanos { ts_frac / 1000 } else { ts_frac };
        let ts_us = i64::from(ts_sec) * 1_000_000 + i64::from(frac_us);
        let (link_type, known) = self.ifaces.first().map_or((0, false), |i| (i.link_type, i.known));
        let frame_no = self.account(st, ts_us, cap_len, orig_len, known);
        Ok(Scan::Frame {
            off,
            cap_len: cap,
            orig_len,
            ts_us,
            link_type,
            frame_no,
        })
    }

    fn scan_pcapng(
        &mut self,
        src: &mut Source,
        st: &mut ReaderStats,
        room: usize,
        priming: bool,
        known: KnownFn,
    ) -> io::Result<Scan> {
        let Format::Pcapng { endian: cur_endian } = self.format else {
            return Ok(Scan::End);
        };
        if !self.inb.fill(src, st, 8)? {
            if self.inb.avail_len() > 0 {
                st.truncated_tail = true;
            }
            return Ok(Scan::End);
        }
        let Some(head) = bytes_at::<8>(self.inb.avail(), 0) else {
            return Ok(Scan::End);
        };
        let type_bytes = [head[0], head[1], head[2], head[3]];
        let len_bytes = [head[4], head[5], head[6], head[7]];
        let is_shb = u32::from_le_bytes(type_bytes) == PCAPNG_SHB;
        let (endian, block_type) = if is_shb {
            if !self.inb.fill(src, st, 12)? {
                st.truncated_tail = true;
                return Ok(Scan::End);
            }
            let Some(bom) = bytes_at::<4>(self.inb.avail(), 8) else {
                return Ok(Scan::End);
            };
            let e = if u32::from_le_bytes(bom) == PCAPNG_BYTE_ORDER_MAGIC {
                Endian::Little
            } else if u32::from_be_bytes(bom) == PCAPNG_BYTE_ORDER_MAGIC {
                Endian::Big
            } else {
                self.bad(st, || {
                    format!(
                        "pcapng section header with byte-order magic {:02x} {:02x} {:02x} {:02x}",
                        bom[0], bom[1], bom[2], bom[3]
                    )
                });
                return Ok(Scan::End);
            };
            (e, PCAPNG_SHB)
        } else if !self.header_done {
            // The detected magic guarantees an SHB first; keep the guard.
            return Ok(Scan::End);
        } else {
            (cur_endian, cur_endian.u32(type_bytes))
        };
        let total = endian.u32(len_bytes);
        let min_len = if is_shb {
            PCAPNG_MIN_SHB_LEN
        } else {
            PCAPNG_MIN_BLOCK_LEN
        };
        if total < min_len || total % 4 != 0 || total > self.limits.max_block_len {
            let max = self.limits.max_block_len;
            self.bad(st, || {
                format!("pcapng block type {block_type:#x} has invalid length {total} (min {min_len}, multiple of 4, max {max})")
            });
            return Ok(Scan::End);
        }
        let is_packet = matches!(block_type, BLOCK_EPB | BLOCK_SPB | BLOCK_OPB);
        if priming && is_packet {
            return Ok(Scan::AtPacket);
        }
        let total = total as usize;
        if !self.inb.fill(src, st, total)? {
            st.truncated_tail = true;
            return Ok(Scan::End);
        }
        let block = self.inb.avail().get(..total).unwrap_or(&[]);
        let trailing = u32_at(endian, block, total - 4).unwrap_or(0);
        if trailing as usize != total {
            self.bad(st, || {
                format!("pcapng block type {block_type:#x} length {total} differs from its trailing copy {trailing}")
            });
            return Ok(Scan::End);
        }
        let body_off = self.inb.pos + 8;
        let body = block.get(8..total - 4).unwrap_or(&[]);
        match block_type {
            PCAPNG_SHB => {
                let major = u16_at(endian, body, 4).unwrap_or(0);
                let minor = u16_at(endian, body, 6).unwrap_or(0);
                if major != 1 {
                    self.bad(st, || {
                        format!("pcapng section version {major}.{minor} is not supported")
                    });
                    return Ok(Scan::End);
                }
                self.format = Format::Pcapng { endian };
                self.ifaces.clear();
                st.n_sections += 1;
                self.header_done = true;
            }
            BLOCK_IDB if self.ifaces.len() >= self.limits.max_interfaces as usize => {
                let max = self.limits.max_interfaces;
                self.bad(st, || format!("pcapng section describes more than {max} interfaces"));
            }
            BLOCK_IDB => {
                let iface = parse_idb(endian, body, st, known);
                if !iface.valid {
                    self.bad(st, || "pcapng interface description block too short".to_string());
                }
                self.ifaces.push(iface);
                st.n_interfaces += 1;
            }
            BLOCK_EPB | BLOCK_OPB | BLOCK_SPB => {
                return Ok(self.packet_block(st, endian, block_type, body_off, total, room));
            }
            _ => st.n_other_blocks += 1,
        }
        self.inb.consume(total);
        Ok(Scan::Continue)
    }

    /// Handles a packet block whose framing has been checked and which is
    /// fully buffered: `body_off` is the buffer index of its body.
    fn packet_block(
        &mut self,
        st: &mut ReaderStats,
        endian: Endian,
        block_type: u32,
        body_off: usize,
        total: usize,
        room: usize,
    ) -> Scan {
        let body_len = total - 12;
        let body = body_off
            .checked_add(body_len)
            .and_then(|e| self.inb.buf.get(body_off..e))
            .unwrap_or(&[]);
        // (interface, raw timestamp or None, captured, original, data offset in body)
        let fields = match block_type {
            BLOCK_EPB => parse_packet_fixed(endian, body, false),
            BLOCK_OPB => parse_packet_fixed(endian, body, true),
            _ => u32_at(endian, body, 0).map(|orig| {
                let room = (body_len - 4) as u64;
                let snap = self.ifaces.first().map_or(0, |i| u64::from(i.snaplen));
                let mut cap = u64::from(orig).min(room);
                if snap > 0 {
                    cap = cap.min(snap);
                }
                (0u32, None, cap as u32, orig, 4usize)
            }),
        };
        let name = match block_type {
            BLOCK_EPB => "enhanced packet block",
            BLOCK_OPB => "packet block",
            _ => "simple packet block",
        };
        let Some((if_id, raw_ts, cap_len, orig_len, data_rel)) = fields else {
            self.bad(st, || format!("pcapng {name} too short for its fixed fields"));
            self.inb.consume(total);
            return Scan::Continue;
        };
        let n_ifaces = self.ifaces.len();
        let Some(iface) = self.ifaces.get(if_id as usize).filter(|i| i.valid).copied() else {
            self.bad(st, || {
                format!("pcapng {name} on interface {if_id}, but the section describes {n_ifaces} usable")
            });
            self.inb.consume(total);
            return Scan::Continue;
        };
        let fits = (cap_len as usize).checked_add(data_rel).is_some_and(|e| e <= body_len);
        let max = self.limits.max_cap_len;
        let problem = if !fits {
            Some(format!("pcapng {name} captured length {cap_len} overruns the block"))
        } else if cap_len > max {
            Some(format!(
                "pcapng {name} captured length {cap_len} exceeds the limit {max}"
            ))
        } else if cap_len > orig_len {
            Some(format!(
                "pcapng {name} captured length {cap_len} exceeds its original length {orig_len}"
            ))
        } else {
            None
        };
        if let Some(p) = problem {
            self.bad(st, || p);
            self.inb.consume(total);
            return Scan::Continue;
        }
        if cap_len as usize > room {
            return Scan::NoRoom;
        }
        let ts_us = match raw_ts {
            Some(t) => iface.scale.to_us(t).saturating_add(iface.offset_us),
            None => {
                st.n_no_timestamp += 1;
                self.last_ts_us.unwrap_or(0)
            }
        };
        // A time outside 1970–2200 (a hostile if_tsoffset or resolution)
        // is counted, not used: the record gets the previous record's time.
        let ts_us = if crate::sink::columns::ts_in_range(ts_us) {
            ts_us
        } else {
            st.n_ts_out_of_range += 1;
            self.last_ts_us.unwrap_or(0)
        };
        self.inb.consume(total);
        let frame_no = self.account(st, ts_us, cap_len, orig_len, iface.known);
        Scan::Frame {
            off: body_off + data_rel,
            cap_len: cap_len as usize,
            orig_len,
            ts_us,
            link_type: iface.link_type,
            frame_no,
        }
    }
}

/// Interface id, timestamp, captured and original length, and the data's
/// offset in the body, of an EPB (`opb == false`) or OPB.
fn parse_packet_fixed(e: Endian, body: &[u8], opb: bool) -> Option<(u32, Option<u64>, u32, u32, usize)> {
    let if_id = if opb {
        u32::from(u16_at(e, body, 0)?)
    } else {
        u32_at(e, body, 0)?
    };
    let hi = u64::from(u32_at(e, body, 4)?);
    let lo = u64::from(u32_at(e, body, 8)?);
    let cap = u32_at(e, body, 12)?;
    let orig = u32_at(e, body, 16)?;
    Some((if_id, Some((hi << 32) | lo), cap, orig, PACKET_BLOCK_FIXED_LEN))
}

/// Reads an IDB body. Malformed options are counted and the options after
/// them ignored; the interface itself still counts, so that the numbering
/// of later interfaces stays right.
fn parse_idb(e: Endian, body: &[u8], st: &mut ReaderStats, known: KnownFn) -> Iface {
    let (Some(link_type), Some(snaplen)) = (u16_at(e, body, 0), u32_at(e, body, 4)) else {
        return Iface {
            link_type: 0,
            snaplen: 0,
            scale: TsScale::MICROS,
            offset_us: 0,
            valid: false,
            known: false,
        };
    };
    let mut iface = Iface {
        link_type,
        snaplen,
        scale: TsScale::MICROS,
        offset_us: 0,
        valid: true,
        known: known(link_type),
    };
    let mut off = IDB_FIXED_LEN;
    while off < body.len() {
        let (Some(code), Some(len)) = (u16_at(e, body, off), u16_at(e, body, off + 2)) else {
            st.n_bad_options += 1;
            break;
        };
        if code == OPT_END {
            break;
        }
        let start = off + 4;
        let Some(value) = body.get(start..start + usize::from(len)) else {
            st.n_bad_options += 1;
            break;
        };
        match (code, value) {
            (OPT_IF_TSRESOL, [v]) => iface.scale = TsScale::from_tsresol(*v),
            (OPT_IF_TSOFFSET, v) if v.len() == 8 => {
                let secs = u64_at(e, v, 0).unwrap_or(0) as i64;
                iface.offset_us = secs.saturating_mul(1_000_000);
            }
            (OPT_IF_TSRESOL | OPT_IF_TSOFFSET, _) => st.n_bad_options += 1,
            _ => {}
        }
        // Values are padded to 32 bits.
        off = start + usize::from(len).div_ceil(4) * 4;
    }
    iface
}

#[cfg(test)]
pub(crate) mod tests {
    //! Byte fixtures built here, fed through the whole reader.

    use super::*;
    use crate::capture::{CaptureError, CaptureReader, FrameBatch, FrameMeta, ReaderLimits};
    use std::io::Cursor;

    pub(crate) const LE: Endian = Endian::Little;
    pub(crate) const BE: Endian = Endian::Big;

    fn w16(e: Endian, v: u16) -> [u8; 2] {
        match e {
            Endian::Little => v.to_le_bytes(),
            Endian::Big => v.to_be_bytes(),
        }
    }

    fn w32(e: Endian, v: u32) -> [u8; 4] {
        match e {
            Endian::Little => v.to_le_bytes(),
            Endian::Big => v.to_be_bytes(),
        }
    }

    fn w64(e: Endian, v: u64) -> [u8; 8] {
        match e {
            Endian::Little => v.to_le_bytes(),
            Endian::Big => v.to_be_bytes(),
        }
    }

    /// pcap file header.
    pub(crate) fn pcap_header(e: Endian, magic: u32, minor: u16, link_field: u32) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&w32(e, magic));
        v.extend_from_slice(&w16(e, 2));
        v.extend_from_slice(&w16(e, minor));
        v.extend_from_slice(&[0; 8]);
        v.extend_from_slice(&w32(e, 65535));
        v.extend_from_slice(&w32(e, link_field));
        v
    }

    /// pcap record; `extra` header bytes for modified pcap.
    pub(crate) fn pcap_record(e: Endian, sec: u32, frac: u32, data: &[u8], orig: u32, extra: usize) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&w32(e, sec));
        v.extend_from_slice(&w32(e, frac));
        v.extend_from_slice(&w32(e, data.len() as u32));
        v.extend_from_slice(&w32(e, orig));
        v.resize(v.len() + extra, 0xaa);
        v.extend_from_slice(data);
        v
    }

    /// A pcapng block with its body padded to 32 bits.
    pub(crate) fn block(e: Endian, block_type: u32, body: &[u8]) -> Vec<u8> {
        let padded = body.len().div_ceil(4) * 4;
        let total = (12 + padded) as u32;
        let mut v = Vec::new();
        v.extend_from_slice(&w32(e, block_type));
        v.extend_from_slice(&w32(e, total));
        v.extend_from_slice(body);
        v.resize(8 + padded, 0);
        v.extend_from_slice(&w32(e, total));
        v
    }

    pub(crate) fn shb(e: Endian) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&w32(e, PCAPNG_BYTE_ORDER_MAGIC));
        body.extend_from_slice(&w16(e, 1));
        body.extend_from_slice(&w16(e, 0));
        body.extend_from_slice(&w64(e, u64::MAX));
        // An shb_userappl option, to be skipped.
        body.extend_from_slice(&w16(e, 4));
        body.extend_from_slice(&w16(e, 5));
        body.extend_from_slice(b"test\0\0\0\0");
        body.extend_from_slice(&[0; 4]);
        block(e, PCAPNG_SHB, &body)
    }

    /// IDB with optional if_tsresol and if_tsoffset.
    pub(crate) fn idb(e: Endian, link_type: u16, snaplen: u32, tsresol: Option<u8>, tsoffset: Option<i64>) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&w16(e, link_type));
        body.extend_from_slice(&w16(e, 0));
        body.extend_from_slice(&w32(e, snaplen));
        // if_name first, to check that options are walked.
        body.extend_from_slice(&w16(e, 2));
        body.extend_from_slice(&w16(e, 3));
        body.extend_from_slice(b"et0\0");
        if let Some(r) = tsresol {
            body.extend_from_slice(&w16(e, OPT_IF_TSRESOL));
            body.extend_from_slice(&w16(e, 1));
            body.extend_from_slice(&[r, 0, 0, 0]);
        }
        if let Some(o) = tsoffset {
            body.extend_from_slice(&w16(e, OPT_IF_TSOFFSET));
            body.extend_from_slice(&w16(e, 8));
            body.extend_from_slice(&w64(e, o as u64));
        }
        body.extend_from_slice(&[0; 4]);
        block(e, BLOCK_IDB, &body)
    }

    pub(crate) fn epb_raw(e: Endian, if_id: u32, ts: u64, cap_len: u32, orig: u32, data: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&w32(e, if_id));
        body.extend_from_slice(&w32(e, (ts >> 32) as u32));
        body.extend_from_slice(&w32(e, ts as u32));
        body.extend_from_slice(&w32(e, cap_len));
        body.extend_from_slice(&w32(e, orig));
        body.extend_from_slice(data);
        block(e, BLOCK_EPB, &body)
    }

    pub(crate) fn epb(e: Endian, if_id: u32, ts: u64, data: &[u8]) -> Vec<u8> {
        epb_raw(e, if_id, ts, data.len() as u32, data.len() as u32, data)
    }

    fn opb(e: Endian, if_id: u16, ts: u64, data: &[u8], orig: u32) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&w16(e, if_id));
        body.extend_from_slice(&w16(e, 0));
        body.extend_from_slice(&w32(e, (ts >> 32) as u32));
        body.extend_from_slice(&w32(e, ts as u32));
        body.extend_from_slice(&w32(e, data.len() as u32));
        body.extend_from_slice(&w32(e, orig));
        body.extend_from_slice(data);
        block(e, BLOCK_OPB, &body)
    }

    fn spb(e: Endian, orig: u32, data: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&w32(e, orig));
        body.extend_from_slice(data);
        block(e, BLOCK_SPB, &body)
    }

    /// A frame as compared across readers: metadata without the batch
    /// offset, and its bytes.
    pub(crate) type Got = (i64, u64, u16, u32, u32, Vec<u8>);

    fn got(m: &FrameMeta, d: &[u8]) -> Got {
        (m.ts_us, m.frame_no, m.link_type, m.cap_len, m.orig_len, d.to_vec())
    }

    /// A reader that returns at most one byte per call.
    pub(crate) struct OneByte(pub(crate) Cursor<Vec<u8>>);

    impl Read for OneByte {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match buf.first_mut() {
                Some(b) => self.0.read(std::slice::from_mut(b)),
                None => Ok(0),
            }
        }
    }

    /// Reads everything from `r` in batches of the given size.
    pub(crate) fn drain(mut r: CaptureReader, max_bytes: usize, max_frames: usize) -> (Vec<Got>, ReaderStats) {
        let mut out = Vec::new();
        while let Some(b) = r
            .next_batch(max_bytes, max_frames)
            .expect("in-memory reads cannot fail")
        {
            assert!(b.len() <= max_frames.max(1));
            let bytes: usize = b.frames.iter().map(|m| m.cap_len as usize).sum();
            assert!(bytes <= max_bytes || b.len() == 1, "batch over max_bytes");
            // Frames lie inside the block, in order, without overlapping.
            let mut prev_end = 0usize;
            for m in &b.frames {
                let start = m.data_start as usize;
                assert!(start >= prev_end, "frames overlap or go backwards");
                prev_end = start + m.cap_len as usize;
                assert!(prev_end <= b.data.len(), "frame outside the block");
            }
            out.extend(b.iter().map(|(m, d)| got(m, d)));
        }
        assert!(r.next_batch(max_bytes, max_frames).expect("after end").is_none());
        (out, r.stats().clone())
    }

    pub(crate) fn open_bytes(bytes: &[u8], filter: Option<&str>) -> Result<CaptureReader, CaptureError> {
        CaptureReader::from_reader(
            "t",
            Box::new(Cursor::new(bytes.to_vec())),
            filter,
            ReaderLimits::default(),
        )
    }

    pub(crate) fn read_bytes(bytes: &[u8]) -> (Vec<Got>, ReaderStats) {
        drain(open_bytes(bytes, None).expect("fixture opens"), 1 << 20, 1000)
    }

    fn pcap_two_frames(e: Endian, magic: u32) -> Vec<u8> {
        let mut f = pcap_header(e, magic, 4, 1);
        f.extend(pcap_record(e, 1_000, 1_999, b"abcdef", 60, 0));
        f.extend(pcap_record(e, 1_001, 0, b"", 0, 0));
        f.extend(pcap_record(e, 1_002, 7, b"xyz", 3, 0));
        f
    }

    #[test]
    fn pcap_both_byte_orders_us_and_ns() {
        for e in [LE, BE] {
            let (f, st) = read_bytes(&pcap_two_frames(e, PCAP_MAGIC_US));
            assert_eq!(
                f,
                vec![
                    (1_000_001_999, 1, 1, 6, 60, b"abcdef".to_vec()),
                    (1_001_000_000, 2, 1, 0, 0, vec![]),
                    (1_002_000_007, 3, 1, 3, 3, b"xyz".to_vec()),
                ]
            );
            assert_eq!(st.n_records, 3);
            assert_eq!(st.n_bytes, 63);
            assert_eq!(st.n_cap_bytes, 9);
            assert_eq!(st.n_snaplen_cut, 1);
            assert_eq!(st.first_ts_us, Some(1_000_001_999));
            assert_eq!(st.last_ts_us, Some(1_002_000_007));
            assert!(!st.truncated_tail);
            assert_eq!(st.n_bad_blocks, 0);
            assert_eq!(st.n_interfaces, 1);

            let (f, _) = read_bytes(&pcap_two_frames(e, PCAP_MAGIC_NS));
            let ts: Vec<i64> = f.iter().map(|g| g.0).collect();
            // 1999 ns -> 1 µs; 7 ns -> 0 µs (truncated).
            assert_eq!(ts, vec![1_000_000_001, 1_001_000_000, 1_002_000_000]);
        }
    }

    #[test]
    fn pcap_link_type_masks_fcs_bits() {
        // FCS length 4 bytes present (bits 28-31 and bit 26), link type 105.
        let mut f = pcap_header(LE, PCAP_MAGIC_US, 4, 0x4400_0069);
        f.extend(pcap_record(LE, 1, 2, b"ab", 2, 0));
        let (g, _) = read_bytes(&f);
        assert_eq!(g[0].2, 105);
    }

    #[test]
    fn pcap_modified_magic_has_longer_record_headers() {
        for e in [LE, BE] {
            let mut f = pcap_header(e, PCAP_MAGIC_MODIFIED, 4, 1);
            f.extend(pcap_record(e, 5, 6, b"hello", 5, 8));
            f.extend(pcap_record(e, 7, 8, b"w", 5, 8));
            let (g, st) = read_bytes(&f);
            assert_eq!(g.len(), 2);
            assert_eq!(g[0], (5_000_006, 1, 1, 5, 5, b"hello".to_vec()));
            assert_eq!(g[1].5, b"w".to_vec());
            assert_eq!(st.n_bad_blocks, 0);
        }
    }

    #[test]
    fn pcap_before_2_3_may_swap_lengths() {
        let mut f = pcap_header(LE, PCAP_MAGIC_US, 2, 1);
        // Captured length field says 60, original 4: swapped by old writers.
        let mut r = pcap_record(LE, 1, 0, b"abcd", 60, 0);
        r[8..12].copy_from_slice(&60u32.to_le_bytes());
        r[12..16].copy_from_slice(&4u32.to_le_bytes());
        f.extend(r);
        let (g, st) = read_bytes(&f);
        assert_eq!(g, vec![(1_000_000, 1, 1, 4, 60, b"abcd".to_vec())]);
        assert_eq!(st.n_bad_blocks, 0);
        // In a 2.4 file the same record is malformed.
        f[6] = 4;
        let (g, st) = read_bytes(&f);
        assert!(g.is_empty());
        assert_eq!(st.n_bad_blocks, 1);
    }

    /// Section 1: Ethernet in ns, raw IP in µs, Ethernet in 2^-20 s with a
    /// +10 s offset.
    pub(crate) fn pcapng_multi(e: Endian) -> Vec<u8> {
        let mut f = shb(e);
        f.extend(idb(e, 1, 0, Some(9), None));
        f.extend(idb(e, 101, 1500, Some(6), None));
        f.extend(block(e, 4, &[1, 0, 4, 0, 10, 0, 0, 1, b'h', 0, 0, 0, 0, 0, 0, 0]));
        f.extend(epb(e, 0, 1_631_961_258_895_162_012, b"eth-ns"));
        f.extend(epb(e, 1, 1_631_961_258_895_163, b"raw-us"));
        f.extend(idb(e, 1, 0, Some(0x80 | 20), Some(10)));
        f.extend(epb(e, 2, 3 << 20 | 1, b"eth-bin"));
        f.extend(block(e, 5, &[0; 12]));
        f
    }

    #[test]
    fn pcapng_interfaces_with_different_link_types_and_resolutions() {
        for e in [LE, BE] {
            let (g, st) = read_bytes(&pcapng_multi(e));
            assert_eq!(
                g,
                vec![
                    (1_631_961_258_895_162, 1, 1, 6, 6, b"eth-ns".to_vec()),
                    (1_631_961_258_895_163, 2, 101, 6, 6, b"raw-us".to_vec()),
                    // 3 s + 2^-20 s (0.95 µs, floored) + 10 s.
                    (13_000_000, 3, 1, 7, 7, b"eth-bin".to_vec()),
                ]
            );
            assert_eq!(st.n_sections, 1);
            assert_eq!(st.n_interfaces, 3);
            assert_eq!(st.n_other_blocks, 2);
            assert_eq!(st.n_bad_blocks, 0);
            assert_eq!(st.n_ts_backwards, 1);
            assert_eq!(st.min_ts_us, Some(13_000_000));
            assert_eq!(st.max_ts_us, Some(1_631_961_258_895_163));
            assert_eq!(st.n_ts_out_of_range, 0);
        }
    }

    /// A hostile offset or resolution puts a record before 1970 or after
    /// 2200: it is counted and takes the previous record's time.
    #[test]
    fn pcapng_times_outside_1970_2200_are_counted_not_used() {
        for e in [LE, BE] {
            let mut f = shb(e);
            f.extend(idb(e, 1, 0, None, None));
            f.extend(epb(e, 0, 1_631_961_258_895_163, b"ok"));
            f.extend(idb(e, 1, 0, None, Some(-2_000_000_000)));
            f.extend(epb(e, 1, 5, b"before-1970"));
            f.extend(idb(e, 1, 0, None, Some(i64::MAX / 2)));
            f.extend(epb(e, 2, 5, b"far-future"));
            let (g, st) = read_bytes(&f);
            let ts: Vec<i64> = g.iter().map(|x| x.0).collect();
            assert_eq!(ts, [1_631_961_258_895_163; 3]);
            assert_eq!(st.n_ts_out_of_range, 2);
            assert_eq!(st.n_records, 3);
        }
    }

    #[test]
    fn pcapng_sections_reset_interfaces_and_byte_order() {
        let mut f = pcapng_multi(LE);
        f.extend(shb(BE));
        f.extend(idb(BE, 113, 0, None, None));
        // Interface 1 does not exist in the new section: skipped, counted.
        f.extend(epb(BE, 1, 5, b"gone"));
        f.extend(epb(BE, 0, 6, b"sll"));
        let (g, st) = read_bytes(&f);
        assert_eq!(g.len(), 4);
        assert_eq!(g[3], (6, 4, 113, 3, 3, b"sll".to_vec()));
        assert_eq!(st.n_sections, 2);
        assert_eq!(st.n_interfaces, 4);
        assert_eq!(st.n_bad_blocks, 1);
        assert!(st.bad_block_detail.as_deref().unwrap_or("").contains("interface 1"));
    }

    #[test]
    fn pcapng_interfaces_are_capped_per_section() {
        let mut f = shb(LE);
        for _ in 0..3 {
            f.extend(idb(LE, 1, 0, None, None));
        }
        f.extend(epb(LE, 1, 1, b"kept"));
        f.extend(epb(LE, 2, 2, b"over"));
        f.extend(shb(LE));
        f.extend(idb(LE, 1, 0, None, None));
        f.extend(epb(LE, 0, 3, b"new section"));
        let limits = ReaderLimits {
            max_interfaces: 2,
            ..ReaderLimits::default()
        };
        let r = CaptureReader::from_reader("t", Box::new(Cursor::new(f)), None, limits).expect("opens");
        let (g, st) = drain(r, 1 << 20, 100);
        assert_eq!(
            g.iter().map(|x| x.5.clone()).collect::<Vec<_>>(),
            vec![b"kept".to_vec(), b"new section".to_vec()]
        );
        assert_eq!((st.n_interfaces, st.n_bad_blocks), (3, 2));
    }

    #[test]
    fn pcapng_simple_and_obsolete_packet_blocks_and_skipped_blocks() {
        for e in [LE, BE] {
            let mut f = shb(e);
            f.extend(block(e, 0x0a, &[0; 16])); // decryption secrets
            f.extend(idb(e, 1, 8, None, None));
            f.extend(opb(e, 0, 2_000_000, b"opb!", 70));
            // SPB: original 20 bytes, snaplen 8 -> 8 captured.
            f.extend(spb(e, 20, &[7; 20]));
            // SPB shorter than the snaplen: captured = original.
            f.extend(spb(e, 3, b"abc"));
            f.extend(block(e, 0x0000_0bad, &[1, 2, 3, 4, 5]));
            f.extend(block(e, 0x4000_0bad, &[1, 2, 3, 4]));
            f.extend(block(e, 0x1234_5678, &[]));
            f.extend(epb(e, 0, 3_000_000, b"epb"));
            let (g, st) = read_bytes(&f);
            assert_eq!(
                g,
                vec![
                    (2_000_000, 1, 1, 4, 70, b"opb!".to_vec()),
                    (2_000_000, 2, 1, 8, 20, vec![7; 8]),
                    (2_000_000, 3, 1, 3, 3, b"abc".to_vec()),
                    (3_000_000, 4, 1, 3, 3, b"epb".to_vec()),
                ]
            );
            assert_eq!(st.n_no_timestamp, 2);
            assert_eq!(st.n_other_blocks, 4);
            assert_eq!(st.n_bad_blocks, 0);
        }
    }

    /// Every cut of a file yields the records wholly before the cut, and
    /// `truncated_tail` exactly when the cut is inside a record.
    fn check_every_cut(full: &[u8], header_len: usize, boundaries: &[usize]) {
        let (all, _) = read_bytes(full);
        assert_eq!(all.len(), boundaries.len() - 1);
        for cut in header_len..=full.len() {
            let (g, st) = read_bytes(&full[..cut]);
            let whole = boundaries.iter().skip(1).filter(|&&b| b <= cut).count();
            assert_eq!(g, all[..whole].to_vec(), "cut at {cut}");
            assert_eq!(st.truncated_tail, !boundaries.contains(&cut), "cut at {cut}");
            assert_eq!(st.n_bad_blocks, 0, "cut at {cut}");
        }
    }

    #[test]
    fn truncated_tail_at_every_offset() {
        let p = pcap_two_frames(BE, PCAP_MAGIC_NS);
        check_every_cut(&p, 24, &[24, 24 + 22, 24 + 22 + 16, p.len()]);

        let mut n = shb(LE);
        let mut b = Vec::new();
        for blk in [
            idb(LE, 1, 0, Some(9), None),
            epb(LE, 0, 1, b"one"),
            block(LE, 4, &[0; 8]),
            epb(LE, 0, 2, b"two--"),
        ] {
            b.push(n.len());
            n.extend(blk);
        }
        b.push(n.len());
        // Boundaries between packets: after the IDB and NRB no frame is due.
        let frame_ends = [b[0], b[2], b[4]];
        let (all, _) = read_bytes(&n);
        assert_eq!(all.len(), 2);
        for cut in b[0]..=n.len() {
            let (g, st) = read_bytes(&n[..cut]);
            let whole = frame_ends.iter().skip(1).filter(|&&e| e <= cut).count();
            assert_eq!(g, all[..whole].to_vec(), "cut at {cut}");
            assert_eq!(st.truncated_tail, !b.contains(&cut), "cut at {cut}");
        }
        // Cuts inside the first header are errors at open.
        for cut in 1..24 {
            assert!(
                matches!(
                    open_bytes(&p[..cut], None),
                    Err(CaptureError::BadHeader { .. }) | Err(CaptureError::NotCapture { .. })
                ),
                "pcap cut {cut}"
            );
        }
        for cut in 4..b[0] {
            assert!(
                matches!(open_bytes(&n[..cut], None), Err(CaptureError::BadHeader { .. })),
                "pcapng cut {cut}"
            );
        }
    }

    #[test]
    fn garbage_after_the_header_ends_the_file() {
        let mut p = pcap_two_frames(LE, PCAP_MAGIC_US);
        p.extend([0xff; 40]);
        let (g, st) = read_bytes(&p);
        assert_eq!(g.len(), 3);
        assert_eq!(st.n_bad_blocks, 1);
        assert!(!st.truncated_tail);
        assert!(st
            .bad_block_detail
            .as_deref()
            .unwrap_or("")
            .contains("exceeds the limit"));

        let mut n = pcapng_multi(LE);
        n.extend(b"<html><body>not a block at all</body></html>");
        let (g, st) = read_bytes(&n);
        assert_eq!(g.len(), 3);
        assert_eq!(st.n_bad_blocks, 1);

        // Garbage right after the section header, before any packet.
        let mut n = shb(BE);
        n.extend([0x5a; 64]);
        let (g, st) = read_bytes(&n);
        assert!(g.is_empty());
        assert_eq!((st.n_bad_blocks, st.n_sections, st.truncated_tail), (1, 1, false));
        // A cut block there: a truncated tail, not an error.
        let mut n = shb(LE);
        n.extend(&idb(LE, 1, 0, None, None)[..10]);
        let (g, st) = read_bytes(&n);
        assert!(g.is_empty());
        assert_eq!((st.n_bad_blocks, st.truncated_tail), (0, true));
    }

    #[test]
    fn bad_block_lengths_end_the_file() {
        let good = {
            let mut f = shb(LE);
            f.extend(idb(LE, 1, 0, None, None));
            f.extend(epb(LE, 0, 1, b"ok"));
            f
        };
        let e = epb(LE, 0, 2, b"next");
        let set_len = |b: &mut Vec<u8>, v: u32| b[4..8].copy_from_slice(&v.to_le_bytes());
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("not a multiple of 4", {
                let mut b = e.clone();
                set_len(&mut b, 33);
                b
            }),
            ("zero", {
                let mut b = e.clone();
                set_len(&mut b, 0);
                b
            }),
            ("under 12", {
                let mut b = e.clone();
                set_len(&mut b, 8);
                b
            }),
            ("giant", {
                let mut b = e.clone();
                set_len(&mut b, 0xffff_fffc);
                b
            }),
            ("trailing copy differs", {
                let mut b = e.clone();
                let n = b.len();
                b[n - 4..].copy_from_slice(&40u32.to_le_bytes());
                b
            }),
            ("section header with a bad byte-order magic", {
                let mut b = shb(LE);
                b[8] = 0x99;
                b
            }),
            ("section version 2", {
                let mut b = shb(LE);
                b[12] = 2;
                b
            }),
        ];
        for (what, bad) in cases {
            let mut f = good.clone();
            f.extend(bad);
            f.extend(epb(LE, 0, 3, b"never"));
            let (g, st) = read_bytes(&f);
            assert_eq!(g.len(), 1, "{what}");
            assert_eq!(st.n_bad_blocks, 1, "{what}");
            assert!(st.bad_block_detail.is_some(), "{what}");
            // Lengths are refused before the buffer grows to them, so a
            // giant length is a bad block, not a truncated tail.
            assert!(!st.truncated_tail, "{what}");
        }
    }

    #[test]
    fn zero_and_giant_record_lengths() {
        // pcap: a zero-length record is a frame; a giant one ends the file.
        let mut p = pcap_header(LE, PCAP_MAGIC_US, 4, 1);
        p.extend(pcap_record(LE, 1, 0, b"", 0, 0));
        let mut giant = pcap_record(LE, 2, 0, b"", 0, 0);
        giant[8..12].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
        giant[12..16].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
        p.extend(giant);
        let (g, st) = read_bytes(&p);
        assert_eq!(g, vec![(1_000_000, 1, 1, 0, 0, vec![])]);
        assert_eq!(st.n_bad_blocks, 1);
        // Just over the limit, and just at it.
        let limit = DEFAULT_MAX;
        let mut p = pcap_header(LE, PCAP_MAGIC_US, 4, 1);
        p.extend(pcap_record(LE, 1, 0, &vec![1; limit], limit as u32, 0));
        p.extend(pcap_record(LE, 1, 0, &vec![1; limit + 1], limit as u32 + 1, 0));
        let (g, st) = read_bytes(&p);
        assert_eq!(g.len(), 1);
        assert_eq!(st.n_bad_blocks, 1);

        // pcapng: the framing is sound, so bad packet blocks are skipped.
        let mut n = shb(LE);
        n.extend(idb(LE, 1, 0, None, None));
        n.extend(epb_raw(LE, 0, 1, 0, 0, b""));
        n.extend(epb_raw(LE, 0, 2, 400, 400, b"short")); // overruns the block
        n.extend(epb_raw(LE, 0, 3, 5, 4, b"bigger")); // captured > original
        n.extend(epb_raw(LE, 0, 4, 0xffff_ffff, 0xffff_ffff, b"x"));
        n.extend(block(LE, BLOCK_EPB, &[0; 8])); // too short for its fields
        n.extend(spb(LE, 4, b"")); // SPB: no interface problem, 0 captured
        n.extend(epb(LE, 0, 5, b"last"));
        let (g, st) = read_bytes(&n);
        assert_eq!(
            g,
            vec![
                (1, 1, 1, 0, 0, vec![]),
                // The SPB has no timestamp: it gets the previous one.
                (1, 2, 1, 0, 4, vec![]),
                (5, 3, 1, 4, 4, b"last".to_vec()),
            ]
        );
        assert_eq!(st.n_bad_blocks, 4);
        assert!(!st.truncated_tail);
    }

    const DEFAULT_MAX: usize = crate::capture::DEFAULT_MAX_CAP_LEN as usize;

    pub(crate) fn fixtures() -> Vec<Vec<u8>> {
        let mut trunc = pcapng_multi(BE);
        trunc.truncate(trunc.len() - 30);
        let mut garbage = pcap_two_frames(LE, PCAP_MAGIC_NS);
        garbage.extend([0xee; 17]);
        let mut big = pcap_header(LE, PCAP_MAGIC_US, 4, 1);
        for i in 0..50u32 {
            big.extend(pcap_record(
                LE,
                i,
                i,
                &vec![i as u8; (i as usize * 997) % 3000],
                3000,
                0,
            ));
        }
        // Records the buffered pcap loop (`Parser::pcap_run`) must leave to
        // `Parser::next` or take alike: modified headers, pre-2.3 swapped
        // lengths, snaplen cuts, timestamps going back, an unknown link
        // type, and a record longer than the limit that ends the file
        // after 40 good ones (one-byte reads never have a second record
        // buffered, so they take the general path for every record).
        let mut hostile = Vec::new();
        for (e, magic, minor, link) in [
            (LE, PCAP_MAGIC_MODIFIED, 4, 1),
            (BE, PCAP_MAGIC_US, 2, 1),
            (LE, PCAP_MAGIC_NS, 4, 4242),
        ] {
            let extra = if magic == PCAP_MAGIC_MODIFIED { 8 } else { 0 };
            let mut f = pcap_header(e, magic, minor, link);
            for i in 0..60u32 {
                let data = vec![i as u8; (i as usize * 37) % 200];
                let len = data.len() as u32;
                let (sec, frac) = (1_000 + (i % 7) * 3 - (i % 3), i * 1_001);
                let mut r = pcap_record(e, sec, frac, &data, len + (i % 4) * 10, extra);
                if minor < 3 && i % 5 == 0 && len > 0 {
                    // Captured and original length swapped.
                    let (c, o) = (w32(e, len + 10), w32(e, len));
                    r[8..12].copy_from_slice(&c);
                    r[12..16].copy_from_slice(&o);
                }
                if i == 40 && link == 4242 {
                    r[8..12].copy_from_slice(&w32(e, crate::capture::DEFAULT_MAX_CAP_LEN + 1));
                }
                f.extend(r);
            }
            hostile.push(f);
        }
        let mut out = vec![
            pcap_two_frames(LE, PCAP_MAGIC_US),
            pcap_two_frames(BE, PCAP_MAGIC_NS),
            pcapng_multi(LE),
            pcapng_multi(BE),
            trunc,
            garbage,
            big,
        ];
        out.extend(hostile);
        out
    }

    #[test]
    fn one_byte_reads_and_any_batch_size_give_identical_frames() {
        for f in fixtures() {
            let (want, want_st) = read_bytes(&f);
            let one = CaptureReader::from_reader(
                "t",
                Box::new(OneByte(Cursor::new(f.clone()))),
                None,
                ReaderLimits::default(),
            )
            .expect("opens");
            let (g, st) = drain(one, 1 << 20, 1000);
            assert_eq!(g, want);
            assert_eq!(st, want_st);
            for (max_bytes, max_frames) in [(0, 1), (1, 1000), (100, 2), (5000, 3), (usize::MAX, usize::MAX)] {
                let r = open_bytes(&f, None).expect("opens");
                let (g, st) = drain(r, max_bytes, max_frames);
                assert_eq!(g, want, "batches of {max_bytes} B / {max_frames}");
                assert_eq!(st, want_st);
            }
            // A small read buffer exercises buffer growth and compaction.
            let small = ReaderLimits {
                read_buf_bytes: 1,
                ..ReaderLimits::default()
            };
            let r =
                CaptureReader::from_reader("t", Box::new(OneByte(Cursor::new(f.clone()))), None, small).expect("opens");
            assert_eq!(drain(r, 64, 2).0, want);
        }
    }

    /// Kept frames separated by large skipped blocks: with one batch for
    /// the whole file the block outgrows twice its target, so the pinned
    /// frames are packed to the front (more than once) and must survive it.
    #[test]
    fn pinned_frames_survive_compaction() {
        let e = LE;
        let mut f = shb(e);
        f.extend(idb(e, 1, 0, None, None));
        let mut want = Vec::new();
        for i in 0..200u32 {
            let data: Vec<u8> = (0..60 + i % 7).map(|j| (i * 31 + j) as u8).collect();
            f.extend(epb(e, 0, u64::from(i), &data));
            want.push(data);
            // A 64 KiB custom block to skip.
            f.extend(block(e, 0x4000_0bad, &vec![0xee; 64 * 1024]));
        }
        let small = ReaderLimits {
            read_buf_bytes: 4096,
            ..ReaderLimits::default()
        };
        for rdr in [
            Box::new(Cursor::new(f.clone())) as Box<dyn Read + Send>,
            Box::new(OneByte(Cursor::new(f.clone()))),
        ] {
            let r = CaptureReader::from_reader("t", rdr, None, small).expect("opens");
            let (g, st) = drain(r, 1 << 20, 100_000);
            assert_eq!(g.len(), 200);
            for (got, want) in g.iter().zip(&want) {
                assert_eq!(&got.5, want);
            }
            assert_eq!(st.n_other_blocks, 200);
        }
        // Recycled batches give the same frames.
        let mut r = CaptureReader::from_reader("t", Box::new(Cursor::new(f.clone())), None, small).expect("opens");
        let mut b = FrameBatch::default();
        let mut n = 0;
        while r.read_batch(&mut b, 3000, 7).expect("reads") {
            for (_, d) in b.iter() {
                assert_eq!(d, &want[n][..]);
                n += 1;
            }
        }
        assert_eq!(n, 200);
    }

    /// The same file as two sources: read whole, then a byte a read.
    fn whole_and_one_byte(f: &[u8]) -> [Box<dyn Read + Send>; 2] {
        [
            Box::new(Cursor::new(f.to_vec())),
            Box::new(OneByte(Cursor::new(f.to_vec()))),
        ]
    }

    /// Tiny records, taken many at a time by `pcap_run`: a batch's block
    /// is mostly record headers, which its runs keep between neighbouring
    /// frames (so packing them would free little, and is not done), with
    /// records cut across reads and batches of every size.
    #[test]
    fn runs_of_tiny_frames() {
        for (e, magic) in [(LE, PCAP_MAGIC_US), (BE, PCAP_MAGIC_NS)] {
            let mut f = pcap_header(e, magic, 4, 1);
            let mut want = Vec::new();
            for i in 0..3000u32 {
                let data: Vec<u8> = (0..i % 5).map(|j| (i * 7 + j) as u8).collect();
                f.extend(pcap_record(e, 1_000 + i, i % 1000, &data, data.len() as u32 + i % 2, 0));
                want.push(data);
            }
            for (read_buf, max_bytes, max_frames) in [(1, 64, 100_000), (4096, 100, 100_000), (64, 1 << 20, 500)] {
                let limits = ReaderLimits {
                    read_buf_bytes: read_buf,
                    ..ReaderLimits::default()
                };
                for rdr in whole_and_one_byte(&f) {
                    let mut r = CaptureReader::from_reader("t", rdr, None, limits).expect("opens");
                    let mut b = FrameBatch::default();
                    let mut n = 0usize;
                    while r.read_batch(&mut b, max_bytes, max_frames).expect("reads") {
                        for (m, d) in b.iter() {
                            assert_eq!(d, &want[n][..], "frame {}", n + 1);
                            assert_eq!(m.frame_no, n as u64 + 1);
                            assert_eq!(m.cap_len as usize + n % 2, m.orig_len as usize);
                            n += 1;
                        }
                    }
                    assert_eq!(n, 3000);
                    assert_eq!(r.stats().n_records, 3000);
                    assert_eq!(r.stats().n_snaplen_cut, 1500);
                    assert_eq!(r.parser.inb.n_runs_moved, 0);
                }
            }
        }
    }

    /// Runs of several frames moved by compaction: three kept TCP frames
    /// in a row (one run: only record headers between them), then a large
    /// UDP frame the filter drops (a gap that starts the next run). The
    /// block outgrows twice its target many times per batch, the runs are
    /// packed to the front, and each frame's `data_start` must follow its
    /// run.
    #[test]
    fn runs_moved_by_compaction_keep_their_frames() {
        let mut f = pcap_header(LE, PCAP_MAGIC_US, 4, 1);
        let mut want = Vec::new();
        for i in 0..600u32 {
            if i % 4 == 3 {
                let mut big = eth_ip(17);
                big.resize(3000, 0xee);
                f.extend(pcap_record(LE, i, 0, &big, 3000, 0));
            } else {
                let mut small = eth_ip(6);
                small.extend(i.to_le_bytes());
                f.extend(pcap_record(LE, i, 0, &small, small.len() as u32, 0));
                want.push((u64::from(i) + 1, small));
            }
        }
        let limits = ReaderLimits {
            read_buf_bytes: 512,
            ..ReaderLimits::default()
        };
        for rdr in whole_and_one_byte(&f) {
            let mut r = CaptureReader::from_reader("t", rdr, Some("tcp"), limits).expect("opens");
            let mut b = FrameBatch::default();
            let mut n = 0usize;
            while r.read_batch(&mut b, 4096, 100_000).expect("reads") {
                for (m, d) in b.iter() {
                    assert_eq!(m.frame_no, want[n].0);
                    assert_eq!(d, &want[n].1[..], "frame {}", m.frame_no);
                    n += 1;
                }
            }
            assert_eq!(n, 450);
            assert_eq!(r.stats().n_filtered_out, 150);
            let moved = r.parser.inb.n_runs_moved;
            assert!(moved > 20, "compaction moved {moved} runs");
        }
    }

    #[test]
    fn batch_limits() {
        let (g, _) = read_bytes(&fixtures()[6]);
        let r = open_bytes(&fixtures()[6], None).expect("opens");
        let mut r = r;
        let b = r.next_batch(4000, 1000).expect("reads").expect("frames");
        let bytes: usize = b.frames.iter().map(|m| m.cap_len as usize).sum();
        assert!(bytes <= 4000 && b.len() >= 2);
        for (i, want) in g.iter().enumerate().take(b.len()) {
            assert_eq!(b.frame_data(i), &want.5[..]);
        }
        assert_eq!(b.frame_data(b.len()), b"");
        assert_eq!(b.frame_data(usize::MAX), b"");
        let b = r.next_batch(1, 1000).expect("reads").expect("frames");
        assert_eq!(b.len(), 1, "an oversize frame comes alone");
    }

    /// Ethernet + IPv4 + UDP or TCP between 10.0.0.1 and 10.0.0.2.
    pub(crate) fn eth_ip(proto: u8) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend(ip(proto));
        f
    }

    pub(crate) fn ip(proto: u8) -> Vec<u8> {
        let l4_len: u8 = if proto == 17 { 8 } else { 20 };
        let mut v = vec![
            0x45,
            0,
            0,
            20 + l4_len,
            0,
            0,
            0,
            0,
            64,
            proto,
            0,
            0,
            10,
            0,
            0,
            1,
            10,
            0,
            0,
            2,
        ];
        v.extend_from_slice(&[0x1a, 0xe1, 0x1a, 0xe1]);
        v.resize(20 + usize::from(l4_len), 0);
        if proto == 6 {
            v[32] = 0x50;
        }
        v
    }

    #[test]
    fn filter_skips_and_counts_and_keeps_frame_numbers() {
        let mut p = pcap_header(LE, PCAP_MAGIC_US, 4, 1);
        for (i, proto) in [17u8, 6, 6, 17, 6].iter().enumerate() {
            p.extend(pcap_record(LE, i as u32, 0, &eth_ip(*proto), 60, 0));
        }
        let r = open_bytes(&p, Some("udp port 6881")).expect("opens");
        let (g, st) = drain(r, 1 << 20, 1000);
        assert_eq!(g.iter().map(|x| x.1).collect::<Vec<_>>(), vec![1, 4]);
        assert_eq!(st.n_filtered_out, 3);
        assert_eq!(st.n_records, 5);
        let r = open_bytes(&p, Some("tcp")).expect("opens");
        let (g, _) = drain(r, 1 << 20, 1);
        assert_eq!(g.iter().map(|x| x.1).collect::<Vec<_>>(), vec![2, 3, 5]);

        // Per link type: Ethernet and raw IP in one pcapng.
        let mut n = shb(LE);
        n.extend(idb(LE, 1, 0, None, None));
        n.extend(idb(LE, 101, 0, None, None));
        n.extend(epb(LE, 0, 1, &eth_ip(17)));
        n.extend(epb(LE, 1, 2, &ip(17)));
        n.extend(epb(LE, 1, 3, &ip(6)));
        n.extend(epb(LE, 0, 4, &eth_ip(6)));
        // A USB interface appears later: "udp" cannot compile for it.
        n.extend(idb(LE, 189, 0, None, None));
        n.extend(epb(LE, 2, 5, &[0; 64]));
        let r = open_bytes(&n, Some("udp")).expect("opens");
        let (g, st) = drain(r, 1 << 20, 1000);
        assert_eq!(g.iter().map(|x| (x.1, x.2)).collect::<Vec<_>>(), vec![(1, 1), (2, 101)]);
        assert_eq!(st.n_filtered_out, 3);
        assert_eq!(st.n_filter_unsupported, 1);

        // A filter that does not compile is an error at open, naming the
        // link type; so is one that cannot apply to a starting interface.
        let e = open_bytes(&p, Some("udp portt 1")).expect_err("bad filter");
        assert!(e.to_string().starts_with("invalid filter \"udp portt 1\": "), "{e}");
        assert!(e.to_string().ends_with("(link type EN10MB)"), "{e}");
        let mut usb = shb(LE);
        usb.extend(idb(LE, 189, 0, None, None));
        assert!(matches!(
            open_bytes(&usb, Some("udp")),
            Err(CaptureError::Filter { link_type: 189, .. })
        ));
        assert!(open_bytes(&usb, None).is_ok());
    }

    /// xorshift64*: a dependency-free PRNG for the mutation test.
    pub(crate) struct Rng(pub(crate) u64);

    impl Rng {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        pub(crate) fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    #[test]
    fn mutated_fixtures_never_panic() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let fx = fixtures();
        for round in 0..3000 {
            let mut f = fx[round % fx.len()].clone();
            for _ in 0..1 + rng.below(6) {
                match rng.below(4) {
                    0 => {
                        let i = rng.below(f.len());
                        if let Some(b) = f.get_mut(i) {
                            *b = rng.next() as u8;
                        }
                    }
                    1 => {
                        // Overwrite a 32-bit field with an edge value.
                        let i = rng.below(f.len().saturating_sub(4)) & !3;
                        let v = [0u32, 1, 12, 0x7fff_ffff, 0xffff_ffff, 0x0001_0000][rng.below(6)];
                        if let Some(s) = f.get_mut(i..i + 4) {
                            s.copy_from_slice(&v.to_le_bytes());
                        }
                    }
                    2 => f.truncate(rng.below(f.len() + 1)),
                    _ => {
                        let i = rng.below(f.len() + 1);
                        f.splice(i..i, (0..rng.below(9)).map(|_| rng.next() as u8));
                    }
                }
            }
            let Ok(mut r) = open_bytes(&f, if round % 2 == 0 { Some("udp or tcp") } else { None }) else {
                continue;
            };
            let mut last = 0;
            let mut n = 0u64;
            while let Some(b) = r.next_batch(512, 3).expect("in memory") {
                for (m, d) in b.iter() {
                    assert_eq!(d.len(), m.cap_len as usize);
                    assert!(m.cap_len <= m.orig_len);
                    assert!(m.frame_no > last);
                    last = m.frame_no;
                    n += 1;
                }
            }
            let st = r.stats();
            assert_eq!(st.n_records, n + st.n_filtered_out);
        }
    }

    #[test]
    fn tsresol_scales() {
        assert_eq!(TsScale::from_tsresol(6).to_us(1_234_567), 1_234_567);
        assert_eq!(TsScale::from_tsresol(9).to_us(1_999), 1);
        assert_eq!(TsScale::from_tsresol(9).to_us(999), 0);
        assert_eq!(TsScale::from_tsresol(3).to_us(5), 5_000);
        assert_eq!(TsScale::from_tsresol(0).to_us(7), 7_000_000);
        // 2^-10 s: 1024 units = 1 s; 1 unit = 976.5625 µs -> floor 976.
        assert_eq!(TsScale::from_tsresol(0x80 | 10).to_us(1024), 1_000_000);
        assert_eq!(TsScale::from_tsresol(0x80 | 10).to_us(1), 976);
        assert_eq!(TsScale::from_tsresol(0x80).to_us(3), 3_000_000);
        assert_eq!(TsScale::from_tsresol(0x80 | 127).to_us(u64::MAX), 0);
        // 1.8e19 units of 10^-25 s.
        assert_eq!(TsScale::from_tsresol(25).to_us(u64::MAX), 1);
        assert_eq!(TsScale::from_tsresol(26), TsScale::Zero);
        assert_eq!(TsScale::from_tsresol(127).to_us(u64::MAX), 0);
        // Coarse units of a huge count saturate instead of wrapping.
        assert_eq!(TsScale::from_tsresol(0).to_us(u64::MAX), i64::MAX);
    }

    #[test]
    fn accessors_never_panic() {
        let b = [1u8, 2, 3];
        assert_eq!(u32_at(Endian::Little, &b, 0), None);
        assert_eq!(u16_at(Endian::Big, &b, 1), Some(0x0203));
        assert_eq!(u16_at(Endian::Big, &b, usize::MAX), None);
        assert_eq!(u64_at(Endian::Big, &b, 0), None);
    }
}
