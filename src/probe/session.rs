//! One contact with one peer: connect, (MSE,) handshake, BEP 10 handshake,
//! then listen to what the peer says about its pieces (bitfield, have,
//! have_all, have_none) until it falls silent, closes, or a cap is reached.
//! ut_metadata (BEP 9) is fetched when the torrent's metadata is wanted, and
//! ut_pex (BEP 11) additions are collected.
//!
//! Everything the peer sends goes through the passive pipeline's framer
//! ([`PeerWireFramer`]), so the probe and `analyze` read the wire the same
//! way. Memory per contact is bounded: one 16 KiB read buffer, the framer's
//! own bounds (a length prefix above `max_message_len` is lost framing and
//! ends the contact), a bitfield of at most `max_pieces` bits, metadata of at
//! most `max_metadata_bytes`, and `max_msgs` messages (an endless `have`
//! stream ends there).
//!
//! We never send `interested` and never request blocks: the probe asks, it
//! does not download.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::mse::{self, Rc4, CRYPTO_PLAIN, CRYPTO_RC4};
use super::utp::UtpSocket;
use crate::flow::Chunk;
use crate::proto::bencode::{self, BencodeLimits};
use crate::proto::client_id::{client_from_ltep_v, client_from_peer_id};
use crate::proto::metainfo::{parse_info, Metainfo};
use crate::proto::peer_wire::{Message, PeerWireFramer, PeerWireLimits, TorrentShape, WireEvent, HANDSHAKE_PREFIX};
use crate::proto::ut_pex;

/// Our BEP 10 extension ids (what peers use when sending to us).
pub const OUR_UT_METADATA: u8 = 1;
pub const OUR_UT_PEX: u8 = 2;
/// ut_metadata piece size (BEP 9).
const METADATA_PIECE: usize = 16 * 1024;
/// Bounds for the bencoded dictionaries of BEP 9/10/11 messages.
const EXT_LIMITS: BencodeLimits = BencodeLimits {
    max_depth: 16,
    max_items: 1 << 14,
};

/// How a contact opens the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Crypto {
    /// Plaintext BitTorrent handshake.
    Plain,
    /// MSE offering RC4 only.
    Rc4,
    /// MSE offering plaintext only (obfuscated handshake, clear payload).
    MsePlain,
    /// MSE offering both; the peer chooses.
    MseAny,
}

impl Crypto {
    pub fn name(self) -> &'static str {
        match self {
            Crypto::Plain => "plain",
            Crypto::Rc4 => "rc4",
            Crypto::MsePlain => "mse-plain",
            Crypto::MseAny => "mse",
        }
    }

    pub fn parse(s: &str) -> Option<Crypto> {
        Some(match s {
            "plain" => Crypto::Plain,
            "rc4" => Crypto::Rc4,
            "mse-plain" => Crypto::MsePlain,
            "mse" => Crypto::MseAny,
            _ => return None,
        })
    }

    fn provide(self) -> u32 {
        match self {
            Crypto::Plain => 0,
            Crypto::Rc4 => CRYPTO_RC4,
            Crypto::MsePlain => CRYPTO_PLAIN,
            Crypto::MseAny => CRYPTO_RC4 | CRYPTO_PLAIN,
        }
    }
}

/// The transport of a contact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Tcp,
    /// uTP (BEP 29) over the probe's UDP socket.
    Utp,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Utp => "utp",
        }
    }

    pub fn parse(s: &str) -> Option<Transport> {
        Some(match s {
            "tcp" => Transport::Tcp,
            "utp" => Transport::Utp,
            _ => return None,
        })
    }
}

/// What a contact needs to know; the same for every contact of a run except
/// the torrent fields.
#[derive(Debug, Clone)]
pub struct ContactParams {
    pub info_hash: [u8; 20],
    pub peer_id: [u8; 20],
    /// Piece count when known (from a .torrent or fetched metadata).
    pub n_pieces: Option<u32>,
    pub want_metadata: bool,
    pub connect_timeout: Duration,
    /// Time allowed from connect to the peer's handshake (MSE included).
    pub handshake_timeout: Duration,
    /// Silence after which the peer is considered done talking.
    pub idle_timeout: Duration,
    /// Hard cap on one contact.
    pub max_contact: Duration,
    /// Messages read before the contact ends (an endless `have` stream).
    pub max_msgs: u64,
    pub max_metadata_bytes: usize,
    pub max_pieces: u32,
    /// ut_pex peers kept per contact.
    pub max_pex: usize,
    /// Progress points kept per contact.
    pub max_progress: usize,
    pub wire: PeerWireLimits,
    /// Keep the contact open through silences while the peer is expected
    /// to cross the threshold before `max_contact` (see `schedule`), and
    /// end it once it crossed; None: end at the idle timeout.
    pub hold: Option<super::schedule::Hold>,
}

/// What one contact attempt found.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub ts_us: i64,
    pub duration_ms: f64,
    pub transport: Transport,
    pub crypto: Crypto,
    /// Our end of the connection, once connected.
    pub local: Option<SocketAddr>,
    /// The peer connected to our listen port.
    pub incoming: bool,
    /// The payload was RC4-encrypted.
    pub encrypted: bool,
    /// MSE was negotiated (RC4 or plaintext selected).
    pub mse: bool,
    /// The peer's handshake for our torrent arrived.
    pub success: bool,
    pub outcome: &'static str,
    pub end_reason: Option<&'static str>,
    pub detail: Option<String>,
    pub n_msgs: u64,
    pub n_pieces_have: Option<u64>,
    /// What last changed the piece set.
    pub cause: Option<&'static str>,
    /// Pieces a bitfield can describe (its length in bits), for an estimate
    /// when the piece count is unknown.
    pub bitfield_bits: Option<u64>,
    pub peer_id: Option<[u8; 20]>,
    pub client: Option<String>,
    pub listen_port: Option<u16>,
    pub extensions: Vec<String>,
    /// Verified info dictionary (raw bytes) and its parse.
    pub metadata: Option<(Vec<u8>, Metainfo)>,
    pub pex: Vec<SocketAddr>,
    /// Those of `pex` flagged as speaking uTP (BEP 11 `added.f` bit 0x04).
    pub pex_utp: Vec<SocketAddr>,
    /// Longest silence between two received messages (calibration of the
    /// idle timeout).
    pub max_gap_ms: Option<f64>,
    /// (time µs, pieces) after each change of the piece count during the
    /// contact, so a long contact with a downloading peer keeps the moment
    /// it crossed the threshold. At most `max_progress` points (the newest
    /// replaces the last one beyond it).
    pub progress: Vec<(i64, u64, &'static str)>,
}

