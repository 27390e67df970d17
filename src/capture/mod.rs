//! Capture input: turning the command line's INPUTs into batches of frames.
//!
//! [`expand_inputs`] turns the arguments into a list of inputs (a directory
//! becomes the capture files inside it, recognised by their first bytes, not
//! by extension; `-` is stdin). [`CaptureReader`] opens one input, sees
//! through gzip or zstd compression (by magic bytes, on a plain stream, so
//! stdin and pipes work), recognises pcap or pcapng (by magic again), and
//! yields [`FrameBatch`]es: one large read buffer per batch, parsed in
//! place, with a small [`FrameMeta`] per frame pointing into it (frames are
//! not copied; see [`file::InBuf`]). A BPF expression, if given,
//! is applied to every frame before it is copied (see [`bpf`]).
//!
//! Formats and their parsing are described in [`file`]. Magic numbers:
//! gzip `1f 8b`, zstd `28 b5 2f fd`, pcap `a1b2c3d4`/`a1b23c4d`/`a1b2cd34` in
//! either byte order, pcapng `0a 0d 0d 0a`.
//!
//! Invariants:
//! * Hostile files cannot make the reader panic, allocate without bound, or
//!   loop: every length from the file is checked against [`ReaderLimits`],
//!   and every call makes progress or reports the end.
//! * Malformed content is never an error: it is counted in [`ReaderStats`]
//!   and ends the file (or skips one block when its length is trustworthy).
//!   `Err` means the input cannot be used at all (at open) or an I/O error.
//! * Frame numbers are 1-based positions among the file's packet records,
//!   like Wireshark's `frame.number`, whether or not the filter keeps them.
//! * A batch holds at most `max_frames` frames and `max_bytes` bytes, except
//!   that a single frame larger than `max_bytes` comes alone in its batch.

pub mod bpf;
pub mod file;
pub mod live;

use std::fmt;
use std::fs::File;
use std::io::{self, Cursor, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;

pub use file::CaptureFormat;
use file::{InBuf, Parser, Source, Step};

/// One captured frame inside a batch buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameMeta {
    /// Microseconds since the Unix epoch, UTC; finer timestamps are
    /// truncated toward negative infinity.
    pub ts_us: i64,
    /// 1-based, counts every packet record in the file like Wireshark's
    /// frame.number (filtered-out frames keep their numbers).
    pub frame_no: u64,
    /// LINKTYPE_* of the frame's interface (pcapng: per interface).
    pub link_type: u16,
    /// Offset into [`FrameBatch::data`].
    pub data_start: u32,
    /// Bytes captured (the length of the frame's data in the batch).
    pub cap_len: u32,
    /// Length of the frame on the wire.
    pub orig_len: u32,
}

/// Frames of one capture, their bytes inside `data`: the block the reader
/// read them into, which also holds record headers and any skipped records
/// between them (so `data.len()` is not the frames' total length). Pass a
/// used batch back to [`CaptureReader::read_batch`] to reuse its block.
#[derive(Debug, Clone, Default)]
pub struct FrameBatch {
    /// Index of the input the frames come from (see
    /// [`CaptureReader::set_capture_idx`]).
    pub capture_idx: u32,
    pub data: Vec<u8>,
    pub frames: Vec<FrameMeta>,
}

impl FrameBatch {
    /// The bytes of frame `i`; empty when `i` is out of range (never panics).
    pub fn frame_data(&self, i: usize) -> &[u8] {
        self.frames.get(i).map_or(&[], |m| self.data_of(m))
    }

    /// The bytes of the frame `m` describes (one of this batch's frames);
    /// empty when they are not in the block (never panics).
    #[inline]
    pub fn data_of(&self, m: &FrameMeta) -> &[u8] {
        let start = m.data_start as usize;
        start
            .checked_add(m.cap_len as usize)
            .and_then(|end| self.data.get(start..end))
            .unwrap_or(&[])
    }

    /// Each frame's metadata with its bytes.
    pub fn iter(&self) -> impl Iterator<Item = (&FrameMeta, &[u8])> + '_ {
        self.frames.iter().enumerate().map(|(i, m)| (m, self.frame_data(i)))
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Empties the batch (no frames), keeping its allocations for reuse.
    pub fn clear(&mut self) {
        self.frames.clear();
    }
}

/// What a reader counted. Packet counters cover every well-formed packet
/// record, whether or not the filter kept it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReaderStats {
    /// Well-formed packet records (the last frame number).
    pub n_records: u64,
    /// Sum of original (wire) lengths.
    pub n_bytes: u64,
    /// Sum of captured lengths.
    pub n_cap_bytes: u64,
    /// Records with captured length < original length.
    pub n_snaplen_cut: u64,
    /// The stream ended inside a record or block.
    pub truncated_tail: bool,
    /// Malformed records or blocks, whether they ended the file or were
    /// skipped.
    pub n_bad_blocks: u64,
    /// The first malformed record or block: where and what.
    pub bad_block_detail: Option<String>,
    /// Frames the filter rejected (including `n_filter_unsupported`).
    pub n_filtered_out: u64,
    /// Frames dropped because the filter does not compile for their link
    /// type (e.g. `tcp` on a USB interface): they cannot match.
    pub n_filter_unsupported: u64,
    /// Timestamp of the first and last record in file order.
    pub first_ts_us: Option<i64>,
    pub last_ts_us: Option<i64>,
    /// Earliest and latest timestamp (merged captures are not always in
    /// time order).
    pub min_ts_us: Option<i64>,
    pub max_ts_us: Option<i64>,
    /// Records whose timestamp is earlier than the previous record's.
    pub n_ts_backwards: u64,
    /// Records on a link type libpcap has no name for.
    pub n_unknown_link_type: u64,
    /// pcapng sections (SHBs).
    pub n_sections: u64,
    /// Interfaces (pcapng IDBs, summed over sections; 1 for pcap).
    pub n_interfaces: u64,
    /// pcapng blocks skipped because they carry no packets (name
    /// resolution, statistics, secrets, custom, unknown types).
    pub n_other_blocks: u64,
    /// Malformed IDB options (bad lengths); the options after one are lost.
    pub n_bad_options: u64,
    /// Records without a timestamp (pcapng SPB); they get the previous
    /// record's timestamp so that packet time never jumps back to 1970.
    pub n_no_timestamp: u64,
    /// pcapng records whose time falls outside 1970-01-01..2200-01-01; they
    /// get the previous record's timestamp (anomaly `timestamp_out_of_range`).
    pub n_ts_out_of_range: u64,
    /// The decompressor reported corrupt or truncated data; the capture
    /// ends there (everything before it was delivered).
    pub stream_error: Option<String>,
}

