//! Rust field types → polars columns. One trait, implemented for the handful
//! of types rows use, so each table is declared once (see `tables.rs`) and
//! its Parquet schema, its columns and its documentation all follow from it.
//!
//! What every engine reads without a cast (CONTRACT "Column conventions"):
//! counts and sizes are written as signed 64-bit integers (a `u64` field
//! above `i64::MAX` is written as `i64::MAX` and noted, never wrapped), ports
//! and other small ranges as signed 32-bit integers, times as UTC
//! microsecond timestamps between 1970 and 2200 (others are noted and
//! written as null, or as the nearest bound where the column has no null),
//! text as plain UTF-8. The notes become `anomalies` rows (layer `sink`)
//! when the run's files are completed.

use std::cell::{Cell, RefCell};
use std::sync::Arc;

use polars::prelude::*;

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
/// column built from one value per row. Implemented by every
/// [`ColumnValue`] for itself, and by markers such as [`I32`] for a field
/// written narrower than its Rust type.
pub trait ColumnSpec<V> {
    fn dtype() -> DataType;
    fn type_doc() -> &'static str;
    fn column<'a>(name: &str, values: impl ExactSizeIterator<Item = &'a V>) -> Column
    where
        V: 'a;
}

/// A field type that can become a column.
pub trait ColumnValue: Sized {
    /// The polars dtype of the column.
    fn dtype() -> DataType;
    /// Short type name for docs/SCHEMA.md (Arrow's names; `?`: nullable).
    fn type_doc() -> &'static str;
    /// Builds the column from one value per row.
    fn column<'a>(name: &str, values: impl ExactSizeIterator<Item = &'a Self>) -> Column
    where
        Self: 'a;
}

impl<V: ColumnValue> ColumnSpec<V> for V {
    fn dtype() -> DataType {
        V::dtype()
    }
    fn type_doc() -> &'static str {
        V::type_doc()
    }
    fn column<'a>(name: &str, values: impl ExactSizeIterator<Item = &'a V>) -> Column
    where
        V: 'a,
    {
        V::column(name, values)
    }
}

/// Marker: a `u32` field whose values fit in 31 bits (ports, attempt
/// numbers), written as int32. A larger value saturates and is noted.
pub struct I32;

fn to_i32(v: u32, n: &mut u64) -> i32 {
    i32::try_from(v).unwrap_or_else(|_| {
        *n += 1;
        i32::MAX
    })
}

impl ColumnSpec<u32> for I32 {
    fn dtype() -> DataType {
        DataType::Int32
    }
    fn type_doc() -> &'static str {
        "int32"
    }
    fn column<'a>(name: &str, values: impl ExactSizeIterator<Item = &'a u32>) -> Column {
        let mut n = 0;
        let c = Int32Chunked::from_iter_values(name.into(), values.map(|v| to_i32(*v, &mut n))).into_column();
        note(name, "value_saturated", n);
        c
    }
}

impl ColumnSpec<Option<u32>> for I32 {
    fn dtype() -> DataType {
        DataType::Int32
    }
    fn type_doc() -> &'static str {
        "int32?"
    }
    fn column<'a>(name: &str, values: impl ExactSizeIterator<Item = &'a Option<u32>>) -> Column {
        let mut n = 0;
        let c =
            Int32Chunked::from_iter_options(name.into(), values.map(|v| v.map(|v| to_i32(v, &mut n)))).into_column();
        note(name, "value_saturated", n);
        c
    }
}

fn u64_to_i64(v: u64, n: &mut u64) -> i64 {
    i64::try_from(v).unwrap_or_else(|_| {
        *n += 1;
        i64::MAX
    })
}

impl ColumnValue for u64 {
    fn dtype() -> DataType {
        DataType::Int64
    }
    fn type_doc() -> &'static str {
        "int64"
    }
    fn column<'a>(name: &str, values: impl ExactSizeIterator<Item = &'a Self>) -> Column {
        let mut n = 0;
        let c = Int64Chunked::from_iter_values(name.into(), values.map(|v| u64_to_i64(*v, &mut n))).into_column();
        note(name, "value_saturated", n);
        c
    }
}

impl ColumnValue for Option<u64> {
    fn dtype() -> DataType {
        DataType::Int64
    }
    fn type_doc() -> &'static str {
        "int64?"
    }
    fn column<'a>(name: &str, values: impl ExactSizeIterator<Item = &'a Self>) -> Column {
        let mut n = 0;
        let c = Int64Chunked::from_iter_options(name.into(), values.map(|v| v.map(|v| u64_to_i64(v, &mut n))))
            .into_column();
        note(name, "value_saturated", n);
        c
    }
}

