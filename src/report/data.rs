//! Reading a dataset for the report: offline (`DIR/<table>.parquet`) or live
//! (`DIR/<table>/date=…/hour=…/part-*.parquet`, entity tables as snapshots
//! per `interval_start`, of which the latest row per key is kept, as
//! docs/SCHEMA.md "Live datasets" says).
//!
//! Only the columns a section needs are read (Parquet projection), and every
//! column is converted to one of four plain kinds by casting (integers and
//! timestamps to Int64, floats to Float64), so a column written as u64 today
//! and i64 tomorrow reads the same. A column the files lack reads as nulls.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use polars::prelude::*;

/// What a column is read as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Integers and timestamps (microseconds), cast to Int64.
    I,
    /// Floats, cast to Float64.
    F,
    /// Text.
    S,
    /// Booleans.
    B,
    /// Lists of text.
    L,
}

/// One column's values.
#[derive(Debug)]
pub enum Col {
    I(Vec<Option<i64>>),
    F(Vec<Option<f64>>),
    S(Vec<Option<String>>),
    B(Vec<Option<bool>>),
    L(Vec<Vec<String>>),
}

/// A table read into plain vectors.
#[derive(Debug, Default)]
pub struct Table {
    pub rows: usize,
    cols: HashMap<&'static str, Col>,
    /// The table had at least one file.
    pub present: bool,
}

impl Table {
    pub fn i(&self, c: &str, r: usize) -> Option<i64> {
        match self.cols.get(c) {
            Some(Col::I(v)) => v.get(r).copied().flatten(),
            _ => None,
        }
    }
    pub fn f(&self, c: &str, r: usize) -> Option<f64> {
        match self.cols.get(c) {
            Some(Col::F(v)) => v.get(r).copied().flatten().filter(|x| x.is_finite()),
            Some(Col::I(v)) => v.get(r).copied().flatten().map(|x| x as f64),
            _ => None,
        }
    }
    pub fn s(&self, c: &str, r: usize) -> Option<&str> {
        match self.cols.get(c) {
            Some(Col::S(v)) => v.get(r).and_then(|x| x.as_deref()),
            _ => None,
        }
    }
    pub fn b(&self, c: &str, r: usize) -> Option<bool> {
        match self.cols.get(c) {
            Some(Col::B(v)) => v.get(r).copied().flatten(),
            _ => None,
        }
    }
    pub fn l(&self, c: &str, r: usize) -> &[String] {
        match self.cols.get(c) {
            Some(Col::L(v)) => v.get(r).map(|x| x.as_slice()).unwrap_or(&[]),
            _ => &[],
        }
    }
    /// Integer column, 0 for null.
    pub fn u(&self, c: &str, r: usize) -> i64 {
        self.i(c, r).unwrap_or(0)
    }
    /// Text column, "" for null.
    pub fn t(&self, c: &str, r: usize) -> &str {
        self.s(c, r).unwrap_or("")
    }
}

/// A dataset directory.
#[derive(Debug)]
pub struct Dataset {
    pub dir: PathBuf,
    /// Some table is hive-partitioned (written by `swarmtap live`).
    pub live: bool,
}

/// Entity tables of live output and their keys (docs/SCHEMA.md).
fn entity_key(table: &str) -> Option<&'static [&'static str]> {
    Some(match table {
        "flows" | "connections" => &["conn_id", "first_ts"],
        "peers" => &["info_hash", "peer_ip", "peer_port"],
        "torrents" => &["info_hash"],
        "announce_audit" => &[
            "tracker_ip",
            "tracker_port",
            "transport",
            "info_hash",
            "client_ip",
            "peer_id",
        ],
        "dht_nodes" => &["node_id", "node_ip", "node_port"],
        "dht_infohashes" => &["info_hash"],
        _ => return None,
    })
}

fn part_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    let mut entries: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('.') || name.starts_with('_') {
            continue;
        }
        if p.is_dir() {
            part_files(&p, out);
        } else if name.ends_with(".parquet") {
            out.push(p);
        }
    }
}

impl Dataset {
    pub fn open(dir: &Path) -> Result<Dataset, String> {
        if !dir.is_dir() {
            return Err(format!("{} is not a dataset directory", dir.display()));
        }
        let mut live = false;
        let mut any = false;
        for t in crate::sink::TABLE_NAMES {
            if dir.join(format!("{t}.parquet")).is_file() {
                any = true;
            }
            if dir.join(t).is_dir() {
                let mut v = Vec::new();
                part_files(&dir.join(t), &mut v);
                if !v.is_empty() {
                    any = true;
                    live = true;
                }
            }
        }
        if !any {
            return Err(format!("{} holds no swarmtap tables", dir.display()));
        }
        Ok(Dataset {
            dir: dir.to_path_buf(),
            live,
        })
    }