/// Bounds on what a hostile file can make the reader hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReaderLimits {
    /// Largest captured length of one frame; a record claiming more is
    /// malformed. Default 256 KiB: libpcap's MAXIMUM_SNAPLEN and Wireshark's
    /// standard maximum, so it holds anything tcpdump, dumpcap or tshark
    /// write for network links, including 64 KiB TSO/GRO super-frames
    /// (IPv4 max 65,535 plus link headers); only BIG TCP frames beyond
    /// 256 KiB, which libpcap itself cuts to its snaplen, are larger.
    pub max_cap_len: u32,
    /// Largest pcapng block (packet data plus options, or a name-resolution
    /// or secrets block). Default 16 MiB: 64 times the largest frame, room
    /// for big NRB/DSB blocks, small enough to refuse absurd lengths.
    pub max_block_len: u32,
    /// Size of the read buffer: large reads amortise system calls and let
    /// each frame be copied once while it is still in cache.
    pub read_buf_bytes: usize,
    /// Interfaces (IDBs) kept per pcapng section; further IDBs are bad
    /// blocks. Default 4096: a capture host has one IDB per interface
    /// (VLAN and tunnel devices included), while without a cap a file of
    /// back-to-back 20-byte IDBs would cost more memory than its own size.
    pub max_interfaces: u32,
}

/// Default [`ReaderLimits::max_cap_len`].
pub const DEFAULT_MAX_CAP_LEN: u32 = 256 * 1024;
/// Default [`ReaderLimits::max_block_len`].
pub const DEFAULT_MAX_BLOCK_LEN: u32 = 16 * 1024 * 1024;
/// Default [`ReaderLimits::read_buf_bytes`]. Measured on a 350 MB pcap on
/// a 2-core VM: 64 KiB to 4 MiB buffers all run near the page-cache copy
/// rate; larger ones fall out of L2 cache. What a read brings beyond the
/// batch that ends in it is copied into the next batch's block
/// (`InBuf::take_block`): half a read on average, per batch. With 1 MiB
/// that was 5.7 % of the CPU time on mixed-250m (batches of 2 Ki small
/// frames, ~650 KB), so 256 KiB.
pub const DEFAULT_READ_BUF_BYTES: usize = 256 * 1024;
/// Default [`ReaderLimits::max_interfaces`].
pub const DEFAULT_MAX_INTERFACES: u32 = 4096;
/// Ceiling on a configured `max_interfaces` (32 MiB of interface state).
const MAX_CONFIGURED_INTERFACES: u32 = 1 << 20;
/// Ceiling on any configured length limit, so that offsets into a batch
/// (u32) cannot overflow: 2 GiB of batch plus one 1 GiB frame < 4 GiB.
const MAX_CONFIGURED_LEN: u32 = 1 << 30;
/// Ceiling on `max_bytes` of one batch, for the same reason.
const MAX_BATCH_BYTES: usize = 1 << 31;
/// A batch never reserves metadata for more frames than this up front
/// (2 MiB of [`FrameMeta`]).
const MAX_FRAMES_RESERVE: usize = 65_536;
/// Directory nesting followed by [`expand_inputs`]; deeper ones are listed
/// as skipped (a bound against pathological trees).
pub const MAX_DIR_DEPTH: usize = 64;
/// Bytes shown from the start of a file that is not a capture.
const MAGIC_SHOWN: usize = 4;

impl Default for ReaderLimits {
    fn default() -> Self {
        ReaderLimits {
            max_cap_len: DEFAULT_MAX_CAP_LEN,
            max_block_len: DEFAULT_MAX_BLOCK_LEN,
            read_buf_bytes: DEFAULT_READ_BUF_BYTES,
            max_interfaces: DEFAULT_MAX_INTERFACES,
        }
    }
}

impl ReaderLimits {
    /// The limits clamped to sane ranges (see [`MAX_CONFIGURED_LEN`]).
    fn sanitized(self) -> ReaderLimits {
        ReaderLimits {
            max_cap_len: self.max_cap_len.min(MAX_CONFIGURED_LEN),
            max_block_len: self.max_block_len.clamp(64, MAX_CONFIGURED_LEN),
            read_buf_bytes: self.read_buf_bytes.clamp(4096, MAX_CONFIGURED_LEN as usize),
            max_interfaces: self.max_interfaces.min(MAX_CONFIGURED_INTERFACES),
        }
    }
}

/// Compression seen on an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    #[default]
    None,
    Gzip,
    Zstd,
}

impl Compression {
    fn detect(head: &[u8]) -> Option<Compression> {
        if head.starts_with(&[0x1f, 0x8b]) {
            Some(Compression::Gzip)
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Some(Compression::Zstd)
        } else {
            None
        }
    }

    fn label(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Gzip => " (after gzip decompression)",
            Compression::Zstd => " (after zstd decompression)",
        }
    }
}

/// Compressors we recognise but do not read, to say so instead of "not a
/// capture".
fn unsupported_compression(head: &[u8]) -> Option<&'static str> {
    if head.starts_with(&[0xfd, b'7', b'z', b'X']) {
        Some("xz")
    } else if head.starts_with(b"BZh") {
        Some("bzip2")
    } else if head.starts_with(&[0x04, 0x22, 0x4d, 0x18]) {
        Some("lz4")
    } else {
        None
    }
}

/// One input on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputSpec {
    Path(PathBuf),
    Stdin,
}

impl InputSpec {
    /// The name used in messages and in the `capture` column: the path as
    /// given (unique across a directory tree, unlike the bare file name),
    /// or `-` for stdin.
    pub fn display_name(&self) -> String {
        match self {
            InputSpec::Path(p) => p.display().to_string(),
            InputSpec::Stdin => "-".to_string(),
        }
    }
}

/// A file inside a directory argument that was not taken, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedInput {
    pub path: PathBuf,
    pub reason: String,
}

/// The expansion of the command line's INPUTs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExpandedInputs {
    pub inputs: Vec<InputSpec>,
    /// Files inside directories that are not captures (or unreadable ones),
    /// in path order, for the caller to list.
    pub skipped: Vec<SkippedInput>,
}

/// Expands the command line's INPUTs: a directory becomes the capture files
/// inside it (recursively, sorted by path; files recognised by magic bytes,
/// not by extension; others skipped and listed in `skipped`), `-` is stdin.
/// A path named directly is taken as is (opening it reports what is wrong);
/// a missing path, an unreadable directory, or `-` given twice is an error.
pub fn expand_inputs(args: &[PathBuf]) -> Result<ExpandedInputs, CaptureError> {
    let mut out = ExpandedInputs::default();
    let mut seen_stdin = false;
    for arg in args {
        if arg.as_os_str() == "-" {
            if seen_stdin {
                return Err(CaptureError::StdinTwice);
            }
            seen_stdin = true;
            out.inputs.push(InputSpec::Stdin);
            continue;
        }
        let meta = std::fs::metadata(arg).map_err(|e| CaptureError::Open {
            name: arg.display().to_string(),
            source: e,
        })?;
        if !meta.is_dir() {
            out.inputs.push(InputSpec::Path(arg.clone()));
            continue;
        }
        let mut files = Vec::new();
        let mut skipped = Vec::new();
        walk_dir(arg, 0, &mut files, &mut skipped)?;
        files.sort();
        for f in files {
            match sniff(&f) {
                Ok(()) => out.inputs.push(InputSpec::Path(f)),
                Err(reason) => skipped.push(SkippedInput { path: f, reason }),
            }
        }
        skipped.sort_by(|a: &SkippedInput, b: &SkippedInput| a.path.cmp(&b.path));
        out.skipped.extend(skipped);
    }
    Ok(out)
}

