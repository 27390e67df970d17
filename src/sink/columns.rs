//! Rust field types → Arrow columns. One trait, implemented for the handful
//! of types rows use, so each table is declared once (see `tables.rs`) and
//! its Parquet schema, its column builders and its documentation all follow
//! from it. A row reaching the writer is pushed into its table's builders
//! at once and dropped; a row group is the builders' buffers, handed over.
//!
//! What every engine reads without a cast (CONTRACT "Column conventions"):
//! counts and sizes are written as signed 64-bit integers (a `u64` field
//! above `i64::MAX` is written as `i64::MAX` and noted, never wrapped), ports
//! and other small ranges as signed 32-bit integers, times as UTC
//! microsecond timestamps between 1970 and 2200 (others are noted and
//! written as null, or as the nearest bound where the column has no null),
//! text as plain UTF-8. The notes become `anomalies` rows (layer `sink`)
//! when the run's files are completed.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::sync::Arc;

use polars::prelude::*;
use polars_arrow::array::{Array, BooleanArray, DictionaryArray, ListArray, PrimitiveArray, Utf8Array};
use polars_arrow::bitmap::{Bitmap, MutableBitmap};
use polars_arrow::datatypes::IntegerType;
use polars_arrow::types::NativeType;

use super::dict::{DictBuilder, Texts};

/// A timestamp: microseconds since the Unix epoch, UTC (CONTRACT: `ts`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ts(pub i64);

/// Earliest timestamp written: 1970-01-01T00:00:00Z.
pub const TS_MIN_US: i64 = 0;
/// First timestamp not written: 2200-01-01T00:00:00Z (µs). Every engine's
/// timestamp type holds the range between; ±2^63 µs (what a hostile pcapng
/// offset produces) makes polars panic and pyarrow raise.
pub const TS_END_US: i64 = 7_258_118_400_000_000;

/// Whether `us` is a time the tables carry.
pub fn ts_in_range(us: i64) -> bool {
    (TS_MIN_US..TS_END_US).contains(&us)
}

/// A value the writer could not write as it was: counted per table, column
/// and kind, and written as an anomaly row when the files are completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueNote {
    pub table: &'static str,
    pub column: String,
    /// `value_saturated` (an unsigned value above 2^63 - 1, written as
    /// 2^63 - 1) or `timestamp_out_of_range` (outside 1970–2200).
    pub kind: &'static str,
    pub n: u64,
}

thread_local! {
    /// The table whose columns are being built on this (writer) thread.
    static TABLE: Cell<&'static str> = const { Cell::new("") };
    static NOTES: RefCell<Vec<ValueNote>> = const { RefCell::new(Vec::new()) };
}

/// Names the table whose rows this thread converts next (notes name it).
pub fn set_current_table(t: &'static str) {
    TABLE.with(|c| c.set(t));
}

fn note(column: &str, kind: &'static str, n: u64) {
    if n == 0 {
        return;
    }
    let table = TABLE.with(Cell::get);
    NOTES.with(|v| {
        let mut v = v.borrow_mut();
        match v
            .iter_mut()
            .find(|x| x.table == table && x.column == column && x.kind == kind)
        {
            Some(x) => x.n += n,
            None => v.push(ValueNote {
                table,
                column: column.to_string(),
                kind,
                n,
            }),
        }
    });
}

/// The notes gathered on this thread so far, emptied.
pub fn take_notes() -> Vec<ValueNote> {
    NOTES.with(|v| std::mem::take(&mut *v.borrow_mut()))
}

/// How a field is written: its polars type, its documented type, and the
/// builder its values go into as rows reach the writer. Implemented by
/// every [`ColumnValue`] for itself, and by markers such as [`I32`] for a
/// field written narrower than its Rust type.
pub trait ColumnSpec<V> {
    type Builder: ColumnBuilder<V>;
    fn dtype() -> DataType;
    fn type_doc() -> &'static str;
}

/// A field type that can become a column.
pub trait ColumnValue: Sized {
    type Builder: ColumnBuilder<Self>;
    /// The polars dtype of the column.
    fn dtype() -> DataType;
    /// Short type name for docs/SCHEMA.md (Arrow's names; `?`: nullable).
    fn type_doc() -> &'static str;
}

impl<V: ColumnValue> ColumnSpec<V> for V {
    type Builder = V::Builder;
    fn dtype() -> DataType {
        V::dtype()
    }
    fn type_doc() -> &'static str {
        V::type_doc()
    }
}

/// One column of a table being filled, row by row, in the Arrow layout
/// it is written in: values, offsets and validity buffers that become the
/// row group's array without a copy. Each row's value is converted when it
/// is pushed, so the row itself need not be kept.
pub trait ColumnBuilder<V>: Default + Send + 'static {
    fn push(&mut self, v: &V);
    /// Heap bytes held: the capacities of the builder's buffers, exactly
    /// (the same pushes give the same figure in every run).
    fn bytes(&self) -> usize;
    /// The values pushed since the last call, as an array of `dtype` (the
    /// type the file's schema gives column `name`); values that could not be
    /// written as they were are noted under `name`. The builder is left
    /// empty, its buffers handed over to the array.
    fn finish(&mut self, name: &str, dtype: &ArrowDataType) -> PolarsResult<Box<dyn Array>>;
}

