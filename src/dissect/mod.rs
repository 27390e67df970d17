//! The dissector registry: which application a flow carries, how sure we
//! are, and why. A tap sees mostly other protocols, so a flow is called
//! BitTorrent only on evidence, and the protocols that look like ours are
//! ruled out by name on purpose ([`lookalike`]).
//!
//! Each protocol offers one probe over the first bytes of a direction (a
//! stream) or over a datagram, plus what the flow layer knows (mid-stream
//! or not, which side spoke): it answers [`Verdict::Certain`],
//! [`Verdict::NotYet`] or [`Verdict::NotMine`], with its evidence. This file
//! fixes their order ([`STREAM_ORDER`], [`DATAGRAM_ORDER`]); [`stream`] and
//! [`datagram`] hold the probes.
//!
//! Evidence levels (`flows.app_confidence`):
//! - **certain**: the bytes prove it: a plaintext handshake, a KRPC
//!   dictionary, a BEP 15 exchange (a connect answered, or a request paired
//!   with its answer), an LSD `BT-SEARCH`, an HTTP tracker request or
//!   tracker document.
//! - **strong**: structure in both directions that only BitTorrent has
//!   together with corroboration: MSE's key exchange both ways and an
//!   endpoint the same capture names as a BitTorrent peer (decided in the
//!   sequential stage, `pipeline`); uTP headers consistent over several
//!   packets both ways (ids, version, sequence and acknowledgement
//!   numbers); peer-wire messages framed in a run both ways on a stream
//!   picked up mid-connection.
//! - **weak**: structure alone (one direction, one datagram). Weak flows
//!   stay in `flows`; they write no connection, peer, torrent or audit row
//!   unless `--keep-weak`.

pub mod datagram;
pub mod lookalike;
pub mod stream;

/// How sure an identification is (`flows.app_confidence`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Confidence {
    Weak,
    Strong,
    Certain,
}

impl Confidence {
    pub fn name(self) -> &'static str {
        match self {
            Confidence::Weak => "weak",
            Confidence::Strong => "strong",
            Confidence::Certain => "certain",
        }
    }
}

/// A probe's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict<P> {
    /// The bytes are this protocol (`P` says which, the text why).
    Certain(P, &'static str),
    /// Not enough bytes to say yet.
    NotYet,
    /// Not this protocol (the text says why, for rule-outs).
    NotMine(&'static str),
}

/// What a flow was identified as: the `flows` columns `app`,
/// `app_confidence`, `app_evidence`. Non-BitTorrent flows have no
/// confidence; their evidence names the look-alike when one was ruled out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identified {
    pub app: &'static str,
    pub confidence: Option<Confidence>,
    pub evidence: Option<&'static str>,
}

impl Identified {
    pub const OTHER: Identified = Identified {
        app: "other",
        confidence: None,
        evidence: None,
    };

    pub fn bt(app: &'static str, confidence: Confidence, evidence: &'static str) -> Self {
        Identified {
            app,
            confidence: Some(confidence),
            evidence: Some(evidence),
        }
    }

    pub fn other(app: &'static str, evidence: Option<&'static str>) -> Self {
        Identified {
            app,
            confidence: None,
            evidence,
        }
    }

    /// Reported as BitTorrent at strong or certain confidence.
    pub fn is_sure(&self) -> bool {
        self.confidence.is_some_and(|c| c >= Confidence::Strong)
    }
}

/// What a stream probe recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamProto {
    /// The BitTorrent handshake (BEP 3).
    PeerWire,
    /// An HTTP request naming an announce or scrape (BEP 3, BEP 48).
    TrackerRequest,
    /// An HTTP response with its request not captured: a tracker's when
    /// its body turns out to be a tracker document.
    HttpResponse,
    /// MSE/PE's first flight: a Diffie-Hellman key and random padding.
    Mse,
    /// A stream picked up mid-connection: peer-wire framing is hunted for,
    /// and believed only after a run of messages both ways.
    MidstreamPeerWire,
}

/// What the flow layer knows of a stream when its first bytes arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamFacts {
    /// The stream start was not captured (no SYN; a uTP connection without
    /// its SYN).
    pub midstream: bool,
    /// The bytes come from the originator.
    pub from_orig: bool,
}

/// The stream probes in their order, over the first bytes `d` of one
/// direction: proofs first, then the named look-alikes, then the shapes
/// that are weak evidence on their own.
pub fn probe_stream(d: &[u8], facts: StreamFacts) -> Verdict<StreamProto> {
    if d.is_empty() {
        return Verdict::NotYet;
    }
    if stream::is_handshake_start(d) {
        return Verdict::Certain(StreamProto::PeerWire, "plaintext handshake");
    }
    if stream::is_tracker_request(d) {
        return Verdict::Certain(StreamProto::TrackerRequest, "HTTP tracker request");
    }
    if stream::is_http_response(d) {
        return Verdict::Certain(StreamProto::HttpResponse, "HTTP response, request not captured");
    }
    if let Some(name) = lookalike::stream(d) {
        return Verdict::NotMine(name);
    }
    if facts.from_orig && !facts.midstream {
        if let Some(name) = lookalike::mse_lookalike(d) {
            return Verdict::NotMine(name);
        }
        if stream::is_mse_first_flight(d) {
            return Verdict::Certain(StreamProto::Mse, "MSE key exchange shape");
        }
    }
    if facts.midstream {
        return Verdict::Certain(StreamProto::MidstreamPeerWire, "mid-stream");
    }
    Verdict::NotMine("no BitTorrent opening")
}

/// What a datagram probe recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatagramProto {
    /// A KRPC dictionary (BEP 5).
    Dht,
    /// A local service discovery announce (BEP 14).
    Lsd,
    /// The answer to a pending BEP 15 request (paired by the caller).
    TrackerUdpAnswer,
    /// The shape of a BEP 15 request: certain only with a connection id
    /// the capture saw handed out, else only once answered.
    TrackerUdpRequest,
    /// A uTP header (BEP 29): believed once consistent over packets both ways.
    Utp,
}

/// The datagram probes in their order. `answers_pending` pairs `d` with a
/// pending BEP 15 request of the flow (and consumes it when it does): a
/// tracker's answer can have any shape, so pairing runs before the
/// look-alikes; the request and uTP shapes run after them.
pub fn probe_datagram(d: &[u8], answers_pending: &mut dyn FnMut() -> bool) -> Verdict<DatagramProto> {
    if datagram::is_krpc(d) {
        return Verdict::Certain(DatagramProto::Dht, "KRPC dictionary");
    }
    if datagram::is_lsd(d) {
        return Verdict::Certain(DatagramProto::Lsd, "LSD BT-SEARCH");
    }
    if answers_pending() {
        return Verdict::Certain(DatagramProto::TrackerUdpAnswer, "BEP 15 answer paired with its request");
    }
    if let Some(name) = lookalike::datagram(d) {
        return Verdict::NotMine(name);
    }
    if datagram::is_tracker_request_shape(d) {
        return Verdict::Certain(DatagramProto::TrackerUdpRequest, "BEP 15 request shape");
    }
    if datagram::is_utp_shape(d) {
        return Verdict::Certain(DatagramProto::Utp, "uTP header shape");
    }
    Verdict::NotMine("no BitTorrent shape")
}