    fn files(&self, table: &str) -> Vec<PathBuf> {
        let mut v = Vec::new();
        let single = self.dir.join(format!("{table}.parquet"));
        if single.is_file() {
            v.push(single);
        }
        part_files(&self.dir.join(table), &mut v);
        v
    }

    /// Reads `cols` of `table` (all files; live snapshots reduced to the
    /// latest row per key). An absent table is empty with `present` false.
    pub fn read(&self, table: &str, cols: &[(&'static str, Kind)]) -> Result<Table, String> {
        let files = self.files(table);
        let key = if self.live { entity_key(table) } else { None };
        let mut wanted: Vec<(&'static str, Kind)> = cols.to_vec();
        if let Some(k) = key {
            for c in k.iter().chain(["interval_start", "last_ts"].iter()) {
                if !wanted.iter().any(|(n, _)| n == c) {
                    let kind =
                        if c.ends_with("_ts") || c.ends_with("_port") || *c == "interval_start" || *c == "conn_id" {
                            Kind::I
                        } else {
                            Kind::S
                        };
                    // Keys are read with their kind from `cols` when asked;
                    // else as text or integers by name.
                    wanted.push((*c, kind));
                }
            }
        }
        let mut out = Table {
            rows: 0,
            cols: HashMap::new(),
            present: !files.is_empty(),
        };
        for (n, k) in &wanted {
            out.cols.insert(
                n,
                match k {
                    Kind::I => Col::I(Vec::new()),
                    Kind::F => Col::F(Vec::new()),
                    Kind::S => Col::S(Vec::new()),
                    Kind::B => Col::B(Vec::new()),
                    Kind::L => Col::L(Vec::new()),
                },
            );
        }
        for f in &files {
            let df = read_file(f, &wanted)?;
            let h = df.height();
            for (n, _) in &wanted {
                let col = out.cols.get_mut(n).expect("allocated above");
                append(col, df.column(n).ok(), h);
            }
            out.rows += h;
        }
        if let Some(k) = key {
            out = latest(out, k);
        }
        Ok(out)
    }
}

fn read_file(p: &Path, wanted: &[(&'static str, Kind)]) -> Result<DataFrame, String> {
    let f = File::open(p).map_err(|e| format!("cannot open {}: {e}", p.display()))?;
    let mut r = ParquetReader::new(f);
    let schema = r.schema().map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    let have: Vec<String> = wanted
        .iter()
        .filter(|(n, _)| schema.contains(n))
        .map(|(n, _)| n.to_string())
        .collect();
    if have.is_empty() {
        let rows = r.num_rows().map_err(|e| format!("cannot read {}: {e}", p.display()))?;
        return Ok(DataFrame::empty_with_height(rows));
    }
    r.with_columns(Some(have))
        .finish()
        .map_err(|e| format!("cannot read {}: {e}", p.display()))
}

/// Appends `h` values of `src` to `dst`. A column missing from this file, or
/// of a type that does not convert (a file from another swarmtap, or not
/// one at all), reads as nulls: the page shows what it can.
fn append(dst: &mut Col, src: Option<&Column>, h: usize) {
    match dst {
        Col::I(v) => match src.and_then(|c| c.cast(&DataType::Int64).ok()) {
            Some(c) if c.i64().is_ok() => v.extend(c.i64().expect("checked").iter()),
            _ => v.extend((0..h).map(|_| None)),
        },
        Col::F(v) => match src.and_then(|c| c.cast(&DataType::Float64).ok()) {
            Some(c) if c.f64().is_ok() => v.extend(c.f64().expect("checked").iter()),
            _ => v.extend((0..h).map(|_| None)),
        },
        Col::S(v) => match src.and_then(|c| c.cast(&DataType::String).ok()) {
            Some(c) if c.str().is_ok() => v.extend(c.str().expect("checked").iter().map(|s| s.map(str::to_string))),
            _ => v.extend((0..h).map(|_| None)),
        },
        Col::B(v) => match src.and_then(|c| c.cast(&DataType::Boolean).ok()) {
            Some(c) if c.bool().is_ok() => v.extend(c.bool().expect("checked").iter()),
            _ => v.extend((0..h).map(|_| None)),
        },
        Col::L(v) => match src.and_then(|c| c.list().ok()) {
            Some(l) => {
                for s in l.amortized_iter() {
                    let items = s
                        .and_then(|s| s.as_ref().cast(&DataType::String).ok())
                        .and_then(|s| s.str().ok().map(|ca| ca.iter().flatten().map(str::to_string).collect()))
                        .unwrap_or_default();
                    v.push(items);
                }
            }
            None => v.extend((0..h).map(|_| Vec::new())),
        },
    }
}

/// Keeps, per key, the row with the largest (interval_start, last_ts).
fn latest(t: Table, key: &[&str]) -> Table {
    let mut best: HashMap<String, usize> = HashMap::new();
    let rank = |r: usize| {
        (
            t.i("interval_start", r).unwrap_or(i64::MIN),
            t.i("last_ts", r).unwrap_or(i64::MIN),
        )
    };
    for r in 0..t.rows {
        let mut k = String::new();
        for c in key {
            match t.cols.get(c) {
                Some(Col::S(v)) => k.push_str(v[r].as_deref().unwrap_or("\u{0}")),
                Some(Col::I(v)) => k.push_str(&v[r].map(|x| x.to_string()).unwrap_or_default()),
                _ => {}
            }
            k.push('\u{1}');
        }
        match best.get(&k) {
            Some(&o) if rank(o) >= rank(r) => {}
            _ => {
                best.insert(k, r);
            }
        }
    }
    let mut keep: Vec<usize> = best.into_values().collect();
    keep.sort_unstable();
    let cols = t
        .cols
        .into_iter()
        .map(|(n, c)| {
            let c = match c {
                Col::I(v) => Col::I(keep.iter().map(|&r| v[r]).collect()),
                Col::F(v) => Col::F(keep.iter().map(|&r| v[r]).collect()),
                Col::B(v) => Col::B(keep.iter().map(|&r| v[r]).collect()),
                Col::S(mut v) => Col::S(keep.iter().map(|&r| v[r].take()).collect()),
                Col::L(mut v) => Col::L(keep.iter().map(|&r| std::mem::take(&mut v[r])).collect()),
            };
            (n, c)
        })
        .collect();
    Table {
        rows: keep.len(),
        cols,
        present: t.present,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(p: &Path, mut df: DataFrame) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let f = File::create(p).unwrap();
        ParquetWriter::new(f).finish(&mut df).unwrap();
    }

    /// Live snapshots: the latest row per key wins, whatever the integer
    /// types of the files (one written unsigned, the next signed).
    #[test]
    fn live_snapshots_keep_the_latest_row_per_key_across_integer_types() {
        let dir = tempfile::tempdir().unwrap();
        let hour = dir.path().join("peers/date=2026-01-01/hour=00");
        let ts = DataType::Datetime(TimeUnit::Microseconds, Some(polars::prelude::TimeZone::UTC));
        let snap = |start: i64, last: &[u64], port_signed: bool| {
            let n = last.len();
            let port: Column = if port_signed {
                Column::new("peer_port".into(), vec![6881i64; n])
            } else {
                Column::new("peer_port".into(), vec![6881u32; n])
            };
            DataFrame::new_infer_height(vec![
                Column::new("info_hash".into(), vec!["aa"; n]),
                Column::new(
                    "peer_ip".into(),
                    (0..n).map(|i| format!("10.0.0.{i}")).collect::<Vec<_>>(),
                ),
                port,
                Column::new("last_pieces".into(), last.to_vec()),
                Column::new("last_ts".into(), vec![start; n]).cast(&ts).unwrap(),
                Column::new("interval_start".into(), vec![start; n]).cast(&ts).unwrap(),
            ])
            .unwrap()
        };
        write(&hour.join("part-1-0.parquet"), snap(1_000_000, &[1, 2, 3], false));
        write(&hour.join("part-2-0.parquet"), snap(2_000_000, &[10, 20], true));
        let ds = Dataset::open(dir.path()).unwrap();
        assert!(ds.live);
        let t = ds
            .read(
                "peers",
                &[("peer_ip", Kind::S), ("peer_port", Kind::I), ("last_pieces", Kind::I)],
            )
            .unwrap();
        assert_eq!(t.rows, 3);
        let mut got: Vec<(String, i64, i64)> = (0..t.rows)
            .map(|r| {
                (
                    t.t("peer_ip", r).to_string(),
                    t.u("peer_port", r),
                    t.u("last_pieces", r),
                )
            })
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                ("10.0.0.0".into(), 6881, 10),
                ("10.0.0.1".into(), 6881, 20),
                ("10.0.0.2".into(), 6881, 3)
            ]
        );
        // A column no file has reads as nulls; an absent table is empty.
        let t = ds.read("peers", &[("country", Kind::S)]).unwrap();
        assert_eq!((t.rows, t.s("country", 0)), (3, None));
        // A column whose type does not convert reads as nulls, not an error.
        let t = ds.read("peers", &[("last_pieces", Kind::L)]).unwrap();
        assert_eq!((t.rows, t.l("last_pieces", 0).len()), (3, 0));
        let t = ds.read("torrents", &[("name", Kind::S)]).unwrap();
        assert_eq!((t.rows, t.present), (0, false));
    }

    #[test]
    fn a_directory_without_tables_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Dataset::open(dir.path())
            .unwrap_err()
            .contains("holds no swarmtap tables"));
        assert!(Dataset::open(&dir.path().join("nope")).is_err());
    }
}