/// Validity of a nullable column: no bitmap until the first null. The
/// bits are gathered a byte at a time (a `MutableBitmap::push` per row was
/// 7 % of the writer thread's instructions on the DHT tables, whose
/// optional columns are mostly null).
#[derive(Default)]
pub struct Validity {
    /// Whether a null was pushed: the bitmap exists.
    some: bool,
    /// The bitmap's whole bytes, least significant bit first.
    bytes: Vec<u8>,
    /// The bits of the byte being filled.
    cur: u8,
    /// Bits in the bitmap.
    len: usize,
}

impl Validity {
    /// Records whether the value at index `len` (the values already
    /// pushed) is valid.
    #[inline]
    pub(super) fn push(&mut self, len: usize, valid: bool) {
        if !self.some {
            if valid {
                return;
            }
            self.start(len);
        }
        let bit = self.len & 7;
        self.cur |= u8::from(valid) << bit;
        self.len += 1;
        if bit == 7 {
            self.bytes.push(self.cur);
            self.cur = 0;
        }
    }

    /// The bitmap of `len` valid values.
    #[cold]
    fn start(&mut self, len: usize) {
        self.some = true;
        self.bytes = vec![0xff; len / 8];
        self.cur = ((1u16 << (len & 7)) - 1) as u8;
        self.len = len;
    }

    pub(super) fn bytes(&self) -> usize {
        self.bytes.capacity()
    }

    /// The bitmap (None when every value is valid); empty afterwards.
    pub(super) fn take(&mut self) -> Option<Bitmap> {
        if !std::mem::take(&mut self.some) {
            return None;
        }
        let mut bytes = std::mem::take(&mut self.bytes);
        if self.len & 7 != 0 {
            bytes.push(self.cur);
        }
        let len = std::mem::take(&mut self.len);
        self.cur = 0;
        // `len` bits fit in the bytes: a byte per 8 pushes, and the last.
        Some(Bitmap::from_u8_vec(bytes, len))
    }
}

/// One slot per row of a nullable column (its values, or a dictionary's
/// keys), not written while every row of the row group so far is null:
/// those rows are only counted, and made (as default values) at the first
/// row with a value or when the row group is handed over. A DHT message's
/// optional columns are mostly null, several of them in every row of a
/// row group: their slots were pushed one by one and copied at every
/// doubling of the buffer, to be ignored by the page writer.
///
/// The builder budget counts what a `Vec` grown by pushes alone would
/// hold ([`NullFirst::bytes`]): never less than what is allocated here, and
/// the same figure as before, so the row groups end at the same rows.
#[derive(Default)]
pub struct NullFirst<T> {
    v: Vec<T>,
    /// Leading null rows not yet in `v` (0 once `v` holds anything).
    nulls: usize,
}

/// The capacity std's `Vec` reaches by pushing `n` values of 2 to 1,024
/// bytes one at a time: 0, then doubling from 4 (the test
/// `null_first_counts_what_a_vec_grown_by_pushes_holds` holds std to it).
fn pushed_capacity(n: usize) -> usize {
    match n {
        0 => 0,
        n => n.next_power_of_two().max(4),
    }
}

impl<T: Copy + Default> NullFirst<T> {
    /// Rows held.
    #[inline]
    pub(super) fn len(&self) -> usize {
        self.v.len() + self.nulls
    }

    /// The last row's slot, when it has been made (None while the rows
    /// are only counted nulls).
    #[inline]
    pub fn last(&self) -> Option<T> {
        self.v.last().copied()
    }

    #[inline(always)]
    pub fn push(&mut self, x: T) {
        if self.nulls != 0 {
            self.make();
        }
        self.v.push(x);
    }

    /// A null row: `fill` is its slot once the buffer holds values; before
    /// that, the row is counted (its slot will be the default value).
    #[inline(always)]
    pub fn push_null(&mut self, fill: T) {
        if self.v.is_empty() {
            self.nulls += 1;
        } else {
            self.v.push(fill);
        }
    }

    /// Makes the counted null rows, in a buffer of the capacity pushes
    /// would have given it (the next pushes grow it as they would have).
    #[cold]
    fn make(&mut self) {
        let n = std::mem::take(&mut self.nulls);
        let mut v = Vec::with_capacity(pushed_capacity(n));
        v.resize(n, T::default());
        self.v = v;
    }

    /// Heap bytes counted by the budget: the buffer's capacity, or what
    /// pushing the counted nulls would have allocated (nothing is).
    pub fn bytes(&self) -> usize {
        let cap = match self.nulls {
            0 => self.v.capacity(),
            n => pushed_capacity(n),
        };
        cap * std::mem::size_of::<T>()
    }

    /// The rows held, as a buffer; empty afterwards.
    pub fn take(&mut self) -> Vec<T> {
        match std::mem::take(&mut self.nulls) {
            0 => std::mem::take(&mut self.v),
            n => vec![T::default(); n],
        }
    }
}

/// A fixed-width column (int32, int64, float64, timestamp).
#[derive(Default)]
pub struct PrimBuilder<T> {
    values: NullFirst<T>,
    validity: Validity,
    /// Values not written as they were (saturated, or out of range).
    noted: u64,
}

