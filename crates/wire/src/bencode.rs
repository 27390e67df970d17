//! Zero-copy, non-recursive bencode reader (BEP 3, "bencoding").
//!
//! Every KRPC datagram (BEP 5), tracker response (BEP 3, BEP 48), extension
//! handshake (BEP 10) and metainfo file (BEP 3, BEP 52) is bencoded, so this
//! reader sits on the hot path and faces hostile input on every packet.
//!
//! How it works: [`parse`] walks the buffer once, iteratively, with a
//! fixed-size bit stack (one bit per open container: list or dict), so a
//! deeply nested input costs no recursion and no allocation. It checks every
//! grammar rule and every bound in [`BencodeLimits`]. The result is a
//! [`Value`] whose containers are plain byte spans ([`List`], [`Dict`]) known
//! to be well formed.
//!
//! Invariants:
//! - Validation happens once. After [`parse`] succeeded, iterating or looking
//!   up inside the returned spans never fails and never panics: the walkers
//!   below use checked slice access everywhere and simply stop if a span
//!   were ever inconsistent (it cannot be, because spans are only built by
//!   the validator or from sub-spans of a validated span).
//! - Nothing is copied and nothing is allocated, whatever the input.
//! - Integers are `i64`; anything outside (and the non-canonical forms `i-0e`,
//!   `i03e`, `ie`) is [`BencodeError::BadInt`].
//! - Dict keys must be byte strings, but need not be sorted or unique: real
//!   clients send both. Lookups return the first match, so a later duplicate
//!   cannot shadow an earlier key.
//! - String lengths may carry leading zeros (`04:spam`): BEP 3 only forbids
//!   them for integers, and some encoders emit them. [`Dict::raw`] keeps the
//!   exact bytes either way, which is what an info-hash needs.

use std::fmt;

/// Hard ceiling on nesting, whatever [`BencodeLimits::max_depth`] says.
///
/// The validator keeps one bit per open container in a fixed array of this
/// many bits (128 bytes on the stack), so it never allocates. Real KRPC and
/// metainfo documents nest fewer than 10 levels; 1024 is far beyond any
/// legitimate use.
pub const MAX_DEPTH_CEILING: u32 = 1024;

const STACK_WORDS: usize = (MAX_DEPTH_CEILING as usize) / 64;

/// Bounds applied while validating one bencoded value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BencodeLimits {
    /// Maximum number of containers (lists and dicts) open at once. The
    /// outermost container is depth 1; a lone integer or string is depth 0.
    /// Clamped to [`MAX_DEPTH_CEILING`].
    pub max_depth: u32,
    /// Maximum number of elements in the whole value: every integer, string
    /// (dict keys included), list and dict counts as one.
    pub max_items: u32,
}

impl BencodeLimits {
    /// Default nesting bound. Real KRPC messages nest 3 levels and metainfo
    /// files about 5 (`info`/`files`/entry/`path`); 64 leaves ample room for
    /// extensions while stopping nesting bombs (a recursive decoder such as
    /// serde_bencode overflows its stack on a few KB of `l`).
    pub const DEFAULT_MAX_DEPTH: u32 = 64;
    /// Default element bound. Every element takes at least 2 bytes (`0:`,
    /// `le`), so this admits any document up to 2 MiB of densest encoding and
    /// metainfo files listing several hundred thousand files, while bounding
    /// the work a consumer does when it walks every element.
    pub const DEFAULT_MAX_ITEMS: u32 = 1 << 20;
}

impl Default for BencodeLimits {
    fn default() -> Self {
        BencodeLimits {
            max_depth: Self::DEFAULT_MAX_DEPTH,
            max_items: Self::DEFAULT_MAX_ITEMS,
        }
    }
}

/// Why a buffer is not one acceptable bencoded value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BencodeError {
    /// The buffer ended before the value did (more bytes could complete it).
    Truncated,
    /// More nested containers than [`BencodeLimits::max_depth`].
    TooDeep,
    /// More elements than [`BencodeLimits::max_items`].
    TooManyItems,
    /// A malformed integer: empty, leading zero, `-0`, a stray byte, or
    /// outside `i64`.
    BadInt,
    /// A string length that does not fit in `usize`.
    BadLength,
    /// A byte that cannot start or continue the element at this offset
    /// (including a non-string dict key, a dict with a key but no value, and
    /// an `e` with nothing open).
    UnexpectedByte {
        /// Offset of the offending byte in the parsed buffer.
        at: usize,
    },
    /// [`parse_exact`]: bytes follow the complete value.
    TrailingBytes,
    /// A dict was required ([`parse_dict`]) but the value is something else.
    NotADict,
}

