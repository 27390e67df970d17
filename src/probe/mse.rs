//! Message Stream Encryption / Protocol Encryption (MSE/PE), the
//! obfuscation handshake of Azureus/Vuze, µTorrent, libtorrent and
//! Transmission: a 768-bit Diffie–Hellman exchange, then RC4 with keys
//! derived from the shared secret and the torrent's info hash.
//!
//! The exchange, as the initiator A sees it (B is the receiving peer):
//!
//! ```text
//! 1 A->B  Ya, PadA
//! 2 B->A  Yb, PadB
//! 3 A->B  HASH('req1', S), HASH('req2', SKEY) xor HASH('req3', S),
//!         ENCRYPT(VC, crypto_provide, len(PadC), PadC, len(IA)), ENCRYPT(IA)
//! 4 B->A  ENCRYPT(VC, crypto_select, len(PadD), PadD), ENCRYPT2(payload)
//! 5 A->B  ENCRYPT2(payload)
//! ```
//!
//! P is the 768-bit MODP prime (RFC 2409 group 1), G = 2, private keys are
//! 160 random bits, Y and S travel as 96-byte big-endian numbers. SKEY is the
//! info hash. A encrypts with RC4(HASH('keyA', S, SKEY)), B with
//! RC4(HASH('keyB', S, SKEY)); both discard the first 1024 keystream bytes.
//! VC is 8 zero bytes; crypto_provide / crypto_select bit 0x01 is plaintext,
//! 0x02 RC4. Pads are 0–512 random bytes. When B selects plaintext, only the
//! handshake fields above were encrypted (IA included) and the payload then
//! flows in the clear.
//!
//! Both sides are implemented: the initiator is what the probe uses; the
//! responder serves the tests (a real handshake against our own code, with
//! known-answer vectors computed independently) and a future listen port.
//! Every read is bounded: the synchronisation searches look at most
//! 512 + 20 bytes past a public key, as the specification allows.

use num_bigint::BigUint;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// RFC 2409 768-bit MODP prime (Oakley group 1), the MSE modulus.
const P_HEX: &str = "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A63A36210000000000090563";
/// Bytes of a public key or shared secret on the wire.
pub const KEY_LEN: usize = 96;
/// Longest pad the specification allows (PadA … PadD).
pub const MAX_PAD: usize = 512;
/// crypto_provide / crypto_select bits.
pub const CRYPTO_PLAIN: u32 = 0x01;
pub const CRYPTO_RC4: u32 = 0x02;
/// Verification constant: 8 zero bytes.
const VC: [u8; 8] = [0; 8];
/// Longest initial payload (IA) we accept as responder: a handshake is 68
/// bytes; libtorrent sends the handshake and nothing else.
const MAX_IA: usize = 4096;

fn prime() -> BigUint {
    BigUint::parse_bytes(P_HEX.as_bytes(), 16).unwrap_or_default()
}

/// A number as a fixed 96-byte big-endian string.
fn to_96(n: &BigUint) -> [u8; KEY_LEN] {
    let b = n.to_bytes_be();
    let mut out = [0u8; KEY_LEN];
    let k = b.len().min(KEY_LEN);
    out[KEY_LEN - k..].copy_from_slice(&b[b.len() - k..]);
    out
}

/// One side's Diffie–Hellman key pair.
pub struct DhKey {
    private: BigUint,
    pub public: [u8; KEY_LEN],
}

impl DhKey {
    /// A key pair from 160 private bits (the specification's recommendation).
    pub fn from_private(x: &[u8; 20]) -> Self {
        let private = BigUint::from_bytes_be(x);
        let public = to_96(&BigUint::from(2u32).modpow(&private, &prime()));
        DhKey { private, public }
    }

    pub fn random() -> Self {
        let mut x = [0u8; 20];
        fill_random(&mut x);
        Self::from_private(&x)
    }

