//! Parquet pages of the columns the builders made, encoded here instead of
//! by polars-parquet: a text column built as a dictionary ([`super::dict`],
//! [`super::columns::NameBuilder`], the `sensor` column), an integer or
//! timestamp column (written as a dictionary of its distinct values when
//! polars-parquet would, or DELTA_BINARY_PACKED: [`delta_page`]), an
//! integer column of nulls only. The pages are
//! byte for byte what polars-parquet 0.55 makes of the same arrays (its
//! dictionary page, its one data page of keys, the same statistics in the
//! page header; tests below compare them), so the files do not change; what
//! changes is the cost: the keys and definition levels go through
//! [`hybrid`], a port of polars-parquet's RLE/bit-packed hybrid encoder
//! that reads slices and skips over runs instead of pulling one value at a
//! time through iterators into a 32 KiB buffer it zeroes on every call, and
//! an integer column's dictionary is made in one pass over a lookup table
//! (a hash table when its values span more than 65,536).
//!
//! Anything else (floats, booleans, plain text, lists; a dictionary whose
//! statistics polars would truncate; a page polars would split) is left to
//! polars-parquet: [`fast_pages`] says so.

use polars::prelude::ArrowDataType;
use polars_arrow::array::{Array, DictionaryArray, ListArray, PrimitiveArray, Utf8Array};
use polars_arrow::bitmap::Bitmap;
use polars_parquet::parquet::metadata::Descriptor;
use polars_parquet::parquet::page::{DataPage, DataPageHeader, DataPageHeaderV1, DictPage, Page};
use polars_parquet::parquet::schema::types::PrimitiveType;
use polars_parquet::parquet::schema::Repetition;
use polars_parquet::parquet::statistics::ParquetStatistics;
use polars_parquet::parquet::CowBuffer;
use polars_parquet::write::{Encoding, ParquetType, Version, WriteOptions};

/// What to do with a column.
pub enum Pages {
    /// Its pages, made here: a dictionary page, then one data page.
    Made(Box<[Page; 2]>),
    /// Write it plain (polars-parquet's choice for an integer column with
    /// too many distinct values, made here on the exact count it uses).
    Plain,
    /// Leave it to polars-parquet.
    Polars,
}

/// Values per literal run at most (polars-parquet's `MAX_VALUES_PER_LITERAL_RUN`).
const MAX_LITERAL: usize = 8 * 1024;

/// polars-parquet's default largest data page: a column chunk whose keys
/// take more is split into several pages, which is left to it.
const PAGE_BYTES: usize = 1024 * 1024;

/// Values an RLE/bit-packed hybrid run is made of: dictionary keys (as
/// many bits as the largest needs) or definition levels (one bit).
trait Levels {
    type T: Copy + PartialEq + Default;
    fn len(&self) -> usize;
    fn get(&self, i: usize) -> Self::T;
    /// The first index from `i` on whose value is not `v` (or the length).
    fn run_end(&self, i: usize, v: Self::T) -> usize;
    /// A bit-packed run of the `n` values from `start`.
    fn bitpack(&self, out: &mut Vec<u8>, start: usize, n: usize, bits: u32);
    /// A repeated run.
    fn rle(out: &mut Vec<u8>, run: usize, v: Self::T, bits: u32);
}

fn uleb(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn ceil8(n: usize) -> usize {
    n.div_ceil(8)
}

/// Packs 32 values of `bits` bits, least significant bit first, as
/// `4 * bits` bytes onto `out` (as polars-parquet's `encode_pack`).
#[inline]
fn pack32(block: &[u32], bits: u32, out: &mut Vec<u8>) {
    let mut acc: u64 = 0;
    let mut filled = 0u32;
    for &v in block {
        acc |= u64::from(v) << filled;
        filled += bits;
        if filled >= 32 {
            out.extend_from_slice(&(acc as u32).to_le_bytes());
            acc >>= 32;
            filled -= 32;
        }
    }
}

/// Calls `f` with every value whose validity bit is set (every value
/// without a validity), in order, a validity byte at a time.
#[inline]
fn each_valid<T: Copy>(vals: &[T], validity: Option<&Bitmap>, mut f: impl FnMut(T)) {
    let Some(v) = validity else {
        vals.iter().for_each(|&x| f(x));
        return;
    };
    let (bytes, offset, len) = v.as_slice();
    if offset != 0 || len != vals.len() {
        vals.iter().zip(v.iter()).filter(|(_, ok)| *ok).for_each(|(&x, _)| f(x));
        return;
    }
    let mut chunks = vals.chunks_exact(8);
    for (c, &b) in chunks.by_ref().zip(bytes) {
        match b {
            0 => {}
            0xff => c.iter().for_each(|&x| f(x)),
            _ => {
                for (k, &x) in c.iter().enumerate() {
                    if b & (1 << k) != 0 {
                        f(x);
                    }
                }
            }
        }
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let b = bytes[vals.len() / 8];
        for (k, &x) in rest.iter().enumerate() {
            if b & (1 << k) != 0 {
                f(x);
            }
        }
    }
}

/// Dictionary keys.
struct Keys<'a>(&'a [u32]);

impl Levels for Keys<'_> {
    type T = u32;
    fn len(&self) -> usize {
        self.0.len()
    }
    #[inline]
    fn get(&self, i: usize) -> u32 {
        self.0[i]
    }
    #[inline]
    fn run_end(&self, i: usize, v: u32) -> usize {
        let rest = &self.0[i.min(self.0.len())..];
        i + rest.iter().position(|&x| x != v).unwrap_or(rest.len())
    }
    fn bitpack(&self, out: &mut Vec<u8>, start: usize, n: usize, bits: u32) {
        uleb(out, ((ceil8(n) as u64) << 1) | 1);
        let vals = &self.0[start..start + n];
        out.reserve(ceil8(n) * bits as usize + 4 * bits as usize);
        let chunks = vals.chunks_exact(32);
        let rest = chunks.remainder();
        let mut block = [0u32; 32];
        if let Some(last) = chunks.clone().last() {
            block.copy_from_slice(last);
        }
        for c in chunks {
            pack32(c, bits, out);
        }
        if !rest.is_empty() {
            // As polars-parquet: the block keeps the previous chunk's values
            // past the remainder (zeros when there was none), and whole
            // bytes of bits are written, some of them stale (readers stop at
            // the column's length).
            block[..rest.len()].copy_from_slice(rest);
            let at = out.len();
            pack32(&block, bits, out);
            out.truncate(at + ceil8(rest.len()) * bits as usize);
        }
    }
    fn rle(out: &mut Vec<u8>, run: usize, v: u32, bits: u32) {
        uleb(out, (run as u64) << 1);
        out.extend_from_slice(&v.to_le_bytes()[..ceil8(bits as usize)]);
    }
}