impl BencodeError {
    /// Stable snake_case name, used as `kind` in the `anomalies` table.
    pub fn kind(&self) -> &'static str {
        match self {
            BencodeError::Truncated => "bencode_truncated",
            BencodeError::TooDeep => "bencode_too_deep",
            BencodeError::TooManyItems => "bencode_too_many_items",
            BencodeError::BadInt => "bencode_bad_int",
            BencodeError::BadLength => "bencode_bad_length",
            BencodeError::UnexpectedByte { .. } => "bencode_unexpected_byte",
            BencodeError::TrailingBytes => "bencode_trailing_bytes",
            BencodeError::NotADict => "bencode_not_a_dict",
        }
    }
}

impl fmt::Display for BencodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BencodeError::UnexpectedByte { at } => write!(f, "{} at byte {}", self.kind(), at),
            _ => f.write_str(self.kind()),
        }
    }
}

impl std::error::Error for BencodeError {}

/// One validated bencoded value, borrowing from the parsed buffer.
#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    /// `i…e`
    Int(i64),
    /// `<len>:<bytes>`: the string's content, without its length prefix.
    Bytes(&'a [u8]),
    /// `l…e`
    List(List<'a>),
    /// `d…e`
    Dict(Dict<'a>),
}

impl<'a> Value<'a> {
    /// The exact encoded bytes of a list or dict (`l…e` / `d…e`).
    ///
    /// `None` for integers and strings, whose payload already is the decoded
    /// value; their exact encoding is available from [`Dict::get_raw`],
    /// [`List::iter_raw`], [`Dict::iter_raw`] or the length [`parse`] returns.
    pub fn raw(&self) -> Option<&'a [u8]> {
        match self {
            Value::List(l) => Some(l.raw()),
            Value::Dict(d) => Some(d.raw()),
            Value::Int(_) | Value::Bytes(_) => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(n) => Some(*n),
            _ => None,
        }
    }

    pub fn as_bytes(&self) -> Option<&'a [u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_list(&self) -> Option<List<'a>> {
        match self {
            Value::List(l) => Some(*l),
            _ => None,
        }
    }

    pub fn as_dict(&self) -> Option<Dict<'a>> {
        match self {
            Value::Dict(d) => Some(*d),
            _ => None,
        }
    }

    /// Short name of the variant, for anomaly details ("expected bytes, got int").
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Int(_) => "int",
            Value::Bytes(_) => "bytes",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
        }
    }
}

/// A validated list: the exact span `l…e`.
#[derive(Debug, Clone, Copy)]
pub struct List<'a> {
    raw: &'a [u8],
}

/// A validated dict: the exact span `d…e`.
#[derive(Debug, Clone, Copy)]
pub struct Dict<'a> {
    raw: &'a [u8],
}

impl<'a> List<'a> {
    /// A span the caller validated as one list (`l…e`).
    pub(crate) fn validated(raw: &'a [u8]) -> Self {
        List { raw }
    }

    /// Exact encoded bytes, `l` and `e` included.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    pub fn iter(&self) -> ListIter<'a> {
        ListIter {
            inner: ElemWalker::new(self.raw),
        }
    }

    /// Elements together with their exact encoding.
    pub fn iter_raw(&self) -> ListRawIter<'a> {
        ListRawIter {
            inner: ElemWalker::new(self.raw),
        }
    }

    /// `true` for `le` (O(1), unlike counting the iterator).
    pub fn is_empty(&self) -> bool {
        self.raw.len() <= 2
    }
}

impl<'a> Dict<'a> {
    /// A span the caller validated as one dict (`d…e`).
    pub(crate) fn validated(raw: &'a [u8]) -> Self {
        Dict { raw }
    }

    /// Exact encoded bytes, `d` and `e` included: hash this for an info-hash.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// Entries in wire order (unsorted and duplicate keys are kept as sent).
    pub fn iter(&self) -> DictIter<'a> {
        DictIter {
            inner: ElemWalker::new(self.raw),
        }
    }

    /// Entries with the exact encoding of each value.
    pub fn iter_raw(&self) -> DictRawIter<'a> {
        DictRawIter {
            inner: ElemWalker::new(self.raw),
        }
    }

    /// `true` for `de` (O(1)).
    pub fn is_empty(&self) -> bool {
        self.raw.len() <= 2
    }

    /// First value stored under `key`.
    pub fn get(&self, key: &[u8]) -> Option<Value<'a>> {
        self.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// Exact encoding of the first value stored under `key`.
    pub fn get_raw(&self, key: &[u8]) -> Option<&'a [u8]> {
        self.iter_raw().find(|(k, _, _)| *k == key).map(|(_, _, raw)| raw)
    }

    pub fn get_bytes(&self, key: &[u8]) -> Option<&'a [u8]> {
        self.get(key).and_then(|v| v.as_bytes())
    }

    pub fn get_int(&self, key: &[u8]) -> Option<i64> {
        self.get(key).and_then(|v| v.as_int())
    }

    pub fn get_dict(&self, key: &[u8]) -> Option<Dict<'a>> {
        self.get(key).and_then(|v| v.as_dict())
    }

    pub fn get_list(&self, key: &[u8]) -> Option<List<'a>> {
        self.get(key).and_then(|v| v.as_list())
    }
}