/// Collects the regular files under `dir`. Symbolic links to files are
/// taken; links to directories are not followed (they can form cycles).
fn walk_dir(
    dir: &Path,
    depth: usize,
    files: &mut Vec<PathBuf>,
    skipped: &mut Vec<SkippedInput>,
) -> Result<(), CaptureError> {
    let open_err = |e: io::Error| CaptureError::Open {
        name: dir.display().to_string(),
        source: e,
    };
    for entry in std::fs::read_dir(dir).map_err(open_err)? {
        let entry = entry.map_err(open_err)?;
        let path = entry.path();
        let ft = match entry.file_type() {
            Ok(ft) => ft,
            Err(e) => {
                skipped.push(SkippedInput {
                    path,
                    reason: format!("cannot stat: {}", io_msg(&e)),
                });
                continue;
            }
        };
        if ft.is_dir() {
            if depth + 1 >= MAX_DIR_DEPTH {
                skipped.push(SkippedInput {
                    path,
                    reason: format!("directory nested deeper than {MAX_DIR_DEPTH} levels"),
                });
            } else {
                walk_dir(&path, depth + 1, files, skipped)?;
            }
        } else if ft.is_file() {
            files.push(path);
        } else if ft.is_symlink() {
            match std::fs::metadata(&path) {
                Ok(m) if m.is_file() => files.push(path),
                Ok(m) if m.is_dir() => skipped.push(SkippedInput {
                    path,
                    reason: "symbolic link to a directory, not followed".to_string(),
                }),
                Ok(_) => skipped.push(SkippedInput {
                    path,
                    reason: "not a regular file".to_string(),
                }),
                Err(e) => skipped.push(SkippedInput {
                    path,
                    reason: format!("broken symbolic link: {}", io_msg(&e)),
                }),
            }
        } else {
            skipped.push(SkippedInput {
                path,
                reason: "not a regular file".to_string(),
            });
        }
    }
    Ok(())
}

/// Whether a file starts like a capture (through gzip/zstd too); `Err`
/// says why not.
fn sniff(path: &Path) -> Result<(), String> {
    let f = File::open(path).map_err(|e| format!("cannot open: {}", io_msg(&e)))?;
    let (mut src, compression) = open_stream(Box::new(f)).map_err(|e| match e {
        StreamError::Io(e) => format!("cannot read: {}", io_msg(&e)),
        StreamError::Unsupported(kind) => format!("compressed with {kind}, which is not supported"),
    })?;
    let mut head = [0u8; MAGIC_SHOWN];
    let n = read_up_to(&mut *src, &mut head).unwrap_or(0);
    let head = head.get(..n).unwrap_or(&[]);
    match <[u8; 4]>::try_from(head).ok().and_then(CaptureFormat::detect) {
        Some(_) => Ok(()),
        None if n == 0 => Err(format!("empty{}", compression.label())),
        None => Err(format!(
            "not a pcap or pcapng capture{} (starts with {})",
            compression.label(),
            hex(head)
        )),
    }
}

enum StreamError {
    Io(io::Error),
    Unsupported(&'static str),
}

/// Peeks at the first bytes of `raw` and, when they are a gzip or zstd
/// magic, puts the matching decompressor in front of it. The peeked bytes are
/// chained back in front, so nothing needs to seek.
fn open_stream(mut raw: Box<dyn Read + Send>) -> Result<(Box<dyn Read + Send>, Compression), StreamError> {
    let mut head = [0u8; MAGIC_SHOWN];
    let n = read_up_to(&mut *raw, &mut head).map_err(StreamError::Io)?;
    let head = head.get(..n).unwrap_or(&[]).to_vec();
    if let Some(kind) = unsupported_compression(&head) {
        return Err(StreamError::Unsupported(kind));
    }
    let compression = Compression::detect(&head).unwrap_or_default();
    let chained = Cursor::new(head).chain(raw);
    let stream: Box<dyn Read + Send> = match compression {
        Compression::None => Box::new(chained),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(chained)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(chained).map_err(StreamError::Io)?),
    };
    Ok((stream, compression))
}

/// Reads until `buf` is full or the stream ends; the byte count.
fn read_up_to(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while let Some(dst) = buf.get_mut(n..).filter(|d| !d.is_empty()) {
        match r.read(dst) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(" ")
}

/// An I/O error's message without Rust's " (os error N)" suffix.
fn io_msg(e: &io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error ") {
        Some(i) if s.ends_with(')') => s.get(..i).unwrap_or(&s).to_string(),
        _ => s,
    }
}

/// Why an input cannot be read. Every message is one user-facing line.
#[derive(Debug)]
#[non_exhaustive]
pub enum CaptureError {
    /// "cannot open X: No such file or directory"
    Open { name: String, source: io::Error },
    /// "error reading X: ..."
    Read { name: String, source: io::Error },
    /// "X is empty"
    Empty { name: String, compression: Compression },
    /// "X is not a pcap or pcapng capture (starts with 3c 21 44 4f)"
    NotCapture {
        name: String,
        head: Vec<u8>,
        compression: Compression,
    },
    /// "X is compressed with xz, which is not supported (...)"
    UnsupportedCompression { name: String, kind: &'static str },
    /// "X: truncated pcap file header (10 of 24 bytes)", unsupported
    /// versions, a malformed first section header.
    BadHeader { name: String, detail: String },
    /// "invalid filter "...": syntax error (link type EN10MB)"
    Filter {
        expr: String,
        link_type: u16,
        message: String,
    },
    /// "-" named twice: stdin can be read only once.
    StdinTwice,
}

impl fmt::Display for CaptureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CaptureError::Open { name, source } => write!(f, "cannot open {name}: {}", io_msg(source)),
            CaptureError::Read { name, source } => write!(f, "error reading {name}: {}", io_msg(source)),
            CaptureError::Empty { name, compression } => write!(f, "{name} is empty{}", compression.label()),
            CaptureError::NotCapture {
                name,
                head,
                compression,
            } => write!(
                f,
                "{name} is not a pcap or pcapng capture{} (starts with {})",
                compression.label(),
                hex(head)
            ),
            CaptureError::UnsupportedCompression { name, kind } => write!(
                f,
                "{name} is compressed with {kind}, which is not supported (use gzip or zstd, or decompress it first)"
            ),
            CaptureError::BadHeader { name, detail } => write!(f, "{name}: {detail}"),
            CaptureError::Filter {
                expr,
                link_type,
                message,
            } => {
                let lt = bpf::link_type_name(*link_type).unwrap_or_else(|| link_type.to_string());
                write!(f, "invalid filter \"{expr}\": {message} (link type {lt})")
            }
            CaptureError::StdinTwice => write!(f, "- (stdin) is given more than once"),
        }
    }
}