/// Definition levels of an optional flat column: its validity bits.
struct Bits<'a> {
    bytes: &'a [u8],
    offset: usize,
    len: usize,
}

impl Levels for Bits<'_> {
    type T = bool;
    fn len(&self) -> usize {
        self.len
    }
    #[inline]
    fn get(&self, i: usize) -> bool {
        let j = self.offset + i;
        self.bytes[j >> 3] & (1 << (j & 7)) != 0
    }
    #[inline]
    fn run_end(&self, mut i: usize, v: bool) -> usize {
        let whole = if v { 0xff } else { 0 };
        while i < self.len {
            let j = self.offset + i;
            if j & 7 == 0 && i + 8 <= self.len && self.bytes[j >> 3] == whole {
                i += 8;
                continue;
            }
            if self.get(i) != v {
                return i;
            }
            i += 1;
        }
        self.len
    }
    fn bitpack(&self, out: &mut Vec<u8>, start: usize, n: usize, _bits: u32) {
        uleb(out, ((ceil8(n) as u64) << 1) | 1);
        // Whole bytes of 8 values: the bitmap's own bytes (least
        // significant bit first, as the levels are packed), shifted when
        // the run does not start on a byte.
        let first = self.offset + start;
        let (at, shift, whole) = (first >> 3, (first & 7) as u32, n / 8);
        if shift == 0 {
            out.extend_from_slice(&self.bytes[at..at + whole]);
        } else {
            // The run's last whole byte ends inside byte `at + whole`.
            out.extend(
                self.bytes[at..=at + whole]
                    .windows(2)
                    .map(|w| (w[0] >> shift) | (w[1] << (8 - shift))),
            );
        }
        if n & 7 != 0 {
            let mut byte = 0u8;
            for k in whole * 8..n {
                byte |= u8::from(self.get(start + k)) << (k & 7);
            }
            out.push(byte);
        }
    }
    fn rle(out: &mut Vec<u8>, run: usize, v: bool, _bits: u32) {
        uleb(out, (run as u64) << 1);
        out.push(u8::from(v));
    }
}

/// The RLE/bit-packed hybrid encoding of `values`, decided exactly as
/// polars-parquet's `hybrid_rle::encode` decides it (a run of more than 8
/// equal values is repeated, after the literal values before it are
/// padded to a multiple of 8 with some of the run's; literal runs of at
/// most 8 Ki values), so the bytes are the same.
fn hybrid<L: Levels>(out: &mut Vec<u8>, values: &L, bits: u32) {
    let n = values.len();
    let mut repeats = 0usize;
    let mut prev = L::T::default();
    // polars-parquet buffers the values of the current literal run; they
    // are the input's from `start` on, `buffered` of them.
    let mut start = 0usize;
    let mut buffered = 0usize;
    let mut literal = 0usize;
    let mut i = 0usize;
    while i < n {
        let v = values.get(i);
        if v == prev {
            repeats += 1;
            if repeats >= 8 {
                if repeats > 8 {
                    // Inside a run long enough to repeat: its values are
                    // not buffered, skip to its end.
                    let end = values.run_end(i + 1, v);
                    repeats += end - (i + 1);
                    i = end;
                    continue;
                }
                let pad = (8 - literal % 8) % 8;
                repeats -= pad;
                literal += pad;
            }
        } else if repeats > 8 {
            if literal > 0 {
                values.bitpack(out, start, literal, bits);
                literal = 0;
            }
            L::rle(out, repeats, prev, bits);
            repeats = 1;
            buffered = 0;
            start = i;
        } else {
            literal = buffered;
            repeats = 1;
        }
        if buffered == MAX_LITERAL {
            values.bitpack(out, start, MAX_LITERAL, bits);
            repeats = 1;
            buffered = 0;
            literal = 0;
            start = i;
        }
        prev = v;
        buffered += 1;
        i += 1;
    }
    if repeats <= 8 {
        literal = buffered;
    }
    if literal > 0 {
        values.bitpack(out, start, literal, bits);
    }
    if repeats > 8 {
        L::rle(out, repeats, prev, bits);
    }
}

fn bit_width(max: u32) -> u32 {
    32 - max.leading_zeros()
}

/// Appends `values` PLAIN-encoded as byte arrays (a 4-byte length, then
/// the bytes) to `out`; returns the smallest and the largest of them (byte
/// order), None when there is none.
fn plain_byte_arrays<'a>(
    out: &mut Vec<u8>,
    values: impl Iterator<Item = &'a [u8]>,
) -> (Option<&'a [u8]>, Option<&'a [u8]>) {
    let (mut min, mut max): (Option<&[u8]>, Option<&[u8]>) = (None, None);
    for b in values {
        out.extend_from_slice(&(b.len() as u32).to_le_bytes());
        out.extend_from_slice(b);
        if min.is_none_or(|m| b < m) {
            min = Some(b);
        }
        if max.is_none_or(|m| b > m) {
            max = Some(b);
        }
    }
    (min, max)
}

/// The values of a dictionary page and its statistics' bounds.
struct DictValues {
    /// PLAIN-encoded values.
    page: Vec<u8>,
    n: usize,
    /// Smallest and largest value, PLAIN-encoded without a length
    /// (statistics), when there is a value.
    min: Option<Vec<u8>>,
    max: Option<Vec<u8>>,
}

impl DictValues {
    fn text(values: &Utf8Array<i64>) -> Self {
        let mut page = Vec::with_capacity(values.values().len() + 4 * values.len());
        let (min, max) = plain_byte_arrays(&mut page, values.values_iter().map(str::as_bytes));
        DictValues {
            page,
            n: values.len(),
            min: min.map(<[u8]>::to_vec),
            max: max.map(<[u8]>::to_vec),
        }
    }
}