/// Iterator over a [`List`]'s elements.
#[derive(Debug, Clone)]
pub struct ListIter<'a> {
    inner: ElemWalker<'a>,
}

impl<'a> Iterator for ListIter<'a> {
    type Item = Value<'a>;
    fn next(&mut self) -> Option<Value<'a>> {
        self.inner.next_elem().map(|(v, _)| v)
    }
}

/// Iterator over a [`List`]'s elements and their exact encodings.
#[derive(Debug, Clone)]
pub struct ListRawIter<'a> {
    inner: ElemWalker<'a>,
}

impl<'a> Iterator for ListRawIter<'a> {
    type Item = (Value<'a>, &'a [u8]);
    fn next(&mut self) -> Option<Self::Item> {
        self.inner.next_elem()
    }
}

/// Iterator over a [`Dict`]'s `(key, value)` entries in wire order.
#[derive(Debug, Clone)]
pub struct DictIter<'a> {
    inner: ElemWalker<'a>,
}

impl<'a> Iterator for DictIter<'a> {
    type Item = (&'a [u8], Value<'a>);
    fn next(&mut self) -> Option<Self::Item> {
        self.inner.next_entry().map(|(k, v, _)| (k, v))
    }
}

/// Iterator over a [`Dict`]'s `(key, value, value's exact encoding)` entries.
#[derive(Debug, Clone)]
pub struct DictRawIter<'a> {
    inner: ElemWalker<'a>,
}

impl<'a> Iterator for DictRawIter<'a> {
    type Item = (&'a [u8], Value<'a>, &'a [u8]);
    fn next(&mut self) -> Option<Self::Item> {
        self.inner.next_entry()
    }
}

/// Validates the first complete value in `buf` (iteratively, depth- and
/// item-bounded) and returns it with the number of bytes it used.
pub fn parse<'a>(buf: &'a [u8], limits: &BencodeLimits) -> Result<(Value<'a>, usize), BencodeError> {
    let used = validate(buf, limits)?;
    let span = buf.get(..used).ok_or(BencodeError::Truncated)?;
    // The span was just validated and is exactly the first value: a
    // container is the whole span (what `decode_at` would find by walking
    // it again to its end). A scalar is decoded, which cannot fail; the
    // error arm only exists to avoid an unwrap.
    let value = match span.first() {
        Some(b'd') => Value::Dict(Dict::validated(span)),
        Some(b'l') => Value::List(List::validated(span)),
        _ => decode_at(span, 0).ok_or(BencodeError::Truncated)?.0,
    };
    Ok((value, used))
}

/// Same as [`parse`], but the whole buffer must be exactly one value
/// ([`BencodeError::TrailingBytes`] otherwise).
pub fn parse_exact<'a>(buf: &'a [u8], limits: &BencodeLimits) -> Result<Value<'a>, BencodeError> {
    let (value, used) = parse(buf, limits)?;
    if used != buf.len() {
        return Err(BencodeError::TrailingBytes);
    }
    Ok(value)
}

/// [`parse`] for a value that must be a dict (KRPC messages, tracker
/// responses, metainfo): [`BencodeError::NotADict`] otherwise. The check on the
/// first byte happens before any work, so non-bencode input is rejected in
/// O(1).
pub fn parse_dict<'a>(buf: &'a [u8], limits: &BencodeLimits) -> Result<(Dict<'a>, usize), BencodeError> {
    match buf.first() {
        None => return Err(BencodeError::Truncated),
        Some(b'd') => {}
        Some(_) => return Err(BencodeError::NotADict),
    }
    let (value, used) = parse(buf, limits)?;
    value.as_dict().map(|d| (d, used)).ok_or(BencodeError::NotADict)
}

/// [`parse_dict`] where the whole buffer must be the dict.
pub fn parse_dict_exact<'a>(buf: &'a [u8], limits: &BencodeLimits) -> Result<Dict<'a>, BencodeError> {
    let (dict, used) = parse_dict(buf, limits)?;
    if used != buf.len() {
        return Err(BencodeError::TrailingBytes);
    }
    Ok(dict)
}

// ---------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------

/// One bit per open container: set for a dict, clear for a list.
struct KindStack {
    bits: [u64; STACK_WORDS],
    len: u32,
}

impl KindStack {
    fn new() -> Self {
        KindStack {
            bits: [0; STACK_WORDS],
            len: 0,
        }
    }