impl<T: NativeType> PrimBuilder<T> {
    #[inline]
    fn push_value(&mut self, v: T) {
        self.values.push(v);
    }

    // Always inlined: outlined (as it was with `NullFirst`), its calls cost
    // more than the pushes they saved.
    #[inline(always)]
    fn push_opt(&mut self, v: Option<T>) {
        self.validity.push(self.values.len(), v.is_some());
        match v {
            Some(x) => self.values.push(x),
            None => self.values.push_null(T::default()),
        }
    }

    fn heap(&self) -> usize {
        self.values.bytes() + self.validity.bytes()
    }

    fn array(&mut self, name: &str, dtype: &ArrowDataType, kind: &'static str) -> PolarsResult<Box<dyn Array>> {
        note(name, kind, std::mem::take(&mut self.noted));
        let values = self.values.take();
        let validity = self.validity.take();
        Ok(PrimitiveArray::<T>::try_new(dtype.clone(), values.into(), validity)?.boxed())
    }
}

/// Implements [`ColumnBuilder`] of `$v` for `PrimBuilder<$t>`: `$conv`
/// turns a value into the column's (noting it in `$b.noted` when it
/// cannot be written as it was), `$kind` names such notes.
macro_rules! prim_builder {
    ($v:ty, $t:ty, $kind:literal, |$b:ident, $x:ident| $conv:expr) => {
        impl ColumnBuilder<$v> for PrimBuilder<$t> {
            #[inline]
            fn push(&mut self, v: &$v) {
                let $b = &mut *self;
                let $x = *v;
                let c = $conv;
                self.push_value(c);
            }
            fn bytes(&self) -> usize {
                self.heap()
            }
            fn finish(&mut self, name: &str, dtype: &ArrowDataType) -> PolarsResult<Box<dyn Array>> {
                self.array(name, dtype, $kind)
            }
        }
        impl ColumnBuilder<Option<$v>> for PrimBuilder<$t> {
            #[inline]
            fn push(&mut self, v: &Option<$v>) {
                let c = match *v {
                    Some($x) => {
                        let $b = &mut *self;
                        Some($conv)
                    }
                    None => None,
                };
                self.push_opt(c);
            }
            fn bytes(&self) -> usize {
                self.heap()
            }
            fn finish(&mut self, name: &str, dtype: &ArrowDataType) -> PolarsResult<Box<dyn Array>> {
                self.array(name, dtype, $kind)
            }
        }
    };
}

fn saturate_i64(v: u64, n: &mut u64) -> i64 {
    i64::try_from(v).unwrap_or_else(|_| {
        *n += 1;
        i64::MAX
    })
}

fn saturate_i32(v: u32, n: &mut u64) -> i32 {
    i32::try_from(v).unwrap_or_else(|_| {
        *n += 1;
        i32::MAX
    })
}

prim_builder!(u64, i64, "value_saturated", |b, x| saturate_i64(x, &mut b.noted));
prim_builder!(u32, i32, "value_saturated", |b, x| saturate_i32(x, &mut b.noted));
// u32 fields without a marker (piece indices, offsets and lengths from the
// wire) take every u32 value: int64, lossless.
prim_builder!(u32, i64, "value_saturated", |_b, x| i64::from(x));
prim_builder!(i64, i64, "value_saturated", |_b, x| x);
prim_builder!(f64, f64, "value_saturated", |_b, x| x);

/// A timestamp outside 1970–2200 is written as the nearest bound where the
/// column cannot be null.
impl ColumnBuilder<Ts> for PrimBuilder<i64> {
    #[inline]
    fn push(&mut self, t: &Ts) {
        let v = if ts_in_range(t.0) {
            t.0
        } else {
            self.noted += 1;
            t.0.clamp(TS_MIN_US, TS_END_US - 1)
        };
        self.push_value(v);
    }
    fn bytes(&self) -> usize {
        self.heap()
    }
    fn finish(&mut self, name: &str, dtype: &ArrowDataType) -> PolarsResult<Box<dyn Array>> {
        self.array(name, dtype, "timestamp_out_of_range")
    }
}

/// ... and as null where it can.
impl ColumnBuilder<Option<Ts>> for PrimBuilder<i64> {
    #[inline]
    fn push(&mut self, t: &Option<Ts>) {
        let v = match t {
            Some(t) if ts_in_range(t.0) => Some(t.0),
            Some(_) => {
                self.noted += 1;
                None
            }
            None => None,
        };
        self.push_opt(v);
    }
    fn bytes(&self) -> usize {
        self.heap()
    }
    fn finish(&mut self, name: &str, dtype: &ArrowDataType) -> PolarsResult<Box<dyn Array>> {
        self.array(name, dtype, "timestamp_out_of_range")
    }
}

/// Marker: a `u32` field whose values fit in 31 bits (ports, attempt
/// numbers), written as int32. A larger value saturates and is noted.
pub struct I32;

impl ColumnSpec<u32> for I32 {
    type Builder = PrimBuilder<i32>;
    fn dtype() -> DataType {
        DataType::Int32
    }
    fn type_doc() -> &'static str {
        "int32"
    }
}

impl ColumnSpec<Option<u32>> for I32 {
    type Builder = PrimBuilder<i32>;
    fn dtype() -> DataType {
        DataType::Int32
    }
    fn type_doc() -> &'static str {
        "int32?"
    }
}

