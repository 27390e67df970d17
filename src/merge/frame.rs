//! Column access and row picking on polars frames, for the merge.

use std::collections::BTreeSet;

use polars::prelude::*;

pub type Res<T> = Result<T, String>;

pub fn err<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// A column as i64 (timestamps: microseconds), nulls as None; an absent
/// column as all None.
pub fn i64s(df: &DataFrame, name: &str) -> Res<Vec<Option<i64>>> {
    let Ok(c) = df.column(name) else {
        return Ok(vec![None; df.height()]);
    };
    let c = c.cast(&DataType::Int64).map_err(err)?;
    Ok(c.i64().map_err(err)?.iter().collect())
}

pub fn i64s0(df: &DataFrame, name: &str) -> Res<Vec<i64>> {
    Ok(i64s(df, name)?.into_iter().map(|v| v.unwrap_or(0)).collect())
}

pub fn strs(df: &DataFrame, name: &str) -> Res<Vec<Option<String>>> {
    let Ok(c) = df.column(name) else {
        return Ok(vec![None; df.height()]);
    };
    let c = c.cast(&DataType::String).map_err(err)?;
    Ok(c.str().map_err(err)?.iter().map(|s| s.map(str::to_string)).collect())
}

pub fn strs0(df: &DataFrame, name: &str) -> Res<Vec<String>> {
    Ok(strs(df, name)?.into_iter().map(Option::unwrap_or_default).collect())
}

pub fn bools(df: &DataFrame, name: &str) -> Res<Vec<Option<bool>>> {
    let Ok(c) = df.column(name) else {
        return Ok(vec![None; df.height()]);
    };
    Ok(c.bool().map_err(err)?.iter().collect())
}

/// List<String> column as vectors (null: empty).
pub fn str_lists(df: &DataFrame, name: &str) -> Res<Vec<Vec<String>>> {
    let Ok(c) = df.column(name) else {
        return Ok(vec![Vec::new(); df.height()]);
    };
    let l = c.list().map_err(err)?;
    let mut out = Vec::with_capacity(df.height());
    for i in 0..l.len() {
        out.push(match l.get_as_series(i) {
            Some(s) => s
                .cast(&DataType::String)
                .map_err(err)?
                .str()
                .map_err(err)?
                .iter()
                .flatten()
                .map(str::to_string)
                .collect(),
            None => Vec::new(),
        });
    }
    Ok(out)
}

/// List<Int64> column as vectors (null: empty).
pub fn i64_lists(df: &DataFrame, name: &str) -> Res<Vec<Vec<i64>>> {
    let Ok(c) = df.column(name) else {
        return Ok(vec![Vec::new(); df.height()]);
    };
    let l = c.list().map_err(err)?;
    let mut out = Vec::with_capacity(df.height());
    for i in 0..l.len() {
        out.push(match l.get_as_series(i) {
            Some(s) => s
                .cast(&DataType::Int64)
                .map_err(err)?
                .i64()
                .map_err(err)?
                .iter()
                .flatten()
                .collect(),
            None => Vec::new(),
        });
    }
    Ok(out)
}

pub fn col_i64(name: &str, v: Vec<Option<i64>>) -> Column {
    Int64Chunked::from_iter_options(name.into(), v.into_iter()).into_column()
}

pub fn col_ts(name: &str, v: Vec<Option<i64>>) -> Column {
    Int64Chunked::from_iter_options(name.into(), v.into_iter())
        .into_datetime(TimeUnit::Microseconds, Some(TimeZone::UTC))
        .into_column()
}

pub fn col_f64(name: &str, v: Vec<Option<f64>>) -> Column {
    Float64Chunked::from_iter_options(name.into(), v.into_iter()).into_column()
}

pub fn col_bool(name: &str, v: Vec<Option<bool>>) -> Column {
    BooleanChunked::from_iter_options(name.into(), v.into_iter()).into_column()
}

pub fn col_str(name: &str, v: Vec<Option<String>>) -> Column {
    StringChunked::from_iter_options(name.into(), v.into_iter()).into_column()
}

pub fn col_str_list(name: &str, v: Vec<Vec<String>>) -> Column {
    let mut b = ListStringChunkedBuilder::new(name.into(), v.len(), v.iter().map(Vec::len).sum());
    for l in &v {
        b.append_values_iter(l.iter().map(String::as_str));
    }
    b.finish().into_column()
}

pub fn col_i64_list(name: &str, v: Vec<Vec<i64>>) -> Column {
    let mut b = ListPrimitiveChunkedBuilder::<Int64Type>::new(
        name.into(),
        v.len(),
        v.iter().map(Vec::len).sum(),
        DataType::Int64,
    );
    for l in &v {
        b.append_slice(l);
    }
    b.finish().into_column()
}

pub fn take(df: &DataFrame, idx: &[usize]) -> Res<DataFrame> {
    let ca = IdxCa::from_vec("idx".into(), idx.iter().map(|&i| i as IdxSize).collect());
    df.take(&ca).map_err(err)
}

pub fn set(df: &mut DataFrame, c: Column) -> Res<()> {
    df.with_column(c).map_err(err)?;
    Ok(())
}

/// The sensor set of several rows' `sensor` values: each split on `,`,
/// sorted, joined with `,`.
pub fn sensor_set<'a>(it: impl IntoIterator<Item = &'a str>) -> String {
    let mut s: BTreeSet<&str> = BTreeSet::new();
    for v in it {
        for part in v.split(',') {
            if !part.is_empty() {
                s.insert(part);
            }
        }
    }
    s.into_iter().collect::<Vec<_>>().join(",")
}

/// The frames of several datasets as one (columns aligned to `schema`,
/// plus `_ds`: the dataset index of each row).
pub fn conform(df: DataFrame, schema: &Schema, ds: u32) -> Res<DataFrame> {
    let h = df.height();
    let mut cols = Vec::with_capacity(schema.len() + 1);
    for (name, dtype) in schema.iter() {
        let c = match df.column(name.as_str()) {
            Ok(c) if c.dtype() == dtype => c.clone(),
            Ok(c) => c.cast(dtype).map_err(err)?,
            Err(_) => Column::full_null(name.clone(), h, dtype),
        };
        cols.push(c);
    }
    cols.push(UInt32Chunked::full("_ds".into(), ds, h).into_column());
    DataFrame::new(h, cols).map_err(err)
}

pub fn empty(schema: &Schema) -> Res<DataFrame> {
    conform(DataFrame::empty(), schema, 0)
}

pub fn concat(mut frames: Vec<DataFrame>, schema: &Schema) -> Res<DataFrame> {
    if frames.is_empty() {
        return empty(schema);
    }
    let mut df = frames.remove(0);
    for f in &frames {
        df.vstack_mut(f).map_err(err)?;
    }
    df.rechunk_mut();
    Ok(df)
}

pub fn ds_of(df: &DataFrame) -> Res<Vec<usize>> {
    Ok(i64s0(df, "_ds")?.into_iter().map(|v| v as usize).collect())
}