    /// Caller guarantees `len < MAX_DEPTH_CEILING` (checked against the
    /// clamped limit); the `get_mut` keeps even a broken caller panic-free.
    fn push(&mut self, is_dict: bool) {
        let word = (self.len / 64) as usize;
        let bit = 1u64 << (self.len % 64);
        if let Some(w) = self.bits.get_mut(word) {
            if is_dict {
                *w |= bit;
            } else {
                *w &= !bit;
            }
        }
        self.len += 1;
    }

    fn pop(&mut self) {
        self.len = self.len.saturating_sub(1);
    }

    fn top_is_dict(&self) -> bool {
        let Some(top) = self.len.checked_sub(1) else {
            return false;
        };
        let word = (top / 64) as usize;
        self.bits.get(word).is_some_and(|w| w & (1u64 << (top % 64)) != 0)
    }
}

/// Returns the length of the first complete value of `buf`.
fn validate(buf: &[u8], limits: &BencodeLimits) -> Result<usize, BencodeError> {
    validate_nested(buf, 0, 0, &mut 0, limits)
}

/// Validates the element starting at `start`, inside `open` containers
/// (for the depth bound) with `items` elements before it (for the item
/// bound, updated): the same steps as [`validate`] takes over that
/// element inside a whole value, so a reader that walks the outer levels
/// itself (the KRPC parser) gets the same errors at the same offsets.
/// Returns the offset just past the element.
pub(crate) fn validate_nested(
    buf: &[u8],
    start: usize,
    open: u32,
    items: &mut u32,
    limits: &BencodeLimits,
) -> Result<usize, BencodeError> {
    let max_depth = limits.max_depth.min(MAX_DEPTH_CEILING);
    let mut stack = KindStack::new();
    // In the innermost dict: is the next element a key? Only the innermost
    // level needs this state: while a child container is open its parent dict
    // is necessarily waiting for a value, and once the child closes the parent
    // wants a key again.
    let mut expect_key = false;
    let mut pos: usize = start;

    loop {
        let byte = *buf.get(pos).ok_or(BencodeError::Truncated)?;
        let in_dict = stack.top_is_dict();

        if byte == b'e' {
            if stack.len == 0 || (in_dict && !expect_key) {
                // `e` with nothing open, or a dict key left without a value.
                return Err(BencodeError::UnexpectedByte { at: pos });
            }
            stack.pop();
            pos += 1;
            // The closed container was a value in its parent: a dict parent
            // had `expect_key == false` when it was opened; the toggle below
            // turns that into "next is a key".
            expect_key = false;
        } else {
            if in_dict && expect_key && !byte.is_ascii_digit() {
                return Err(BencodeError::UnexpectedByte { at: pos });
            }
            *items = items.checked_add(1).ok_or(BencodeError::TooManyItems)?;
            if *items > limits.max_items {
                return Err(BencodeError::TooManyItems);
            }
            match byte {
                b'i' => pos = scan_int(buf, pos)?.1,
                b'0'..=b'9' => pos = scan_bytes(buf, pos)?.1,
                b'l' | b'd' => {
                    if open.saturating_add(stack.len) >= max_depth {
                        return Err(BencodeError::TooDeep);
                    }
                    let is_dict = byte == b'd';
                    stack.push(is_dict);
                    expect_key = is_dict;
                    pos += 1;
                    continue;
                }
                _ => return Err(BencodeError::UnexpectedByte { at: pos }),
            }
        }

        // An element just completed at the current level.
        if stack.len == 0 {
            return Ok(pos);
        }
        if stack.top_is_dict() {
            expect_key = !expect_key;
        }
    }
}

/// Scans `i…e` starting at `start` (which holds `i`). Returns the value and
/// the offset just past the `e`.
pub(crate) fn scan_int(buf: &[u8], start: usize) -> Result<(i64, usize), BencodeError> {
    let mut pos = start + 1;
    let negative = buf.get(pos) == Some(&b'-');
    if negative {
        pos += 1;
    }
    let first = *buf.get(pos).ok_or(BencodeError::Truncated)?;
    if !first.is_ascii_digit() {
        return Err(BencodeError::BadInt);
    }
    if first == b'0' {
        // Only `i0e` may start with 0: no leading zeros, no `-0`.
        return match buf.get(pos + 1) {
            None => Err(BencodeError::Truncated),
            Some(b'e') if !negative => Ok((0, pos + 2)),
            Some(_) => Err(BencodeError::BadInt),
        };
    }
    // Accumulate towards the sign so that i64::MIN is representable; overflow
    // stops the scan at the 20th digit, so a 10^4-digit integer costs nothing.
    let mut value: i64 = 0;
    loop {
        let b = *buf.get(pos).ok_or(BencodeError::Truncated)?;
        match b {
            b'0'..=b'9' => {
                let digit = i64::from(b - b'0');
                value = value.checked_mul(10).ok_or(BencodeError::BadInt)?;
                value = if negative {
                    value.checked_sub(digit)
                } else {
                    value.checked_add(digit)
                }
                .ok_or(BencodeError::BadInt)?;
                pos += 1;
            }
            b'e' => return Ok((value, pos + 1)),
            _ => return Err(BencodeError::BadInt),
        }
    }
}

