//! Text columns built dictionary-encoded as rows arrive. Each column keeps
//! its row group's distinct values (typed: ids as 20 bytes, addresses as
//! `Ip`; or text) in order of first appearance and one 32-bit key per row,
//! so a value repeated over many rows is hashed once as bytes and formatted
//! once as text. When the row group is written, the builder decides from
//! the exact count of distinct values whether the column is written as that
//! dictionary or as plain text ([`DictBuilder::finish`]): the Parquet writer
//! then neither estimates the column's cardinality nor builds a dictionary
//! from the text again.
//!
//! The decision is polars-parquet's own rule with the exact count where it
//! uses an estimate (HyperLogLog): plain when the row group has more than
//! 128 rows and more than 3/4 of them are distinct values (a null counts as
//! one value), else the dictionary. It depends on the rows alone, so the
//! same input gives the same files.

use std::hash::BuildHasher;
use std::sync::Arc;

use polars::prelude::*;
use polars_arrow::array::{Array, DictionaryArray, PrimitiveArray, Utf8Array};
use polars_arrow::datatypes::IntegerType;

use super::columns::{ColumnBuilder, NullFirst, Validity};
use super::typed::ToText;

/// Rows at most in a row group written with a dictionary whatever its
/// values (polars-parquet's threshold).
const ALWAYS_DICT_ROWS: usize = 128;

/// Whether a row group of `rows` rows with `distinct` values (a null
/// counting as one) is written as plain text.
pub fn plain(rows: usize, distinct: usize) -> bool {
    rows > ALWAYS_DICT_ROWS && distinct * 4 > rows * 3
}

/// The distinct values of one column's row group, in order of first
/// appearance: how they are kept, hashed, compared and written as text.
pub trait Distinct: Default + Send + 'static {
    type Value: ?Sized;
    /// Adds `v` as value number [`Distinct::len`].
    fn add(&mut self, v: &Self::Value);
    /// Whether value `i` is `v`.
    fn is(&self, i: usize, v: &Self::Value) -> bool;
    fn hash(&self, s: &foldhash::fast::RandomState, v: &Self::Value) -> u64;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Heap bytes held: the capacities of its buffers.
    fn heap(&self) -> usize;
    /// The values as text, in order; `self` is left empty.
    fn take_text(&mut self) -> Utf8Array<i64>;
}

/// Typed values, made text only when the row group is written.
pub struct Typed<K>(Vec<K>);

impl<K> Default for Typed<K> {
    fn default() -> Self {
        Typed(Vec::new())
    }
}

/// A typed value a column keeps as its dictionary: compared with `==`,
/// hashed by [`DictKey::dict_hash`].
pub trait DictKey: Eq + Clone + ToText + Send + 'static {
    /// The value's hash under `s` (seeded per process). Every bit of the
    /// value goes through `s`'s keyed mixing, so no input can choose values
    /// that collide; values that are equal hash equally.
    fn dict_hash(&self, s: &foldhash::fast::RandomState) -> u64;
    /// `self == other`, for a type whose `==` can be made cheaper.
    #[inline]
    fn dict_eq(&self, other: &Self) -> bool {
        self == other
    }
}

impl<K: DictKey> Distinct for Typed<K> {
    type Value = K;
    #[inline]
    fn add(&mut self, v: &K) {
        self.0.push(v.clone());
    }
    #[inline]
    fn is(&self, i: usize, v: &K) -> bool {
        self.0.get(i).is_some_and(|x| x.dict_eq(v))
    }
    #[inline]
    fn hash(&self, s: &foldhash::fast::RandomState, v: &K) -> u64 {
        v.dict_hash(s)
    }
    fn len(&self) -> usize {
        self.0.len()
    }
    fn heap(&self) -> usize {
        self.0.capacity() * std::mem::size_of::<K>()
    }
    fn take_text(&mut self) -> Utf8Array<i64> {
        let values = std::mem::take(&mut self.0);
        let mut offsets = Vec::with_capacity(values.len() + 1);
        let mut data = Vec::new();
        offsets.push(0i64);
        for v in &values {
            v.push_text(&mut data);
            // A buffer is never longer than isize::MAX bytes.
            offsets.push(data.len() as i64);
        }
        text_array(offsets, data)
    }
}