impl Attempt {
    pub(crate) fn new(crypto: Crypto) -> Self {
        Attempt {
            ts_us: now_us(),
            duration_ms: 0.0,
            transport: Transport::Tcp,
            crypto,
            local: None,
            incoming: false,
            encrypted: false,
            mse: false,
            success: false,
            outcome: "error",
            end_reason: None,
            detail: None,
            n_msgs: 0,
            n_pieces_have: None,
            cause: None,
            bitfield_bits: None,
            peer_id: None,
            client: None,
            listen_port: None,
            extensions: Vec::new(),
            metadata: None,
            pex: Vec::new(),
            pex_utp: Vec::new(),
            max_gap_ms: None,
            progress: Vec::new(),
        }
    }

    /// Whether another crypto mode may succeed where this one failed: the
    /// peer answered but dropped us (a peer requiring or refusing
    /// encryption). A refused, unreachable or silent host is not retried.
    pub fn worth_fallback(&self) -> bool {
        !self.success && matches!(self.outcome, "closed" | "reset" | "handshake_failed" | "mse_failed")
    }
}

pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Our 68-byte handshake: reserved bits for DHT (byte 7 0x01), fast
/// (byte 7 0x04) and the extension protocol (byte 5 0x10).
pub fn our_handshake(info_hash: &[u8; 20], peer_id: &[u8; 20]) -> Vec<u8> {
    let mut v = Vec::with_capacity(68);
    v.extend_from_slice(HANDSHAKE_PREFIX);
    v.extend_from_slice(&[0, 0, 0, 0, 0, 0x10, 0, 0x05]);
    v.extend_from_slice(info_hash);
    v.extend_from_slice(peer_id);
    v
}

fn ext_msg(id: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(6 + payload.len());
    v.extend_from_slice(&(payload.len() as u32 + 2).to_be_bytes());
    v.push(20);
    v.push(id);
    v.extend_from_slice(payload);
    v
}

/// Our BEP 10 handshake.
fn our_ltep_handshake() -> Vec<u8> {
    let v = concat!("swarmtap ", env!("CARGO_PKG_VERSION"));
    let d = format!(
        "d1:md11:ut_metadatai{OUR_UT_METADATA}e6:ut_pexi{OUR_UT_PEX}ee1:v{}:{v}e",
        v.len()
    );
    ext_msg(0, d.as_bytes())
}

/// The stream with its ciphers.
struct Wire<S> {
    s: S,
    enc: Option<Rc4>,
    dec: Option<Rc4>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Wire<S> {
    async fn send(&mut self, data: &[u8]) -> std::io::Result<()> {
        match &mut self.enc {
            Some(c) => {
                let mut b = data.to_vec();
                c.apply(&mut b);
                self.s.write_all(&b).await
            }
            None => self.s.write_all(data).await,
        }
    }

    async fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.s.read(buf).await?;
        if let Some(c) = &mut self.dec {
            c.apply(&mut buf[..n]);
        }
        Ok(n)
    }
}