macro_rules! value {
    ($v:ty, $builder:ty, $dt:expr, $doc:expr) => {
        impl ColumnValue for $v {
            type Builder = $builder;
            fn dtype() -> DataType {
                $dt
            }
            fn type_doc() -> &'static str {
                $doc
            }
        }
    };
}

macro_rules! value_and_option {
    ($v:ty, $builder:ty, $dt:expr, $doc:literal) => {
        value!($v, $builder, $dt, $doc);
        value!(Option<$v>, $builder, $dt, concat!($doc, "?"));
    };
}

value_and_option!(u64, PrimBuilder<i64>, DataType::Int64, "int64");
value_and_option!(u32, PrimBuilder<i64>, DataType::Int64, "int64");
value_and_option!(i64, PrimBuilder<i64>, DataType::Int64, "int64");
value_and_option!(f64, PrimBuilder<f64>, DataType::Float64, "float64");
value_and_option!(bool, BoolBuilder, DataType::Boolean, "bool");
value_and_option!(Ts, PrimBuilder<i64>, utc(), "timestamp[us, UTC]");
value_and_option!(String, DictBuilder<Texts>, DataType::String, "string");
value_and_option!(Arc<str>, DictBuilder<Texts>, DataType::String, "string");
value_and_option!(&'static str, NameBuilder, DataType::String, "string");
value!(
    Option<Cow<'static, str>>,
    DictBuilder<Texts>,
    DataType::String,
    "string?"
);
value!(
    Vec<String>,
    ListStrBuilder,
    DataType::List(Box::new(DataType::String)),
    "list<string>"
);
value!(
    Vec<Cow<'static, str>>,
    ListStrBuilder,
    DataType::List(Box::new(DataType::String)),
    "list<string>"
);
value!(
    Vec<&'static str>,
    ListStrBuilder,
    DataType::List(Box::new(DataType::String)),
    "list<string>"
);
// Conn ids a peer took part in (peers.conn_ids).
value!(
    Vec<u64>,
    ListI64Builder,
    DataType::List(Box::new(DataType::Int64)),
    "list<int64>"
);

fn utc() -> DataType {
    DataType::Datetime(TimeUnit::Microseconds, Some(TimeZone::UTC))
}

/// A boolean column.
#[derive(Default)]
pub struct BoolBuilder {
    values: MutableBitmap,
    validity: Validity,
}

impl BoolBuilder {
    fn heap(&self) -> usize {
        self.values.capacity() / 8 + self.validity.bytes()
    }
    fn array(&mut self, dtype: &ArrowDataType) -> PolarsResult<Box<dyn Array>> {
        let values = std::mem::take(&mut self.values).into();
        let validity = self.validity.take();
        Ok(BooleanArray::try_new(dtype.clone(), values, validity)?.boxed())
    }
}

impl ColumnBuilder<bool> for BoolBuilder {
    #[inline]
    fn push(&mut self, v: &bool) {
        self.values.push(*v);
    }
    fn bytes(&self) -> usize {
        self.heap()
    }
    fn finish(&mut self, _name: &str, dtype: &ArrowDataType) -> PolarsResult<Box<dyn Array>> {
        self.array(dtype)
    }
}

impl ColumnBuilder<Option<bool>> for BoolBuilder {
    #[inline]
    fn push(&mut self, v: &Option<bool>) {
        self.validity.push(self.values.len(), v.is_some());
        self.values.push(v.unwrap_or_default());
    }
    fn bytes(&self) -> usize {
        self.heap()
    }
    fn finish(&mut self, _name: &str, dtype: &ArrowDataType) -> PolarsResult<Box<dyn Array>> {
        self.array(dtype)
    }
}

/// A text column (Arrow `large_string`): the cells' bytes one after the
/// other, with 64-bit offsets. Text that the rows carry as values (hex
/// ids, addresses) is written into it directly (see `typed.rs`).
#[derive(Default)]
pub struct StrBuilder {
    /// Start of every cell and the end of the last; empty before the first.
    offsets: Vec<i64>,
    data: Vec<u8>,
    validity: Validity,
}

impl StrBuilder {
    /// Cells pushed.
    fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    /// Appends one cell written by `write` into the data buffer.
    #[inline]
    pub fn push_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        if self.offsets.is_empty() {
            self.offsets.push(0);
        }
        write(&mut self.data);
        // A buffer is never longer than isize::MAX bytes.
        self.offsets.push(self.data.len() as i64);
    }

    #[inline]
    pub fn push_str(&mut self, s: &str) {
        self.push_with(|d| d.extend_from_slice(s.as_bytes()));
    }

    #[inline]
    pub fn push_opt_with(&mut self, valid: bool, write: impl FnOnce(&mut Vec<u8>)) {
        self.validity.push(self.len(), valid);
        if valid {
            self.push_with(write);
        } else {
            self.push_with(|_| {});
        }
    }

    #[cfg(test)]
    fn push_opt_str(&mut self, s: Option<&str>) {
        match s {
            Some(s) => self.push_opt_with(true, |d| d.extend_from_slice(s.as_bytes())),
            None => self.push_opt_with(false, |_| {}),
        }
    }

    pub fn heap(&self) -> usize {
        self.offsets.capacity() * 8 + self.data.capacity() + self.validity.bytes()
    }

    pub fn array(&mut self, dtype: &ArrowDataType) -> PolarsResult<Box<dyn Array>> {
        let mut offsets = std::mem::take(&mut self.offsets);
        if offsets.is_empty() {
            offsets.push(0);
        }
        let data = std::mem::take(&mut self.data);
        let validity = self.validity.take();
        Ok(Utf8Array::<i64>::try_new(dtype.clone(), offsets.try_into()?, data.into(), validity)?.boxed())
    }
}