    /// The shared secret S from the other side's public key; `None` for a
    /// degenerate key (0, 1, P-1 or ≥ P), which would fix S.
    pub fn shared(&self, other: &[u8; KEY_LEN]) -> Option<[u8; KEY_LEN]> {
        let p = prime();
        let y = BigUint::from_bytes_be(other);
        let one = BigUint::from(1u32);
        if y <= one || y >= &p - &one {
            return None;
        }
        Some(to_96(&y.modpow(&self.private, &p)))
    }
}

/// Random bytes from the operating system; an all-zero fallback would make
/// keys predictable, so a failure is fatal.
pub fn fill_random(buf: &mut [u8]) {
    if let Err(e) = getrandom::fill(buf) {
        panic!("the operating system's random source failed: {e}");
    }
}

/// RC4 (the keystream generator MSE specifies).
#[derive(Clone)]
pub struct Rc4 {
    s: [u8; 256],
    i: u8,
    j: u8,
}

impl Rc4 {
    pub fn new(key: &[u8]) -> Self {
        let mut s = [0u8; 256];
        for (k, v) in s.iter_mut().enumerate() {
            *v = k as u8;
        }
        let mut j: u8 = 0;
        if !key.is_empty() {
            for i in 0..256 {
                j = j.wrapping_add(s[i]).wrapping_add(key[i % key.len()]);
                s.swap(i, j as usize);
            }
        }
        Rc4 { s, i: 0, j: 0 }
    }

    /// RC4 keyed as MSE does: key = SHA1(label, S, SKEY), 1024 bytes dropped.
    pub fn mse(label: &[u8; 4], secret: &[u8; KEY_LEN], skey: &[u8; 20]) -> Self {
        let key = sha1_of(&[label, secret, skey]);
        let mut r = Rc4::new(&key);
        let mut discard = [0u8; 1024];
        r.apply(&mut discard);
        r
    }

    /// XORs the keystream into `buf` (encrypts and decrypts alike).
    pub fn apply(&mut self, buf: &mut [u8]) {
        for b in buf {
            self.i = self.i.wrapping_add(1);
            self.j = self.j.wrapping_add(self.s[self.i as usize]);
            self.s.swap(self.i as usize, self.j as usize);
            let k = self.s[self.s[self.i as usize].wrapping_add(self.s[self.j as usize]) as usize];
            *b ^= k;
        }
    }
}

fn sha1_of(parts: &[&[u8]]) -> [u8; 20] {
    let mut h = Sha1::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// Why an MSE handshake failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MseError {
    /// The peer closed or reset the connection (typical of a peer that does
    /// not speak MSE, or refuses this torrent).
    Closed,
    Io(String),
    /// A degenerate public key.
    BadKey,
    /// The synchronisation pattern was not found within the allowed bytes.
    NoSync,
    /// VC not zero, unknown info hash, crypto field out of range.
    Protocol(&'static str),
}

impl std::fmt::Display for MseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MseError::Closed => f.write_str("closed during MSE handshake"),
            MseError::Io(e) => write!(f, "MSE i/o: {e}"),
            MseError::BadKey => f.write_str("degenerate DH public key"),
            MseError::NoSync => f.write_str("MSE synchronisation not found"),
            MseError::Protocol(w) => write!(f, "MSE protocol: {w}"),
        }
    }
}

fn io_err(e: std::io::Error) -> MseError {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof
        | std::io::ErrorKind::ConnectionReset
        | std::io::ErrorKind::ConnectionAborted
        | std::io::ErrorKind::BrokenPipe => MseError::Closed,
        _ => MseError::Io(e.to_string()),
    }
}

/// The outcome of a completed handshake for one side.
pub struct MseStream {
    /// Cipher for what we send; `None` when plaintext was selected.
    pub enc: Option<Rc4>,
    /// Cipher for what we receive; `None` when plaintext was selected.
    pub dec: Option<Rc4>,
    /// Bytes received after the handshake, already decrypted.
    pub leftover: Vec<u8>,
    /// crypto_select (initiator) or what we selected (responder).
    pub selected: u32,
    /// Responder only: the initial payload A sent (decrypted) and the info
    /// hash it proved to know.
    pub ia: Vec<u8>,
    pub info_hash: [u8; 20],
}

