//! Live capture from a network interface with libpcap (the `pcap` crate).
//!
//! One capture thread reads packets and packs them into [`FrameBatch`]es
//! (the same batches the file reader makes), handed to the pipeline over a
//! bounded queue with `try_send`: the capture thread never waits for the
//! analysis. When the queue is full the whole batch is dropped and counted
//! (`n_dropped_ours`), next to libpcap's counters of what the kernel
//! (`ps_drop`) and the interface (`ps_ifdrop`) dropped. Counters live in
//! [`LiveCounters`], read by the pipeline at each interval's end.
//!
//! Capture settings: promiscuous by default, a large kernel buffer (bursts
//! are absorbed there, not dropped), immediate mode off (the kernel hands
//! packets over in blocks, far fewer wake-ups), and a short read timeout so
//! that the thread sees a stop request and ships a partly filled batch
//! while the link is quiet. `-i any` gives Linux cooked headers (SLL/SLL2),
//! which the decoder reads.
//!
//! Frame numbers count every packet libpcap delivered, dropped ones
//! included, so `conn_id`s stay unique over the run and a gap in frame
//! numbers shows where packets were dropped.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{FrameBatch, FrameMeta};

/// How to open the interface.
#[derive(Debug, Clone)]
pub struct LiveOptions {
    pub iface: String,
    /// BPF filter, compiled by libpcap and run in the kernel.
    pub filter: Option<String>,
    /// Bytes kept of each packet. Default 262,144 (libpcap's maximum):
    /// whole frames, peer-wire payload included.
    pub snaplen: u32,
    pub promisc: bool,
    /// Kernel capture buffer. Default 64 MiB: at 1 Gbit/s that is half a
    /// second of traffic absorbed while the capture thread is descheduled.
    pub buffer_bytes: u32,
    /// Batches waiting for the analysis; past it, batches are dropped.
    /// Batches close at [`BATCH_FRAMES`] frames, [`BATCH_BYTES`] bytes or
    /// [`BATCH_AGE`], so 64 batches hold at most 256 MiB (and usually far
    /// less: at 100k packets/s a batch closes after 4096 frames, ~40 ms).
    pub queue_batches: usize,
    /// Stop after this many packets (`--count`).
    pub max_packets: Option<u64>,
}

impl Default for LiveOptions {
    fn default() -> Self {
        LiveOptions {
            iface: String::new(),
            filter: None,
            snaplen: 262_144,
            promisc: true,
            buffer_bytes: 64 << 20,
            queue_batches: 64,
            max_packets: None,
        }
    }
}

/// A batch is handed over at this many frames…
pub const BATCH_FRAMES: usize = 4096;
/// …or this many bytes of frame data…
pub const BATCH_BYTES: usize = 4 << 20;
/// …or when its first frame is this old (a quiet link still gets analysed
/// promptly, and a stop request finds little in flight).
pub const BATCH_AGE: Duration = Duration::from_millis(100);
/// libpcap buffer timeout: the kernel hands over a block of packets at the
/// latest this long after its first packet.
const READ_TIMEOUT_MS: i32 = 100;
/// Pause when no packet is ready (non-blocking reads): 5 ms of traffic
/// fits in the kernel buffer at any rate a veth or NIC delivers (64 MiB is
/// 5 ms of 100 Gbit/s), and the idle thread wakes only 200 times a second.
const IDLE_SLEEP: Duration = Duration::from_millis(5);
/// How often libpcap's counters are read.
const STATS_EVERY: Duration = Duration::from_millis(250);

/// Counters shared by the capture thread and the pipeline. libpcap's
/// counters are totals since the capture opened (the pipeline takes
/// differences per interval).
#[derive(Debug, Default)]
pub struct LiveCounters {
    /// Packets libpcap delivered to us.
    pub n_delivered: AtomicU64,
    /// Of those, packets in batches dropped because the queue was full.
    pub n_dropped_ours: AtomicU64,
    /// libpcap ps_recv, ps_drop, ps_ifdrop (last read).
    pub pcap_received: AtomicU64,
    pub pcap_dropped: AtomicU64,
    pub pcap_ifdropped: AtomicU64,
}

/// The libpcap link type (DLT) as a LINKTYPE value, which is what capture
/// files and the decoder use. They differ only for a few historical DLTs;
/// of those, Linux delivers DLT_RAW as 12 (LINKTYPE_RAW is 101); OpenBSD's
/// is 14.
fn dlt_to_linktype(dlt: i32) -> u16 {
    match dlt {
        12 | 14 => 101,
        d => u16::try_from(d).unwrap_or(u16::MAX),
    }
}

/// A running capture.
pub struct LiveCapture {
    pub handle: JoinHandle<Result<(), String>>,
    pub link_type: u16,
}