impl std::error::Error for CaptureError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CaptureError::Open { source, .. } | CaptureError::Read { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Checks that a filter expression compiles (for Ethernet), so that a
/// command line can be rejected before any input is opened.
pub fn check_filter(expr: &str) -> Result<(), CaptureError> {
    bpf::compile(expr, bpf::LINKTYPE_ETHERNET)
        .map(|_| ())
        .map_err(|message| CaptureError::Filter {
            expr: expr.to_string(),
            link_type: bpf::LINKTYPE_ETHERNET,
            message,
        })
}

/// Reads one capture file or stream as batches of frames.
pub struct CaptureReader {
    name: String,
    src: Source,
    parser: Parser,
    stats: ReaderStats,
    filter: Option<bpf::FilterSet>,
    format: CaptureFormat,
    compression: Compression,
    capture_idx: u32,
    /// A stream read as it arrives (stdin): what its pump holds.
    arrivals: Option<Arc<Arrivals>>,
}

/// Bytes a stream's pump reads at once (a pipe hands over at most its
/// 64 KiB buffer per read on Linux).
const PUMP_CHUNK_BYTES: usize = 64 * 1024;
/// Chunks a stream's pump may hold ahead of the parser: 256 KiB, one
/// read buffer's worth, so a fast writer still fills whole batches.
const PUMP_CHUNKS: usize = 4;

/// What a stream's pump thread has read and the parser not yet taken.
#[derive(Debug, Default)]
pub struct Arrivals {
    queued: AtomicU64,
    ended: AtomicBool,
}

impl Arrivals {
    /// Whether reading the stream now returns without waiting: bytes have
    /// arrived, or it has ended.
    pub fn ready(&self) -> bool {
        self.queued.load(Ordering::Acquire) > 0 || self.ended.load(Ordering::Acquire)
    }

    /// Bytes read from the stream that the parser has not taken yet.
    pub fn queued(&self) -> u64 {
        self.queued.load(Ordering::Acquire)
    }
}

/// The parser's side of a pump: the chunks its thread read, in order.
struct PumpRead {
    rx: Receiver<io::Result<Vec<u8>>>,
    cur: Vec<u8>,
    pos: usize,
    arrivals: Arc<Arrivals>,
}

impl Read for PumpRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.cur.len() {
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    self.cur = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let rest = self.cur.get(self.pos..).unwrap_or(&[]);
        let n = rest.len().min(buf.len());
        if let (Some(dst), Some(src)) = (buf.get_mut(..n), rest.get(..n)) {
            dst.copy_from_slice(src);
        }
        self.pos += n;
        self.arrivals.queued.fetch_sub(n as u64, Ordering::AcqRel);
        Ok(n)
    }
}

/// Reads `raw` on a thread of its own, so that the parser can tell whether
/// more bytes have arrived without waiting for them (see
/// [`CaptureReader::from_stream`]). The thread ends with the stream (or
/// when the reader is gone and a chunk arrives).
fn pump(mut raw: Box<dyn Read + Send>) -> io::Result<(PumpRead, Arc<Arrivals>)> {
    let arrivals = Arc::new(Arrivals::default());
    let (tx, rx) = sync_channel::<io::Result<Vec<u8>>>(PUMP_CHUNKS);
    let state = arrivals.clone();
    std::thread::Builder::new()
        .name("swarmtap-stdin".into())
        .spawn(move || {
            loop {
                let mut chunk = vec![0u8; PUMP_CHUNK_BYTES];
                match raw.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => {
                        chunk.truncate(n);
                        state.queued.fetch_add(n as u64, Ordering::AcqRel);
                        if tx.send(Ok(chunk)).is_err() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        break;
                    }
                }
            }
            // Past here a read gets the rest, the error or the end at once
            // (the sender goes with the thread).
            state.ended.store(true, Ordering::Release);
        })?;
    let read = PumpRead {
        rx,
        cur: Vec::new(),
        pos: 0,
        arrivals: arrivals.clone(),
    };
    Ok((read, arrivals))
}

