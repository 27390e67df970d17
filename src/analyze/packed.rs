//! Append-mostly series held as bytes: each record written as varint
//! differences from the one before (a peer's progress history, its claims,
//! an announce series of the audit). A point of a progress history was a
//! 16-byte tuple and an audit announce a 64-byte struct, with the vector's
//! spare capacity on top; packed, a `have` point takes about 5 bytes. The
//! series grow with the capture (one point per piece a peer gets), so this
//! is what bulk-1g holds more of than bulk-250m.
//!
//! [`Packed`] holds the bytes alone: appending decodes the series to find
//! the record before (claims and announces: a few per peer or client, and
//! their callers scan them anyway). [`Track`] keeps the newest record
//! unpacked beside them, for a progress history, which the analysis reads
//! and appends to per piece message.

/// A record that packs as a difference from the record before it (`None`
/// for the first).
pub trait Record: Copy {
    fn put(&self, prev: Option<&Self>, buf: &mut Vec<u8>);
    fn get(prev: Option<&Self>, r: &mut Reader<'_>) -> Self;
}

/// Appends `v` as LEB128.
pub fn put_u(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// Appends a signed value zigzag-encoded (small magnitudes, small bytes).
pub fn put_i(buf: &mut Vec<u8>, v: i64) {
    put_u(buf, ((v << 1) ^ (v >> 63)) as u64);
}

/// Reads what [`put_u`] and [`put_i`] wrote. The bytes are our own, so a
/// short buffer is a bug: it reads as zeros rather than panicking.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    pub fn byte(&mut self) -> u8 {
        let b = self.buf.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    pub fn u(&mut self) -> u64 {
        let mut v = 0u64;
        let mut shift = 0u32;
        loop {
            let b = self.byte();
            if shift < 64 {
                v |= u64::from(b & 0x7f) << shift;
            }
            if b & 0x80 == 0 {
                return v;
            }
            shift += 7;
        }
    }

    pub fn i(&mut self) -> i64 {
        let z = self.u();
        ((z >> 1) as i64) ^ -((z & 1) as i64)
    }
}

/// A series of records packed as differences.
#[derive(Debug, Clone)]
pub struct Packed<T> {
    buf: Vec<u8>,
    len: u32,
    _rec: std::marker::PhantomData<T>,
}

impl<T> Default for Packed<T> {
    fn default() -> Self {
        Packed {
            buf: Vec::new(),
            len: 0,
            _rec: std::marker::PhantomData,
        }
    }
}

impl<T: Record> Packed<T> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn from_slice(items: &[T]) -> Self {
        let mut p = Self::new();
        let mut prev = None;
        for &x in items {
            p.push_after(prev.as_ref(), x);
            prev = Some(x);
        }
        p
    }

    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The newest record (decodes the series).
    pub fn last(&self) -> Option<T> {
        self.iter().last()
    }

    pub fn first(&self) -> Option<T> {
        self.iter().next()
    }

    /// Appends `x` (decodes the series for the record before).
    pub fn push(&mut self, x: T) {
        let prev = self.last();
        self.push_after(prev.as_ref(), x);
    }

    /// Appends `x` packed against `prev`, which must be the newest record.
    fn push_after(&mut self, prev: Option<&T>, x: T) {
        x.put(prev, &mut self.buf);
        self.len += 1;
    }

    /// Removes the newest record (decodes the series: for bounded series
    /// at their bound only).
    pub fn pop(&mut self) -> Option<T> {
        let mut v = self.to_vec();
        let x = v.pop();
        *self = Self::from_slice(&v);
        x
    }

    pub fn iter(&self) -> Iter<'_, T> {
        Iter {
            r: Reader { buf: &self.buf, pos: 0 },
            left: self.len,
            prev: None,
        }
    }

    pub fn to_vec(&self) -> Vec<T> {
        let mut v = Vec::with_capacity(self.len());
        v.extend(self.iter());
        v
    }

    /// Bytes held (capacity included).
    #[cfg(test)]
    pub fn held_bytes(&self) -> usize {
        self.buf.capacity()
    }
}