/// A column of names from a fixed set (`&'static str`: kinds, methods,
/// reasons): built dictionary-encoded, as the Parquet writer would encode
/// it anyway (a row group's distinct names in order of first appearance,
/// one 32-bit key per row), without making the text of every cell first.
#[derive(Default)]
pub struct NameBuilder {
    keys: Vec<u32>,
    validity: Validity,
    /// This row group's distinct names, in order of first appearance.
    names: Vec<&'static str>,
}

impl NameBuilder {
    #[inline]
    fn key(&mut self, s: &'static str) -> u32 {
        // The same `&'static str` (its address and length) first: the same
        // text without comparing it.
        let same = self.names.iter().position(|n| std::ptr::eq(*n, s));
        let i = match same.or_else(|| self.names.iter().position(|n| *n == s)) {
            Some(i) => i,
            None => {
                self.names.push(s);
                self.names.len() - 1
            }
        };
        // Names come from the program's text: a few dozen at most.
        i as u32
    }

    fn heap(&self) -> usize {
        self.keys.capacity() * 4 + self.validity.bytes() + self.names.capacity() * std::mem::size_of::<&str>()
    }

    /// A dictionary array of `large_string` values (the type of every text
    /// column in the files): the Parquet writer takes it as it is.
    fn array(&mut self) -> PolarsResult<Box<dyn Array>> {
        let names = std::mem::take(&mut self.names);
        let values = Utf8Array::<i64>::from_slice(&names);
        let keys = PrimitiveArray::<u32>::try_new(
            ArrowDataType::UInt32,
            std::mem::take(&mut self.keys).into(),
            self.validity.take(),
        )?;
        let dict = ArrowDataType::Dictionary(IntegerType::UInt32, Box::new(values.dtype().clone()), false);
        Ok(DictionaryArray::<u32>::try_new(dict, keys, values.boxed())?.boxed())
    }
}

impl ColumnBuilder<&'static str> for NameBuilder {
    #[inline]
    fn push(&mut self, v: &&'static str) {
        let k = self.key(v);
        self.keys.push(k);
    }
    fn bytes(&self) -> usize {
        self.heap()
    }
    fn finish(&mut self, _name: &str, _dtype: &ArrowDataType) -> PolarsResult<Box<dyn Array>> {
        self.array()
    }
}

impl ColumnBuilder<Option<&'static str>> for NameBuilder {
    #[inline]
    fn push(&mut self, v: &Option<&'static str>) {
        self.validity.push(self.keys.len(), v.is_some());
        let k = v.map_or(0, |s| self.key(s));
        self.keys.push(k);
    }
    fn bytes(&self) -> usize {
        self.heap()
    }
    fn finish(&mut self, _name: &str, _dtype: &ArrowDataType) -> PolarsResult<Box<dyn Array>> {
        self.array()
    }
}

/// The text of a [`NameBuilder`] column (polars cannot cast a dictionary
/// to text): for a DataFrame of rows ([`super::tables::Row::to_frame`]).
pub fn names_as_text(array: &dyn Array) -> PolarsResult<Box<dyn Array>> {
    let bad = || PolarsError::ComputeError("not a dictionary of large_string names".into());
    let d = array.as_any().downcast_ref::<DictionaryArray<u32>>().ok_or_else(bad)?;
    let names = d.values().as_any().downcast_ref::<Utf8Array<i64>>().ok_or_else(bad)?;
    let text: Utf8Array<i64> = d
        .keys()
        .iter()
        .map(|k| k.and_then(|k| names.get(*k as usize)))
        .collect();
    Ok(text.boxed())
}

/// Whether `array` can be written as a column of type `dtype` as it is:
/// the same type, or a dictionary of values of that type (see
/// [`NameBuilder`]).
pub fn writes_as(array: &dyn Array, dtype: &ArrowDataType) -> bool {
    match array.dtype() {
        ArrowDataType::Dictionary(_, values, _) => **values == *dtype,
        t => t == dtype,
    }
}