macro_rules! primitive {
    ($t:ty, $ca:ty, $dt:expr, $doc:literal, $conv:expr) => {
        impl ColumnValue for $t {
            fn dtype() -> DataType {
                $dt
            }
            fn type_doc() -> &'static str {
                $doc
            }
            fn column<'a>(name: &str, values: impl ExactSizeIterator<Item = &'a Self>) -> Column {
                <$ca>::from_iter_values(name.into(), values.copied().map($conv)).into_column()
            }
        }
        impl ColumnValue for Option<$t> {
            fn dtype() -> DataType {
                $dt
            }
            fn type_doc() -> &'static str {
                concat!($doc, "?")
            }
            fn column<'a>(name: &str, values: impl ExactSizeIterator<Item = &'a Self>) -> Column {
                <$ca>::from_iter_options(name.into(), values.map(|v| v.map($conv))).into_column()
            }
        }
    };
}

// u32 fields without a marker (piece indices, offsets and lengths from the
// wire) take every u32 value: int64, lossless.
primitive!(u32, Int64Chunked, DataType::Int64, "int64", i64::from);
primitive!(i64, Int64Chunked, DataType::Int64, "int64", |v: i64| v);
primitive!(f64, Float64Chunked, DataType::Float64, "float64", |v: f64| v);

impl ColumnValue for bool {
    fn dtype() -> DataType {
        DataType::Boolean
    }
    fn type_doc() -> &'static str {
        "bool"
    }
    fn column<'a>(name: &str, values: impl ExactSizeIterator<Item = &'a Self>) -> Column {
        BooleanChunked::from_iter_values(name.into(), values.copied()).into_column()
    }
}

impl ColumnValue for Option<bool> {
    fn dtype() -> DataType {
        DataType::Boolean
    }
    fn type_doc() -> &'static str {
        "bool?"
    }
    fn column<'a>(name: &str, values: impl ExactSizeIterator<Item = &'a Self>) -> Column {
        BooleanChunked::from_iter_options(name.into(), values.copied()).into_column()
    }
}

fn utc() -> DataType {
    DataType::Datetime(TimeUnit::Microseconds, Some(TimeZone::UTC))
}

impl ColumnValue for Ts {
    fn dtype() -> DataType {
        utc()
    }
    fn type_doc() -> &'static str {
        "timestamp[us, UTC]"
    }
    fn column<'a>(name: &str, values: impl ExactSizeIterator<Item = &'a Self>) -> Column {
        let mut n = 0;
        let c = Int64Chunked::from_iter_values(
            name.into(),
            values.map(|t| {
                if ts_in_range(t.0) {
                    t.0
                } else {
                    n += 1;
                    t.0.clamp(TS_MIN_US, TS_END_US - 1)
                }
            }),
        )
        .into_datetime(TimeUnit::Microseconds, Some(TimeZone::UTC))
        .into_column();
        note(name, "timestamp_out_of_range", n);
        c
    }
}

impl ColumnValue for Option<Ts> {
    fn dtype() -> DataType {
        utc()
    }
    fn type_doc() -> &'static str {
        "timestamp[us, UTC]?"
    }
    fn column<'a>(name: &str, values: impl ExactSizeIterator<Item = &'a Self>) -> Column {
        let mut n = 0;
        let c = Int64Chunked::from_iter_options(
            name.into(),
            values.map(|t| match t {
                Some(t) if ts_in_range(t.0) => Some(t.0),
                Some(_) => {
                    n += 1;
                    None
                }
                None => None,
            }),
        )
        .into_datetime(TimeUnit::Microseconds, Some(TimeZone::UTC))
        .into_column();
        note(name, "timestamp_out_of_range", n);
        c
    }
}

impl ColumnValue for String {
    fn dtype() -> DataType {
        DataType::String
    }
    fn type_doc() -> &'static str {
        "string"
    }
    fn column<'a>(name: &str, values: impl ExactSizeIterator<Item = &'a Self>) -> Column {
        StringChunked::from_iter_values(name.into(), values.map(|s| s.as_str())).into_column()
    }
}

/// A string shared between rows (per-message rows repeat their
/// connection's addresses, info hash and capture name).
impl ColumnValue for Arc<str> {
    fn dtype() -> DataType {
        DataType::String
    }
    fn type_doc() -> &'static str {
        "string"
    }
    fn column<'a>(name: &str, values: impl ExactSizeIterator<Item = &'a Self>) -> Column {
        StringChunked::from_iter_values(name.into(), values.map(|s| &**s)).into_column()
    }
}

impl ColumnValue for Option<Arc<str>> {
    fn dtype() -> DataType {
        DataType::String
    }
    fn type_doc() -> &'static str {
        "string?"
    }
    fn column<'a>(name: &str, values: impl ExactSizeIterator<Item = &'a Self>) -> Column {
        StringChunked::from_iter_options(name.into(), values.map(|s| s.as_deref())).into_column()
    }
}