/// Opens `opts.iface` and starts the capture thread. Errors (no such
/// interface, no permission, a filter that does not compile) are reported
/// here, before anything runs. The thread ends when `stop` is set, after
/// `max_packets`, or on a read error (returned by the handle); it then
/// sends its last batch (waiting for room: nothing is lost at the end) and
/// drops `tx`, which tells the pipeline the capture is over.
pub fn start(
    opts: &LiveOptions,
    stop: Arc<AtomicBool>,
    counters: Arc<LiveCounters>,
    tx: SyncSender<FrameBatch>,
    recycle: Receiver<FrameBatch>,
) -> Result<LiveCapture, String> {
    let iface = &opts.iface;
    let cap = pcap::Capture::from_device(iface.as_str())
        .map_err(|e| format!("cannot open interface {iface}: {e}"))?
        .promisc(opts.promisc)
        .snaplen(i32::try_from(opts.snaplen).unwrap_or(i32::MAX))
        .buffer_size(i32::try_from(opts.buffer_bytes).unwrap_or(i32::MAX))
        .immediate_mode(false)
        .timeout(READ_TIMEOUT_MS);
    // Non-blocking reads: on Linux (TPACKET_V3) a blocking read on a quiet
    // link waits in poll() until a packet comes, whatever the timeout, so a
    // stop request could wait forever. When nothing is ready the thread
    // sleeps IDLE_SLEEP; the kernel buffer holds what arrives meanwhile.
    let mut cap = cap
        .open()
        .and_then(|c| c.setnonblock())
        .map_err(|e| format!("cannot capture on {iface}: {e}"))?;
    if let Some(f) = &opts.filter {
        cap.filter(f, true)
            .map_err(|e| format!("invalid capture filter {f:?}: {e}"))?;
    }
    let link_type = dlt_to_linktype(cap.get_datalink().0);
    let max_packets = opts.max_packets;
    let iface_name = iface.clone();
    let handle = std::thread::Builder::new()
        .name("swarmtap-capture".into())
        .spawn(move || -> Result<(), String> {
            let mut frame_no: u64 = 0;
            let mut batch = FrameBatch::default();
            let mut batch_born = Instant::now();
            let mut last_stats = Instant::now();
            let mut result = Ok(());
            let read_stats = |cap: &mut pcap::Capture<pcap::Active>| {
                if let Ok(s) = cap.stats() {
                    counters.pcap_received.store(u64::from(s.received), Ordering::Relaxed);
                    counters.pcap_dropped.store(u64::from(s.dropped), Ordering::Relaxed);
                    counters
                        .pcap_ifdropped
                        .store(u64::from(s.if_dropped), Ordering::Relaxed);
                }
            };
            loop {
                if stop.load(Ordering::Relaxed) || max_packets.is_some_and(|m| frame_no >= m) {
                    break;
                }
                match cap.next_packet() {
                    Ok(p) => {
                        if batch.frames.is_empty() {
                            batch_born = Instant::now();
                        }
                        frame_no += 1;
                        // time_t and suseconds_t are i64 on 64-bit Linux, narrower elsewhere.
                        #[allow(clippy::useless_conversion)]
                        let ts_us = i64::from(p.header.ts.tv_sec) * 1_000_000 + i64::from(p.header.ts.tv_usec);
                        let start = batch.data.len();
                        batch.data.extend_from_slice(p.data);
                        batch.frames.push(FrameMeta {
                            ts_us,
                            frame_no,
                            link_type,
                            data_start: start as u32,
                            cap_len: p.data.len() as u32,
                            orig_len: p.header.len,
                        });
                        counters.n_delivered.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(pcap::Error::TimeoutExpired) => std::thread::sleep(IDLE_SLEEP),
                    Err(e) => {
                        result = Err(format!("capture on {iface_name} failed: {e}"));
                        break;
                    }
                }
                let full = batch.frames.len() >= BATCH_FRAMES || batch.data.len() >= BATCH_BYTES;
                if !batch.frames.is_empty() && (full || batch_born.elapsed() >= BATCH_AGE) {
                    let next = recycle.try_recv().map(clear_batch).unwrap_or_default();
                    match tx.try_send(std::mem::replace(&mut batch, next)) {
                        Ok(()) => {}
                        Err(TrySendError::Full(mut b)) => {
                            counters
                                .n_dropped_ours
                                .fetch_add(b.frames.len() as u64, Ordering::Relaxed);
                            b = clear_batch(b);
                            batch = b;
                        }
                        Err(TrySendError::Disconnected(_)) => return result,
                    }
                }
                if last_stats.elapsed() >= STATS_EVERY {
                    last_stats = Instant::now();
                    read_stats(&mut cap);
                }
            }
            read_stats(&mut cap);
            if !batch.frames.is_empty() {
                let _ = tx.send(batch);
            }
            result
        })
        .map_err(|e| format!("cannot start capture thread: {e}"))?;
    Ok(LiveCapture { handle, link_type })
}

fn clear_batch(mut b: FrameBatch) -> FrameBatch {
    b.frames.clear();
    b.data.clear();
    b
}