/// Offset of the next list element (Arrow `list`: 32-bit offsets). A row
/// group holds far fewer elements than 2^31 (64 Ki rows, lists capped at
/// 1024); past it the offsets stop growing and the array is refused.
fn list_offset(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// A `list<string>` column (lists are never null).
#[derive(Default)]
pub struct ListStrBuilder {
    offsets: Vec<i32>,
    values: StrBuilder,
}

impl ListStrBuilder {
    /// An empty list (most rows of `dht_messages.want` and `unknown_keys`):
    /// the previous offset again, inlined into the row's push.
    #[inline(always)]
    fn push_list<'a, T: 'a>(&mut self, v: &'a [T], text: impl Fn(&'a T) -> &'a str) {
        match (v.is_empty(), self.offsets.last()) {
            (true, Some(&end)) => self.offsets.push(end),
            _ => self.push_iter(v.iter().map(text)),
        }
    }

    fn push_iter<'a>(&mut self, items: impl Iterator<Item = &'a str>) {
        if self.offsets.is_empty() {
            self.offsets.push(0);
        }
        for s in items {
            self.values.push_str(s);
        }
        self.offsets.push(list_offset(self.values.len()));
    }
    fn heap(&self) -> usize {
        self.offsets.capacity() * 4 + self.values.heap()
    }
    fn array(&mut self, dtype: &ArrowDataType) -> PolarsResult<Box<dyn Array>> {
        let mut offsets = std::mem::take(&mut self.offsets);
        if offsets.is_empty() {
            offsets.push(0);
        }
        let child = ListArray::<i32>::try_get_child(dtype)?.dtype().clone();
        let values = self.values.array(&child)?;
        Ok(ListArray::<i32>::try_new(dtype.clone(), offsets.try_into()?, values, None)?.boxed())
    }
}

impl ColumnBuilder<Vec<String>> for ListStrBuilder {
    #[inline]
    fn push(&mut self, v: &Vec<String>) {
        self.push_list(v, String::as_str);
    }
    fn bytes(&self) -> usize {
        self.heap()
    }
    fn finish(&mut self, _name: &str, dtype: &ArrowDataType) -> PolarsResult<Box<dyn Array>> {
        self.array(dtype)
    }
}

impl ColumnBuilder<Vec<Cow<'static, str>>> for ListStrBuilder {
    #[inline]
    fn push(&mut self, v: &Vec<Cow<'static, str>>) {
        self.push_list(v, |s| &**s);
    }
    fn bytes(&self) -> usize {
        self.heap()
    }
    fn finish(&mut self, _name: &str, dtype: &ArrowDataType) -> PolarsResult<Box<dyn Array>> {
        self.array(dtype)
    }
}

impl ColumnBuilder<Vec<&'static str>> for ListStrBuilder {
    #[inline]
    fn push(&mut self, v: &Vec<&'static str>) {
        self.push_list(v, |s| *s);
    }
    fn bytes(&self) -> usize {
        self.heap()
    }
    fn finish(&mut self, _name: &str, dtype: &ArrowDataType) -> PolarsResult<Box<dyn Array>> {
        self.array(dtype)
    }
}

/// A `list<int64>` column of unsigned values (saturated and noted).
#[derive(Default)]
pub struct ListI64Builder {
    offsets: Vec<i32>,
    values: Vec<i64>,
    noted: u64,
}