impl ColumnValue for &'static str {
    fn dtype() -> DataType {
        DataType::String
    }
    fn type_doc() -> &'static str {
        "string"
    }
    fn column<'a>(name: &str, values: impl ExactSizeIterator<Item = &'a Self>) -> Column {
        StringChunked::from_iter_values(name.into(), values.copied()).into_column()
    }
}

impl ColumnValue for Option<String> {
    fn dtype() -> DataType {
        DataType::String
    }
    fn type_doc() -> &'static str {
        "string?"
    }
    fn column<'a>(name: &str, values: impl ExactSizeIterator<Item = &'a Self>) -> Column {
        StringChunked::from_iter_options(name.into(), values.map(|s| s.as_deref())).into_column()
    }
}

impl ColumnValue for Option<&'static str> {
    fn dtype() -> DataType {
        DataType::String
    }
    fn type_doc() -> &'static str {
        "string?"
    }
    fn column<'a>(name: &str, values: impl ExactSizeIterator<Item = &'a Self>) -> Column {
        StringChunked::from_iter_options(name.into(), values.copied()).into_column()
    }
}

impl ColumnValue for Vec<String> {
    fn dtype() -> DataType {
        DataType::List(Box::new(DataType::String))
    }
    fn type_doc() -> &'static str {
        "list<string>"
    }
    fn column<'a>(name: &str, values: impl ExactSizeIterator<Item = &'a Self>) -> Column {
        let n = values.len();
        let mut b = ListStringChunkedBuilder::new(name.into(), n, n * 2);
        for v in values {
            b.append_values_iter(v.iter().map(|s| s.as_str()));
        }
        b.finish().into_column()
    }
}

impl ColumnValue for Vec<&'static str> {
    fn dtype() -> DataType {
        DataType::List(Box::new(DataType::String))
    }
    fn type_doc() -> &'static str {
        "list<string>"
    }
    fn column<'a>(name: &str, values: impl ExactSizeIterator<Item = &'a Self>) -> Column {
        let n = values.len();
        let mut b = ListStringChunkedBuilder::new(name.into(), n, n * 2);
        for v in values {
            b.append_values_iter(v.iter().copied());
        }
        b.finish().into_column()
    }
}

/// Conn ids a peer took part in (peers.conn_ids).
impl ColumnValue for Vec<u64> {
    fn dtype() -> DataType {
        DataType::List(Box::new(DataType::Int64))
    }
    fn type_doc() -> &'static str {
        "list<int64>"
    }
    fn column<'a>(name: &str, values: impl ExactSizeIterator<Item = &'a Self>) -> Column {
        let n = values.len();
        let mut b = ListPrimitiveChunkedBuilder::<Int64Type>::new(name.into(), n, n * 2, DataType::Int64);
        let mut sat = 0;
        for v in values {
            b.append_values_iter(v.iter().map(|x| u64_to_i64(*x, &mut sat)));
        }
        note(name, "value_saturated", sat);
        b.finish().into_column()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsigned_values_saturate_and_are_noted() {
        set_current_table("t");
        let _ = take_notes();
        let v = [1u64, u64::MAX, i64::MAX as u64, 1 << 63];
        let c = <u64 as ColumnValue>::column("x", v.iter());
        let got: Vec<i64> = c.i64().unwrap().into_no_null_iter().collect();
        assert_eq!(got, [1, i64::MAX, i64::MAX, i64::MAX]);
        let p = [80u32, 65535, u32::MAX];
        let c = <I32 as ColumnSpec<u32>>::column("port", p.iter());
        let got: Vec<i32> = c.i32().unwrap().into_no_null_iter().collect();
        assert_eq!(got, [80, 65535, i32::MAX]);
        let notes = take_notes();
        assert_eq!(notes.len(), 2);
        assert_eq!((notes[0].column.as_str(), notes[0].n), ("x", 2));
        assert_eq!((notes[1].column.as_str(), notes[1].n), ("port", 1));
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
        let c = <Option<Ts> as ColumnValue>::column("ts", v.iter());
        let got: Vec<Option<i64>> = c.datetime().unwrap().physical().iter().collect();
        assert_eq!(got, [Some(5), None, None, None, Some(TS_END_US - 1)]);
        let c = <Ts as ColumnValue>::column("t2", [Ts(-1), Ts(7)].iter());
        let got: Vec<i64> = c.datetime().unwrap().physical().into_no_null_iter().collect();
        assert_eq!(got, [0, 7]);
        let notes = take_notes();
        assert_eq!(notes.iter().map(|n| n.n).collect::<Vec<_>>(), [2, 1]);
        assert!(notes.iter().all(|n| n.kind == "timestamp_out_of_range"));
    }
}