/// Reads into `buf` until `pat` appears, looking at no more than `limit`
/// bytes in total; returns the offset just past the pattern.
async fn read_until<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    pat: &[u8],
    limit: usize,
) -> Result<usize, MseError> {
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(p) = memchr::memmem::find(buf, pat) {
            return Ok(p + pat.len());
        }
        if buf.len() >= limit {
            return Err(MseError::NoSync);
        }
        let want = (limit - buf.len()).min(chunk.len());
        let n = s.read(&mut chunk[..want]).await.map_err(io_err)?;
        if n == 0 {
            return Err(MseError::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Makes sure `buf[at..]` holds at least `n` bytes.
async fn fill_to<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>, at: usize, n: usize) -> Result<(), MseError> {
    let mut chunk = [0u8; 1024];
    while buf.len() < at + n {
        let want = (at + n - buf.len()).min(chunk.len());
        let k = s.read(&mut chunk[..want]).await.map_err(io_err)?;
        if k == 0 {
            return Err(MseError::Closed);
        }
        buf.extend_from_slice(&chunk[..k]);
    }
    Ok(())
}

fn random_pad() -> Vec<u8> {
    let mut l = [0u8; 2];
    fill_random(&mut l);
    let n = usize::from(u16::from_be_bytes(l)) % (MAX_PAD + 1);
    let mut pad = vec![0u8; n];
    fill_random(&mut pad);
    pad
}

/// Runs the handshake as initiator: `provide` is the crypto_provide set,
/// `ia` the initial payload (the BitTorrent handshake). Returns the
/// negotiated stream state. `key` and `pad_a` are parameters so tests can
/// pin them; the probe passes a random key and [`random_pad`].
pub async fn initiate<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    info_hash: &[u8; 20],
    provide: u32,
    ia: &[u8],
    key: &DhKey,
    pad_a: &[u8],
) -> Result<MseStream, MseError> {
    let mut out = Vec::with_capacity(KEY_LEN + pad_a.len());
    out.extend_from_slice(&key.public);
    out.extend_from_slice(pad_a);
    s.write_all(&out).await.map_err(io_err)?;

    let mut buf = Vec::with_capacity(KEY_LEN + MAX_PAD + 64);
    fill_to(s, &mut buf, 0, KEY_LEN).await?;
    let mut yb = [0u8; KEY_LEN];
    yb.copy_from_slice(&buf[..KEY_LEN]);
    let secret = key.shared(&yb).ok_or(MseError::BadKey)?;

    let mut enc = Rc4::mse(b"keyA", &secret, info_hash);
    let mut dec = Rc4::mse(b"keyB", &secret, info_hash);
    let req1 = sha1_of(&[b"req1", &secret]);
    let req2 = sha1_of(&[b"req2", info_hash]);
    let req3 = sha1_of(&[b"req3", &secret]);
    let mut msg = Vec::with_capacity(40 + 16 + ia.len());
    msg.extend_from_slice(&req1);
    msg.extend(req2.iter().zip(req3.iter()).map(|(a, b)| a ^ b));
    let mut tail = Vec::with_capacity(16 + ia.len());
    tail.extend_from_slice(&VC);
    tail.extend_from_slice(&provide.to_be_bytes());
    tail.extend_from_slice(&0u16.to_be_bytes()); // len(PadC): no PadC
    tail.extend_from_slice(&(ia.len() as u16).to_be_bytes());
    tail.extend_from_slice(ia);
    enc.apply(&mut tail);
    msg.extend_from_slice(&tail);
    s.write_all(&msg).await.map_err(io_err)?;

    // B's reply starts with ENCRYPT(VC) somewhere after Yb and PadB.
    let mut sync = dec.clone();
    let mut evc = VC;
    sync.apply(&mut evc);
    let mut rest = buf.split_off(KEY_LEN);
    let end = read_until(s, &mut rest, &evc, MAX_PAD + VC.len()).await?;
    let mut vc = evc;
    dec.apply(&mut vc); // advance the real cipher over VC
    fill_to(s, &mut rest, end, 6).await?;
    let mut head = [0u8; 6];
    head.copy_from_slice(&rest[end..end + 6]);
    dec.apply(&mut head);
    let selected = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    let pad_d = usize::from(u16::from_be_bytes([head[4], head[5]]));
    if pad_d > MAX_PAD {
        return Err(MseError::Protocol("len(PadD) above 512"));
    }
    if selected & provide == 0 || selected.count_ones() != 1 {
        return Err(MseError::Protocol("crypto_select not among crypto_provide"));
    }
    fill_to(s, &mut rest, end + 6, pad_d).await?;
    let mut pad = rest[end + 6..end + 6 + pad_d].to_vec();
    dec.apply(&mut pad);
    let mut leftover = rest.split_off(end + 6 + pad_d);
    let (enc, dec) = if selected == CRYPTO_RC4 {
        dec.apply(&mut leftover);
        (Some(enc), Some(dec))
    } else {
        (None, None)
    };
    Ok(MseStream {
        enc,
        dec,
        leftover,
        selected,
        ia: Vec::new(),
        info_hash: *info_hash,
    })
}

/// Initiator with a fresh random key and pad.
pub async fn initiate_random<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    info_hash: &[u8; 20],
    provide: u32,
    ia: &[u8],
) -> Result<MseStream, MseError> {
    let key = DhKey::random();
    let pad = random_pad();
    initiate(s, info_hash, provide, ia, &key, &pad).await
}