/// Piece-set and protocol state of one contact, updated by framer events.
struct State<'p> {
    p: &'p ContactParams,
    n_pieces: Option<u32>,
    handshake: bool,
    fast: bool,
    ltep: bool,
    bits: Vec<u8>,
    /// Bits set in `bits` (kept as messages arrive: a hostile `have` stream
    /// costs O(1) per message, not a bitfield walk).
    count: u64,
    all: bool,
    known: bool,
    cause: Option<&'static str>,
    bitfield_bits: Option<u64>,
    n_msgs: u64,
    peer_id: Option<[u8; 20]>,
    client_pid: Option<String>,
    client_v: Option<String>,
    listen_port: Option<u16>,
    extensions: Vec<String>,
    /// Their ut_metadata id, size, buffer, pieces received.
    meta_id: Option<u8>,
    meta: Vec<u8>,
    meta_got: Vec<bool>,
    meta_pending: bool,
    metadata: Option<(Vec<u8>, Metainfo)>,
    pex: Vec<SocketAddr>,
    pex_utp: Vec<SocketAddr>,
    progress: Vec<(i64, u64, &'static str)>,
    /// Bytes to send after this batch of events.
    out: Vec<u8>,
    /// Set when the contact must end: (outcome, detail).
    fatal: Option<(&'static str, String)>,
}

impl<'p> State<'p> {
    fn new(p: &'p ContactParams) -> Self {
        State {
            p,
            n_pieces: p.n_pieces,
            handshake: false,
            fast: false,
            ltep: false,
            bits: Vec::new(),
            count: 0,
            all: false,
            known: false,
            cause: None,
            bitfield_bits: None,
            n_msgs: 0,
            peer_id: None,
            client_pid: None,
            client_v: None,
            listen_port: None,
            extensions: Vec::new(),
            meta_id: None,
            meta: Vec::new(),
            meta_got: Vec::new(),
            meta_pending: false,
            metadata: None,
            pex: Vec::new(),
            pex_utp: Vec::new(),
            progress: Vec::new(),
            out: Vec::new(),
            fatal: None,
        }
    }

    fn max_bits(&self) -> u64 {
        u64::from(self.n_pieces.unwrap_or(self.p.max_pieces).min(self.p.max_pieces))
    }

    fn have_count(&self) -> Option<u64> {
        if !self.known {
            return None;
        }
        match self.n_pieces {
            Some(n) if self.all => Some(u64::from(n)),
            None if self.all => None,
            _ => Some(self.count),
        }
    }

    fn on_event(&mut self, ev: WireEvent<'_>) {
        if self.fatal.is_some() {
            return;
        }
        match ev {
            WireEvent::Handshake {
                reserved,
                info_hash,
                peer_id,
            } => {
                if info_hash != self.p.info_hash {
                    self.fatal = Some(("handshake_failed", "peer answered for another info hash".into()));
                    return;
                }
                self.handshake = true;
                self.fast = reserved[7] & 0x04 != 0;
                self.ltep = reserved[5] & 0x10 != 0;
                if let Some(id) = peer_id {
                    self.peer_id = Some(id);
                    self.client_pid = client_from_peer_id(&id);
                }
                if self.fast {
                    // BEP 6: we hold nothing.
                    self.out.extend_from_slice(&[0, 0, 0, 1, 0x0f]);
                }
                if self.ltep {
                    self.out.extend_from_slice(&our_ltep_handshake());
                }
            }
            WireEvent::NoHandshake => {
                self.fatal = Some(("handshake_failed", "not a BitTorrent handshake".into()));
            }
            WireEvent::LostSync { reason } => {
                self.fatal = Some(("protocol_error", reason.to_string()));
            }
            WireEvent::GaveUp => {
                self.fatal = Some(("protocol_error", "unframed stream".into()));
            }
            WireEvent::Message { msg, .. } => {
                self.n_msgs += 1;
                let before = self.have_count();
                self.on_message(msg);
                self.note_progress(before);
            }
            WireEvent::PieceData(_) | WireEvent::PieceGap(_) | WireEvent::Resync { .. } | WireEvent::Anomaly { .. } => {
            }
        }
    }

    /// Records a progress point when the count changed. Counting walks the
    /// bitfield (at most `max_pieces` / 8 bytes) only when a message changed
    /// the set; a `have` for a piece already held changes nothing.
    fn note_progress(&mut self, before: Option<u64>) {
        let now = self.have_count();
        if now.is_some() && now != before {
            if let Some(c) = now {
                if self.progress.len() >= self.p.max_progress.max(1) {
                    self.progress.pop();
                }
                self.progress.push((now_us(), c, self.cause.unwrap_or("bitfield")));
            }
        }
    }

    fn set_bit(&mut self, i: u32) {
        if u64::from(i) >= self.max_bits() {
            return;
        }
        let byte = (i / 8) as usize;
        if self.bits.len() <= byte {
            self.bits.resize(byte + 1, 0);
        }
        let m = 0x80 >> (i % 8);
        if self.bits[byte] & m == 0 {
            self.bits[byte] |= m;
            self.count += 1;
        }
    }

    fn on_message(&mut self, msg: Message<'_>) {
        match msg {
            Message::Bitfield(b) => {
                let keep = (self.max_bits().div_ceil(8) as usize).min(b.len());
                self.bits.clear();
                self.bits.extend_from_slice(&b[..keep]);
                self.count = count_bits(&self.bits, self.max_bits());
                self.all = false;
                self.known = true;
                self.bitfield_bits = Some(b.len() as u64 * 8);
                self.cause = Some("bitfield");
            }
            Message::Have { piece } => {
                if !self.all {
                    self.set_bit(piece);
                }
                self.known = true;
                self.cause = Some("have");
            }
            Message::HaveAll => {
                self.all = true;
                self.known = true;
                self.cause = Some("have_all");
            }
            Message::HaveNone => {
                self.all = false;
                self.bits.clear();
                self.count = 0;
                self.known = true;
                self.cause = Some("have_none");
            }
            Message::Extended { ext_id, payload } => self.on_extended(ext_id, payload),
            _ => {}
        }
    }

    fn on_extended(&mut self, ext_id: u8, payload: &[u8]) {
        match ext_id {
            0 => self.on_ltep_handshake(payload),
            OUR_UT_METADATA => self.on_metadata(payload),
            OUR_UT_PEX => self.on_pex(payload),
            _ => {}
        }
    }

    fn on_ltep_handshake(&mut self, payload: &[u8]) {
        let Ok((d, _)) = bencode::parse_dict(payload, &EXT_LIMITS) else {
            return;
        };
        if let Some(m) = d.get_dict(b"m") {
            for (k, v) in m.iter() {
                if let Some(id) = v.as_int().filter(|i| (1..=255).contains(i)) {
                    if self.extensions.len() < crate::proto::peer_wire::MAX_EXTENSIONS {
                        self.extensions.push(String::from_utf8_lossy(k).into_owned());
                    }
                    if k == b"ut_metadata" {
                        self.meta_id = Some(id as u8);
                    }
                }
            }
        }
        if let Some(v) = d.get_bytes(b"v") {
            self.client_v = client_from_ltep_v(v);
        }
        if let Some(p) = d.get_int(b"p").filter(|p| (1..=65535).contains(p)) {
            self.listen_port = Some(p as u16);
        }
        let size = d.get_int(b"metadata_size").unwrap_or(0);
        if self.p.want_metadata && self.metadata.is_none() && !self.meta_pending {
            if let Some(id) = self.meta_id {
                if size > 0 && (size as u64) <= self.p.max_metadata_bytes as u64 {
                    let size = size as usize;
                    let n = size.div_ceil(METADATA_PIECE);
                    self.meta = vec![0; size];
                    self.meta_got = vec![false; n];
                    self.meta_pending = true;
                    for i in 0..n {
                        let req = format!("d8:msg_typei0e5:piecei{i}ee");
                        self.out.extend_from_slice(&ext_msg(id, req.as_bytes()));
                    }
                }
            }
        }
    }

    fn on_metadata(&mut self, payload: &[u8]) {
        if !self.meta_pending {
            return;
        }
        let Ok((d, used)) = bencode::parse_dict(payload, &EXT_LIMITS) else {
            return;
        };
        let (Some(t), Some(piece)) = (d.get_int(b"msg_type"), d.get_int(b"piece")) else {
            return;
        };
        match t {
            1 => {
                let data = payload.get(used..).unwrap_or_default();
                let Some(i) = usize::try_from(piece).ok().filter(|&i| i < self.meta_got.len()) else {
                    return;
                };
                let at = i * METADATA_PIECE;
                let want = (self.meta.len() - at).min(METADATA_PIECE);
                if data.len() != want {
                    return;
                }
                self.meta[at..at + want].copy_from_slice(data);
                self.meta_got[i] = true;
                if self.meta_got.iter().all(|&g| g) {
                    self.meta_pending = false;
                    let raw = std::mem::take(&mut self.meta);
                    let h: [u8; 20] = Sha1::digest(&raw).into();
                    if h != self.p.info_hash {
                        self.fatal = Some(("metadata_mismatch", "ut_metadata failed the SHA-1 check".into()));
                        return;
                    }
                    match parse_info(&raw) {
                        Ok(m) => {
                            if self.n_pieces.is_none() {
                                self.n_pieces = Some(m.n_pieces);
                                // Bits past the real piece count no longer count.
                                self.count = count_bits(&self.bits, self.max_bits());
                            }
                            self.metadata = Some((raw, m));
                        }
                        Err(e) => {
                            self.fatal = Some(("metadata_mismatch", e.to_string()));
                        }
                    }
                }
            }
            2 => {
                // Rejected: this peer will not give it; stop waiting for it.
                self.meta_pending = false;
                self.meta = Vec::new();
            }
            _ => {}
        }
    }

    /// BEP 11 additions, IPv4 (`added`) and IPv6 (`added6`), read with the
    /// passive pipeline's parser; dropped peers are ignored (we only need
    /// addresses to contact).
    fn on_pex(&mut self, payload: &[u8]) {
        let Ok(m) = ut_pex::parse(payload) else {
            return;
        };
        let max = self.p.max_pex;
        let (pex, pex_utp) = (&mut self.pex, &mut self.pex_utp);
        m.entries(usize::MAX, |e| {
            if !e.added || e.addr.port() == 0 || pex.len() >= max {
                return;
            }
            pex.push(e.addr);
            if e.flags.is_some_and(|f| f & ut_pex::FLAG_UTP != 0) {
                pex_utp.push(e.addr);
            }
        });
    }
}

fn count_bits(bits: &[u8], n: u64) -> u64 {
    let mut total = 0u64;
    for (i, b) in bits.iter().enumerate() {
        let base = i as u64 * 8;
        if base >= n {
            break;
        }
        let valid = (n - base).min(8) as u32;
        let mask = if valid == 8 { 0xff } else { !(0xffu8 >> valid) };
        total += u64::from((b & mask).count_ones());
    }
    total
}

pub(crate) fn io_outcome(e: &std::io::Error) -> &'static str {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => "refused",
        K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => "reset",
        K::UnexpectedEof => "closed",
        K::TimedOut => "timeout",
        K::HostUnreachable | K::NetworkUnreachable => "unreachable",
        _ => "error",
    }
}