/// A [`Packed`] series with its newest record kept unpacked: appending
/// and reading the newest cost no decoding.
#[derive(Debug, Clone)]
pub struct Track<T> {
    packed: Packed<T>,
    last: Option<T>,
}

impl<T> Default for Track<T> {
    fn default() -> Self {
        Track {
            packed: Packed::default(),
            last: None,
        }
    }
}

impl<T: Record> Track<T> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn from_slice(items: &[T]) -> Self {
        Track {
            packed: Packed::from_slice(items),
            last: items.last().copied(),
        }
    }

    pub fn len(&self) -> usize {
        self.packed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.packed.is_empty()
    }

    pub fn last(&self) -> Option<T> {
        self.last
    }

    pub fn push(&mut self, x: T) {
        self.packed.push_after(self.last.as_ref(), x);
        self.last = Some(x);
    }

    pub fn iter(&self) -> Iter<'_, T> {
        self.packed.iter()
    }

    pub fn to_vec(&self) -> Vec<T> {
        self.packed.to_vec()
    }
}

pub struct Iter<'a, T> {
    r: Reader<'a>,
    left: u32,
    prev: Option<T>,
}

impl<T: Record> Iterator for Iter<'_, T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let x = T::get(self.prev.as_ref(), &mut self.r);
        self.prev = Some(x);
        Some(x)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left as usize, Some(self.left as usize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq)]
    struct P(i64, u64);

    impl Record for P {
        fn put(&self, prev: Option<&Self>, buf: &mut Vec<u8>) {
            let p = prev.copied().unwrap_or(P(0, 0));
            put_i(buf, self.0.wrapping_sub(p.0));
            put_u(buf, self.1);
        }
        fn get(prev: Option<&Self>, r: &mut Reader<'_>) -> Self {
            let p = prev.copied().unwrap_or(P(0, 0));
            P(p.0.wrapping_add(r.i()), r.u())
        }
    }

    #[test]
    fn records_come_back_equal_in_order() {
        let items = [
            P(0, 0),
            P(i64::MAX, u64::MAX),
            P(i64::MIN, 1),
            P(-5, 127),
            P(1_700_000_000_000_000, 128),
            P(1_700_000_000_000_001, 1 << 40),
        ];
        let p = Packed::from_slice(&items);
        assert_eq!(p.len(), items.len());
        assert_eq!(p.to_vec(), items);
        assert_eq!(p.first(), Some(items[0]));
        assert_eq!(p.last(), Some(items[5]));
        let mut q = p.clone();
        assert_eq!(q.pop(), Some(items[5]));
        assert_eq!(q.last(), Some(items[4]));
        assert_eq!(q.to_vec(), items[..5]);
        q.push(items[5]);
        assert_eq!(q.to_vec(), items);
        assert!(Packed::<P>::new().first().is_none());
        let mut t = Track::new();
        for &x in &items {
            t.push(x);
            assert_eq!(t.last(), Some(x));
        }
        assert_eq!(t.to_vec(), items);
        assert_eq!(Track::from_slice(&items).last(), Some(items[5]));
    }

    /// Near points take a few bytes each, not the tuple's 16.
    #[test]
    fn close_points_pack_small() {
        let items: Vec<P> = (0..1000)
            .map(|i| P(1_700_000_000_000_000 + i * 3000, i as u64 % 100))
            .collect();
        let p = Packed::from_slice(&items);
        assert_eq!(p.to_vec(), items);
        // First point 8 + 1 bytes, then 2 (3000 zigzagged) + 1 per point.
        assert!(p.held_bytes() <= 4096, "{}", p.held_bytes());
        assert_eq!(p.buf.len(), 9 + 999 * 3);
    }
}