/// The pages of `array` made here, plain, or left to polars-parquet (see
/// [`Pages`]). `array` is one flat column of a row group, as the builders
/// made it (a validity without a null already dropped); `enc` its encoding.
pub fn fast_pages(array: &dyn Array, type_: &ParquetType, options: WriteOptions, enc: &[Encoding]) -> Pages {
    let ParquetType::PrimitiveType(leaf) = type_ else {
        return Pages::Polars;
    };
    if !matches!(enc, [Encoding::RleDictionary])
        || options.version != Version::V1
        || options.data_page_size.is_some_and(|s| s != PAGE_BYTES)
        || !options.has_statistics()
        // Several pages of keys (see `row_slice_ranges`).
        || array.len() * 6 > PAGE_BYTES
        || array.is_empty()
    {
        return Pages::Polars;
    }
    let made = match array.dtype() {
        ArrowDataType::Dictionary(..) => dictionary(array, leaf, options),
        ArrowDataType::Int64 | ArrowDataType::Timestamp(..) => {
            match array.as_any().downcast_ref::<PrimitiveArray<i64>>() {
                Some(a) => integers(a, leaf, options, 2048),
                None => return Pages::Polars,
            }
        }
        ArrowDataType::Int32 => match array.as_any().downcast_ref::<PrimitiveArray<i32>>() {
            Some(a) => integers(a, leaf, options, 512),
            None => return Pages::Polars,
        },
        _ => return Pages::Polars,
    };
    made.unwrap_or(Pages::Polars)
}

/// A dictionary array of text, or the empty dictionary of a column of
/// nulls only (`writer::null_dictionary`).
fn dictionary(array: &dyn Array, leaf: &PrimitiveType, options: WriteOptions) -> Option<Pages> {
    let d = array.as_any().downcast_ref::<DictionaryArray<u32>>()?;
    let values = d.values();
    if values.null_count() > 0 {
        return None;
    }
    let dict = if let Some(t) = values.as_any().downcast_ref::<Utf8Array<i64>>() {
        let dv = DictValues::text(t);
        // polars-parquet would truncate these bounds: left to it.
        if let Some(len) = options.statistics.binary_statistics_truncate_length_usize() {
            if dv.min.as_ref().is_some_and(|m| m.len() > len) || dv.max.as_ref().is_some_and(|m| m.len() > len) {
                return None;
            }
        }
        dv
    } else if values.is_empty()
        && matches!(
            values.dtype(),
            ArrowDataType::Int64 | ArrowDataType::Int32 | ArrowDataType::Timestamp(..)
        )
    {
        DictValues {
            page: Vec::new(),
            n: 0,
            min: None,
            max: None,
        }
    } else {
        return None;
    };
    let keys = d.keys();
    let validity = keys.validity().filter(|v| v.unset_bits() > 0);
    let all = keys.values().as_slice();
    let valid: Vec<u32>;
    let valid_keys = match validity {
        None => all,
        Some(v) => {
            let mut g = Vec::with_capacity(all.len() - v.unset_bits());
            each_valid(all, Some(v), |k| g.push(k));
            valid = g;
            &valid
        }
    };
    Some(Pages::Made(Box::new(pages(
        dict,
        valid_keys,
        all.len(),
        validity,
        leaf,
        options,
    ))))
}

/// Marks of the values seen in an integer column between its bounds, kept
/// by the thread between columns (at most 65,536 slots: 384 KiB) so that
/// no column zeroes a table of its range: slot `off` is marked when
/// `stamp[off]` is the current column's `generation`; `number[off]` is
/// then the value's key.
#[derive(Default)]
struct Marks {
    generation: u32,
    stamp: Vec<u32>,
    number: Vec<u16>,
}

impl Marks {
    /// Starts a column of `slots` slots, none marked.
    fn start(&mut self, slots: usize) {
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            self.stamp.fill(0);
            self.generation = 1;
        }
        if self.stamp.len() < slots {
            self.stamp.resize(slots, 0);
            self.number.resize(slots, 0);
        }
    }
}

thread_local! {
    static MARKS: std::cell::RefCell<Marks> = std::cell::RefCell::new(Marks::default());
}

/// An integer column with a value: its dictionary when polars-parquet's
/// `min_max_integer_encode_as_dictionary_optional` would make one (values
/// within 65,535 of each other, and at most `few` distinct or fewer than
/// 3/4 of the rows), plain when it would write it plain, else left to it.
fn integers<T>(a: &PrimitiveArray<T>, leaf: &PrimitiveType, options: WriteOptions, few: usize) -> Option<Pages>
where
    T: polars_arrow::types::NativeType + Ord + Into<i64> + TryFrom<i64> + std::hash::Hash,
{
    let validity = a.validity().filter(|v| v.unset_bits() > 0);
    let vals = a.values().as_slice();
    let first = match validity {
        None => *vals.first()?,
        Some(v) => vals[v.iter().position(|ok| ok)?],
    };
    let (mut min, mut max) = (first, first);
    each_valid(vals, validity, |v| {
        min = min.min(v);
        max = max.max(v);
    });
    let (lo, hi): (i64, i64) = (min.into(), max.into());
    let Some(diff) = hi
        .checked_sub(lo)
        .and_then(|d| usize::try_from(d).ok())
        .filter(|&d| d <= u16::MAX as usize)
    else {
        return Some(wide(a, leaf, options));
    };
    MARKS.with_borrow_mut(|m| {
        // One slot per value between min and max: marked, then numbered in
        // ascending order of value. When few values are seen in a wide
        // range, the seen ones are sorted instead of scanning every slot.
        m.start(diff + 1);
        let generation = m.generation;
        let stamp = &mut m.stamp[..=diff];
        let number = &mut m.number[..=diff];
        let mut seen: Vec<u16> = Vec::new();
        each_valid(vals, validity, |v| {
            let x: i64 = v.into();
            let off = (x - lo) as usize;
            if stamp[off] != generation {
                stamp[off] = generation;
                if seen.len() < 4096 {
                    // Offsets are at most 65,535.
                    seen.push(off as u16);
                }
            }
        });
        let mut page = Vec::new();
        let mut n = 0usize;
        let mut add = |off: usize, slot: &mut u16| -> Option<()> {
            // At most 65,536 values: their numbers fit.
            *slot = n as u16;
            n += 1;
            let v = T::try_from(lo + off as i64).ok()?;
            page.extend_from_slice(v.to_le_bytes().as_ref());
            Some(())
        };
        if seen.len() < 4096 && seen.len() * 16 < diff {
            seen.sort_unstable();
            for &off in &seen {
                add(usize::from(off), &mut number[usize::from(off)])?;
            }
        } else {
            for (off, (slot, &s)) in number.iter_mut().zip(stamp.iter()).enumerate() {
                if s == generation {
                    add(off, slot)?;
                }
            }
        }
        if !(n <= few || (n as f64) / (a.len() as f64) < 0.75) {
            return Some(Pages::Plain);
        }
        // The keys of the values (a null has none written).
        let mut keys: Vec<u32> = Vec::with_capacity(vals.len() - validity.map_or(0, Bitmap::unset_bits));
        each_valid(vals, validity, |v| {
            let x: i64 = v.into();
            keys.push(u32::from(number[(x - lo) as usize]));
        });
        let dict = DictValues {
            page,
            n,
            min: Some(min.to_le_bytes().as_ref().to_vec()),
            max: Some(max.to_le_bytes().as_ref().to_vec()),
        };
        Some(Pages::Made(Box::new(pages(
            dict,
            &keys,
            vals.len(),
            validity,
            leaf,
            options,
        ))))
    })
}