/// Scans `<len>:<bytes>` starting at `start` (which holds a digit). Returns
/// the content and the offset just past it. Never allocates: a huge length
/// is compared against what is left, not reserved.
pub(crate) fn scan_bytes(buf: &[u8], start: usize) -> Result<(&[u8], usize), BencodeError> {
    let mut pos = start;
    let mut len: usize = 0;
    loop {
        let b = *buf.get(pos).ok_or(BencodeError::Truncated)?;
        match b {
            b'0'..=b'9' => {
                len = len
                    .checked_mul(10)
                    .and_then(|l| l.checked_add(usize::from(b - b'0')))
                    .ok_or(BencodeError::BadLength)?;
                pos += 1;
            }
            b':' => break,
            _ => return Err(BencodeError::UnexpectedByte { at: pos }),
        }
    }
    let content_start = pos + 1;
    let end = content_start.checked_add(len).ok_or(BencodeError::BadLength)?;
    let content = buf.get(content_start..end).ok_or(BencodeError::Truncated)?;
    Ok((content, end))
}

// ---------------------------------------------------------------------------
// Walking validated spans
// ---------------------------------------------------------------------------

/// Decodes the element starting at `pos` of a validated span. Returns the
/// value and the offset just past it; `None` only if the span were invalid.
fn decode_at(buf: &[u8], pos: usize) -> Option<(Value<'_>, usize)> {
    match *buf.get(pos)? {
        b'i' => scan_int(buf, pos).ok().map(|(n, end)| (Value::Int(n), end)),
        b'0'..=b'9' => scan_bytes(buf, pos).ok().map(|(b, end)| (Value::Bytes(b), end)),
        b'l' => {
            let end = skip_container(buf, pos)?;
            Some((
                Value::List(List {
                    raw: buf.get(pos..end)?,
                }),
                end,
            ))
        }
        b'd' => {
            let end = skip_container(buf, pos)?;
            Some((
                Value::Dict(Dict {
                    raw: buf.get(pos..end)?,
                }),
                end,
            ))
        }
        _ => None,
    }
}

/// Offset just past the container opening at `start`, found by counting
/// depth (no recursion). Cost is linear in the container's size.
fn skip_container(buf: &[u8], start: usize) -> Option<usize> {
    let mut depth: usize = 0;
    let mut pos = start;
    loop {
        match *buf.get(pos)? {
            b'l' | b'd' => {
                depth += 1;
                pos += 1;
            }
            b'e' => {
                depth = depth.checked_sub(1)?;
                pos += 1;
                if depth == 0 {
                    return Some(pos);
                }
            }
            // Integers and strings inside are skipped whole, so their bytes
            // (which may be `e`, `l`, `d`) are never mistaken for structure.
            b'i' => pos = scan_int(buf, pos).ok()?.1,
            b'0'..=b'9' => pos = scan_bytes(buf, pos).ok()?.1,
            _ => return None,
        }
    }
}

/// Cursor over the elements of a validated `l…e` or `d…e` span.
#[derive(Debug, Clone)]
struct ElemWalker<'a> {
    raw: &'a [u8],
    pos: usize,
}

impl<'a> ElemWalker<'a> {
    fn new(raw: &'a [u8]) -> Self {
        // Skip the opening `l`/`d`.
        ElemWalker { raw, pos: 1 }
    }

    fn next_elem(&mut self) -> Option<(Value<'a>, &'a [u8])> {
        let raw = self.raw;
        if raw.get(self.pos) == Some(&b'e') {
            return None;
        }
        let start = self.pos;
        let Some((value, end)) = decode_at(raw, start) else {
            // Unreachable for validated spans; stop rather than loop.
            self.pos = raw.len();
            return None;
        };
        self.pos = end;
        Some((value, raw.get(start..end)?))
    }