/// One attempt over TCP.
pub async fn attempt_tcp(
    addr: SocketAddr,
    crypto: Crypto,
    p: &ContactParams,
    shutdown: &watch::Receiver<bool>,
) -> Attempt {
    let t0 = Instant::now();
    let mut a = Attempt::new(crypto);
    match tokio::time::timeout(p.connect_timeout, TcpStream::connect(addr)).await {
        Err(_) => a.outcome = "timeout",
        Ok(Err(e)) => {
            a.outcome = io_outcome(&e);
            a.detail = Some(e.to_string());
        }
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            a.local = s.local_addr().ok();
            run_contact(s, crypto, p, shutdown, &mut a, t0).await;
        }
    }
    a.duration_ms = t0.elapsed().as_secs_f64() * 1000.0;
    a
}

/// One attempt over uTP, on the probe's shared UDP socket.
pub async fn attempt_utp(
    addr: SocketAddr,
    crypto: Crypto,
    p: &ContactParams,
    shutdown: &watch::Receiver<bool>,
    utp: &UtpSocket,
) -> Attempt {
    let t0 = Instant::now();
    let mut a = Attempt::new(crypto);
    a.transport = Transport::Utp;
    // Nothing answers a SYN sent to a closed UDP port (the kernel's ICMP
    // error is not reported on an unconnected socket): the SYN is resent
    // until the timeout, or until shutdown.
    let mut stop = shutdown.clone();
    let connect = async {
        tokio::select! {
            r = tokio::time::timeout(p.connect_timeout, utp.connect(addr)) => Some(r),
            _ = stop.wait_for(|&s| s) => None,
        }
    };
    match connect.await {
        None => a.outcome = "cancelled",
        Some(Err(_)) => a.outcome = "timeout",
        Some(Ok(Err(e))) => {
            a.outcome = io_outcome(&e);
            a.detail = Some(e.to_string());
        }
        Some(Ok(Ok(s))) => {
            a.local = s.local_addr().ok();
            run_contact(s, crypto, p, shutdown, &mut a, t0).await;
        }
    }
    a.duration_ms = t0.elapsed().as_secs_f64() * 1000.0;
    a
}

/// Runs a contact over an open stream (TCP in the probe; any stream in tests).
pub async fn run_contact<S: AsyncRead + AsyncWrite + Unpin>(
    s: S,
    crypto: Crypto,
    p: &ContactParams,
    shutdown: &watch::Receiver<bool>,
    a: &mut Attempt,
    t0: Instant,
) {
    let mut shutdown = shutdown.clone();
    let hs = our_handshake(&p.info_hash, &p.peer_id);
    let mut wire = Wire {
        s,
        enc: None,
        dec: None,
    };
    let mut leftover = Vec::new();
    if crypto == Crypto::Plain {
        if let Err(e) = wire.send(&hs).await {
            a.outcome = io_outcome(&e);
            return;
        }
    } else {
        let r = tokio::time::timeout(
            p.handshake_timeout,
            mse::initiate_random(&mut wire.s, &p.info_hash, crypto.provide(), &hs),
        )
        .await;
        match r {
            Err(_) => {
                a.outcome = "timeout";
                a.detail = Some("MSE handshake".into());
                return;
            }
            Ok(Err(e)) => {
                a.outcome = match e {
                    mse::MseError::Closed => "closed",
                    _ => "mse_failed",
                };
                a.detail = Some(e.to_string());
                return;
            }
            Ok(Ok(m)) => {
                a.mse = true;
                a.encrypted = m.selected == CRYPTO_RC4;
                wire.enc = m.enc;
                wire.dec = m.dec;
                leftover = m.leftover;
            }
        }
    }
    converse(wire, leftover, p, &mut shutdown, a, t0).await;
}

/// Accepts an incoming connection on the listen port: plaintext or MSE (as
/// receiver, trying every known info hash; RC4 when offered, else
/// plaintext), our handshake in reply, then the same conversation as an
/// outgoing contact. `known` holds the parameters of every torrent probed;
/// the index of the one the peer asked for is returned with the attempt.
pub async fn accept_contact(
    s: TcpStream,
    known: &[ContactParams],
    shutdown: &watch::Receiver<bool>,
) -> Option<(usize, Attempt)> {
    let local = s.local_addr().ok();
    accept_stream(s, Transport::Tcp, local, known, shutdown).await
}