/// An integer column whose values span more than 65,536: plain when
/// polars-parquet's cardinality estimate (the same call on the same array)
/// would write it plain, else its dictionary ([`first_seen_dictionary`]).
fn wide<T>(a: &PrimitiveArray<T>, leaf: &PrimitiveType, options: WriteOptions) -> Pages
where
    T: polars_arrow::types::NativeType + Ord + std::hash::Hash,
{
    let estimate = polars::polars_compute::cardinality::estimate_cardinality(a);
    if a.len() > 128 && (estimate as f64) / (a.len() as f64) > 0.75 {
        Pages::Plain
    } else {
        first_seen_dictionary(a, leaf, options, estimate)
    }
}

/// The pages polars-parquet makes of an integer column after its estimate
/// chose a dictionary: its cast to a dictionary (`UInt32` keys) numbers the
/// distinct values in the order they first appear, then the
/// dictionary page holds them in that order, with their smallest and
/// largest as statistics. Made here with one hash table lookup a value
/// (seeded per process: the values come from the capture) instead of the
/// cast's `MutableDictionaryArray` and polars-parquet's key encoder. The
/// table is sized by the cardinality estimate (at most the column's
/// length) and a value equal to the one before takes its key without a
/// lookup.
fn first_seen_dictionary<T>(
    a: &PrimitiveArray<T>,
    leaf: &PrimitiveType,
    options: WriteOptions,
    estimate: usize,
) -> Pages
where
    T: polars_arrow::types::NativeType + Ord + std::hash::Hash,
{
    let validity = a.validity().filter(|v| v.unset_bits() > 0);
    let vals = a.values().as_slice();
    let mut number: hashbrown::HashMap<T, u32, foldhash::fast::RandomState> =
        hashbrown::HashMap::with_capacity_and_hasher(estimate.min(vals.len()), foldhash::fast::RandomState::default());
    let mut page = Vec::new();
    let mut keys: Vec<u32> = Vec::with_capacity(vals.len() - validity.map_or(0, Bitmap::unset_bits));
    let (mut min, mut max): (Option<T>, Option<T>) = (None, None);
    let mut last: Option<(T, u32)> = None;
    each_valid(vals, validity, |v| {
        let k = match last {
            Some((p, k)) if p == v => k,
            _ => {
                let next = number.len() as u32;
                let k = *number.entry(v).or_insert_with(|| {
                    page.extend_from_slice(v.to_le_bytes().as_ref());
                    min = Some(min.map_or(v, |m| m.min(v)));
                    max = Some(max.map_or(v, |m| m.max(v)));
                    next
                });
                last = Some((v, k));
                k
            }
        };
        keys.push(k);
    });
    let dict = DictValues {
        page,
        n: number.len(),
        min: min.map(|m| m.to_le_bytes().as_ref().to_vec()),
        max: max.map(|m| m.to_le_bytes().as_ref().to_vec()),
    };
    Pages::Made(Box::new(pages(dict, &keys, vals.len(), validity, leaf, options)))
}

/// The encoding of an integer column polars-parquet would write plain:
/// DELTA_BINARY_PACKED when the differences between neighbouring values
/// (nulls skipped) span fewer bits than the values themselves and at most
/// half the type's width: times and frame numbers, which grow row by row,
/// take a few bits a value instead of 64, and zstd gets that many fewer
/// bytes. Values in no order (a table sorted by another column) have
/// differences as wide as they are: PLAIN, whose constant high bytes zstd
/// takes better.
pub fn plain_integers(array: &dyn Array) -> Encoding {
    fn narrow<T: polars_arrow::types::NativeType + Into<i64>>(a: &PrimitiveArray<T>, half: u32) -> bool {
        let validity = a.validity().filter(|v| v.unset_bits() > 0);
        let mut prev: Option<i64> = None;
        let (mut lo, mut hi) = (i64::MAX, i64::MIN);
        let (mut min, mut max) = (i64::MAX, i64::MIN);
        each_valid(a.values().as_slice(), validity, |v| {
            let x: i64 = v.into();
            min = min.min(x);
            max = max.max(x);
            if let Some(p) = prev {
                let d = x.wrapping_sub(p);
                lo = lo.min(d);
                hi = hi.max(d);
            }
            prev = Some(x);
        });
        if lo > hi {
            // One value at most.
            return false;
        }
        let deltas = 64 - hi.abs_diff(lo).leading_zeros();
        let values = 64 - max.abs_diff(min).leading_zeros();
        deltas <= half && deltas < values
    }
    let narrow = match array.dtype() {
        ArrowDataType::Int64 | ArrowDataType::Timestamp(..) => array
            .as_any()
            .downcast_ref::<PrimitiveArray<i64>>()
            .is_some_and(|a| narrow(a, 32)),
        ArrowDataType::Int32 => array
            .as_any()
            .downcast_ref::<PrimitiveArray<i32>>()
            .is_some_and(|a| narrow(a, 16)),
        _ => false,
    };
    if narrow {
        Encoding::DeltaBinaryPacked
    } else {
        Encoding::Plain
    }
}