    fn next_entry(&mut self) -> Option<(&'a [u8], Value<'a>, &'a [u8])> {
        let (key, _) = self.next_elem()?;
        let key = key.as_bytes()?;
        let (value, raw) = self.next_elem()?;
        Some((key, value, raw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lim() -> BencodeLimits {
        BencodeLimits::default()
    }

    fn err(buf: &[u8]) -> BencodeError {
        match parse(buf, &lim()) {
            Ok((v, used)) => panic!("expected an error for {buf:?}, got {v:?} ({used} bytes)"),
            Err(e) => e,
        }
    }

    /// `parse` takes a container's span as validated, without walking it
    /// again: the same span `decode_at` finds by walking, and the same
    /// entries, on nested values with strings and integers holding `e`,
    /// `l` and `d` bytes, followed by trailing bytes.
    #[test]
    fn parse_takes_the_validated_span_as_decode_at_finds_it() {
        let cases: &[&[u8]] = &[
            b"de",
            b"le",
            b"d1:md11:ut_metadatai3e6:ut_pexi1ee1:pi6881e1:v4:ld e6:yourip4:\x7f\x00\x00\x01e",
            b"l4:eeeei-1eli0eedee",
            b"d1:ad1:bl1:ci99eee1:d3:lde1:ei0ee",
            b"lld1:xle1:yi-7eeee",
        ];
        let mut n = 0;
        for case in cases {
            for tail in [&b""[..], b"e", b"i1e", b"de"] {
                let mut buf = case.to_vec();
                buf.extend_from_slice(tail);
                let (v, used) = parse(&buf, &lim()).expect("valid");
                assert_eq!(used, case.len());
                let (w, end) = decode_at(&buf[..used], 0).expect("validated");
                assert_eq!(end, used);
                assert_eq!(v.raw(), w.raw());
                assert_eq!(v.raw(), Some(*case));
                let entries = |v: Value<'_>| match v {
                    Value::Dict(d) => d
                        .iter_raw()
                        .map(|(k, _, r)| (k.to_vec(), r.to_vec()))
                        .collect::<Vec<_>>(),
                    Value::List(l) => l.iter_raw().map(|(_, r)| (Vec::new(), r.to_vec())).collect(),
                    _ => Vec::new(),
                };
                assert_eq!(entries(v), entries(w));
                n += 1;
            }
        }
        assert_eq!(n, 24);
    }

    #[test]
    fn scalars() {
        let cases: &[(&[u8], i64)] = &[
            (b"i0e", 0),
            (b"i42e", 42),
            (b"i-42e", -42),
            (b"i9223372036854775807e", i64::MAX),
            (b"i-9223372036854775808e", i64::MIN),
        ];
        for (buf, want) in cases {
            let (v, used) = parse(buf, &lim()).unwrap();
            assert_eq!(v.as_int(), Some(*want), "{buf:?}");
            assert_eq!(used, buf.len());
            assert!(v.raw().is_none());
        }
        let (v, used) = parse(b"4:spamXYZ", &lim()).unwrap();
        assert_eq!(v.as_bytes(), Some(&b"spam"[..]));
        assert_eq!(used, 6);
        assert_eq!(parse(b"0:", &lim()).unwrap().0.as_bytes(), Some(&b""[..]));
        // Leading zeros in a length are tolerated (see module doc).
        assert_eq!(parse(b"04:spam", &lim()).unwrap().0.as_bytes(), Some(&b"spam"[..]));
        // Strings may contain structure bytes.
        assert_eq!(parse(b"3:e:d", &lim()).unwrap().0.as_bytes(), Some(&b"e:d"[..]));
    }

    #[test]
    fn containers_and_lookup() {
        let buf = b"d1:ad1:bi1e1:cl3:xyzi-1eee4:spaml1:ae3:zzzi7e1:ai99ee";
        let v = parse_exact(buf, &lim()).unwrap();
        let d = v.as_dict().unwrap();
        assert_eq!(d.raw(), &buf[..]);
        // Duplicate key: the first one wins.
        let a = d.get_dict(b"a").unwrap();
        assert_eq!(a.get_int(b"b"), Some(1));
        let c = a.get_list(b"c").unwrap();
        let items: Vec<_> = c.iter().collect();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].as_bytes(), Some(&b"xyz"[..]));
        assert_eq!(items[1].as_int(), Some(-1));
        assert_eq!(c.raw(), b"l3:xyzi-1ee");
        assert_eq!(d.get_raw(b"a"), Some(&b"d1:bi1e1:cl3:xyzi-1eee"[..]));
        assert_eq!(d.get_raw(b"zzz"), Some(&b"i7e"[..]));
        assert_eq!(d.get_int(b"zzz"), Some(7));
        assert!(d.get(b"nope").is_none());
        assert!(d.get_bytes(b"zzz").is_none());
        let keys: Vec<&[u8]> = d.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec![&b"a"[..], b"spam", b"zzz", b"a"]);
        let raws: Vec<&[u8]> = d.iter_raw().map(|(_, _, r)| r).collect();
        assert_eq!(raws[1], b"l1:ae");
        assert_eq!(v.raw(), Some(&buf[..]));
        assert_eq!(v.type_name(), "dict");