/// How an incoming connection opens: its first 20 bytes, and whether they
/// are a plaintext handshake's (`\x13BitTorrent protocol`). Both openings
/// are longer than 20 bytes (a handshake 68, an MSE public key 96). The
/// whole prefix decides, not its first byte: an MSE public key starts with
/// 0x13 once in 256 connections, and taking those for plaintext would drop
/// them.
pub async fn read_opening<S: AsyncRead + Unpin>(s: &mut S) -> std::io::Result<([u8; 20], bool)> {
    let mut first = [0u8; 20];
    s.read_exact(&mut first).await?;
    Ok((first, first == *crate::proto::peer_wire::HANDSHAKE_PREFIX))
}

/// Runs the handshake as responder, for any of `known` info hashes.
/// `choose` picks crypto_select from the initiator's crypto_provide (`None`:
/// no acceptable method, the handshake fails).
pub async fn respond<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    known: &[[u8; 20]],
    key: &DhKey,
    pad_b: &[u8],
    choose: impl Fn(u32) -> Option<u32>,
) -> Result<MseStream, MseError> {
    respond_after(s, &[], known, key, pad_b, choose).await
}

/// [`respond`] on a stream whose first bytes, `first` (at most the
/// initiator's public key, as [`read_opening`] takes), were already read.
pub async fn respond_after<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    first: &[u8],
    known: &[[u8; 20]],
    key: &DhKey,
    pad_b: &[u8],
    choose: impl Fn(u32) -> Option<u32>,
) -> Result<MseStream, MseError> {
    let mut buf = Vec::with_capacity(KEY_LEN + MAX_PAD + 64);
    buf.extend_from_slice(&first[..first.len().min(KEY_LEN)]);
    fill_to(s, &mut buf, 0, KEY_LEN).await?;
    let mut ya = [0u8; KEY_LEN];
    ya.copy_from_slice(&buf[..KEY_LEN]);
    let secret = key.shared(&ya).ok_or(MseError::BadKey)?;
    let mut out = key.public.to_vec();
    out.extend_from_slice(pad_b);
    s.write_all(&out).await.map_err(io_err)?;

    let req1 = sha1_of(&[b"req1", &secret]);
    let mut rest = buf.split_off(KEY_LEN);
    let end = read_until(s, &mut rest, &req1, MAX_PAD + 20).await?;
    fill_to(s, &mut rest, end, 20).await?;
    let req3 = sha1_of(&[b"req3", &secret]);
    let want: Vec<u8> = rest[end..end + 20]
        .iter()
        .zip(req3.iter())
        .map(|(a, b)| a ^ b)
        .collect();
    let info_hash = *known
        .iter()
        .find(|h| sha1_of(&[b"req2", &h[..]])[..] == want[..])
        .ok_or(MseError::Protocol("unknown info hash"))?;
    let mut dec = Rc4::mse(b"keyA", &secret, &info_hash);
    let mut enc = Rc4::mse(b"keyB", &secret, &info_hash);
    let mut at = end + 20;
    fill_to(s, &mut rest, at, 14).await?;
    let mut head = [0u8; 14];
    head.copy_from_slice(&rest[at..at + 14]);
    dec.apply(&mut head);
    if head[..8] != VC {
        return Err(MseError::Protocol("VC not zero"));
    }
    let provide = u32::from_be_bytes([head[8], head[9], head[10], head[11]]);
    let pad_c = usize::from(u16::from_be_bytes([head[12], head[13]]));
    if pad_c > MAX_PAD {
        return Err(MseError::Protocol("len(PadC) above 512"));
    }
    at += 14;
    fill_to(s, &mut rest, at, pad_c + 2).await?;
    let mut pc = rest[at..at + pad_c + 2].to_vec();
    dec.apply(&mut pc);
    let ia_len = usize::from(u16::from_be_bytes([pc[pad_c], pc[pad_c + 1]]));
    if ia_len > MAX_IA {
        return Err(MseError::Protocol("len(IA) too large"));
    }
    at += pad_c + 2;
    fill_to(s, &mut rest, at, ia_len).await?;
    let mut ia = rest[at..at + ia_len].to_vec();
    dec.apply(&mut ia);
    at += ia_len;
    let selected = choose(provide).ok_or(MseError::Protocol("no acceptable crypto method"))?;
    let mut reply = Vec::with_capacity(14);
    reply.extend_from_slice(&VC);
    reply.extend_from_slice(&selected.to_be_bytes());
    reply.extend_from_slice(&0u16.to_be_bytes());
    enc.apply(&mut reply);
    s.write_all(&reply).await.map_err(io_err)?;
    let mut leftover = rest.split_off(at);
    let (enc, dec) = if selected == CRYPTO_RC4 {
        dec.apply(&mut leftover);
        (Some(enc), Some(dec))
    } else {
        (None, None)
    };
    Ok(MseStream {
        enc,
        dec,
        leftover,
        selected,
        ia,
        info_hash,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    // Known answers computed independently (Python: pow(), hashlib and a
    // textbook RC4), for private keys 0x0102…14 (A) and 0x1516…28 (B).
    const YA: &str = "96e112dab29e8c5272accb9b17b26887ce54a144a4e3b697c7d159b7a817e556b0918db2b4c658e02a87f7e5fb14b18a553e084cbf3dad2d30f16596ccb982d406258c61b30c5c1dae2ddc60bdbd48d79896312aad63238c39e1a633821eb693";
    const YB: &str = "a3e981e821087e74b889c5bfc373ec5be9ed09c85282b9cdb6b07dbaabe0ee5138a91e6245657219d1019ce47ed3613f037c6932a69069a3928b146b354e79cbfeaad601d12598943c43b5b5529915b2c604e43fd6f9ced4efbe68f9edfaeee7";
    const S: &str = "994aac6c359990cf4f678a1742b587eb1a5248ec7fcc0d0bcfcb12d2461bc1fe25417b70869697d9ca884832f1c5f2a2fd3318c22a5a6ba170d36aac91405457c1e8137b1534a776865ed353f12422ff6afc58435f8bd443f61dd051a37bcdeb";
    const SKEY: &str = "5232ebc2848f363f68a7cb5ca7b95afbd8dc302f"; // SHA1("swarmtap")

    fn keys() -> (DhKey, DhKey) {
        let mut a = [0u8; 20];
        let mut b = [0u8; 20];
        for i in 0..20 {
            a[i] = i as u8 + 1;
            b[i] = i as u8 + 21;
        }
        (DhKey::from_private(&a), DhKey::from_private(&b))
    }

    fn skey() -> [u8; 20] {
        unhex(SKEY).try_into().unwrap()
    }

    #[test]
    fn rc4_known_keystreams() {
        for (key, ks) in [
            ("Key", "eb9f7781b734ca72a7"),
            ("Wiki", "6044db6d41"),
            ("Secret", "04d46b053ca87b594172302aec9b"),
        ] {
            let mut buf = vec![0u8; ks.len() / 2];
            Rc4::new(key.as_bytes()).apply(&mut buf);
            assert_eq!(buf, unhex(ks), "key {key}");
        }
    }

    #[test]
    fn dh_and_key_derivation_known_answers() {
        let (a, b) = keys();
        assert_eq!(a.public.to_vec(), unhex(YA));
        assert_eq!(b.public.to_vec(), unhex(YB));
        let s1 = a.shared(&b.public).unwrap();
        let s2 = b.shared(&a.public).unwrap();
        assert_eq!(s1, s2);
        assert_eq!(s1.to_vec(), unhex(S));
        assert_eq!(
            sha1_of(&[b"keyA", &s1, &skey()]).to_vec(),
            unhex("1e60986b0d9edab745c0c6188139c97eb7a59afc")
        );
        assert_eq!(
            sha1_of(&[b"req1", &s1]).to_vec(),
            unhex("83c8d8a3d91a5bf40d723666c4258731c8427ccb")
        );
        let mut ka = [0u8; 16];
        Rc4::mse(b"keyA", &s1, &skey()).apply(&mut ka);
        assert_eq!(ka.to_vec(), unhex("d9d5ff03370a1f5f7cd75e75531363e8"));
        let mut kb = [0u8; 16];
        Rc4::mse(b"keyB", &s1, &skey()).apply(&mut kb);
        assert_eq!(kb.to_vec(), unhex("7f9347601cecdd5d6287d5f886ae6783"));
    }

    #[test]
    fn degenerate_keys_refused() {
        let (a, _) = keys();
        let mut one = [0u8; KEY_LEN];
        one[KEY_LEN - 1] = 1;
        assert!(a.shared(&one).is_none());
        assert!(a.shared(&[0u8; KEY_LEN]).is_none());
        assert!(a.shared(&[0xff; KEY_LEN]).is_none());
    }

    /// Runs both sides over an in-memory pipe; returns what each side ends with.
    async fn pair(provide: u32, choose: fn(u32) -> Option<u32>, pad_a: usize, pad_b: usize) -> (MseStream, MseStream) {
        let (mut x, mut y) = tokio::io::duplex(4096);
        let (ka, kb) = keys();
        let ih = skey();
        let ia = b"\x13BitTorrent protocol-initial-payload".to_vec();
        let pa = vec![0x5a; pad_a];
        let pb = vec![0xa5; pad_b];
        let other = [[9u8; 20], ih];
        let (ra, rb) = tokio::join!(
            initiate(&mut x, &ih, provide, &ia, &ka, &pa),
            respond(&mut y, &other, &kb, &pb, choose)
        );
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        assert_eq!(rb.ia, ia);
        assert_eq!(rb.info_hash, ih);
        (ra, rb)
    }

    /// One MSE public key in 256 starts with 0x13, a plaintext
    /// handshake's first byte: the opening is told by its 20 bytes, so such
    /// a connection is still answered as MSE (taken for plaintext, it was
    /// dropped), and a handshake is still plaintext.
    #[tokio::test]
    async fn a_public_key_starting_like_a_handshake_is_mse() {
        let ka = (1u32..)
            .map(|i| {
                let mut x = [7u8; 20];
                x[16..].copy_from_slice(&i.to_be_bytes());
                DhKey::from_private(&x)
            })
            .find(|k| k.public[0] == 0x13)
            .unwrap();
        let (_, kb) = keys();
        let ih = skey();
        let ia = b"\x13BitTorrent protocol-initial-payload".to_vec();
        let (mut x, mut y) = tokio::io::duplex(4096);
        let (ra, rb) = tokio::join!(initiate(&mut x, &ih, CRYPTO_RC4, &ia, &ka, &[]), async {
            let (first, plain) = read_opening(&mut y).await.unwrap();
            assert_eq!((first[0], plain), (0x13, false));
            respond_after(&mut y, &first, &[[9u8; 20], ih], &kb, &[3; 5], prefer_rc4).await
        });
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        assert_eq!((rb.ia, rb.info_hash), (ia.clone(), ih));
        assert!(ra.enc.is_some() && rb.enc.is_some());

        let (mut x, mut y) = tokio::io::duplex(4096);
        x.write_all(&ia[..]).await.unwrap();
        let (first, plain) = read_opening(&mut y).await.unwrap();
        assert!(plain);
        assert_eq!(&first[..], &ia[..20]);
    }

    fn prefer_rc4(p: u32) -> Option<u32> {
        if p & CRYPTO_RC4 != 0 {
            Some(CRYPTO_RC4)
        } else if p & CRYPTO_PLAIN != 0 {
            Some(CRYPTO_PLAIN)
        } else {
            None
        }
    }

    fn prefer_plain(p: u32) -> Option<u32> {
        if p & CRYPTO_PLAIN != 0 {
            Some(CRYPTO_PLAIN)
        } else {
            prefer_rc4(p)
        }
    }

    #[tokio::test]
    async fn rc4_mode_round_trip() {
        for (pa, pb) in [(0, 0), (1, 511), (512, 512), (77, 3)] {
            let (mut a, mut b) = pair(CRYPTO_RC4 | CRYPTO_PLAIN, prefer_rc4, pa, pb).await;
            assert_eq!(a.selected, CRYPTO_RC4);
            let mut msg = b"hello from A".to_vec();
            a.enc.as_mut().unwrap().apply(&mut msg);
            assert_ne!(&msg, b"hello from A");
            b.dec.as_mut().unwrap().apply(&mut msg);
            assert_eq!(&msg, b"hello from A");
            let mut back = b"and from B".to_vec();
            b.enc.as_mut().unwrap().apply(&mut back);
            a.dec.as_mut().unwrap().apply(&mut back);
            assert_eq!(&back, b"and from B");
        }
    }

    #[tokio::test]
    async fn plaintext_mode_selected() {
        let (a, b) = pair(CRYPTO_RC4 | CRYPTO_PLAIN, prefer_plain, 10, 20).await;
        assert_eq!(a.selected, CRYPTO_PLAIN);
        assert!(a.enc.is_none() && a.dec.is_none() && b.enc.is_none());
    }

    #[tokio::test]
    async fn responder_refuses_unknown_hash() {
        let (mut x, mut y) = tokio::io::duplex(4096);
        let (ka, kb) = keys();
        let (ra, rb) = tokio::join!(
            async {
                let r = initiate(&mut x, &skey(), CRYPTO_RC4, b"", &ka, &[]).await;
                drop(x);
                r
            },
            async {
                let r = respond(&mut y, &[[1u8; 20]], &kb, &[], prefer_rc4).await;
                drop(y);
                r
            }
        );
        assert_eq!(rb.err(), Some(MseError::Protocol("unknown info hash")));
        assert!(ra.is_err());
    }

    #[tokio::test]
    async fn no_sync_is_bounded() {
        // A "responder" that sends a valid-looking key then endless junk:
        // the initiator gives up after 512 + 8 bytes past the key.
        let (mut x, mut y) = tokio::io::duplex(1 << 16);
        let (ka, kb) = keys();
        let junk = tokio::spawn(async move {
            let mut ya = [0u8; KEY_LEN];
            let _ = y.read_exact(&mut ya).await;
            let _ = y.write_all(&kb.public).await;
            let _ = y.write_all(&[0x42; 4096]).await;
            let mut sink = vec![0u8; 4096];
            while let Ok(n) = y.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        });
        let r = initiate(&mut x, &skey(), CRYPTO_RC4, b"", &ka, &[]).await;
        assert_eq!(r.err(), Some(MseError::NoSync));
        drop(x);
        let _ = junk.await;
    }
}