/// The one DELTA_BINARY_PACKED data page polars-parquet's
/// `array_to_pages` makes of an integer or time column (`array`, one flat
/// column of a row group) that [`plain_integers`] chose to delta-encode:
/// the same definition levels, values and statistics, byte for byte
/// ([`delta_binary_packed`]), without its iterator per value. None when
/// polars-parquet would make something else of it (several pages, other
/// types or options): it is then left to polars-parquet.
pub fn delta_page(array: &dyn Array, type_: &ParquetType, options: WriteOptions) -> Option<Page> {
    let ParquetType::PrimitiveType(leaf) = type_ else {
        return None;
    };
    if options.version != Version::V1 || options.data_page_size.is_some_and(|s| s != PAGE_BYTES) {
        return None;
    }
    match array.dtype() {
        ArrowDataType::Int64 | ArrowDataType::Timestamp(..) => {
            delta(array.as_any().downcast_ref::<PrimitiveArray<i64>>()?, leaf, options)
        }
        ArrowDataType::Int32 => delta(array.as_any().downcast_ref::<PrimitiveArray<i32>>()?, leaf, options),
        _ => None,
    }
}

fn delta<T>(a: &PrimitiveArray<T>, leaf: &PrimitiveType, options: WriteOptions) -> Option<Page>
where
    T: polars_arrow::types::NativeType + Ord + Into<i64>,
{
    let n = a.len();
    // polars-parquet splits a column into pages of at most 1 MiB by its
    // estimate of the array's bytes (the values and the validity: under
    // `size_of::<T>() + 1` a row); one page here.
    if n == 0 || n * (std::mem::size_of::<T>() + 2) > PAGE_BYTES {
        return None;
    }
    let optional = leaf.field_info.repetition == Repetition::Optional;
    let validity = if optional { a.validity() } else { None };
    let vals = a.values().as_slice();
    let mut valid: Vec<i64> = Vec::with_capacity(n - validity.map_or(0, Bitmap::unset_bits));
    let (mut min, mut max): (Option<T>, Option<T>) = (None, None);
    if let Some(&first) = match validity {
        None => vals.first(),
        Some(v) => v.iter().position(|ok| ok).map(|i| &vals[i]),
    } {
        let (mut lo, mut hi) = (first, first);
        each_valid(vals, validity, |v| {
            lo = lo.min(v);
            hi = hi.max(v);
            valid.push(v.into());
        });
        (min, max) = (Some(lo), Some(hi));
    }
    let st = options.statistics;
    let statistics = options.has_statistics().then(|| ParquetStatistics {
        null_count: st.null_count.then_some(a.null_count() as i64),
        distinct_count: None,
        max_value: max.filter(|_| st.max_value).map(|m| m.to_le_bytes().as_ref().to_vec()),
        min_value: min.filter(|_| st.min_value).map(|m| m.to_le_bytes().as_ref().to_vec()),
        max: None,
        min: None,
        is_max_value_exact: None,
        is_min_value_exact: None,
    });
    let mut buf = Vec::with_capacity(64 + n * 2);
    if optional {
        def_levels(&mut buf, validity, n);
    }
    delta_binary_packed(&mut buf, &valid);
    Some(v1_page(buf, n, n, Encoding::DeltaBinaryPacked, statistics, leaf))
}

/// Values a DELTA_BINARY_PACKED block holds (polars-parquet's, with one
/// miniblock a block).
const DELTA_BLOCK: usize = 256;

fn zigzag(out: &mut Vec<u8>, v: i64) {
    uleb(out, ((v << 1) ^ (v >> 63)) as u64);
}

/// `values` DELTA_BINARY_PACKED onto `out`, as polars-parquet 0.55's
/// `delta_bitpacked::encode` writes them with one miniblock a block: a
/// header (block size 256, 1 miniblock, the count, the first value), then
/// per block of up to 256 differences its smallest difference, the bit
/// width of the differences less it, and 256 of them bit-packed. A last,
/// short block is padded as polars-parquet pads it: with what its buffer
/// still holds from the block before (readers skip the padding), packed as
/// its `pack64` packs them, so the bytes are the same.
fn delta_binary_packed(out: &mut Vec<u8>, values: &[i64]) {
    uleb(out, DELTA_BLOCK as u64);
    uleb(out, 1);
    uleb(out, values.len() as u64);
    let Some((&first, rest)) = values.split_first() else {
        zigzag(out, 0);
        return;
    };
    zigzag(out, first);
    let mut deltas = [0u64; DELTA_BLOCK];
    let mut prev = first;
    for block in rest.chunks(DELTA_BLOCK) {
        let (mut lo, mut hi) = (i64::MAX, i64::MIN);
        for (d, &v) in deltas.iter_mut().zip(block) {
            let x = v.wrapping_sub(prev);
            prev = v;
            lo = lo.min(x);
            hi = hi.max(x);
            *d = x as u64;
        }
        for d in &mut deltas[..block.len()] {
            *d = d.wrapping_sub(lo as u64);
        }
        let bits = 64 - hi.abs_diff(lo).leading_zeros();
        zigzag(out, lo);
        out.push(bits as u8);
        if bits > 0 {
            pack_miniblock(out, &deltas, bits);
        }
    }
}

/// The 256 values of a miniblock packed in `bits` bits each, least
/// significant first, as `4 * bits` little-endian words. A value wider than
/// `bits` (only in a short block's padding) is ORed in whole, as
/// polars-parquet's `pack64` does: its high bits reach into the slots after
/// it, up to the end of the word after its own.
fn pack_miniblock(out: &mut Vec<u8>, deltas: &[u64; DELTA_BLOCK], bits: u32) {
    let mut words = [0u64; 4 * 64];
    let words = &mut words[..4 * bits as usize];
    let mut pos = 0u32;
    for &v in deltas {
        let (w, s) = ((pos / 64) as usize, pos % 64);
        words[w] |= v << s;
        if s + bits > 64 {
            words[w + 1] |= v >> (64 - s);
        }
        pos += bits;
    }
    out.reserve(words.len() * 8);
    for w in words.iter() {
        out.extend_from_slice(&w.to_le_bytes());
    }
}