        let (empty, _) = parse(b"de", &lim()).unwrap();
        assert!(empty.as_dict().unwrap().is_empty());
        assert_eq!(empty.as_dict().unwrap().iter().count(), 0);
        assert_eq!(err(b"lle"), BencodeError::Truncated);
    }

    #[test]
    fn every_error() {
        use BencodeError::*;
        let cases: &[(&[u8], BencodeError)] = &[
            (b"", Truncated),
            (b"i", Truncated),
            (b"i12", Truncated),
            (b"i-", Truncated),
            (b"i0", Truncated),
            (b"5:abc", Truncated),
            (b"12", Truncated),
            (b"l", Truncated),
            (b"d1:a", Truncated),
            (b"li1e", Truncated),
            (b"ie", BadInt),
            (b"i-e", BadInt),
            (b"i-0e", BadInt),
            (b"i03e", BadInt),
            (b"i00e", BadInt),
            (b"i1x2e", BadInt),
            (b"i+1e", BadInt),
            (b"i9223372036854775808e", BadInt),
            (b"i-9223372036854775809e", BadInt),
            (b"99999999999999999999999999:", BadLength),
            (b"x", UnexpectedByte { at: 0 }),
            (b"e", UnexpectedByte { at: 0 }),
            (b"4-spam", UnexpectedByte { at: 1 }),
            (b"di1ei2ee", UnexpectedByte { at: 1 }),
            (b"dl1:aei2ee", UnexpectedByte { at: 1 }),
            (b"d1:ae", UnexpectedByte { at: 4 }),
            (b"l1:ax", UnexpectedByte { at: 4 }),
        ];
        for (buf, want) in cases {
            assert_eq!(err(buf), *want, "input {:?}", String::from_utf8_lossy(buf));
            assert!(want.kind().starts_with("bencode_"));
        }
        assert_eq!(parse_exact(b"i1ei2e", &lim()).unwrap_err(), TrailingBytes);
        assert_eq!(parse_dict(b"li1ee", &lim()).unwrap_err(), NotADict);
        assert_eq!(parse_dict(b"i1e", &lim()).unwrap_err(), NotADict);
        assert_eq!(parse_dict(b"", &lim()).unwrap_err(), Truncated);
        assert_eq!(parse_dict_exact(b"dee", &lim()).unwrap_err(), TrailingBytes);
        assert!(parse_dict_exact(b"de", &lim()).is_ok());

        let tight = BencodeLimits {
            max_depth: 2,
            max_items: 4,
        };
        assert_eq!(parse(b"llleee", &tight).unwrap_err(), TooDeep);
        assert!(parse(b"llee", &tight).is_ok());
        assert_eq!(parse(b"li1ei2ei3ei4ee", &tight).unwrap_err(), TooManyItems);
        assert!(parse(b"li1ei2ei3ee", &tight).is_ok());
        let flat = BencodeLimits {
            max_depth: 0,
            max_items: 1,
        };
        assert_eq!(parse(b"le", &flat).unwrap_err(), TooDeep);
        assert!(parse(b"i1e", &flat).is_ok());

        assert_eq!(
            UnexpectedByte { at: 7 }.to_string(),
            "bencode_unexpected_byte at byte 7"
        );
    }

    #[test]
    fn deep_nesting_is_bounded_without_recursion() {
        let n = 100_000;
        let mut buf = vec![b'l'; n];
        buf.extend_from_slice(&vec![b'e'; n]);
        assert_eq!(err(&buf), BencodeError::TooDeep);
        let mut dicts = Vec::new();
        for _ in 0..n {
            dicts.extend_from_slice(b"d1:a");
        }
        assert_eq!(err(&dicts), BencodeError::TooDeep);

        // Even a limit above the ceiling is clamped, not honoured.
        let huge = BencodeLimits {
            max_depth: u32::MAX,
            max_items: u32::MAX,
        };
        assert_eq!(parse(&buf, &huge).unwrap_err(), BencodeError::TooDeep);

        // Exactly at the limit is fine and walkable.
        let d = BencodeLimits::DEFAULT_MAX_DEPTH as usize;
        let mut ok = vec![b'l'; d];
        ok.extend_from_slice(&vec![b'e'; d]);
        let (mut v, used) = parse(&ok, &lim()).unwrap();
        assert_eq!(used, ok.len());
        let mut depth = 1;
        while let Some(inner) = v.as_list().and_then(|l| l.iter().next()) {
            v = inner;
            depth += 1;
        }
        assert_eq!(depth, d);
    }

    #[test]
    fn huge_integer_and_length_do_not_allocate_or_hang() {
        let mut int = b"i".to_vec();
        int.extend_from_slice(&[b'7'; 10_000]);
        int.push(b'e');
        assert_eq!(err(&int), BencodeError::BadInt);
        let mut len = vec![b'9'; 10_000];
        len.push(b':');
        assert_eq!(err(&len), BencodeError::BadLength);
        assert_eq!(err(b"4294967296:abc"), BencodeError::Truncated);
        assert_eq!(err(b"d1:a1000000:xe"), BencodeError::Truncated);
    }

    /// xorshift64*: deterministic, dependency-free randomness for the fuzz loop.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    /// Walks every element of a value and returns the count, exercising all
    /// accessors (they must never panic on a validated value).
    fn walk(v: Value<'_>) -> usize {
        let mut n = 0;
        let mut todo = vec![v];
        while let Some(v) = todo.pop() {
            n += 1;
            match v {
                Value::List(l) => {
                    assert_eq!(l.raw().first(), Some(&b'l'));
                    todo.extend(l.iter());
                    assert_eq!(l.iter().count(), l.iter_raw().count());
                }
                Value::Dict(d) => {
                    assert_eq!(d.raw().first(), Some(&b'd'));
                    for (k, v) in d.iter() {
                        n += 1;
                        let _ = d.get(k);
                        let _ = d.get_raw(k);
                        todo.push(v);
                    }
                }
                Value::Int(_) | Value::Bytes(_) => {}
            }
        }
        n
    }

    #[test]
    fn random_mutations_never_panic() {
        let seeds: &[&[u8]] = &[
            b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe",
            b"d1:rd2:id20:mnopqrstuvwxyz1234565:nodes52:\
              aaaaaaaaaaaaaaaaaaaa\x01\x02\x03\x04\x05\x06\
              bbbbbbbbbbbbbbbbbbbb\x01\x02\x03\x04\x05\x06e1:t2:aa1:y1:re",
            b"d1:eli201e23:A Generic Error Ocurrede1:t2:aa1:y1:ee",
            b"d8:announce9:http://x/4:infod6:lengthi58e4:name8:test.txt12:piece lengthi32768e6:pieces20:01234567890123456789ee",
            b"li1ei-2el3:abcde2:xyde",
        ];
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let tight = BencodeLimits {
            max_depth: 8,
            max_items: 64,
        };
        let mut n_ok = 0usize;
        for round in 0..200_000 {
            let seed = seeds[round % seeds.len()];
            let mut buf = seed.to_vec();
            for _ in 0..=rng.below(4) {
                match rng.below(6) {
                    0 if !buf.is_empty() => {
                        let i = rng.below(buf.len());
                        buf[i] = rng.next() as u8;
                    }
                    1 if !buf.is_empty() => {
                        let i = rng.below(buf.len());
                        buf[i] = b"ilde:0123456789-"[rng.below(16)];
                    }
                    2 => buf.truncate(rng.below(buf.len() + 1)),
                    3 if !buf.is_empty() => {
                        let i = rng.below(buf.len());
                        buf.remove(i);
                    }
                    4 => {
                        let i = rng.below(buf.len() + 1);
                        buf.insert(i, b"ilde:9"[rng.below(6)]);
                    }
                    _ => {
                        let i = rng.below(buf.len() + 1);
                        let j = rng.below(buf.len() + 1);
                        let (a, b) = (i.min(j), i.max(j));
                        let chunk = buf[a..b].to_vec();
                        buf.splice(a..a, chunk);
                    }
                }
            }
            for limits in [lim(), tight] {
                if let Ok((v, used)) = parse(&buf, &limits) {
                    assert!(used <= buf.len());
                    walk(v);
                    n_ok += 1;
                    // A prefix of exactly `used` bytes parses to the same length.
                    assert_eq!(parse(&buf[..used], &limits).unwrap().1, used);
                }
            }
        }
        assert!(n_ok > 1000, "mutations too destructive: only {n_ok} parsed");
    }

    #[test]
    fn real_torrent_info_hash() {
        use sha1::{Digest, Sha1};
        let Some(dir) = crate::require::corpus(env!("CARGO_MANIFEST_DIR")) else {
            return;
        };
        let dir = dir.join("tcoppi__BittorrentReconstituter");
        // Info-hashes as listed in the corpus MANIFEST.md.
        let cases = [
            ("test.txt.torrent", "2a72ac0b7b1e62e0d4f6ac9ec997138e1d636bcd"),
            ("Code Monkey.mp3.torrent", "12a35a70a0f917e72cca136efe6fb6508f938256"),
            ("lookaway.mp3.torrent", "4aa10386e70174864eaeaa54237d37f93e18458f"),
        ];
        for (file, want) in cases {
            let path = dir.join(file);
            let buf = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let top = parse_dict_exact(&buf, &lim()).unwrap();
            let info = top.get_dict(b"info").unwrap();
            let hash = Sha1::digest(info.raw());
            let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(hex, want, "{file}");
            assert_eq!(top.get_raw(b"info"), Some(info.raw()));
            assert!(info.get_int(b"piece length").unwrap() > 0);
            assert_eq!(info.get_bytes(b"pieces").unwrap().len() % 20, 0);
            assert!(walk(Value::Dict(top)) > 5);
        }
    }
}