impl fmt::Debug for CaptureReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaptureReader")
            .field("name", &self.name)
            .field("format", &self.format)
            .field("compression", &self.compression)
            .field("filter", &self.filter.as_ref().map(|x| x.expr()))
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl CaptureReader {
    /// Opens a file or stdin; detects gzip and zstd by magic bytes (then pcap
    /// vs pcapng by magic). `filter` is a BPF expression compiled with
    /// libpcap per link type and applied to every frame; a filter that does
    /// not compile for the link types at the start of the file is an error
    /// here.
    pub fn open(input: &InputSpec, filter: Option<&str>) -> Result<Self, CaptureError> {
        Self::open_with(input, filter, ReaderLimits::default())
    }

    /// [`CaptureReader::open`] with explicit limits.
    pub fn open_with(input: &InputSpec, filter: Option<&str>, limits: ReaderLimits) -> Result<Self, CaptureError> {
        let name = input.display_name();
        let raw: Box<dyn Read + Send> = match input {
            InputSpec::Path(p) => Box::new(File::open(p).map_err(|e| CaptureError::Open {
                name: name.clone(),
                source: e,
            })?),
            InputSpec::Stdin => return Self::from_stream(name, Box::new(io::stdin()), filter, limits),
        };
        Self::from_reader(name, raw, filter, limits)
    }

    /// Reads a capture from a stream whose writer may pause (stdin, a
    /// pipe): it is read on a thread of its own, and a batch is handed over
    /// as soon as the records that have arrived are parsed, instead of
    /// waiting for a full batch (or the end) while the writer is idle.
    /// [`arrivals`](Self::arrivals) tells what has arrived.
    pub fn from_stream(
        name: impl Into<String>,
        raw: Box<dyn Read + Send>,
        filter: Option<&str>,
        limits: ReaderLimits,
    ) -> Result<Self, CaptureError> {
        let name = name.into();
        let (read, arrivals) = pump(raw).map_err(|e| CaptureError::Read {
            name: name.clone(),
            source: e,
        })?;
        let mut r = Self::from_reader(name, Box::new(read), filter, limits)?;
        r.arrivals = Some(arrivals);
        Ok(r)
    }

    /// For a stream reader ([`from_stream`](Self::from_stream)): what its
    /// pump has read ahead of the parser.
    pub fn arrivals(&self) -> Option<Arc<Arrivals>> {
        self.arrivals.clone()
    }

    /// Reads a capture from any byte stream (no seeking needed); `name` is
    /// used in messages and returned by [`CaptureReader::name`].
    pub fn from_reader(
        name: impl Into<String>,
        raw: Box<dyn Read + Send>,
        filter: Option<&str>,
        limits: ReaderLimits,
    ) -> Result<Self, CaptureError> {
        let name = name.into();
        let limits = limits.sanitized();
        let read_err = |name: &str, e: io::Error| CaptureError::Read {
            name: name.to_string(),
            source: e,
        };
        let (inner, compression) = open_stream(raw).map_err(|e| match e {
            StreamError::Io(e) => read_err(&name, e),
            StreamError::Unsupported(kind) => CaptureError::UnsupportedCompression {
                name: name.clone(),
                kind,
            },
        })?;
        let mut src = Source {
            inner,
            compressed: compression != Compression::None,
        };
        let mut stats = ReaderStats::default();
        let mut inb = InBuf::new(limits.read_buf_bytes);
        inb.fill(&mut src, &mut stats, 4).map_err(|e| read_err(&name, e))?;
        let head = inb.avail().get(..4.min(inb.avail().len())).unwrap_or(&[]).to_vec();
        let format = <[u8; 4]>::try_from(head.as_slice())
            .ok()
            .and_then(CaptureFormat::detect);
        let Some(format) = format else {
            if let Some(why) = stats.stream_error.take() {
                return Err(CaptureError::BadHeader {
                    name,
                    detail: format!("corrupt compressed data: {why}"),
                });
            }
            return Err(if head.is_empty() {
                CaptureError::Empty { name, compression }
            } else {
                CaptureError::NotCapture {
                    name,
                    head,
                    compression,
                }
            });
        };
        let mut parser = Parser::new(format, inb, limits);
        match parser.prime(&mut src, &mut stats, bpf::link_type_known) {
            Err(e) => return Err(read_err(&name, e)),
            Ok(Err(detail)) => return Err(CaptureError::BadHeader { name, detail }),
            Ok(Ok(())) => {}
        }
        let filter = match filter {
            None => None,
            Some(expr) => {
                let mut set = bpf::FilterSet::new(expr);
                let mut lts = parser.link_types();
                if lts.is_empty() {
                    lts.push(bpf::LINKTYPE_ETHERNET);
                }
                for lt in lts {
                    set.prepare(lt).map_err(|message| CaptureError::Filter {
                        expr: expr.to_string(),
                        link_type: lt,
                        message,
                    })?;
                }
                Some(set)
            }
        };
        Ok(CaptureReader {
            name,
            src,
            parser,
            stats,
            filter,
            format,
            compression,
            capture_idx: 0,
            arrivals: None,
        })
    }

    /// Sets the `capture_idx` stamped on every batch (the input's position).
    pub fn set_capture_idx(&mut self, idx: u32) {
        self.capture_idx = idx;
    }

    pub fn capture_idx(&self) -> u32 {
        self.capture_idx
    }

    /// Up to `max_bytes` of frame data / `max_frames` frames; `Ok(None)` at
    /// the end. Malformed content is counted in stats and ends the file
    /// gracefully (or skips the block when its length is trustworthy); `Err`
    /// only for I/O errors.
    pub fn next_batch(&mut self, max_bytes: usize, max_frames: usize) -> Result<Option<FrameBatch>, CaptureError> {
        let mut batch = FrameBatch {
            capture_idx: self.capture_idx,
            // The reader's buffer becomes the data; nothing to reserve.
            data: Vec::new(),
            frames: Vec::with_capacity(max_frames.clamp(1, MAX_FRAMES_RESERVE)),
        };
        Ok(self.read_batch(&mut batch, max_bytes, max_frames)?.then_some(batch))
    }

    /// Like [`CaptureReader::next_batch`], refilling a batch the caller
    /// recycles (no allocation once its buffers have grown). Returns whether
    /// the batch holds frames; `false` means the end.
    pub fn read_batch(
        &mut self,
        batch: &mut FrameBatch,
        max_bytes: usize,
        max_frames: usize,
    ) -> Result<bool, CaptureError> {
        // `data` is not cleared: its bytes are overwritten by reads, and
        // keeping its length spares zeroing it again.
        batch.frames.clear();
        batch.capture_idx = self.capture_idx;
        let max_bytes = max_bytes.min(MAX_BATCH_BYTES);
        let max_frames = max_frames.max(1);
        self.parser.set_block_target(max_bytes, max_frames);
        let mut n_bytes = 0usize;
        loop {
            // The records already whole in the buffer, in one loop (pcap
            // without a filter); whatever it leaves is the next call's.
            if self.filter.is_none() && !batch.frames.is_empty() {
                self.parser
                    .pcap_run(&mut self.stats, &mut batch.frames, max_frames, max_bytes, &mut n_bytes);
                if batch.frames.len() >= max_frames || n_bytes >= max_bytes {
                    break;
                }
            }
            // A stream hands over what has arrived rather than wait for
            // more while its writer is idle (a batch ends where the data
            // paused; the output does not depend on where batches end).
            if let (false, Some(a)) = (batch.frames.is_empty(), &self.arrivals) {
                if !a.ready() && !self.parser.next_record_buffered() {
                    break;
                }
            }
            let room = if batch.frames.is_empty() {
                usize::MAX
            } else {
                max_bytes.saturating_sub(n_bytes)
            };
            let step = self
                .parser
                .next(&mut self.src, &mut self.stats, room, bpf::link_type_known)
                .map_err(|e| CaptureError::Read {
                    name: self.name.clone(),
                    source: e,
                })?;
            let rec = match step {
                Step::Frame(rec) => rec,
                Step::NoRoom | Step::End => break,
            };
            if let Some(f) = &mut self.filter {
                match f.matches(rec.link_type, rec.data) {
                    Some(true) => {}
                    Some(false) => {
                        self.stats.n_filtered_out += 1;
                        continue;
                    }
                    None => {
                        self.stats.n_filtered_out += 1;
                        self.stats.n_filter_unsupported += 1;
                        continue;
                    }
                }
            }
            let Ok(cap_len) = u32::try_from(rec.data.len()) else {
                // Unreachable with the clamped limits.
                break;
            };
            let (ts_us, frame_no, link_type, orig_len, off) =
                (rec.ts_us, rec.frame_no, rec.link_type, rec.orig_len, rec.off);
            let Some(data_start) = self.parser.pin(off, cap_len as usize) else {
                // Unreachable with the clamped limits; never write a wrong offset.
                break;
            };
            batch.frames.push(FrameMeta {
                ts_us,
                frame_no,
                link_type,
                // Its offset in the block (put right in `take_block` if a
                // compaction moves it).
                data_start,
                cap_len,
                orig_len,
            });
            n_bytes += cap_len as usize;
            if batch.frames.len() >= max_frames || n_bytes >= max_bytes {
                break;
            }
        }
        if batch.frames.is_empty() {
            return Ok(false);
        }
        // The read buffer holding the frames becomes the batch's data; the
        // batch's previous buffer becomes the read buffer.
        let recycled = std::mem::take(&mut batch.data);
        batch.data = self.parser.take_block(recycled, &mut batch.frames);
        Ok(true)
    }

    pub fn stats(&self) -> &ReaderStats {
        &self.stats
    }

    /// File name (or "-") used in the `capture` column.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn format(&self) -> CaptureFormat {
        self.format
    }

    pub fn compression(&self) -> Compression {
        self.compression
    }
}

#[cfg(test)]
mod tests {
    use super::file::tests::{
        drain, eth_ip, open_bytes, pcap_header, pcap_record, pcapng_multi, read_bytes, OneByte, Rng, LE,
    };
    use super::file::PCAP_MAGIC_US;
    use super::*;
    use std::io::Write;

