//! Rust field types → polars columns. One trait, implemented for the handful
//! of types rows use, so each table is declared once (see `tables.rs`) and
//! its Parquet schema, its columns and its documentation all follow from it.

use std::sync::Arc;

use polars::prelude::*;

/// A timestamp: microseconds since the Unix epoch, UTC (CONTRACT: `ts`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ts(pub i64);

/// A field type that can become a column.
pub trait ColumnValue: Sized {
    /// The polars dtype of the column.
    fn dtype() -> DataType;
    /// Short type name for docs/SCHEMA.md.
    fn type_doc() -> &'static str;
    /// Builds the column from one value per row.
    fn column<'a>(name: &str, values: impl ExactSizeIterator<Item = &'a Self>) -> Column
    where
        Self: 'a;
}

fn utc() -> DataType {
    DataType::Datetime(TimeUnit::Microseconds, Some(TimeZone::UTC))
}

macro_rules! primitive {
    ($t:ty, $ca:ty, $dt:expr, $doc:literal) => {
        impl ColumnValue for $t {
            fn dtype() -> DataType {
                $dt
            }
            fn type_doc() -> &'static str {
                $doc
            }
            fn column<'a>(name: &str, values: impl ExactSizeIterator<Item = &'a Self>) -> Column {
                <$ca>::from_iter_values(name.into(), values.copied()).into_column()
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
                <$ca>::from_iter_options(name.into(), values.copied()).into_column()
            }
        }
    };
}

primitive!(u64, UInt64Chunked, DataType::UInt64, "u64");
primitive!(u32, UInt32Chunked, DataType::UInt32, "u32");
primitive!(i64, Int64Chunked, DataType::Int64, "i64");
primitive!(f64, Float64Chunked, DataType::Float64, "f64");

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

impl ColumnValue for Ts {
    fn dtype() -> DataType {
        utc()
    }
    fn type_doc() -> &'static str {
        "timestamp[us, UTC]"
    }
    fn column<'a>(name: &str, values: impl ExactSizeIterator<Item = &'a Self>) -> Column {
        Int64Chunked::from_iter_values(name.into(), values.map(|t| t.0))
            .into_datetime(TimeUnit::Microseconds, Some(TimeZone::UTC))
            .into_column()
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
        Int64Chunked::from_iter_options(name.into(), values.map(|t| t.map(|t| t.0)))
            .into_datetime(TimeUnit::Microseconds, Some(TimeZone::UTC))
            .into_column()
    }
}

impl ColumnValue for String {
    fn dtype() -> DataType {
        DataType::String
    }
    fn type_doc() -> &'static str {
        "str"
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
        "str"
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
        "str?"
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
        "str"
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
        "str?"
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
        "str?"
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
        "list[str]"
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
        "list[str]"
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