/// [`accept_contact`] over any stream (an accepted uTP connection).
pub async fn accept_stream<S: AsyncRead + AsyncWrite + Unpin>(
    s: S,
    transport: Transport,
    local: Option<SocketAddr>,
    known: &[ContactParams],
    shutdown: &watch::Receiver<bool>,
) -> Option<(usize, Attempt)> {
    let t0 = Instant::now();
    let first = known.first()?;
    let handshake_timeout = first.handshake_timeout;
    let mut s = tokio::io::BufReader::with_capacity(512, s);
    let opened = tokio::time::timeout(handshake_timeout, async {
        // Plaintext handshake or MSE, told by the first 20 bytes.
        let (first, plain) = mse::read_opening(&mut s).await.ok()?;
        if plain {
            let mut hs = vec![0u8; 68];
            hs[..20].copy_from_slice(&first);
            s.read_exact(&mut hs[20..]).await.ok()?;
            let i = known.iter().position(|p| hs[28..48] == p.info_hash)?;
            Some((i, None, None, hs, false))
        } else {
            let hashes: Vec<[u8; 20]> = known.iter().map(|p| p.info_hash).collect();
            let key = mse::DhKey::random();
            let mut pad = [0u8; 2];
            mse::fill_random(&mut pad);
            let pad = vec![0u8; usize::from(pad[0]) % 64];
            let m = mse::respond_after(&mut s, &first, &hashes, &key, &pad, |prov| {
                if prov & CRYPTO_RC4 != 0 {
                    Some(CRYPTO_RC4)
                } else if prov & CRYPTO_PLAIN != 0 {
                    Some(CRYPTO_PLAIN)
                } else {
                    None
                }
            })
            .await
            .ok()?;
            let i = hashes.iter().position(|h| *h == m.info_hash)?;
            let mut first = m.ia;
            first.extend_from_slice(&m.leftover);
            Some((i, m.enc, m.dec, first, true))
        }
    })
    .await
    .ok()??;
    let (i, enc, dec, pending, mse) = opened;
    let p = &known[i];
    let mut a = Attempt::new(Crypto::Plain);
    a.incoming = true;
    a.transport = transport;
    a.local = local;
    a.mse = mse;
    a.encrypted = enc.is_some();
    if mse {
        a.crypto = if enc.is_some() { Crypto::Rc4 } else { Crypto::MsePlain };
    }
    let mut wire = Wire { s, enc, dec };
    if wire.send(&our_handshake(&p.info_hash, &p.peer_id)).await.is_err() {
        a.outcome = "reset";
        a.duration_ms = t0.elapsed().as_secs_f64() * 1000.0;
        return Some((i, a));
    }
    let mut shutdown = shutdown.clone();
    converse(wire, pending, p, &mut shutdown, &mut a, t0).await;
    a.duration_ms = t0.elapsed().as_secs_f64() * 1000.0;
    Some((i, a))
}

/// After the opening: frame what the peer sends (`pending` first), answer
/// its handshake, count pieces, until idle, close, a cap or shutdown.
async fn converse<S: AsyncRead + AsyncWrite + Unpin>(
    mut wire: Wire<S>,
    leftover: Vec<u8>,
    p: &ContactParams,
    shutdown: &mut watch::Receiver<bool>,
    a: &mut Attempt,
    t0: Instant,
) {
    let mut framer = PeerWireFramer::new(p.wire);
    framer.set_shape(TorrentShape {
        n_pieces: p.n_pieces,
        piece_length: None,
    });
    let mut st = State::new(p);
    let mut buf = vec![0u8; 16 * 1024];
    let mut last_msg: Option<Instant> = None;
    let mut max_gap = Duration::ZERO;
    let deadline = t0 + p.max_contact;
    let mut pending = leftover;
    // Set once the peer was seen below the threshold in this contact: its
    // crossing ends the contact.
    let mut below_here = false;
    let end: (&'static str, Option<&'static str>) = loop {
        if !pending.is_empty() {
            let before = st.n_msgs;
            framer.feed(Chunk::Data(&pending), &mut |ev| st.on_event(ev));
            pending.clear();
            if st.n_msgs > before {
                let now = Instant::now();
                if let Some(l) = last_msg {
                    max_gap = max_gap.max(now - l);
                }
                last_msg = Some(now);
            }
            if !st.out.is_empty() {
                let out = std::mem::take(&mut st.out);
                if let Err(e) = wire.send(&out).await {
                    break (if st.handshake { "ok" } else { io_outcome(&e) }, Some("reset"));
                }
            }
            if let Some((o, d)) = st.fatal.take() {
                a.detail = Some(d);
                break (o, None);
            }
            if st.n_msgs >= p.max_msgs {
                break ("ok", Some("msg_cap"));
            }
            if let (Some(h), Some(c), Some(n)) = (p.hold, st.have_count(), st.n_pieces) {
                if c < super::schedule::pieces_needed(u64::from(n), h.threshold) {
                    below_here = true;
                } else if below_here {
                    // Seen crossing: what the probe came for.
                    break ("ok", Some("crossed"));
                }
            }
        }
        let now = Instant::now();
        if now >= deadline {
            break (if st.handshake { "ok" } else { "timeout" }, Some("time_cap"));
        }
        // Before the handshake the handshake timeout applies; after it, the
        // idle timeout (longer while metadata is still arriving is not
        // needed: a peer sending it is not idle).
        let wait = if st.handshake {
            p.idle_timeout
        } else {
            p.handshake_timeout.saturating_sub(now - t0)
        };
        let wait = wait.min(deadline - now);
        tokio::select! {
            r = tokio::time::timeout(wait, wire.recv(&mut buf)) => match r {
                Err(_) => {
                    if st.handshake {
                        let now = Instant::now();
                        if now >= deadline {
                            break ("ok", Some("time_cap"));
                        }
                        let first = st.progress.first().map(|x| (x.0, x.1));
                        // A peer silent about pieces holds none (BEP 3).
                        let hold = p.hold.zip(st.n_pieces).is_some_and(|(h, n)| {
                            super::schedule::hold_open(
                                &h,
                                u64::from(n),
                                first,
                                st.have_count().unwrap_or(0),
                                now_us(),
                                (now - t0).as_secs_f64(),
                                (deadline - now).as_secs_f64(),
                            )
                        });
                        if hold {
                            // Still expected to cross in this contact: a
                            // keep-alive, and listen on.
                            if wire.send(&[0, 0, 0, 0]).await.is_err() {
                                break ("ok", Some("reset"));
                            }
                            continue;
                        }
                        break ("ok", Some("idle"));
                    }
                    break ("timeout", None);
                }
                Ok(Ok(0)) => break (if st.handshake { "ok" } else { "closed" }, Some("closed")),
                Ok(Ok(n)) => pending.extend_from_slice(&buf[..n]),
                Ok(Err(e)) => {
                    a.detail = Some(e.to_string());
                    break (if st.handshake { "ok" } else { io_outcome(&e) }, Some("reset"));
                }
            },
            _ = shutdown.changed() => break (if st.handshake { "ok" } else { "cancelled" }, Some("shutdown")),
        }
    };
    a.outcome = end.0;
    a.end_reason = end.1;
    a.success = st.handshake;
    a.n_msgs = st.n_msgs;
    a.n_pieces_have = st.have_count();
    a.cause = st.cause;
    a.bitfield_bits = st.bitfield_bits;
    a.peer_id = st.peer_id;
    a.client = st.client_pid.or(st.client_v);
    a.listen_port = st.listen_port;
    a.extensions = st.extensions;
    a.metadata = st.metadata;
    a.pex = st.pex;
    a.pex_utp = st.pex_utp;
    // BEP 3: "downloaders which don't have anything yet may skip the
    // bitfield". A peer that completed the handshake and then stayed silent
    // about pieces until the idle timeout holds none.
    if st.handshake && !st.known && a.end_reason == Some("idle") && st.fatal.is_none() {
        a.n_pieces_have = Some(0);
        a.cause = Some("no_bitfield");
        st.progress.push((now_us(), 0, "no_bitfield"));
    }
    a.progress = st.progress;
    if st.handshake && last_msg.is_some() {
        a.max_gap_ms = Some(max_gap.as_secs_f64() * 1000.0);
    }
}

