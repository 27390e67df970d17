//! The KRPC parser as it was before [`super::parse_krpc`] became one walk:
//! validate the whole datagram, look up `y`, walk the top level, then walk
//! the body. Kept as the oracle the single walk is checked against (unit
//! tests below and in the parent, the `dht` fuzz target): both must give
//! the same message, field for field, or the same error, on any input.
//! The per-entry rules ([`super::top_entry`], [`super::body_entry`]) are
//! shared; what differs is the walking, the order anomalies are found in,
//! and how the kind is known.

use super::*;

/// [`super::parse_krpc`], the old way.
pub fn parse_krpc<'a>(d: &'a [u8], limits: &DhtLimits) -> Result<KrpcMessage<'a>, DhtError> {
    if d.len() > limits.max_datagram_bytes {
        return Err(DhtError::TooLarge);
    }
    let (dict, used) = bencode::parse_dict(d, &limits.bencode).map_err(DhtError::Bencode)?;
    let kind = match dict.get(b"y") {
        Some(Value::Bytes(b"q")) => KrpcKind::Query,
        Some(Value::Bytes(b"r")) => KrpcKind::Response,
        Some(Value::Bytes(b"e")) => KrpcKind::Error,
        Some(Value::Bytes(_)) => return Err(DhtError::UnknownType),
        _ => return Err(DhtError::MissingType),
    };
    let mut m = KrpcMessage::empty(dict, kind);
    if used != d.len() {
        m.notes.note(AnomalyKind::TrailingBytes, "");
    }
    let mut seen = Seen::default();
    let mut have_tid = false;
    let mut notes = Notes::default();
    for (key, val) in dict.iter() {
        if let Some((name, k)) = TopKey::lookup(key) {
            top_entry(&mut m, &mut notes, &mut seen, &mut have_tid, name, k, val);
        }
    }
    m.notes.append(&notes);
    if !have_tid && !m.has_anomaly_on("t") {
        m.notes.note(AnomalyKind::Missing, "t");
    }
    if kind == KrpcKind::Error && m.error_code.is_none() && !m.has_anomaly_on("e") {
        m.notes.note(AnomalyKind::Missing, "e");
    }
    match kind {
        KrpcKind::Query => {
            if m.method_name.is_none() {
                m.notes.note(AnomalyKind::Missing, "q");
            }
            if m.body.is_none() && !m.has_anomaly_on("a") {
                m.notes.note(AnomalyKind::Missing, "a");
            }
        }
        KrpcKind::Response => {
            if m.body.is_none() && !m.has_anomaly_on("r") {
                m.notes.note(AnomalyKind::Missing, "r");
            }
        }
        KrpcKind::Error => {}
    }
    if let Some(body) = m.body {
        let scope = if kind == KrpcKind::Query {
            KeyScope::Args
        } else {
            KeyScope::Reply
        };
        let mut seen = Seen::default();
        let mut notes = Notes::default();
        for (key, val, raw) in body.iter_raw() {
            if let Some((name, k)) = BodyKey::lookup(key, scope) {
                body_entry(&mut m, &mut notes, &mut seen, name, k, val, raw, None);
            }
        }
        m.notes.append(&notes);
        if m.id.is_none() && !m.has_anomaly_on("id") {
            m.notes.note(AnomalyKind::Missing, "id");
        }
    }
    // Counted by walking, as `unknown_keys` always did.
    m.n_unknown = u32::MAX;
    m.n_unknown = u32::try_from(m.unknown_keys().count()).unwrap_or(u32::MAX);
    Ok(m)
}

/// Whether the two parses agree: the same error, or messages equal in
/// every field (spans compared as bytes and positions) and anomaly.
pub fn same(a: &Result<KrpcMessage<'_>, DhtError>, b: &Result<KrpcMessage<'_>, DhtError>) -> bool {
    match (a, b) {
        (Err(x), Err(y)) => x == y,
        (Ok(x), Ok(y)) => {
            format!("{x:?}") == format!("{y:?}")
                && x.anomalies() == y.anomalies()
                && x.unknown_keys().eq(y.unknown_keys())
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Byte-level mutations of real and built messages: the single walk
    /// and the old parser agree on every one (same message or same error).
    #[test]
    fn the_single_walk_equals_the_old_parser() {
        let seeds: Vec<Vec<u8>> = vec![
            b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe".to_vec(),
            b"d1:rd2:id20:abcdefghij01234567895:nodes26:AAAAAAAAAAAAAAAAAAAA\x01\x02\x03\x04\x1a\xe15:token3:tok6:valuesl6:\x01\x02\x03\x04\x05\x066:\x01\x02\x03\x04\x05\x07i3eee1:t2:aa1:y1:re".to_vec(),
            b"d1:eli201e23:A Generic Error Ocurrede1:t2:aa1:y1:ee".to_vec(),
            b"d1:y1:q1:t2:aa1:q9:get_peers1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz1234562:zzi1ee1:xi5ee".to_vec(),
            b"d1:ad2:id20:abcdefghij01234567894:wantl2:n42:n6ee1:rd2:id3:abce1:q9:find_node1:t2:aa1:y1:q2:ro1:1e".to_vec(),
            b"d2:ip6:\x01\x02\x03\x04\x05\x061:rd2:id20:abcdefghij01234567891:vd1:ai1eee1:t1:x1:v4:LT\x01\x2f1:y1:r1:y1:qe".to_vec(),
            b"d1:ad2:id20:abcdefghij0123456789e1:ad2:id2:xxe1:q4:ping1:t2:aa1:t1:b1:y1:qexx".to_vec(),
            b"d1:t2:aa1:y1:rd1:rli1eee".to_vec(),
        ];
        let limits = DhtLimits::default();
        let tight = DhtLimits {
            bencode: BencodeLimits {
                max_depth: 3,
                max_items: 12,
            },
            ..DhtLimits::default()
        };
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let alphabet = b"deil0123456789:-qryatvx";
        let mut n = 0;
        for seed in &seeds {
            for lim in [&limits, &tight] {
                let (a, b) = (parse_krpc(seed, lim), super::super::parse_krpc(seed, lim));
                assert!(same(&a, &b), "seed {:?}: {a:?} vs {b:?}", String::from_utf8_lossy(seed));
            }
            for _ in 0..3000 {
                let mut d = seed.clone();
                for _ in 0..(next() % 4 + 1) {
                    let r = next();
                    let i = (r >> 8) as usize % (d.len() + 1);
                    match r % 4 {
                        0 if i < d.len() => d[i] = alphabet[(r >> 32) as usize % alphabet.len()],
                        1 if i < d.len() => {
                            d.remove(i);
                        }
                        2 => d.insert(i, alphabet[(r >> 32) as usize % alphabet.len()]),
                        _ => d.truncate(i.max(1)),
                    }
                }
                for lim in [&limits, &tight] {
                    let (a, b) = (parse_krpc(&d, lim), super::super::parse_krpc(&d, lim));
                    assert!(same(&a, &b), "input {:?}: {a:?} vs {b:?}", String::from_utf8_lossy(&d));
                    n += usize::from(a.is_ok());
                }
            }
        }
        // The mutations must reach parsed messages, not only errors.
        assert!(n > 1000, "{n} parsed");
    }
}