/// The definition levels of a version 1 page (a 4-byte length, then the
/// RLE/bit-packed hybrid of the validity; one run when there is none), as
/// polars-parquet's `write_def_levels` writes them.
fn def_levels(buf: &mut Vec<u8>, validity: Option<&Bitmap>, n: usize) {
    let start = buf.len();
    buf.extend_from_slice(&[0; 4]);
    match validity {
        None => Bits::rle(buf, n, true, 1),
        Some(v) => {
            let (bytes, offset, len) = v.as_slice();
            hybrid(buf, &Bits { bytes, offset, len }, 1);
        }
    }
    let len = (buf.len() - start - 4) as i32;
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

/// The dictionary page and the data page of keys, as polars-parquet's
/// `dictionary::array_to_pages` makes them.
/// `keys`: those of the valid rows only, of `n` rows; `validity`: None
/// when every row is valid.
fn pages(
    dict: DictValues,
    keys: &[u32],
    n: usize,
    validity: Option<&Bitmap>,
    leaf: &PrimitiveType,
    options: WriteOptions,
) -> [Page; 2] {
    let null_count = validity.map_or(0, Bitmap::unset_bits);
    let st = options.statistics;
    let statistics = ParquetStatistics {
        null_count: Some(null_count as i64),
        distinct_count: None,
        max_value: dict.max.filter(|_| st.max_value),
        min_value: dict.min.filter(|_| st.min_value),
        max: None,
        min: None,
        is_max_value_exact: None,
        is_min_value_exact: None,
    };
    let dict_page = Page::Dict(DictPage::new(CowBuffer::Owned(dict.page), dict.n, false));

    let mut buf = Vec::with_capacity(16 + n / 2);
    if leaf.field_info.repetition == Repetition::Optional {
        def_levels(&mut buf, validity, n);
    }
    let bits = bit_width(keys.iter().copied().max().unwrap_or(0));
    buf.push(bits as u8);
    hybrid(&mut buf, &Keys(keys), bits);
    [
        dict_page,
        v1_page(buf, n, n, Encoding::RleDictionary, Some(statistics), leaf),
    ]
}

/// A version 1 data page of `leaf` from its encoded body `buf` (levels and
/// values), with levels RLE as polars-parquet writes them: `num_values`
/// level entries for `rows` rows.
fn v1_page(
    buf: Vec<u8>,
    num_values: usize,
    rows: usize,
    encoding: Encoding,
    statistics: Option<ParquetStatistics>,
    leaf: &PrimitiveType,
) -> Page {
    let header = DataPageHeader::V1(DataPageHeaderV1 {
        num_values: num_values as i32,
        encoding: encoding.into(),
        definition_level_encoding: Encoding::Rle.into(),
        repetition_level_encoding: Encoding::Rle.into(),
        statistics,
    });
    let descriptor = Descriptor {
        primitive_type: leaf.clone(),
        max_def_level: 0,
        max_rep_level: 0,
    };
    Page::Data(DataPage::new(header, CowBuffer::Owned(buf), descriptor, rows))
}

/// The one data page of a `list<string>` column (lists never null, their
/// values never null) as polars-parquet's nested writer makes it:
/// repetition levels (1 bit), definition levels (2 bits: 0 for an empty
/// list, 2 for a value), the values PLAIN, the values' bounds as
/// statistics. None when polars-parquet would write it otherwise (other
/// types, nulls, several pages, bounds it truncates).
pub fn list_page(array: &dyn Array, type_: &ParquetType, options: WriteOptions) -> Option<Page> {
    let ParquetType::GroupType { field_info, fields, .. } = type_ else {
        return None;
    };
    let [ParquetType::GroupType {
        field_info: middle,
        fields: inner,
        ..
    }] = fields.as_slice()
    else {
        return None;
    };
    let [ParquetType::PrimitiveType(leaf)] = inner.as_slice() else {
        return None;
    };
    if field_info.repetition != Repetition::Required
        || middle.repetition != Repetition::Repeated
        || leaf.field_info.repetition != Repetition::Optional
        || options.version != Version::V1
        || options.data_page_size.is_some_and(|s| s != PAGE_BYTES)
        || !options.has_statistics()
    {
        return None;
    }
    let list = array.as_any().downcast_ref::<ListArray<i32>>()?;
    let values = list.values().as_any().downcast_ref::<Utf8Array<i64>>()?;
    let rows = list.len();
    if list.validity().is_some() || values.validity().is_some() || rows == 0 {
        return None;
    }
    // One page: polars-parquet splits the values' estimated bytes
    // (`estimated_bytes_size`: text and offsets) into pages of 1 MiB by
    // whole bytes per row.
    let estimate = values.values().len() + 8 * (values.len() + 1);
    if PAGE_BYTES / (estimate / rows + 1) < rows {
        return None;
    }
    let offsets = list.offsets().as_slice();
    let (first, last) = (offsets[0] as usize, offsets[rows] as usize);
    let mut rep = Vec::with_capacity(rows + last - first);
    let mut def = Vec::with_capacity(rows + last - first);
    for w in offsets.windows(2) {
        let k = (w[1] - w[0]) as usize;
        if k == 0 {
            rep.push(0);
            def.push(0);
        } else {
            rep.push(0);
            rep.extend(std::iter::repeat_n(1, k - 1));
            def.extend(std::iter::repeat_n(2, k));
        }
    }
    let mut buf = Vec::with_capacity(64 + estimate);
    for (levels, bits) in [(&rep, 1), (&def, 2)] {
        let at = buf.len();
        buf.extend_from_slice(&[0; 4]);
        hybrid(&mut buf, &Keys(levels), bits);
        let len = (buf.len() - at - 4) as i32;
        buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
    }
    let (min, max) = plain_byte_arrays(&mut buf, (first..last).map(|i| values.value(i).as_bytes()));
    if first != 0 || last != values.len() {
        // Statistics span the whole child array in polars-parquet.
        return None;
    }
    if let Some(len) = options.statistics.binary_statistics_truncate_length_usize() {
        if min.is_some_and(|m| m.len() > len) || max.is_some_and(|m| m.len() > len) {
            return None;
        }
    }
    let st = options.statistics;
    let statistics = ParquetStatistics {
        null_count: st.null_count.then_some(0),
        distinct_count: None,
        max_value: max.filter(|_| st.max_value).map(<[u8]>::to_vec),
        min_value: min.filter(|_| st.min_value).map(<[u8]>::to_vec),
        max: None,
        min: None,
        is_max_value_exact: None,
        is_min_value_exact: None,
    };
    Some(v1_page(buf, rep.len(), rows, Encoding::Plain, Some(statistics), leaf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use polars_parquet::parquet::encoding::hybrid_rle;

    /// A reproducible stream of numbers (xorshift).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// Values in runs of random lengths (1 to `run`), from `distinct`
    /// values, `n` of them.
    fn runs(rng: &mut Rng, n: usize, run: u64, distinct: u64) -> Vec<u32> {
        let mut v = Vec::with_capacity(n);
        while v.len() < n {
            let x = (rng.next() % distinct) as u32;
            let len = 1 + (rng.next() % run) as usize;
            v.extend(std::iter::repeat_n(x, len.min(n - v.len())));
        }
        v
    }

    #[test]
    fn the_hybrid_encoding_is_polars_parquet_s_byte_for_byte() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for case in 0..400 {
            let n = match case % 5 {
                0 => (rng.next() % 40) as usize,
                1 => (rng.next() % 300) as usize,
                2 => 8192 + (rng.next() % 20) as usize - 10,
                _ => (rng.next() % 40_000) as usize,
            };
            let run = [1, 3, 9, 12, 40, 20_000][case % 6];
            let distinct = [1, 2, 3, 200, 70_000][case % 5];
            let v = runs(&mut rng, n, run, distinct);
            let bits = bit_width(v.iter().copied().max().unwrap_or(0));
            let mut want = Vec::new();
            hybrid_rle::encode::<u32, _, _>(&mut want, v.iter().copied(), bits).unwrap();
            let mut got = Vec::new();
            hybrid(&mut got, &Keys(&v), bits);
            assert_eq!(got, want, "keys: case {case}, {n} values, {bits} bits");
            // The same as bits, at offsets.
            let b: Vec<bool> = v.iter().map(|&x| x % 2 == 1).collect();
            for offset in [0usize, 3] {
                let mut m = polars_arrow::bitmap::MutableBitmap::new();
                m.extend_constant(offset, false);
                for &x in &b {
                    m.push(x);
                }
                let bm: Bitmap = m.into();
                let bm = bm.sliced(offset, b.len());
                let mut want = Vec::new();
                hybrid_rle::encode::<bool, _, _>(&mut want, bm.iter(), 1).unwrap();
                let (bytes, off, len) = bm.as_slice();
                let mut got = Vec::new();
                hybrid(
                    &mut got,
                    &Bits {
                        bytes,
                        offset: off,
                        len,
                    },
                    1,
                );
                assert_eq!(got, want, "bits: case {case}, offset {offset}");
            }
        }
    }

    fn options() -> WriteOptions {
        WriteOptions {
            statistics: Default::default(),
            version: Version::V1,
            compression: polars_parquet::write::CompressionOptions::Zstd(None),
            data_page_size: None,
        }
    }

    /// The pages polars-parquet makes of `array` (a flat column).
    fn polars_pages(array: &dyn Array, type_: &ParquetType, enc: Encoding) -> Vec<Page> {
        let nested = polars_parquet::write::to_nested(array, type_).unwrap();
        let ParquetType::PrimitiveType(leaf) = type_ else {
            panic!()
        };
        polars_parquet::write::array_to_pages(array, leaf.clone(), &nested[0], options(), enc)
            .unwrap()
            .map(|p| p.unwrap())
            .collect()
    }

    fn same(got: &[Page], want: &[Page], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: pages");
        for (g, w) in got.iter().zip(want) {
            match (g, w) {
                (Page::Dict(g), Page::Dict(w)) => {
                    assert_eq!(
                        (&*g.buffer, g.num_values, g.is_sorted),
                        (&*w.buffer, w.num_values, w.is_sorted),
                        "{what}: dictionary page"
                    );
                }
                (Page::Data(g), Page::Data(w)) => {
                    assert_eq!(g.buffer(), w.buffer(), "{what}: data page");
                    assert_eq!(
                        format!("{:?}", g.header()),
                        format!("{:?}", w.header()),
                        "{what}: header"
                    );
                    assert_eq!(
                        (g.num_rows(), &g.descriptor),
                        (w.num_rows(), &w.descriptor),
                        "{what}: rows"
                    );
                }
                _ => panic!("{what}: page kinds differ"),
            }
        }
    }

    fn field(name: &str, dtype: ArrowDataType, nullable: bool) -> ParquetType {
        polars_parquet::write::to_parquet_type(&polars::prelude::ArrowField::new(name.into(), dtype, nullable)).unwrap()
    }

    #[test]
    fn dictionary_and_integer_pages_are_polars_parquet_s() {
        let mut rng = Rng(7);
        for case in 0..60 {
            let n = [1usize, 7, 129, 1000, 5000, 65_536][case % 6];
            let nulls = case % 3;
            let validity: Option<Bitmap> = (nulls > 0).then(|| {
                (0..n)
                    .map(|i| nulls == 1 || !(rng.next().is_multiple_of(5) || (i / 100) % 7 == 3))
                    .collect()
            });
            let validity = validity.filter(|v| v.unset_bits() > 0);
            let nullable = validity.is_some() || case % 2 == 0;
            // Text dictionary.
            let distinct = 1 + (rng.next() % 300) as usize;
            let words: Vec<String> = (0..distinct).map(|i| format!("w{}", i * 7919 % 1000)).collect();
            let values = Utf8Array::<i64>::from_slice(&words);
            let keys = runs(&mut rng, n, 30, distinct as u64);
            let keys = PrimitiveArray::<u32>::try_new(ArrowDataType::UInt32, keys.into(), validity.clone()).unwrap();
            let dt = ArrowDataType::Dictionary(
                polars_arrow::datatypes::IntegerType::UInt32,
                Box::new(ArrowDataType::LargeUtf8),
                false,
            );
            let d = DictionaryArray::<u32>::try_new(dt, keys, values.boxed()).unwrap();
            let t = field("s", ArrowDataType::LargeUtf8, nullable);
            let Pages::Made(got) = fast_pages(&d, &t, options(), &[Encoding::RleDictionary]) else {
                panic!("text case {case}: not made here")
            };
            same(
                &got[..],
                &polars_pages(&d, &t, Encoding::RleDictionary),
                &format!("text {case}"),
            );
            // Integers: few values, a wide range (left to polars), many
            // distinct (plain).
            for spread in [5i64, 3000, 60_000, 1 << 40] {
                let base = (rng.next() % 1_000_000) as i64 - 500_000;
                let v: Vec<i64> = runs(&mut rng, n, 4, spread as u64)
                    .iter()
                    .map(|&x| base + i64::from(x) * (spread / spread.min(65_000)).max(1))
                    .collect();
                for dt in [
                    ArrowDataType::Int64,
                    ArrowDataType::Timestamp(polars_arrow::datatypes::TimeUnit::Microsecond, Some("UTC".into())),
                ] {
                    let a = PrimitiveArray::<i64>::try_new(dt.clone(), v.clone().into(), validity.clone()).unwrap();
                    let t = field("i", dt, nullable);
                    let what = format!("i64 {case} spread {spread}");
                    match fast_pages(&a, &t, options(), &[Encoding::RleDictionary]) {
                        Pages::Made(got) => same(&got[..], &polars_pages(&a, &t, Encoding::RleDictionary), &what),
                        Pages::Plain => same(
                            &polars_pages(&a, &t, Encoding::Plain),
                            &polars_pages(&a, &t, Encoding::RleDictionary),
                            &what,
                        ),
                        Pages::Polars => assert!(
                            spread > 65_535 || validity.as_ref().is_some_and(|v| v.set_bits() == 0),
                            "{what}"
                        ),
                    }
                }
                let v32: Vec<i32> = v.iter().map(|&x| x as i32).collect();
                let a = PrimitiveArray::<i32>::try_new(ArrowDataType::Int32, v32.into(), validity.clone()).unwrap();
                let t = field("p", ArrowDataType::Int32, nullable);
                let what = format!("i32 {case} spread {spread}");
                match fast_pages(&a, &t, options(), &[Encoding::RleDictionary]) {
                    Pages::Made(got) => same(&got[..], &polars_pages(&a, &t, Encoding::RleDictionary), &what),
                    Pages::Plain => same(
                        &polars_pages(&a, &t, Encoding::Plain),
                        &polars_pages(&a, &t, Encoding::RleDictionary),
                        &what,
                    ),
                    Pages::Polars => {}
                }
            }
        }
    }

    #[test]
    fn delta_pages_are_polars_parquet_s() {
        let mut rng = Rng(23);
        let ts = ArrowDataType::Timestamp(polars_arrow::datatypes::TimeUnit::Microsecond, Some("UTC".into()));
        for case in 0..120 {
            // Lengths around the 256-value blocks (a short last block after
            // a wider one: its padding), and a full row group.
            let n = [1usize, 2, 3, 256, 257, 258, 511, 513, 700, 5000, 65_536][case % 11];
            let nulls = case % 3;
            let validity: Option<Bitmap> = (nulls > 0).then(|| {
                (0..n)
                    .map(|i| nulls == 1 || !(rng.next().is_multiple_of(4) || (i / 50) % 5 == 2))
                    .collect()
            });
            let validity = validity.filter(|v| v.unset_bits() > 0);
            let nullable = validity.is_some() || case % 2 == 0;
            // Growing values with steps of a few bits, a jump now and then
            // (wide blocks before narrow ones), sometimes going back.
            let step = [1u64, 7, 1000, 1 << 20, 1 << 40][case % 5];
            let mut x = (rng.next() % 1_000_000) as i64 - 500_000;
            let v: Vec<i64> = (0..n)
                .map(|i| {
                    x = x.wrapping_add((rng.next() % step) as i64);
                    if i % 300 == 299 {
                        x = x.wrapping_sub((rng.next() % (step * 50)) as i64);
                    }
                    x
                })
                .collect();
            for dt in [ArrowDataType::Int64, ts.clone()] {
                let a = PrimitiveArray::<i64>::try_new(dt.clone(), v.clone().into(), validity.clone()).unwrap();
                let t = field("i", dt, nullable);
                let got = delta_page(&a, &t, options()).unwrap_or_else(|| panic!("i64 {case}: not made here"));
                same(
                    &[got],
                    &polars_pages(&a, &t, Encoding::DeltaBinaryPacked),
                    &format!("i64 {case}"),
                );
            }
            let v32: Vec<i32> = v.iter().map(|&x| (x >> (case % 4 * 8)) as i32).collect();
            let a = PrimitiveArray::<i32>::try_new(ArrowDataType::Int32, v32.into(), validity.clone()).unwrap();
            let t = field("p", ArrowDataType::Int32, nullable);
            let got = delta_page(&a, &t, options()).unwrap_or_else(|| panic!("i32 {case}: not made here"));
            same(
                &[got],
                &polars_pages(&a, &t, Encoding::DeltaBinaryPacked),
                &format!("i32 {case}"),
            );
        }
        // More rows than one page holds: left to polars-parquet.
        let a = PrimitiveArray::<i64>::from_vec((0..200_000).collect());
        assert!(delta_page(&a, &field("i", ArrowDataType::Int64, false), options()).is_none());
    }

    #[test]
    fn list_pages_are_polars_parquet_s() {
        let mut rng = Rng(11);
        for case in 0..40 {
            let rows = [1usize, 9, 100, 3000, 20_000][case % 5];
            let mut offsets = vec![0i32];
            let mut vals: Vec<String> = Vec::new();
            for _ in 0..rows {
                let k = match rng.next() % 10 {
                    0..=6 if case % 3 != 0 => 0,
                    7 | 8 => 1,
                    _ => (rng.next() % 5) as usize,
                };
                for _ in 0..k {
                    vals.push(format!("k{}", rng.next() % 50));
                }
                offsets.push(vals.len() as i32);
            }
            let child = Utf8Array::<i64>::from_slice(&vals);
            let inner = polars::prelude::ArrowField::new("item".into(), ArrowDataType::LargeUtf8, true);
            let dt = ArrowDataType::List(Box::new(inner));
            let list = ListArray::<i32>::try_new(dt.clone(), offsets.try_into().unwrap(), child.boxed(), None).unwrap();
            let t = field("l", dt, false);
            let got = list_page(&list, &t, options()).unwrap_or_else(|| panic!("not made here: {t:?}"));
            let want: Vec<Page> =
                polars_parquet::write::array_to_columns(list.boxed(), t.clone(), options(), &[Encoding::RleDictionary])
                    .unwrap()
                    .remove(0)
                    .map(|p| p.unwrap())
                    .collect();
            same(&[got], &want, &format!("list {case}, {rows} rows"));
        }
    }
}