/// A visit: attempts in the given crypto order, falling back while the
/// peer drops us (see [`Attempt::worth_fallback`]).
pub async fn visit(
    addr: SocketAddr,
    order: &[Crypto],
    p: &ContactParams,
    shutdown: &watch::Receiver<bool>,
) -> Vec<Attempt> {
    visit_over(addr, &[Transport::Tcp], order, p, shutdown, None).await
}

/// A visit over the given transports in order: on each, the crypto modes
/// in order while the peer drops us; the next transport when nothing
/// worked on this one (TCP refused, silent or closed by a uTP-only client).
/// uTP is skipped without a socket.
pub async fn visit_over(
    addr: SocketAddr,
    transports: &[Transport],
    order: &[Crypto],
    p: &ContactParams,
    shutdown: &watch::Receiver<bool>,
    utp: Option<&UtpSocket>,
) -> Vec<Attempt> {
    let mut out: Vec<Attempt> = Vec::new();
    for &t in transports {
        for &c in order {
            let a = match (t, utp) {
                (Transport::Tcp, _) => attempt_tcp(addr, c, p, shutdown).await,
                (Transport::Utp, Some(u)) => attempt_utp(addr, c, p, shutdown, u).await,
                (Transport::Utp, None) => break,
            };
            let next = a.worth_fallback() && !*shutdown.borrow();
            out.push(a);
            if !next {
                break;
            }
        }
        let done =
            out.iter().any(|a| a.success) || *shutdown.borrow() || out.last().is_some_and(|a| a.outcome == "cancelled");
        if done {
            break;
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tokio::net::TcpListener;

    pub fn params(ih: [u8; 20]) -> ContactParams {
        ContactParams {
            info_hash: ih,
            peer_id: *b"-SW0100-testtesttest",
            n_pieces: Some(20),
            want_metadata: false,
            connect_timeout: Duration::from_secs(2),
            handshake_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_millis(300),
            max_contact: Duration::from_secs(5),
            max_msgs: 1000,
            max_metadata_bytes: 1 << 20,
            max_pieces: 1 << 23,
            max_pex: 100,
            max_progress: 64,
            hold: None,
            wire: PeerWireLimits::default(),
        }
    }

    fn msg(id: u8, body: &[u8]) -> Vec<u8> {
        let mut v = ((body.len() + 1) as u32).to_be_bytes().to_vec();
        v.push(id);
        v.extend_from_slice(body);
        v
    }

    /// A small peer on loopback: accepts one connection, optionally MSE
    /// (RC4 required), answers the handshake, then sends `script`.
    pub async fn peer(ih: [u8; 20], mse_only: bool, script: Vec<u8>, linger: Duration) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let script = script.clone();
                tokio::spawn(async move {
                    let Ok((first, plain)) = mse::read_opening(&mut s).await else {
                        return;
                    };
                    let (mut enc, hs_in) = if plain {
                        if mse_only {
                            return; // drop plaintext, as a peer requiring encryption does
                        }
                        let mut hs = [0u8; 68];
                        hs[..20].copy_from_slice(&first);
                        if s.read_exact(&mut hs[20..]).await.is_err() {
                            return;
                        }
                        (None, hs.to_vec())
                    } else {
                        let key = mse::DhKey::random();
                        let Ok(m) = mse::respond_after(&mut s, &first, &[ih], &key, &[7; 33], |p| {
                            (p & CRYPTO_RC4 != 0).then_some(CRYPTO_RC4)
                        })
                        .await
                        else {
                            return;
                        };
                        (m.enc, m.ia)
                    };
                    assert_eq!(&hs_in[28..48], &ih);
                    let mut out = our_handshake(&ih, b"-TR3000-abcdefghijkl");
                    out.extend_from_slice(&script);
                    if let Some(c) = &mut enc {
                        c.apply(&mut out);
                    }
                    if s.write_all(&out).await.is_err() {
                        return;
                    }
                    // Keep reading (and discarding) what the probe sends.
                    let mut sink = [0u8; 4096];
                    let _ = tokio::time::timeout(linger, async {
                        while let Ok(n) = s.read(&mut sink).await {
                            if n == 0 {
                                break;
                            }
                        }
                    })
                    .await;
                });
            }
        });
        addr
    }

    pub fn no_shutdown() -> watch::Receiver<bool> {
        let (tx, rx) = watch::channel(false);
        std::mem::forget(tx);
        rx
    }

    #[test]
    fn pex_utp_flag() {
        let p = params([1; 20]);
        let mut st = State::new(&p);
        st.on_pex(b"d5:added12:\x0a\x00\x00\x01\x1a\xe1\x0a\x00\x00\x02\x1a\xe17:added.f2:\x04\x10e");
        assert_eq!(st.pex.len(), 2);
        assert_eq!(st.pex_utp, vec!["10.0.0.1:6881".parse::<SocketAddr>().unwrap()]);
    }

    #[test]
    fn pex_ipv6_added_and_dropped_and_cap() {
        let mut p = params([1; 20]);
        p.max_pex = 3;
        let mut st = State::new(&p);
        // added: 10.0.0.1:6881; added6: [fd00::1]:6882 with the uTP flag;
        // dropped: 10.0.0.9:6881 (ignored).
        let mut m = b"d5:added6:\x0a\x00\x00\x01\x1a\xe16:added618:".to_vec();
        m.extend([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0x1a, 0xe2]);
        m.extend(b"8:added6.f1:\x047:dropped6:\x0a\x00\x00\x09\x1a\xe1e");
        st.on_pex(&m);
        assert_eq!(
            st.pex,
            vec![
                "10.0.0.1:6881".parse::<SocketAddr>().unwrap(),
                "[fd00::1]:6882".parse::<SocketAddr>().unwrap()
            ]
        );
        assert_eq!(st.pex_utp, vec!["[fd00::1]:6882".parse::<SocketAddr>().unwrap()]);
        // The cap: two more added, one fits.
        st.on_pex(b"d5:added12:\x0a\x00\x00\x03\x1a\xe1\x0a\x00\x00\x04\x1a\xe1e");
        assert_eq!(st.pex.len(), 3);
        assert_eq!(st.pex[2], "10.0.0.3:6881".parse::<SocketAddr>().unwrap());
    }

    #[test]
    fn bit_counting() {
        assert_eq!(count_bits(&[0xff, 0xff, 0xf0], 20), 20);
        assert_eq!(count_bits(&[0xff, 0xff, 0xff], 20), 20);
        assert_eq!(count_bits(&[0x80, 0x01], 16), 2);
        assert_eq!(count_bits(&[0x80, 0x01], 9), 1);
    }

    #[tokio::test]
    async fn plain_bitfield_and_haves() {
        let ih = [3u8; 20];
        let mut script = msg(5, &[0xff, 0x00, 0x00]); // 8 of 20
        script.extend(msg(4, &9u32.to_be_bytes()));
        script.extend(msg(4, &9u32.to_be_bytes())); // duplicate have
        script.extend(msg(4, &19u32.to_be_bytes()));
        let addr = peer(ih, false, script, Duration::from_secs(3)).await;
        let v = visit(addr, &[Crypto::Plain, Crypto::Rc4], &params(ih), &no_shutdown()).await;
        assert_eq!(v.len(), 1);
        let a = &v[0];
        assert!(a.success, "{a:?}");
        assert_eq!(a.outcome, "ok");
        assert_eq!(a.end_reason, Some("idle"));
        assert!(!a.encrypted);
        assert_eq!(a.n_pieces_have, Some(10));
        assert_eq!(a.n_msgs, 4);
        assert_eq!(a.client.as_deref(), Some("Transmission 3.00"));
    }

    #[tokio::test]
    async fn falls_back_to_rc4_for_a_peer_requiring_it() {
        let ih = [4u8; 20];
        let addr = peer(ih, true, msg(0x0e, &[]), Duration::from_secs(3)).await; // have_all
        let v = visit(addr, &[Crypto::Plain, Crypto::Rc4], &params(ih), &no_shutdown()).await;
        assert_eq!(v.len(), 2, "{v:?}");
        assert!(!v[0].success);
        assert!(v[0].worth_fallback(), "{:?}", v[0]);
        assert!(v[1].success && v[1].encrypted && v[1].mse, "{:?}", v[1]);
        assert_eq!(v[1].n_pieces_have, Some(20));
        assert_eq!(v[1].cause, Some("have_all"));
    }

    #[tokio::test]
    async fn hostile_length_prefix_ends_the_contact() {
        let ih = [5u8; 20];
        let mut script = msg(5, &[0xff, 0xff, 0xf0]);
        script.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 5]);
        script.extend(std::iter::repeat_n(0xaa, 100_000));
        let addr = peer(ih, false, script, Duration::from_secs(3)).await;
        let v = visit(addr, &[Crypto::Plain], &params(ih), &no_shutdown()).await;
        let a = &v[0];
        assert!(a.success);
        assert_eq!(a.outcome, "protocol_error", "{a:?}");
        assert_eq!(a.n_pieces_have, Some(20));
        assert_eq!(a.n_msgs, 1);
    }

    #[tokio::test]
    async fn endless_have_stream_is_capped() {
        let ih = [6u8; 20];
        let mut script = Vec::new();
        for i in 0..50_000u32 {
            script.extend(msg(4, &(i % 20).to_be_bytes()));
        }
        let addr = peer(ih, false, script, Duration::from_secs(3)).await;
        let mut p = params(ih);
        p.max_msgs = 500;
        let v = visit(addr, &[Crypto::Plain], &p, &no_shutdown()).await;
        let a = &v[0];
        assert_eq!(a.end_reason, Some("msg_cap"), "{a:?}");
        // The cap is checked per read: at most one read (16 KiB, 9-byte
        // messages) past it.
        assert!(a.n_msgs >= 500 && a.n_msgs < 500 + 16 * 1024 / 9 + 1, "{}", a.n_msgs);
        assert_eq!(a.n_pieces_have, Some(20));
    }

    /// A peer that answers every handshake for torrent [8; 20], whatever
    /// it was asked for: the probe, asking for [7; 20], must fail the
    /// contact (BEP 3: drop a peer that answers for another info hash).
    #[tokio::test]
    async fn wrong_info_hash_is_a_failed_handshake() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let asked = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut hs = [0u8; 68];
            s.read_exact(&mut hs).await.unwrap();
            s.write_all(&our_handshake(&[8u8; 20], b"-TR3000-abcdefghijkl"))
                .await
                .unwrap();
            // Hold the connection open: the verdict must come from the
            // handshake, not from a close.
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest).await;
            hs
        });
        let p = params([7u8; 20]);
        let v = visit(addr, &[Crypto::Plain], &p, &no_shutdown()).await;
        assert_eq!(v.len(), 1);
        assert!(!v[0].success, "{:?}", v[0]);
        assert_eq!(v[0].outcome, "handshake_failed", "{:?}", v[0]);
        assert_eq!(v[0].detail.as_deref(), Some("peer answered for another info hash"));
        let hs = asked.await.unwrap();
        assert_eq!(&hs[28..48], &[7u8; 20], "the probe asked for its own torrent");
    }

    #[tokio::test]
    async fn refused_is_not_retried() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let v = visit(addr, &[Crypto::Plain, Crypto::Rc4], &params([1; 20]), &no_shutdown()).await;
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].outcome, "refused");
    }

    /// A peer serving its metadata over ut_metadata (two 16 KiB pieces),
    /// answering the probe's requests as they come.
    async fn metadata_peer(info: Vec<u8>, ih: [u8; 20]) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut hs = [0u8; 68];
            s.read_exact(&mut hs).await.unwrap();
            let mut out = our_handshake(&ih, b"-LT2080-abcdefghijkl");
            let d = format!("d1:md11:ut_metadatai3ee13:metadata_sizei{}ee", info.len());
            out.extend(ext_msg(0, d.as_bytes()));
            let mut bf = vec![0u8; 125]; // 1000 pieces
            bf[0] = 0xff;
            out.extend(msg(5, &bf));
            s.write_all(&out).await.unwrap();
            loop {
                let mut len = [0u8; 4];
                if s.read_exact(&mut len).await.is_err() {
                    break;
                }
                let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
                if s.read_exact(&mut body).await.is_err() {
                    break;
                }
                // ut_metadata request sent to our id 3: d8:msg_typei0e5:piecei<N>ee
                if body.len() > 2 && body[0] == 20 && body[1] == 3 {
                    let req = String::from_utf8_lossy(&body[2..]).to_string();
                    let i: usize = req
                        .split("5:piecei")
                        .nth(1)
                        .and_then(|r| r.split('e').next())
                        .and_then(|n| n.parse().ok())
                        .unwrap();
                    let part = &info[i * METADATA_PIECE..((i + 1) * METADATA_PIECE).min(info.len())];
                    let mut payload = format!("d8:msg_typei1e5:piecei{i}e10:total_sizei{}ee", info.len()).into_bytes();
                    payload.extend_from_slice(part);
                    s.write_all(&ext_msg(OUR_UT_METADATA, &payload)).await.unwrap();
                }
            }
        });
        addr
    }

    #[tokio::test]
    async fn ut_metadata_fetched_and_verified() {
        let mut info = b"d6:lengthi16384000e4:name4:test12:piece lengthi16384e6:pieces20000:".to_vec();
        info.extend(std::iter::repeat_n(0x5a, 20000));
        info.push(b'e');
        assert!(info.len() > METADATA_PIECE);
        let ih: [u8; 20] = Sha1::digest(&info).into();
        let addr = metadata_peer(info.clone(), ih).await;
        let mut p = params(ih);
        p.n_pieces = None;
        p.want_metadata = true;
        let v = visit(addr, &[Crypto::Plain], &p, &no_shutdown()).await;
        let a = &v[0];
        let (raw, m) = a.metadata.as_ref().expect("metadata");
        assert_eq!(raw, &info);
        assert_eq!((m.name.as_str(), m.n_pieces), ("test", 1000));
        assert_eq!(a.n_pieces_have, Some(8));
        assert_eq!(a.extensions, vec!["ut_metadata".to_string()]);
        assert_eq!(a.client.as_deref(), Some("libtorrent 2.0.8"));
    }

    #[tokio::test]
    async fn ut_metadata_with_a_wrong_hash_is_rejected() {
        let mut info = b"d6:lengthi16384e4:name1:x12:piece lengthi16384e6:pieces20:".to_vec();
        info.extend([0u8; 20]);
        info.push(b'e');
        let ih = [0x77u8; 20]; // not the SHA-1 of `info`
        let addr = metadata_peer(info, ih).await;
        let mut p = params(ih);
        p.n_pieces = None;
        p.want_metadata = true;
        let v = visit(addr, &[Crypto::Plain], &p, &no_shutdown()).await;
        assert!(v[0].metadata.is_none());
        assert_eq!(v[0].outcome, "metadata_mismatch");
    }

    /// A remote peer connecting to our listen port (plaintext or MSE with
    /// RC4), reading our handshake, then sending its BEP 10 handshake with a
    /// listen port and a bitfield of 12 of 20 pieces.
    pub async fn remote_initiator(addr: SocketAddr, ih: [u8; 20], use_mse: bool) -> Vec<u8> {
        let mut s = TcpStream::connect(addr).await.unwrap();
        remote_initiator_on(&mut s, ih, use_mse, &[0xff, 0xf0, 0]).await
    }

    /// The remote initiator's conversation over any stream (TCP or uTP):
    /// returns what it read of our side (our handshake first).
    pub async fn remote_initiator_on<S: AsyncRead + AsyncWrite + Unpin>(
        s: &mut S,
        ih: [u8; 20],
        use_mse: bool,
        bitfield: &[u8],
    ) -> Vec<u8> {
        let hs = our_handshake(&ih, b"-qB4500-abcdefghijkl");
        let (mut enc, mut dec, mut got) = (None, None, Vec::new());
        if use_mse {
            let m = mse::initiate_random(s, &ih, CRYPTO_RC4, &hs).await.unwrap();
            enc = m.enc;
            dec = m.dec;
            got = m.leftover;
        } else {
            s.write_all(&hs).await.unwrap();
        }
        let mut b = [0u8; 256];
        while got.len() < 68 {
            let n = s.read(&mut b).await.unwrap();
            assert!(n > 0);
            let mut chunk = b[..n].to_vec();
            if let Some(c) = &mut dec {
                c.apply(&mut chunk);
            }
            got.extend(chunk);
        }
        let mut out = ext_msg(0, b"d1:pi7777ee");
        out.extend(msg(5, bitfield));
        if let Some(c) = &mut enc {
            c.apply(&mut out);
        }
        s.write_all(&out).await.unwrap();
        tokio::time::sleep(Duration::from_millis(800)).await;
        got
    }

    #[tokio::test]
    async fn incoming_plain_and_mse() {
        for use_mse in [false, true] {
            let ih = [0x42u8; 20];
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            let remote = tokio::spawn(remote_initiator(addr, ih, use_mse));
            let (sock, _) = l.accept().await.unwrap();
            let known = [params([1u8; 20]), params(ih)];
            let (i, a) = accept_contact(sock, &known, &no_shutdown()).await.expect("accepted");
            let got = remote.await.unwrap();
            assert_eq!(&got[..20], HANDSHAKE_PREFIX);
            assert_eq!(&got[28..48], &ih, "our handshake names the torrent");
            assert_eq!(i, 1);
            assert!(a.incoming && a.success, "{a:?}");
            assert_eq!(a.encrypted, use_mse);
            assert_eq!(a.n_pieces_have, Some(12));
            assert_eq!(a.listen_port, Some(7777));
        }
    }

    #[tokio::test]
    async fn incoming_for_an_unknown_torrent_is_dropped() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let remote = tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(&our_handshake(&[9u8; 20], b"-qB4500-abcdefghijkl"))
                .await
                .unwrap();
            let mut b = [0u8; 68];
            s.read(&mut b).await.unwrap_or(0)
        });
        let (sock, _) = l.accept().await.unwrap();
        assert!(accept_contact(sock, &[params([1u8; 20])], &no_shutdown())
            .await
            .is_none());
        assert_eq!(remote.await.unwrap(), 0, "nothing sent back");
    }
}