fn text_array(offsets: Vec<i64>, data: Vec<u8>) -> Utf8Array<i64> {
    // Offsets made above: starting at 0, never decreasing; the text is
    // whole values of UTF-8 (`str`s, or ASCII written by `ToText`).
    Utf8Array::<i64>::try_new(
        ArrowDataType::LargeUtf8,
        offsets.try_into().unwrap_or_default(),
        data.into(),
        None,
    )
    .unwrap_or_else(|_| Utf8Array::new_empty(ArrowDataType::LargeUtf8))
}

/// `a == b`, short slices (capture and client names, methods) compared
/// in two overlapping words rather than by a call to `memcmp`.
#[inline]
pub(super) fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let word = |x: &[u8], at: usize| {
        x.get(at..at + 8)
            .and_then(|w| w.try_into().ok())
            .map(u64::from_le_bytes)
    };
    let half = |x: &[u8], at: usize| {
        x.get(at..at + 4)
            .and_then(|w| w.try_into().ok())
            .map(u32::from_le_bytes)
    };
    match n {
        8..=16 => word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8),
        4..=7 => half(a, 0) == half(b, 0) && half(a, n - 4) == half(b, n - 4),
        _ => a == b,
    }
}

/// Text values, one after the other.
#[derive(Default)]
pub struct Texts {
    /// End of every value (its start is the previous end, or 0).
    ends: Vec<usize>,
    data: Vec<u8>,
}

impl Texts {
    #[inline]
    fn get(&self, i: usize) -> Option<&[u8]> {
        let end = *self.ends.get(i)?;
        let start = match i.checked_sub(1) {
            Some(p) => self.ends.get(p).copied().unwrap_or(0),
            None => 0,
        };
        self.data.get(start..end)
    }
}

impl Distinct for Texts {
    type Value = str;
    #[inline]
    fn add(&mut self, v: &str) {
        self.data.extend_from_slice(v.as_bytes());
        self.ends.push(self.data.len());
    }
    #[inline]
    fn is(&self, i: usize, v: &str) -> bool {
        self.get(i).is_some_and(|x| same_bytes(x, v.as_bytes()))
    }
    #[inline]
    fn hash(&self, s: &foldhash::fast::RandomState, v: &str) -> u64 {
        s.hash_one(v)
    }
    fn len(&self) -> usize {
        self.ends.len()
    }
    fn heap(&self) -> usize {
        self.ends.capacity() * std::mem::size_of::<usize>() + self.data.capacity()
    }
    fn take_text(&mut self) -> Utf8Array<i64> {
        let ends = std::mem::take(&mut self.ends);
        let mut offsets = Vec::with_capacity(ends.len() + 1);
        offsets.push(0i64);
        // A buffer is never longer than isize::MAX bytes.
        offsets.extend(ends.iter().map(|&e| e as i64));
        text_array(offsets, std::mem::take(&mut self.data))
    }
}

/// An empty slot of [`DictBuilder`]'s index.
const EMPTY: u64 = u64::MAX;

/// A text column (Arrow `large_string`) built as a dictionary: see the
/// module's documentation.
pub struct DictBuilder<S: Distinct> {
    /// One per row: the index of its value in `distinct` (for a null, the
    /// previous row's key, or 0 while only nulls came).
    keys: NullFirst<u32>,
    validity: Validity,
    distinct: S,
    /// Open addressing, linear probing: each slot is the index of a value
    /// (high 32 bits) and the low 32 bits of its hash, or [`EMPTY`]; at
    /// most half of the slots are used.
    slots: Vec<u64>,
    /// Hashes with a per-process random seed, so that no input can choose
    /// values that collide (the order of the values never depends on it).
    hasher: foldhash::fast::RandomState,
}