    fn gzip(b: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(b).expect("in memory");
        e.finish().expect("in memory")
    }

    fn small_pcap() -> Vec<u8> {
        let mut p = pcap_header(LE, PCAP_MAGIC_US, 4, 1);
        for i in 0..20u32 {
            p.extend(pcap_record(LE, i, 0, &eth_ip(if i % 3 == 0 { 17 } else { 6 }), 60, 0));
        }
        p
    }

    #[test]
    fn error_messages_are_one_line() {
        let e = open_bytes(b"", None).expect_err("empty");
        assert_eq!(e.to_string(), "t is empty");
        let e = open_bytes(b"<!DOCTYPE html>", None).expect_err("html");
        assert_eq!(
            e.to_string(),
            "t is not a pcap or pcapng capture (starts with 3c 21 44 4f)"
        );
        let e = open_bytes(b"ab", None).expect_err("short");
        assert_eq!(e.to_string(), "t is not a pcap or pcapng capture (starts with 61 62)");
        let e = open_bytes(&gzip(b"hello world"), None).expect_err("gz text");
        assert_eq!(
            e.to_string(),
            "t is not a pcap or pcapng capture (after gzip decompression) (starts with 68 65 6c 6c)"
        );
        let e = open_bytes(&[0xfd, b'7', b'z', b'X', b'Z', 0], None).expect_err("xz");
        assert!(e
            .to_string()
            .starts_with("t is compressed with xz, which is not supported"));
        let e = open_bytes(&small_pcap()[..10], None).expect_err("cut header");
        assert_eq!(e.to_string(), "t: truncated pcap file header (10 of 24 bytes)");
        let mut v1 = small_pcap();
        v1[4] = 1;
        let e = open_bytes(&v1, None).expect_err("version");
        assert_eq!(e.to_string(), "t: pcap version 1.4 is not supported");
        let missing = InputSpec::Path(PathBuf::from("/nonexistent/x.pcap"));
        let e = CaptureReader::open(&missing, None).expect_err("missing");
        assert_eq!(
            e.to_string(),
            "cannot open /nonexistent/x.pcap: No such file or directory"
        );
        let e = check_filter("port").expect_err("syntax");
        assert!(!e.to_string().contains('\n'));
        assert!(check_filter("udp port 6881 or tcp").is_ok());
    }

    /// ~300 KB of incompressible frames: several zstd blocks and deflate
    /// blocks, so that a cut stream still yields its first frames.
    fn big_pcap() -> Vec<u8> {
        let mut rng = Rng(42);
        let mut p = pcap_header(LE, PCAP_MAGIC_US, 4, 1);
        for i in 0..300u32 {
            let data: Vec<u8> = (0..1000).map(|_| rng.next() as u8).collect();
            p.extend(pcap_record(LE, i, 0, &data, 1000, 0));
        }
        p
    }

    #[test]
    fn gzip_and_zstd_streams() {
        let plain = big_pcap();
        let (want, want_st) = read_bytes(&plain);
        let gz = gzip(&plain);
        // Multi-member gzip (e.g. concatenated rotations) reads as one.
        let mut multi = gzip(&plain[..100]);
        multi.extend(gzip(&plain[100..]));
        let zst = zstd::encode_all(&plain[..], 3).expect("in memory");
        for (what, bytes, comp) in [
            ("gzip", gz.clone(), Compression::Gzip),
            ("multi-member gzip", multi, Compression::Gzip),
            ("zstd", zst.clone(), Compression::Zstd),
        ] {
            let r = open_bytes(&bytes, None).expect("opens");
            assert_eq!(r.compression(), comp, "{what}");
            assert_eq!(r.format(), CaptureFormat::Pcap, "{what}");
            let (g, st) = drain(r, 1 << 20, 7);
            assert_eq!(g, want, "{what}");
            assert_eq!(st, want_st, "{what}");
            let one = CaptureReader::from_reader(
                "t",
                Box::new(OneByte(Cursor::new(bytes))),
                None,
                ReaderLimits::default(),
            )
            .expect("opens");
            assert_eq!(drain(one, 1 << 20, 1000).0, want, "{what}, 1-byte reads");
        }
        // A cut compressed stream: what was decompressed is delivered, and
        // the end is a truncation or a recorded stream error, not an Err.
        for bytes in [&gz, &zst] {
            for cut in [bytes.len() / 2, bytes.len() - 3] {
                let r = open_bytes(&bytes[..cut], None).expect("opens");
                let (g, st) = drain(r, 1 << 20, 1000);
                // Cut in the trailer, all the data may be out already.
                assert!(g.len() < want.len() || cut > bytes.len() / 2);
                assert_eq!(g, want[..g.len()].to_vec());
                assert!(st.truncated_tail || st.stream_error.is_some(), "{st:?}");
            }
        }
        // Corrupt compressed data after a good start.
        let mut bad = gz.clone();
        let n = bad.len();
        for b in &mut bad[n / 2..n - 8] {
            *b ^= 0x5a;
        }
        let (g, st) = drain(open_bytes(&bad, None).expect("opens"), 1 << 20, 1000);
        // Deflate may decode corrupt bytes into wrong frames before its CRC
        // check fails, so only the start is known to be right.
        assert!(g.first() == want.first());
        assert!(st.stream_error.is_some() || st.truncated_tail || st.n_bad_blocks > 0);
        // pcapng through zstd.
        let ng = pcapng_multi(LE);
        let (g, _) = read_bytes(&zstd::encode_all(&ng[..], 1).expect("in memory"));
        assert_eq!(g, read_bytes(&ng).0);
    }

    #[test]
    fn expand_inputs_walks_directories_by_magic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let pcap = small_pcap();
        std::fs::create_dir_all(root.join("b/deeper")).expect("mkdir");
        std::fs::create_dir_all(root.join("a")).expect("mkdir");
        std::fs::write(root.join("b/deeper/z.cap"), &pcap).expect("write");
        std::fs::write(root.join("a/notes.txt"), b"hello").expect("write");
        std::fs::write(root.join("a/empty.pcap"), b"").expect("write");
        std::fs::write(root.join("a/trace.txt"), gzip(&pcap)).expect("write");
        std::fs::write(root.join("a/text.gz"), gzip(b"not a capture")).expect("write");
        std::fs::write(root.join("c.pcapng"), pcapng_multi(LE)).expect("write");
        std::fs::write(root.join("d.zst"), zstd::encode_all(&pcap[..], 1).expect("zstd")).expect("write");
        #[cfg(unix)]
        std::os::unix::fs::symlink(root.join("b"), root.join("e-link")).expect("symlink");