impl ColumnBuilder<Vec<u64>> for ListI64Builder {
    fn push(&mut self, v: &Vec<u64>) {
        if self.offsets.is_empty() {
            self.offsets.push(0);
        }
        for x in v {
            let y = saturate_i64(*x, &mut self.noted);
            self.values.push(y);
        }
        self.offsets.push(list_offset(self.values.len()));
    }
    fn bytes(&self) -> usize {
        self.offsets.capacity() * 4 + self.values.capacity() * 8
    }
    fn finish(&mut self, name: &str, dtype: &ArrowDataType) -> PolarsResult<Box<dyn Array>> {
        note(name, "value_saturated", std::mem::take(&mut self.noted));
        let mut offsets = std::mem::take(&mut self.offsets);
        if offsets.is_empty() {
            offsets.push(0);
        }
        let child = ListArray::<i32>::try_get_child(dtype)?.dtype().clone();
        let values = PrimitiveArray::<i64>::try_new(child, std::mem::take(&mut self.values).into(), None)?.boxed();
        Ok(ListArray::<i32>::try_new(dtype.clone(), offsets.try_into()?, values, None)?.boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build<V, B: ColumnBuilder<V>>(name: &str, dtype: ArrowDataType, values: &[V]) -> Box<dyn Array> {
        let mut b = B::default();
        for v in values {
            b.push(v);
        }
        let a = b.finish(name, &dtype).unwrap();
        assert_eq!(b.bytes(), 0, "finish hands the buffers over");
        a
    }

    trait TapPush {
        fn tap_push(self, v: &[Option<&'static str>]) -> Box<dyn Array>;
    }
    impl TapPush for StrBuilder {
        fn tap_push(mut self, v: &[Option<&'static str>]) -> Box<dyn Array> {
            for x in v {
                self.push_opt_str(*x);
            }
            self.array(&ArrowDataType::LargeUtf8).unwrap()
        }
    }

    fn ints<T: NativeType>(a: &dyn Array) -> Vec<Option<T>> {
        let a = a.as_any().downcast_ref::<PrimitiveArray<T>>().unwrap();
        a.iter().map(|v| v.copied()).collect()
    }

    #[test]
    fn unsigned_values_saturate_and_are_noted() {
        set_current_table("t");
        let _ = take_notes();
        let v = [1u64, u64::MAX, i64::MAX as u64, 1 << 63];
        let c = build::<u64, PrimBuilder<i64>>("x", ArrowDataType::Int64, &v);
        assert_eq!(ints::<i64>(&*c), [1, i64::MAX, i64::MAX, i64::MAX].map(Some));
        let p = [80u32, 65535, u32::MAX];
        let c = build::<u32, <I32 as ColumnSpec<u32>>::Builder>("port", ArrowDataType::Int32, &p);
        assert_eq!(ints::<i32>(&*c), [80, 65535, i32::MAX].map(Some));
        let l = [vec![1u64, u64::MAX], vec![], vec![3]];
        let dt = ArrowDataType::List(Box::new(ArrowField::new("item".into(), ArrowDataType::Int64, true)));
        let c = build::<Vec<u64>, ListI64Builder>("ids", dt, &l);
        let c = c.as_any().downcast_ref::<ListArray<i32>>().unwrap();
        assert_eq!(c.offsets().as_slice(), [0, 2, 2, 3]);
        assert_eq!(ints::<i64>(&**c.values()), [1, i64::MAX, 3].map(Some));
        let notes = take_notes();
        assert_eq!(notes.len(), 3);
        assert_eq!((notes[0].column.as_str(), notes[0].n), ("x", 2));
        assert_eq!((notes[1].column.as_str(), notes[1].n), ("port", 1));
        assert_eq!((notes[2].column.as_str(), notes[2].n), ("ids", 1));
        assert!(notes.iter().all(|n| n.kind == "value_saturated" && n.table == "t"));
        assert!(take_notes().is_empty());
    }

    #[test]
    fn timestamps_outside_1970_2200_are_not_values() {
        set_current_table("t");
        let _ = take_notes();
        let v = [
            Some(Ts(5)),
            Some(Ts(i64::MIN)),
            Some(Ts(i64::MAX)),
            None,
            Some(Ts(TS_END_US - 1)),
        ];
        let dt = ArrowDataType::Timestamp(polars_arrow::datatypes::TimeUnit::Microsecond, Some("UTC".into()));
        let c = build::<Option<Ts>, PrimBuilder<i64>>("ts", dt.clone(), &v);
        assert_eq!(ints::<i64>(&*c), [Some(5), None, None, None, Some(TS_END_US - 1)]);
        assert_eq!(c.dtype(), &dt);
        let c = build::<Ts, PrimBuilder<i64>>("t2", dt, &[Ts(-1), Ts(7)]);
        assert_eq!(ints::<i64>(&*c), [Some(0), Some(7)]);
        assert!(c.validity().is_none());
        let notes = take_notes();
        assert_eq!(notes.iter().map(|n| n.n).collect::<Vec<_>>(), [2, 1]);
        assert!(notes.iter().all(|n| n.kind == "timestamp_out_of_range"));
    }

    #[test]
    fn validity_bits_as_a_mutable_bitmap_makes_them() {
        for n in [0usize, 1, 7, 8, 9, 63, 64, 65, 200] {
            for first_null in [0usize, 1, 7, 8, 13, 64, 199, usize::MAX] {
                let valid = |i: usize| i != first_null && (i < first_null || !i.is_multiple_of(3));
                let mut v = Validity::default();
                let mut want = MutableBitmap::new();
                for i in 0..n {
                    v.push(i, valid(i));
                    want.push(valid(i));
                }
                let want: Option<Bitmap> = want.into();
                assert_eq!(v.take(), want, "{n} values, first null {first_null}");
                // Empty again.
                assert_eq!((v.bytes(), v.take()), (0, None));
            }
        }
    }

    #[test]
    fn text_bool_and_list_columns_and_their_bytes() {
        // Text: a dictionary of its values (see dict.rs).
        let v = [Some("ab".to_string()), None, Some(String::new()), Some("ü".into())];
        let c = build::<Option<String>, DictBuilder<Texts>>("s", ArrowDataType::LargeUtf8, &v);
        let c = names_as_text(&*c).unwrap();
        let c = c.as_any().downcast_ref::<Utf8Array<i64>>().unwrap();
        let got: Vec<Option<&str>> = c.iter().collect();
        assert_eq!(got, [Some("ab"), None, Some(""), Some("ü")]);
        // No bitmap when nothing is null.
        let c = build::<Option<String>, DictBuilder<Texts>>(
            "k",
            ArrowDataType::LargeUtf8,
            &[Some("query".into()), Some("x".into())],
        );
        assert!(c.validity().is_none());
        // Names: dictionary-encoded in order of first appearance, as the
        // Parquet writer's own cast of the text makes them.
        let v = [Some("query"), None, Some("response"), Some("query")];
        let c = build::<Option<&'static str>, NameBuilder>("k", ArrowDataType::LargeUtf8, &v);
        assert!(writes_as(&*c, &ArrowDataType::LargeUtf8));
        let text = StrBuilder::default().tap_push(&v);
        let cast = polars::polars_compute::cast::cast(&*text, c.dtype(), Default::default()).unwrap();
        assert_eq!(&*cast, &*c);
        assert_eq!(&*names_as_text(&*c).unwrap(), &*StrBuilder::default().tap_push(&v));
        let d = c.as_any().downcast_ref::<DictionaryArray<u32>>().unwrap();
        assert_eq!(
            d.keys().iter().map(|k| k.copied()).collect::<Vec<_>>(),
            [Some(0), None, Some(1), Some(0)]
        );
        let b = [Some(true), None, Some(false)];
        let c = build::<Option<bool>, BoolBuilder>("b", ArrowDataType::Boolean, &b);
        let c = c.as_any().downcast_ref::<BooleanArray>().unwrap();
        assert_eq!(c.iter().collect::<Vec<_>>(), b);
        let dt = ArrowDataType::List(Box::new(ArrowField::new("item".into(), ArrowDataType::LargeUtf8, true)));
        let l = [vec!["a".to_string(), "bc".into()], vec![]];
        let c = build::<Vec<String>, ListStrBuilder>("l", dt.clone(), &l);
        let c = c.as_any().downcast_ref::<ListArray<i32>>().unwrap();
        assert_eq!(c.offsets().as_slice(), [0, 2, 2]);
        // Empty lists first, between and last.
        let l: [Vec<Cow<'static, str>>; 6] = [
            vec![],
            vec!["a".into(), "bc".into()],
            vec![],
            vec![],
            vec!["d".into()],
            vec![],
        ];
        let c = build::<Vec<Cow<'static, str>>, ListStrBuilder>("l", dt, &l);
        let c = c.as_any().downcast_ref::<ListArray<i32>>().unwrap();
        assert_eq!(c.offsets().as_slice(), [0, 0, 2, 2, 2, 3, 3]);
        let items = c.values().as_any().downcast_ref::<Utf8Array<i64>>().unwrap();
        assert_eq!(items.values_iter().collect::<Vec<_>>(), ["a", "bc", "d"]);
        // Exact bytes: the capacities of the buffers.
        let mut s = StrBuilder::default();
        for _ in 0..100 {
            s.push_str("0123456789");
        }
        assert_eq!(s.heap(), s.offsets.capacity() * 8 + s.data.capacity());
        assert!(s.data.capacity() >= 1000 && s.offsets.capacity() >= 101);
        let mut p = PrimBuilder::<i64>::default();
        for i in 0..1000u64 {
            ColumnBuilder::<Option<u64>>::push(&mut p, &(i % 2 == 0).then_some(i));
        }
        let bytes = ColumnBuilder::<Option<u64>>::bytes(&p);
        assert_eq!(bytes, p.values.v.capacity() * 8 + p.validity.bytes());
        assert!(p.validity.bytes() >= 125);
    }

    #[test]
    fn null_first_counts_what_a_vec_grown_by_pushes_holds() {
        // Row groups of leading nulls then values, of nulls only, of
        // values only: the budget's figure after every row is the capacity
        // of a `Vec` that got every slot pushed (the row groups end where
        // they did), what is allocated is never more, and the rows handed
        // over are the same.
        fn check<T: Copy + Default + PartialEq + std::fmt::Debug + From<u8>>() {
            let mut p = NullFirst::<T>::default();
            for (nulls, values) in [(0, 3000), (1, 0), (700, 1300), (2500, 0), (5, 1), (0, 0), (63, 66)] {
                let mut v: Vec<T> = Vec::new();
                for i in 0..nulls + values {
                    let x = if i < nulls {
                        let fill = p.last().unwrap_or_default();
                        p.push_null(fill);
                        fill
                    } else {
                        let x = T::from((i % 251) as u8);
                        p.push(x);
                        x
                    };
                    v.push(x);
                    let size = std::mem::size_of::<T>();
                    assert_eq!(p.bytes(), v.capacity() * size, "{nulls} nulls, row {i}");
                    assert!(p.v.capacity() * size <= p.bytes());
                    assert_eq!(p.len(), v.len());
                }
                assert_eq!(p.take(), v);
                assert_eq!((p.len(), p.bytes()), (0, 0));
            }
        }
        check::<u32>();
        check::<i32>();
        check::<i64>();
        check::<f64>();
    }

    #[test]
    fn nulls_before_the_first_value_are_the_same_array() {
        // A column null in its first rows, then with values and nulls, and
        // a row group of nulls only: the values under the nulls are 0, as
        // pushing them made them.
        let mut p = PrimBuilder::<i64>::default();
        let rows: Vec<Option<u64>> = (0..300u64).map(|i| (i >= 100 && i % 3 == 0).then_some(i)).collect();
        for r in &rows {
            ColumnBuilder::<Option<u64>>::push(&mut p, r);
        }
        let a = ColumnBuilder::<Option<u64>>::finish(&mut p, "c", &ArrowDataType::Int64).unwrap();
        let a = a.as_any().downcast_ref::<PrimitiveArray<i64>>().unwrap();
        let want: Vec<i64> = rows.iter().map(|r| r.map_or(0, |x| x as i64)).collect();
        assert_eq!(a.values().as_slice(), want.as_slice());
        assert_eq!(
            a.iter().map(|x| x.copied()).collect::<Vec<_>>(),
            rows.iter().map(|r| r.map(|x| x as i64)).collect::<Vec<_>>()
        );
        assert_eq!(a.null_count(), 234);
        for _ in 0..77 {
            ColumnBuilder::<Option<u64>>::push(&mut p, &None);
        }
        assert_eq!(ColumnBuilder::<Option<u64>>::bytes(&p), 128 * 8 + p.validity.bytes());
        let a = ColumnBuilder::<Option<u64>>::finish(&mut p, "c", &ArrowDataType::Int64).unwrap();
        let a = a.as_any().downcast_ref::<PrimitiveArray<i64>>().unwrap();
        assert_eq!((a.len(), a.null_count()), (77, 77));
        assert_eq!(a.values().as_slice(), [0i64; 77]);
    }
}