impl<S: Distinct> Default for DictBuilder<S> {
    fn default() -> Self {
        DictBuilder {
            keys: NullFirst::default(),
            validity: Validity::default(),
            distinct: S::default(),
            slots: Vec::new(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }
}

impl<S: Distinct> DictBuilder<S> {
    /// The key of `v`, added to the values when it is new.
    #[inline]
    fn key(&mut self, v: &S::Value) -> u32 {
        // The previous row's value again (a capture name, a constant): one
        // comparison, no hash.
        if let Some(last) = self.keys.last() {
            if self.distinct.is(last as usize, v) {
                return last;
            }
        }
        if self.distinct.len() * 2 >= self.slots.len() {
            self.grow();
        }
        let h = self.distinct.hash(&self.hasher, v) as u32;
        let mask = self.slots.len() - 1;
        let mut i = h as usize & mask;
        loop {
            let s = self.slots[i];
            if s == EMPTY {
                // Row groups hold far fewer than 2^32 rows.
                let k = self.distinct.len() as u32;
                self.distinct.add(v);
                self.slots[i] = (u64::from(k) << 32) | u64::from(h);
                return k;
            }
            if s as u32 == h && self.distinct.is((s >> 32) as usize, v) {
                return (s >> 32) as u32;
            }
            i = (i + 1) & mask;
        }
    }

    /// Doubles the index (64 slots at first), placing every value again
    /// by the hash bits its slot kept.
    fn grow(&mut self) {
        let n = (self.slots.len() * 2).max(64);
        let old = std::mem::replace(&mut self.slots, vec![EMPTY; n]);
        let mask = n - 1;
        for s in old.into_iter().filter(|&s| s != EMPTY) {
            let mut i = s as u32 as usize & mask;
            while self.slots[i] != EMPTY {
                i = (i + 1) & mask;
            }
            self.slots[i] = s;
        }
    }

    #[inline]
    pub fn push_value(&mut self, v: &S::Value) {
        let k = self.key(v);
        self.keys.push(k);
    }

    // Always inlined: see `PrimBuilder::push_opt`.
    #[inline(always)]
    pub fn push_opt(&mut self, v: Option<&S::Value>) {
        self.validity.push(self.keys.len(), v.is_some());
        match v {
            Some(v) => self.push_value(v),
            // The key of a null is never read; the previous row's key
            // keeps the "same as the previous row" check useful.
            None => {
                let k = self.keys.last().unwrap_or(0);
                self.keys.push_null(k);
            }
        }
    }

    fn heap(&self) -> usize {
        self.keys.bytes() + self.validity.bytes() + self.distinct.heap() + self.slots.capacity() * 8
    }

    /// The rows pushed since the last call: a dictionary array of
    /// `large_string` values (the Parquet writer writes it as it is), or,
    /// when [`plain`] says so, the rows' text (a `large_string` array the
    /// writer is told to write plain, see `writer::write_group`).
    fn array(&mut self) -> PolarsResult<Box<dyn Array>> {
        let keys = self.keys.take();
        let validity = self.validity.take();
        self.slots = Vec::new();
        let has_null = validity.as_ref().is_some_and(|v| v.unset_bits() > 0);
        let values = self.distinct.take_text();
        if plain(keys.len(), values.len() + usize::from(has_null)) {
            if values.len() == keys.len() {
                // A new value in every row (community ids): the keys are
                // 0, 1, 2, … and the values in order are the rows' text.
                // (A null repeats a key, so there is none.)
                return Ok(values.with_validity(validity).boxed());
            }
            let mut offsets = Vec::with_capacity(keys.len() + 1);
            offsets.push(0i64);
            let mut data = Vec::with_capacity(values.values().len().max(keys.len() * 8));
            for (row, &k) in keys.iter().enumerate() {
                if validity.as_ref().is_none_or(|v| v.get_bit(row)) {
                    if let Some(s) = values.get(k as usize) {
                        data.extend_from_slice(s.as_bytes());
                    }
                }
                offsets.push(data.len() as i64);
            }
            return Ok(Utf8Array::<i64>::try_new(
                ArrowDataType::LargeUtf8,
                offsets.try_into()?,
                data.into(),
                validity,
            )?
            .boxed());
        }
        let keys = PrimitiveArray::<u32>::try_new(ArrowDataType::UInt32, keys.into(), validity)?;
        let dict = ArrowDataType::Dictionary(IntegerType::UInt32, Box::new(ArrowDataType::LargeUtf8), false);
        Ok(DictionaryArray::<u32>::try_new(dict, keys, values.boxed())?.boxed())
    }
}

/// Implements [`ColumnBuilder`] of a value type and its `Option` for a
/// [`DictBuilder`]: `$as` gives the value the builder keeps.
macro_rules! dict_builder {
    ($store:ty, $v:ty, |$x:ident| $as:expr) => {
        impl ColumnBuilder<$v> for DictBuilder<$store> {
            #[inline]
            fn push(&mut self, v: &$v) {
                let $x = v;
                self.push_value($as);
            }
            fn bytes(&self) -> usize {
                self.heap()
            }
            fn finish(&mut self, _name: &str, _dtype: &ArrowDataType) -> PolarsResult<Box<dyn Array>> {
                self.array()
            }
        }
        impl ColumnBuilder<Option<$v>> for DictBuilder<$store> {
            #[inline]
            fn push(&mut self, v: &Option<$v>) {
                self.push_opt(v.as_ref().map(|$x| $as));
            }
            fn bytes(&self) -> usize {
                self.heap()
            }
            fn finish(&mut self, _name: &str, _dtype: &ArrowDataType) -> PolarsResult<Box<dyn Array>> {
                self.array()
            }
        }
    };
}

dict_builder!(Texts, String, |s| s.as_str());

dict_builder!(Texts, Arc<str>, |s| &**s);
dict_builder!(Texts, std::borrow::Cow<'static, str>, |s| &**s);

impl<K: DictKey> ColumnBuilder<K> for DictBuilder<Typed<K>> {
    #[inline]
    fn push(&mut self, v: &K) {
        self.push_value(v);
    }
    fn bytes(&self) -> usize {
        self.heap()
    }
    fn finish(&mut self, _name: &str, _dtype: &ArrowDataType) -> PolarsResult<Box<dyn Array>> {
        self.array()
    }
}

impl<K: DictKey> ColumnBuilder<Option<K>> for DictBuilder<Typed<K>> {
    #[inline]
    fn push(&mut self, v: &Option<K>) {
        self.push_opt(v.as_ref());
    }
    fn bytes(&self) -> usize {
        self.heap()
    }
    fn finish(&mut self, _name: &str, _dtype: &ArrowDataType) -> PolarsResult<Box<dyn Array>> {
        self.array()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::columns::names_as_text;
    use crate::sink::typed::Ip;

    fn build<V, B: ColumnBuilder<V>>(values: &[V]) -> Box<dyn Array> {
        let mut b = B::default();
        for v in values {
            b.push(v);
        }
        let a = b.finish("c", &ArrowDataType::LargeUtf8).unwrap();
        assert_eq!(b.bytes(), 0, "finish hands the buffers over");
        a
    }

    /// The rows' text, whether the array is a dictionary or plain.
    fn text(a: &dyn Array) -> Vec<Option<String>> {
        let t = match a.dtype() {
            ArrowDataType::Dictionary(..) => names_as_text(a).unwrap(),
            _ => a.to_boxed(),
        };
        let t = t.as_any().downcast_ref::<Utf8Array<i64>>().unwrap();
        t.iter().map(|s| s.map(str::to_string)).collect()
    }

    fn is_dict(a: &dyn Array) -> bool {
        matches!(a.dtype(), ArrowDataType::Dictionary(..))
    }

    #[test]
    fn a_dictionary_in_order_of_first_appearance_as_the_cast_makes_it() {
        let v: Vec<Option<String>> = ["b", "a", "", "b", "c", "a"]
            .iter()
            .map(|s| Some(s.to_string()))
            .chain([None, Some("c".into()), None])
            .collect();
        let c = build::<Option<String>, DictBuilder<Texts>>(&v);
        assert!(is_dict(&*c));
        assert_eq!(text(&*c), v);
        // polars' own cast of the text to a dictionary gives the same array.
        let plain: Utf8Array<i64> = v.iter().map(|s| s.as_deref()).collect();
        let cast = polars::polars_compute::cast::cast(&plain, c.dtype(), Default::default()).unwrap();
        assert_eq!(text(&*cast), v);
        let (a, b) = (
            c.as_any().downcast_ref::<DictionaryArray<u32>>().unwrap(),
            cast.as_any().downcast_ref::<DictionaryArray<u32>>().unwrap(),
        );
        assert_eq!(a.values(), b.values());
        let valid_keys = |d: &DictionaryArray<u32>| d.keys().iter().map(|k| k.copied()).collect::<Vec<_>>();
        assert_eq!(valid_keys(a), valid_keys(b));
        assert_eq!(
            valid_keys(a),
            [
                Some(0),
                Some(1),
                Some(2),
                Some(0),
                Some(3),
                Some(1),
                None,
                Some(3),
                None
            ]
        );
    }

    #[test]
    fn plain_past_three_quarters_distinct_above_128_rows() {
        let ids = |n: usize, distinct: usize| -> Vec<[u8; 20]> {
            (0..n)
                .map(|i| std::array::from_fn(|j| (i % distinct + j) as u8))
                .collect()
        };
        // 128 rows, all distinct: still a dictionary.
        let c = build::<[u8; 20], DictBuilder<Typed<[u8; 20]>>>(&ids(128, 128));
        assert!(is_dict(&*c));
        // 129 distinct of 129: plain; 200 rows, 150 distinct (3/4): a
        // dictionary, 151: plain.
        for (n, d, dict) in [(129, 129, false), (200, 150, true), (200, 151, false), (1000, 10, true)] {
            let v = ids(n, d);
            let c = build::<[u8; 20], DictBuilder<Typed<[u8; 20]>>>(&v);
            assert_eq!(is_dict(&*c), dict, "{n} rows, {d} distinct");
            let want: Vec<Option<String>> = v
                .iter()
                .map(|id| {
                    let mut s = Vec::new();
                    crate::sink::typed::push_hex20(&mut s, id);
                    Some(String::from_utf8(s).unwrap())
                })
                .collect();
            assert_eq!(text(&*c), want);
        }
        // A null counts as one value: 150 distinct and nulls in 200 rows.
        let v: Vec<Option<Ip>> = (0..200u32)
            .map(|i| (i < 150).then(|| Ip(std::net::IpAddr::from(i.to_be_bytes()))))
            .collect();
        let c = build::<Option<Ip>, DictBuilder<Typed<Ip>>>(&v);
        assert!(!is_dict(&*c));
        let want: Vec<Option<String>> = v.iter().map(|ip| ip.map(|ip| ip.to_string())).collect();
        assert_eq!(text(&*c), want);
        assert_eq!(c.null_count(), 50);
        let v: Vec<Option<Ip>> = v.iter().enumerate().map(|(i, ip)| ip.filter(|_| i != 149)).collect();
        let c = build::<Option<Ip>, DictBuilder<Typed<Ip>>>(&v);
        assert!(is_dict(&*c), "149 values and null in 200 rows");
        let want: Vec<Option<String>> = v.iter().map(|ip| ip.map(|ip| ip.to_string())).collect();
        assert_eq!(text(&*c), want);
    }

    #[test]
    fn keys_stay_right_as_the_index_grows() {
        // 20,000 rows of 5,000 values in a scattered order, twice over
        // (the builder is reused after finish).
        let mut b = DictBuilder::<Texts>::default();
        for round in 0..2u64 {
            let rows: Vec<String> = (0..20_000u64)
                .map(|i| format!("v{}", (i * 7919 + round) % 5000))
                .collect();
            for r in &rows {
                ColumnBuilder::<String>::push(&mut b, r);
            }
            assert!(ColumnBuilder::<String>::bytes(&b) > 0);
            let c = ColumnBuilder::<String>::finish(&mut b, "c", &ArrowDataType::LargeUtf8).unwrap();
            assert!(is_dict(&*c));
            let d = c.as_any().downcast_ref::<DictionaryArray<u32>>().unwrap();
            assert_eq!(d.values().len(), 5000);
            let mut first = std::collections::HashMap::new();
            for (i, r) in rows.iter().enumerate() {
                let n = first.len() as u32;
                let k = *first.entry(r.as_str()).or_insert(n);
                assert_eq!(d.keys().value(i), k, "row {i}");
            }
            assert_eq!(text(&*c), rows.into_iter().map(Some).collect::<Vec<_>>());
        }
        // An all-null column: an empty dictionary.
        let c = build::<Option<Arc<str>>, DictBuilder<Texts>>(&[None, None, None]);
        assert!(is_dict(&*c));
        assert_eq!(text(&*c), [None, None, None]);
    }

    #[test]
    fn leading_nulls_keep_their_keys_and_the_counted_bytes() {
        // 300 nulls, then values and nulls: the keys under the nulls are 0
        // before the first value and the previous row's after it (what was
        // pushed for them), and the budget's figure for the keys is that of
        // a `Vec` that got all of them pushed.
        let rows: Vec<Option<String>> = (0..1000u32)
            .map(|i| (i >= 300 && i % 4 != 1).then(|| format!("v{}", i % 7)))
            .collect();
        let mut b = DictBuilder::<Texts>::default();
        let mut want_keys: Vec<u32> = Vec::new();
        let mut first = std::collections::HashMap::new();
        for r in &rows {
            ColumnBuilder::<Option<String>>::push(&mut b, r);
            let k = match r {
                Some(s) => {
                    let n = first.len() as u32;
                    *first.entry(s.clone()).or_insert(n)
                }
                None => want_keys.last().copied().unwrap_or(0),
            };
            want_keys.push(k);
            assert_eq!(b.keys.bytes(), want_keys.capacity() * 4, "row {}", want_keys.len());
        }
        let c = ColumnBuilder::<Option<String>>::finish(&mut b, "c", &ArrowDataType::LargeUtf8).unwrap();
        assert!(is_dict(&*c));
        assert_eq!(text(&*c), rows);
        let d = c.as_any().downcast_ref::<DictionaryArray<u32>>().unwrap();
        assert_eq!(d.keys().values().as_slice(), want_keys.as_slice());
        assert_eq!(d.values().len(), 7);
    }

    /// Keys and values of a dictionary array.
    fn parts(a: &dyn Array) -> (Vec<Option<u32>>, Vec<String>) {
        let d = a.as_any().downcast_ref::<DictionaryArray<u32>>().unwrap();
        let v = d.values().as_any().downcast_ref::<Utf8Array<i64>>().unwrap();
        (
            d.keys().iter().map(|k| k.copied()).collect(),
            v.values_iter().map(str::to_string).collect(),
        )
    }

    #[test]
    fn short_comparisons_see_every_byte() {
        use crate::sink::typed::ShortBytes;
        for n in 0..=24usize {
            let a: Vec<u8> = (0..n as u8).map(|i| i.wrapping_mul(31) ^ 0x5a).collect();
            assert!(same_bytes(&a, &a.clone()), "{n}");
            assert!(ShortBytes::new(&a).dict_eq(&ShortBytes::new(&a)), "{n}");
            for i in 0..n {
                let mut b = a.clone();
                b[i] ^= 0x80;
                assert!(!same_bytes(&a, &b), "{n} at {i}");
                assert!(!ShortBytes::new(&a).dict_eq(&ShortBytes::new(&b)), "{n} at {i}");
            }
            // One byte longer or shorter.
            let mut c = a.clone();
            c.push(0);
            assert!(!same_bytes(&a, &c) && !same_bytes(&c, &a), "{n}");
            assert!(!ShortBytes::new(&a).dict_eq(&ShortBytes::new(&c)), "{n}");
        }
    }

    #[test]
    fn every_bit_of_a_typed_value_is_hashed() {
        use crate::sink::typed::ShortBytes;
        let s = foldhash::fast::RandomState::default();
        // Ids that differ in one byte only, at each of the 20 places; the
        // same id hashes the same.
        let id: [u8; 20] = std::array::from_fn(|i| (i * 37) as u8);
        assert_eq!(id.dict_hash(&s), { id }.dict_hash(&s));
        let mut hashes = vec![id.dict_hash(&s)];
        for i in 0..20 {
            for bit in [0x01u8, 0x80] {
                let mut x = id;
                x[i] ^= bit;
                hashes.push(x.dict_hash(&s));
            }
        }
        let ips = [
            "10.0.0.1",
            "10.0.0.2",
            "11.0.0.1",
            "::1:2:3",
            "2001:db8::1",
            "2001:db8::1:0",
        ];
        hashes.extend(ips.iter().map(|ip| Ip(ip.parse().unwrap()).dict_hash(&s)));
        // Short bytes: the length counts (a trailing zero byte is a value).
        for b in [
            &[][..],
            &[0],
            &[0, 0],
            &[0xab, 0x01],
            &[0xab, 0x02],
            &[7; 14],
            &[7; 15],
            &[7; 16],
        ] {
            hashes.push(ShortBytes::new(b).dict_hash(&s));
        }
        let n = hashes.len();
        hashes.sort_unstable();
        hashes.dedup();
        assert_eq!(hashes.len(), n, "distinct values hash apart");
        assert_eq!(n, 1 + 40 + 6 + 8);
        // The same number as IPv4 and IPv6 hashes alike (`==` tells them
        // apart: two values in the dictionary).
        let (v4, v6) = (Ip("10.0.0.1".parse().unwrap()), Ip("::a00:1".parse().unwrap()));
        assert_eq!(v4.dict_hash(&s), v6.dict_hash(&s));
        let c = build::<Ip, DictBuilder<Typed<Ip>>>(&[v4, v6, v4, v6]);
        assert_eq!(parts(&*c).0, [Some(0), Some(1), Some(0), Some(1)]);
        assert_eq!(
            text(&*c),
            ["10.0.0.1", "::a00:1", "10.0.0.1", "::a00:1"].map(|s| Some(s.to_string()))
        );
    }
}