        let got = expand_inputs(&[root.to_path_buf(), PathBuf::from("-")]).expect("expands");
        let paths: Vec<InputSpec> = ["a/trace.txt", "b/deeper/z.cap", "c.pcapng", "d.zst"]
            .iter()
            .map(|p| InputSpec::Path(root.join(p)))
            .chain([InputSpec::Stdin])
            .collect();
        assert_eq!(got.inputs, paths);
        let skipped: Vec<(PathBuf, &str)> = got
            .skipped
            .iter()
            .map(|s| {
                (
                    s.path.strip_prefix(root).expect("under root").to_path_buf(),
                    s.reason.as_str(),
                )
            })
            .collect();
        let mut want = vec![
            (PathBuf::from("a/empty.pcap"), "empty"),
            (
                PathBuf::from("a/notes.txt"),
                "not a pcap or pcapng capture (starts with 68 65 6c 6c)",
            ),
            (
                PathBuf::from("a/text.gz"),
                "not a pcap or pcapng capture (after gzip decompression) (starts with 6e 6f 74 20)",
            ),
        ];
        if cfg!(unix) {
            want.push((PathBuf::from("e-link"), "symbolic link to a directory, not followed"));
        }
        assert_eq!(skipped, want);
        // Every expanded file opens.
        for i in &got.inputs[..4] {
            assert!(CaptureReader::open(i, None).is_ok(), "{i:?}");
        }
        // A file named directly is taken without sniffing; errors come at open.
        let direct = expand_inputs(&[root.join("a/notes.txt")]).expect("expands");
        assert_eq!(direct.inputs, vec![InputSpec::Path(root.join("a/notes.txt"))]);
        assert!(matches!(
            expand_inputs(&[root.join("missing")]),
            Err(CaptureError::Open { .. })
        ));
        assert!(matches!(
            expand_inputs(&[PathBuf::from("-"), PathBuf::from("-")]),
            Err(CaptureError::StdinTwice)
        ));
    }

    #[test]
    fn capture_idx_is_stamped() {
        let mut r = open_bytes(&small_pcap(), None).expect("opens");
        r.set_capture_idx(7);
        let mut b = FrameBatch::default();
        assert!(r.read_batch(&mut b, 1 << 20, 5).expect("reads"));
        assert_eq!((b.capture_idx, b.len()), (7, 5));
        assert!(r.read_batch(&mut b, 1 << 20, 100).expect("reads"));
        assert_eq!(b.len(), 15);
        assert!(!r.read_batch(&mut b, 1 << 20, 100).expect("reads"));
        assert!(b.is_empty());
    }

    /// Days since 1970-01-01 of a proleptic Gregorian date.
    fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (m + 9) % 12;
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    /// "2009-12-03 13:32:44.039121" (UTC, up to ns) -> µs, floored.
    fn parse_utc(s: &str) -> Option<i64> {
        let (date, time) = s.trim().split_once(' ')?;
        let mut d = date.split('-').map(|x| x.parse::<i64>());
        let (y, mo, da) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
        let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
        let mut t = hms.split(':').map(|x| x.parse::<i64>());
        let (h, mi, se) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
        let frac_us: i64 = format!("{frac:0<6}").get(..6)?.parse().ok()?;
        Some(((days_from_civil(y, mo, da) * 24 + h) * 60 + mi) * 60_000_000 + se * 1_000_000 + frac_us)
    }

    /// "1259847178.003289000" -> µs, floored (non-negative epochs only).
    fn parse_epoch(s: &str) -> Option<i64> {
        let (sec, frac) = s.trim().split_once('.').unwrap_or((s.trim(), "0"));
        let frac_us: i64 = format!("{frac:0<6}").get(..6)?.parse().ok()?;
        Some(sec.parse::<i64>().ok()? * 1_000_000 + frac_us)
    }

    struct ManifestRow {
        file: String,
        packets: u64,
        min_ts_us: i64,
        max_ts_us: i64,
    }

    fn manifest(root: &Path) -> Vec<ManifestRow> {
        let text = std::fs::read_to_string(root.join("MANIFEST.md")).expect("MANIFEST.md");
        let mut rows = Vec::new();
        for line in text.lines().filter(|l| l.starts_with("| `")) {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let (Some(file), Some(packets), Some(span)) = (cells.get(1), cells.get(9), cells.get(10)) else {
                continue;
            };
            let Ok(packets) = packets.parse::<u64>() else {
                continue;
            };
            let span = span.split(" (").next().unwrap_or("");
            let (a, b) = span.split_once('→').expect("time span");
            rows.push(ManifestRow {
                file: file.trim_matches('`').to_string(),
                packets,
                min_ts_us: parse_utc(a).expect("start"),
                max_ts_us: parse_utc(b).expect("end"),
            });
        }
        rows
    }

    /// The public corpus, or `require`'s rule (a failure under
    /// SWARMTAP_REQUIRE_ALL, else a recorded skip).
    #[track_caller]
    fn corpus_root() -> Option<PathBuf> {
        crate::require::corpus(env!("CARGO_MANIFEST_DIR"))
    }

    #[test]
    fn public_corpus_matches_manifest_and_tshark() {
        let Some(root) = corpus_root() else {
            return;
        };
        let rows = manifest(&root);
        assert!(rows.len() >= 26, "captures listed in MANIFEST.md: {}", rows.len());
        // Spot checks that the table was parsed as meant.
        for (file, n) in [
            ("tcoppi__BittorrentReconstituter/lookaway.pcap", 1820),
            ("ntop__nDPI/bittorrent_transmission.pcapng", 7723),
            ("ntop__nDPI/bittorrent_utp.pcap", 92),
        ] {
            assert_eq!(
                rows.iter().find(|r| r.file == file).map(|r| r.packets),
                Some(n),
                "{file}"
            );
        }
        // Directory expansion finds exactly the captures, by magic (one of
        // them is pcapng named .pcap); the .torrent, .md and .csv files are
        // skipped.
        let expanded = expand_inputs(std::slice::from_ref(&root)).expect("expands");
        let mut want: Vec<PathBuf> = rows.iter().map(|r| root.join(&r.file)).collect();
        want.sort();
        let got: Vec<PathBuf> = expanded
            .inputs
            .iter()
            .filter_map(|i| match i {
                InputSpec::Path(p) => Some(p.clone()),
                InputSpec::Stdin => None,
            })
            .collect();
        assert_eq!(got, want);
        for skipped in &expanded.skipped {
            let ext = skipped.path.extension().and_then(|e| e.to_str()).unwrap_or("");
            assert!(["torrent", "md", "csv"].contains(&ext), "{skipped:?}");
        }

        let with_tshark = crate::require::tshark();
        let tshark_out: Vec<Option<String>> = std::thread::scope(|s| {
            let handles: Vec<_> = rows
                .iter()
                .map(|r| {
                    let path = root.join(&r.file);
                    s.spawn(move || {
                        if !with_tshark {
                            return None;
                        }
                        let out = std::process::Command::new("tshark")
                            .args(["-n", "-r"])
                            .arg(&path)
                            .args(["-T", "fields", "-e", "frame.number", "-e", "frame.time_epoch"])
                            .args(["-e", "frame.cap_len", "-e", "frame.len"])
                            .output()
                            .ok()?;
                        String::from_utf8(out.stdout).ok()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().ok().flatten()).collect()
        });

        for (row, tshark) in rows.iter().zip(tshark_out) {
            let path = root.join(&row.file);
            let r = CaptureReader::open(&InputSpec::Path(path.clone()), None).expect("corpus file opens");
            assert_eq!(r.name(), path.display().to_string());
            let (frames, st) = drain(r, 1 << 20, 4096);
            let f = &row.file;
            assert_eq!(frames.len() as u64, row.packets, "{f}");
            assert_eq!(st.n_records, row.packets, "{f}");
            assert_eq!(
                (st.n_bad_blocks, st.truncated_tail, st.n_snaplen_cut),
                (0, false, 0),
                "{f}"
            );
            assert_eq!(st.n_unknown_link_type, 0, "{f}");
            assert_eq!(st.min_ts_us, Some(row.min_ts_us), "{f}");
            assert_eq!(st.max_ts_us, Some(row.max_ts_us), "{f}");
            assert!(frames.iter().all(|g| g.2 == 1), "{f}: all Ethernet");
            if let Some(text) = tshark {
                let lines: Vec<&str> = text.lines().collect();
                assert_eq!(lines.len(), frames.len(), "{f}");
                for (line, g) in lines.iter().zip(&frames) {
                    let c: Vec<&str> = line.split('\t').collect();
                    let want = (
                        c.first().and_then(|x| x.parse::<u64>().ok()),
                        c.get(1).and_then(|x| parse_epoch(x)),
                        c.get(2).and_then(|x| x.parse::<u32>().ok()),
                        c.get(3).and_then(|x| x.parse::<u32>().ok()),
                    );
                    assert_eq!(want, (Some(g.1), Some(g.0), Some(g.3), Some(g.4)), "{f}: {line}");
                }
                assert_eq!(
                    lines.first().and_then(|l| parse_epoch(l.split('\t').nth(1)?)),
                    st.first_ts_us,
                    "{f}"
                );
                assert_eq!(
                    lines.last().and_then(|l| parse_epoch(l.split('\t').nth(1)?)),
                    st.last_ts_us,
                    "{f}"
                );
            }
        }
        let utp = rows
            .iter()
            .find(|r| r.file.ends_with("bittorrent_utp.pcap"))
            .expect("listed");
        let r = CaptureReader::open(&InputSpec::Path(root.join(&utp.file)), None).expect("opens");
        assert_eq!(r.format(), CaptureFormat::PcapNg, "pcapng despite the name");
    }

    #[test]
    fn public_corpus_filter_agrees_with_tcpdump() {
        let Some(root) = corpus_root() else {
            return;
        };
        if !crate::require::require(
            crate::require::tool_runs("tcpdump", &["--version"]),
            "tcpdump",
            "the independent BPF reference is not installed (tests/setup.sh installs it)",
        ) {
            return;
        }
        let expr = "udp or (tcp and port 6881)";
        for row in manifest(&root) {
            let path = root.join(&row.file);
            let out = std::process::Command::new("tcpdump")
                .args(["-nn", "-q", "-r"])
                .arg(&path)
                .arg(expr)
                .output()
                .expect("tcpdump runs");
            let want = String::from_utf8_lossy(&out.stdout).lines().count();
            let r = CaptureReader::open(&InputSpec::Path(path), Some(expr)).expect("opens");
            let (frames, st) = drain(r, 1 << 20, 4096);
            assert_eq!(frames.len(), want, "{}", row.file);
            assert_eq!(st.n_filtered_out + want as u64, row.packets, "{}", row.file);
        }
    }

    #[test]
    fn public_corpus_one_byte_reads_and_compression() {
        let Some(root) = corpus_root() else {
            return;
        };
        for f in ["ntop__nDPI/bittorrent_utp.pcap", "zeek__zeek/tracker.pcap"] {
            let bytes = std::fs::read(root.join(f)).expect("reads");
            let (want, want_st) = read_bytes(&bytes);
            let one = CaptureReader::from_reader(
                f,
                Box::new(OneByte(Cursor::new(bytes.clone()))),
                None,
                ReaderLimits::default(),
            )
            .expect("opens");
            let (g, st) = drain(one, 3000, 5);
            assert_eq!(g, want, "{f}");
            assert_eq!(st, want_st, "{f}");
            let (g, _) = read_bytes(&gzip(&bytes));
            assert_eq!(g, want, "{f} gzip");
        }
    }
}

#[cfg(test)]
mod stream_tests {
    use super::*;
    use std::io::Write;
    use std::sync::mpsc::channel;
    use std::time::Duration;

    /// What the reader thread reports: a batch's first and last frame
    /// numbers, or the end with the stream's stats.
    enum Seen {
        Batch(u64, u64),
        End(u64, bool),
    }

    /// `analyze -` on a pipe its writer keeps open: the records written so
    /// far come out in batches before the writer writes more or closes (they
    /// used to wait for a full batch, or the end); the rest, and the end,
    /// after it closes. No verdict depends on time: the receives wait for
    /// what the data determines (the timeout only turns a hang into a
    /// failure).
    #[test]
    fn a_pipe_held_open_hands_over_what_has_arrived() {
        let bytes = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("sample-pcaps/http.pcap")).expect("read");
        // The end of record 100 (pcap: 24-byte header, 16-byte record
        // headers, little-endian captured length at offset 8).
        let mut off = 24;
        for _ in 0..100 {
            let len = u32::from_le_bytes(bytes[off + 8..off + 12].try_into().expect("4 bytes"));
            off += 16 + len as usize;
        }
        let (r, mut w) = io::pipe().expect("pipe");
        let (tx, rx) = channel();
        let reader = std::thread::spawn(move || {
            let mut c = CaptureReader::from_stream("-", Box::new(r), None, ReaderLimits::default()).expect("open");
            let mut b = FrameBatch::default();
            while c.read_batch(&mut b, 1 << 20, 4096).expect("read") {
                let (first, last) = (b.frames[0].frame_no, b.frames[b.frames.len() - 1].frame_no);
                tx.send(Seen::Batch(first, last)).expect("send");
            }
            tx.send(Seen::End(c.stats().n_records, c.stats().truncated_tail))
                .expect("send");
        });
        let next = || {
            rx.recv_timeout(Duration::from_secs(600))
                .expect("the reader hands over")
        };
        w.write_all(&bytes[..off]).expect("write");
        // Frames 1..=100, in one batch or several, with the pipe still open.
        let mut upto = 0;
        while upto < 100 {
            match next() {
                Seen::Batch(first, last) => {
                    assert_eq!(first, upto + 1);
                    upto = last;
                }
                Seen::End(..) => panic!("ended while the pipe is open"),
            }
        }
        assert_eq!(upto, 100, "nothing past what was written");
        // The rest, then the end.
        w.write_all(&bytes[off..]).expect("write");
        drop(w);
        loop {
            match next() {
                Seen::Batch(first, last) => {
                    assert_eq!(first, upto + 1);
                    upto = last;
                }
                Seen::End(n, truncated) => {
                    assert_eq!((n, truncated, upto), (6586, false, 6586));
                    break;
                }
            }
        }
        reader.join().expect("reader");
    }
}
