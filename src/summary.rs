//! `swarmtap summary DIR`: a dataset as readable tables (row counts, inputs,
//! torrents, top peers, clients, connections, announce audit). Reads the
//! Parquet files back with polars, exactly as a notebook would.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

use polars::prelude::*;

use crate::sink::TABLE_NAMES;

/// Tables that hold one row per entity: live output writes a snapshot of
/// each at every rotation, and the latest row of a key is the entity's
/// state (the notebooks read them the same way).
pub const ENTITY_KEYS: &[(&str, &[&str])] = &[
    ("flows", &["conn_id", "first_ts"]),
    ("connections", &["conn_id", "first_ts"]),
    ("peers", &["info_hash", "peer_ip", "peer_port"]),
    ("torrents", &["info_hash"]),
    (
        "announce_audit",
        &[
            "tracker_ip",
            "tracker_port",
            "transport",
            "info_hash",
            "client_ip",
            "peer_id",
        ],
    ),
    ("dht_nodes", &["node_id", "node_ip", "node_port"]),
    ("dht_infohashes", &["info_hash"]),
];

fn read_file(p: &Path) -> Result<DataFrame, String> {
    let f = File::open(p).map_err(|e| format!("cannot open {}: {e}", p.display()))?;
    ParquetReader::new(f)
        .finish()
        .map_err(|e| format!("cannot read {}: {e}", p.display()))
}

/// The `part-*.parquet` files of a live table, oldest first (their paths
/// sort by date, hour, interval start and sequence number).
fn hive_files(table_dir: &Path) -> Result<Vec<std::path::PathBuf>, String> {
    fn walk(p: &Path, depth: u32, out: &mut Vec<std::path::PathBuf>) -> std::io::Result<()> {
        for e in std::fs::read_dir(p)? {
            let e = e?;
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if e.file_type()?.is_dir() && depth < 2 {
                walk(&path, depth + 1, out)?;
            } else if !name.starts_with('.') && name.ends_with(".parquet") {
                out.push(path);
            }
        }
        Ok(())
    }
    let mut v = Vec::new();
    walk(table_dir, 0, &mut v).map_err(|e| format!("cannot read {}: {e}", table_dir.display()))?;
    v.sort();
    Ok(v)
}

/// Keeps the last row of each key (rows are in file order, oldest first).
fn latest_per_key(df: DataFrame, keys: &[&str]) -> Result<DataFrame, String> {
    let cols: Vec<&Column> = keys.iter().filter_map(|k| df.column(k).ok()).collect();
    if cols.len() != keys.len() {
        return Ok(df);
    }
    let mut last: std::collections::HashMap<String, u32> = std::collections::HashMap::new();
    for i in 0..df.height() {
        let mut k = String::new();
        for c in &cols {
            let v = c.get(i).map_err(|e| e.to_string())?;
            k.push_str(&format!("{v}\u{1f}"));
        }
        last.insert(k, i as u32);
    }
    let mut idx: Vec<u32> = last.into_values().collect();
    idx.sort_unstable();
    df.take(&IdxCa::from_vec("idx".into(), idx)).map_err(|e| e.to_string())
}

/// A table of an analyze dataset (`DIR/<table>.parquet`) or of a live one
/// (`DIR/<table>/date=…/hour=…/part-….parquet`, every interval; entity
/// tables keep the latest snapshot of each key). None when absent.
pub fn read(dir: &Path, table: &str) -> Result<Option<DataFrame>, String> {
    let p = dir.join(format!("{table}.parquet"));
    if p.exists() {
        return read_file(&p).map(Some);
    }
    let d = dir.join(table);
    if !d.is_dir() {
        return Ok(None);
    }
    let files = hive_files(&d)?;
    let mut it = files.iter();
    let Some(first) = it.next() else { return Ok(None) };
    let mut df = read_file(first)?;
    for f in it {
        let next = read_file(f)?;
        df.vstack_mut(&next).map_err(|e| format!("{}: {e}", f.display()))?;
    }
    df.rechunk_mut();
    match ENTITY_KEYS.iter().find(|(t, _)| *t == table) {
        Some((_, keys)) => latest_per_key(df, keys).map(Some),
        None => Ok(Some(df)),
    }
}

fn select(df: &DataFrame, cols: &[&str]) -> Result<DataFrame, String> {
    df.select(cols.iter().copied()).map_err(|e| e.to_string())
}

fn str_col(df: &DataFrame, name: &str) -> Vec<Option<String>> {
    match df.column(name).ok().and_then(|c| c.str().ok().cloned()) {
        Some(ca) => ca.iter().map(|s| s.map(str::to_string)).collect(),
        None => Vec::new(),
    }
}

fn u64_col(df: &DataFrame, name: &str) -> Vec<Option<u64>> {
    match df.column(name).ok().and_then(|c| c.cast(&DataType::UInt64).ok()) {
        Some(c) => c.u64().map(|ca| ca.iter().collect()).unwrap_or_default(),
        None => Vec::new(),
    }
}

/// Sorts a frame by a numeric column, descending, and keeps `n` rows.
fn top_by(df: &DataFrame, col: &str, n: usize) -> Result<DataFrame, String> {
    let vals = u64_col(df, col);
    let mut idx: Vec<u32> = (0..df.height() as u32).collect();
    idx.sort_by_key(|&i| std::cmp::Reverse(vals.get(i as usize).copied().flatten().unwrap_or(0)));
    idx.truncate(n);
    let ca = IdxCa::from_vec("idx".into(), idx);
    df.take(&ca).map_err(|e| e.to_string())
}

/// Prints the dataset in `dir`.
pub fn print(dir: &Path) -> Result<(), String> {
    let text = render(dir)?;
    write_stdout(&text)
}

/// Writes to stdout; a reader that went away (`swarmtap summary | head`) is
/// not an error.
pub fn write_stdout(text: &str) -> Result<(), String> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(format!("writing to stdout: {e}")),
    }
}

/// The summary of the dataset in `dir` as text.
pub fn render(dir: &Path) -> Result<String, String> {
    use std::fmt::Write as _;
    let mut o = String::new();
    if !dir.is_dir() {
        return Err(format!("{} is not a dataset directory", dir.display()));
    }
    // Wide, complete tables on a terminal.
    std::env::set_var("POLARS_FMT_MAX_COLS", "14");
    std::env::set_var("POLARS_FMT_STR_LEN", "64");
    std::env::set_var("POLARS_TABLE_WIDTH", "240");
    std::env::set_var("POLARS_FMT_TABLE_ROUNDED_CORNERS", "1");
    let _ = writeln!(o, "Dataset {}\n", dir.display());
    let _ = writeln!(o, "{:<20} {:>10}", "table", "rows");
    let mut found = 0;
    for t in TABLE_NAMES {
        match read(dir, t)? {
            Some(df) => {
                found += 1;
                let _ = writeln!(o, "{:<20} {:>10}", t, df.height());
            }
            None => {
                let _ = writeln!(o, "{:<20} {:>10}", t, "missing");
            }
        }
    }
    if found == 0 {
        return Err(format!("{} holds no swarmtap tables", dir.display()));
    }
    if let Some(df) = read(dir, "capture_stats")? {
        let _ = writeln!(o, "\nInputs");
        let _ = writeln!(
            o,
            "{}",
            select(
                &df,
                &[
                    "capture",
                    "first_ts",
                    "last_ts",
                    "n_packets",
                    "n_bytes",
                    "n_tcp",
                    "n_udp",
                    "n_anomalies"
                ]
            )?
        );
    }
    if let Some(df) = read(dir, "torrents")? {
        if df.height() > 0 {
            let _ = writeln!(o, "\nTorrents (by piece bytes)");
            let t = top_by(&df, "piece_bytes", 20)?;
            let _ = writeln!(
                o,
                "{}",
                select(
                    &t,
                    &[
                        "info_hash",
                        "name",
                        "n_pieces",
                        "n_pieces_source",
                        "n_peers",
                        "n_confirmed_downloads",
                        "piece_bytes"
                    ]
                )?
            );
        }
    }
    if let Some(df) = read(dir, "peers")? {
        if df.height() > 0 {
            let _ = writeln!(o, "\nPeers (top 20 by downloaded bytes)");
            let t = top_by(&df, "downloaded_bytes", 20)?;
            let _ = writeln!(
                o,
                "{}",
                select(
                    &t,
                    &[
                        "peer_ip",
                        "peer_port",
                        "client",
                        "first_pieces",
                        "last_pieces",
                        "n_pieces",
                        "confirmed_download",
                        "downloaded_bytes",
                        "uploaded_bytes"
                    ]
                )?
            );
            let mut clients: BTreeMap<String, u64> = BTreeMap::new();
            for c in str_col(&df, "client") {
                *clients.entry(c.unwrap_or_else(|| "(unknown)".into())).or_default() += 1;
            }
            let mut v: Vec<_> = clients.into_iter().collect();
            v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            let _ = writeln!(o, "\nClients");
            for (c, n) in v.iter().take(20) {
                let _ = writeln!(o, "  {n:>6}  {c}");
            }
        }
    }
    if let Some(df) = read(dir, "connections")? {
        if df.height() > 0 {
            let _ = writeln!(o, "\nConnections (top 10 by piece bytes from the responder)");
            let t = top_by(&df, "piece_bytes_resp", 10)?;
            let _ = writeln!(
                o,
                "{}",
                select(
                    &t,
                    &[
                        "conn_id",
                        "transport",
                        "orig_ip",
                        "resp_ip",
                        "resp_port",
                        "encrypted",
                        "midstream",
                        "piece_bytes_orig",
                        "piece_bytes_resp"
                    ]
                )?
            );
        }
    }
    if let Some(df) = read(dir, "announce_audit")? {
        if df.height() > 0 {
            let n_flagged = df
                .column("suspicious")
                .ok()
                .and_then(|c| c.bool().ok().map(|b| b.sum().unwrap_or(0)))
                .unwrap_or(0);
            let _ = writeln!(
                o,
                "\nAnnounce audit ({} series, {n_flagged} flagged; top 20 by reported upload)",
                df.height()
            );
            let t = top_by(&df, "reported_uploaded", 20)?;
            let _ = writeln!(
                o,
                "{}",
                select(
                    &t,
                    &[
                        "client_ip",
                        "client",
                        "tracker_ip",
                        "n_announces",
                        "reported_uploaded",
                        "observed_uploaded",
                        "opaque_sent_bytes",
                        "coverage",
                        "flags"
                    ]
                )?
            );
        }
    }
    if let Some(df) = read(dir, "anomalies")? {
        if df.height() > 0 {
            let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
            let layers = str_col(&df, "layer");
            for (i, k) in str_col(&df, "kind").into_iter().enumerate() {
                let l = layers.get(i).cloned().flatten().unwrap_or_default();
                *kinds.entry(format!("{l}/{}", k.unwrap_or_default())).or_default() += 1;
            }
            let _ = writeln!(o, "\nAnomalies (rows by layer/kind)");
            for (k, n) in kinds {
                let _ = writeln!(o, "  {n:>6}  {k}");
            }
        }
    }
    Ok(o)
}

fn bool_count(df: &DataFrame, col: &str) -> u64 {
    df.column(col)
        .ok()
        .and_then(|c| c.bool().ok().map(|b| u64::from(b.sum().unwrap_or(0))))
        .unwrap_or(0)
}

/// The headline figures of a dataset as one JSON object: rows per table,
/// confirmed downloads, flagged audit series, anomalies (counted, and rows
/// by layer/kind), torrents.
pub fn json(dir: &Path) -> Result<serde_json::Value, String> {
    use serde_json::{json, Map, Value};
    if !dir.is_dir() {
        return Err(format!("{} is not a dataset directory", dir.display()));
    }
    let mut tables = Map::new();
    let mut frames: BTreeMap<&str, DataFrame> = BTreeMap::new();
    for t in TABLE_NAMES {
        if let Some(df) = read(dir, t)? {
            tables.insert(t.to_string(), json!(df.height()));
            frames.insert(t, df);
        }
    }
    if frames.is_empty() {
        return Err(format!("{} holds no swarmtap tables", dir.display()));
    }
    let layout = if dir.join("capture_stats.parquet").exists() {
        "single"
    } else {
        "hive"
    };
    let n = |t: &str, c: &str| frames.get(t).map_or(0, |df| bool_count(df, c));
    let sum = |t: &str, c: &str| -> u64 { frames.get(t).map_or(0, |df| u64_col(df, c).into_iter().flatten().sum()) };
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    if let Some(df) = frames.get("anomalies") {
        let layers = str_col(df, "layer");
        for (i, k) in str_col(df, "kind").into_iter().enumerate() {
            let l = layers.get(i).cloned().flatten().unwrap_or_default();
            *kinds.entry(format!("{l}/{}", k.unwrap_or_default())).or_default() += 1;
        }
    }
    let mut torrents = Vec::new();
    if let Some(df) = frames.get("torrents") {
        let (ih, name) = (str_col(df, "info_hash"), str_col(df, "name"));
        let (np, nc, pb) = (
            u64_col(df, "n_peers"),
            u64_col(df, "n_confirmed_downloads"),
            u64_col(df, "piece_bytes"),
        );
        for i in 0..df.height() {
            torrents.push(json!({
                "info_hash": ih.get(i).cloned().flatten(),
                "name": name.get(i).cloned().flatten(),
                "n_peers": np.get(i).copied().flatten(),
                "n_confirmed_downloads": nc.get(i).copied().flatten(),
                "piece_bytes": pb.get(i).copied().flatten(),
            }));
        }
    }
    Ok(json!({
        "dataset": dir.display().to_string(),
        "layout": layout,
        "tables": Value::Object(tables),
        "n_packets": sum("capture_stats", "n_packets"),
        "n_confirmed_downloads": n("peers", "confirmed_download"),
        "n_flagged_audit_series": n("announce_audit", "suspicious"),
        "n_anomalies": sum("capture_stats", "n_anomalies"),
        "anomaly_rows": kinds,
        "torrents": torrents,
    }))
}

/// `summary --format json`.
pub fn print_json(dir: &Path) -> Result<(), String> {
    let v = json(dir)?;
    let mut s = serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?;
    s.push('\n');
    write_stdout(&s)
}

/// RFC 3339 text of a time in µs since the epoch, UTC.
pub fn rfc3339_us(us: i64) -> String {
    let secs = us.div_euclid(1_000_000);
    let micros = us.rem_euclid(1_000_000);
    let (y, mo, d) = crate::sink::writer::civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

fn to_us(v: i64, unit: TimeUnit) -> i64 {
    match unit {
        TimeUnit::Nanoseconds => v.div_euclid(1000),
        TimeUnit::Microseconds => v,
        TimeUnit::Milliseconds => v.saturating_mul(1000),
    }
}

/// One cell as JSON: numbers, booleans, strings, RFC 3339 times, arrays.
fn json_of(v: AnyValue) -> serde_json::Value {
    use serde_json::Value;
    match v {
        AnyValue::Null => Value::Null,
        AnyValue::Boolean(b) => Value::Bool(b),
        AnyValue::String(s) => Value::String(s.to_string()),
        AnyValue::StringOwned(s) => Value::String(s.to_string()),
        AnyValue::Int8(x) => x.into(),
        AnyValue::Int16(x) => x.into(),
        AnyValue::Int32(x) => x.into(),
        AnyValue::Int64(x) => x.into(),
        AnyValue::UInt8(x) => x.into(),
        AnyValue::UInt16(x) => x.into(),
        AnyValue::UInt32(x) => x.into(),
        AnyValue::UInt64(x) => x.into(),
        AnyValue::Float32(x) => serde_json::Number::from_f64(f64::from(x)).map_or(Value::Null, Value::Number),
        AnyValue::Float64(x) => serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number),
        AnyValue::Datetime(x, u, _) => Value::String(rfc3339_us(to_us(x, u))),
        AnyValue::DatetimeOwned(x, u, _) => Value::String(rfc3339_us(to_us(x, u))),
        AnyValue::List(s) => Value::Array(s.iter().map(json_of).collect()),
        other => Value::String(other.to_string()),
    }
}

/// One cell as CSV (RFC 4180): empty for null, times in RFC 3339, lists as
/// JSON arrays; quoted when it holds a comma, a quote or a line break.
fn csv_of(v: AnyValue) -> String {
    let s = match json_of(v) {
        serde_json::Value::Null => return String::new(),
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// `swarmtap export DIR --format csv|ndjson [--table T]…`: each table as
/// `<table>.csv` (a header line, then a line per row) or `<table>.ndjson`
/// (an object per row) in `out` (default `DIR-<format>`, beside DIR). Live
/// datasets are exported as `summary` reads them (every interval; entity
/// tables at their latest snapshot). Returns nothing; prints the files.
pub fn export(dir: &Path, format: &str, tables: &[String], out: Option<&Path>) -> Result<(), String> {
    use std::io::Write;
    for t in tables {
        if !TABLE_NAMES.contains(&t.as_str()) {
            return Err(format!("no table {t:?} (tables: {})", TABLE_NAMES.join(", ")));
        }
    }
    let out = out.map_or_else(
        || {
            let name = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "swarmtap".into());
            dir.with_file_name(format!("{name}-{format}"))
        },
        Path::to_path_buf,
    );
    std::fs::create_dir_all(&out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let mut listing = String::new();
    let mut n_found = 0;
    for t in TABLE_NAMES
        .iter()
        .filter(|t| tables.is_empty() || tables.iter().any(|x| x == *t))
    {
        let Some(df) = read(dir, t)? else { continue };
        n_found += 1;
        let path = out.join(format!("{t}.{format}"));
        let f = File::create(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        let mut w = std::io::BufWriter::new(f);
        let cols = df.columns();
        let names: Vec<String> = cols.iter().map(|c| c.name().to_string()).collect();
        let err = |e: std::io::Error| format!("writing {}: {e}", path.display());
        if format == "csv" {
            let header: Vec<String> = names.iter().map(|n| csv_of(AnyValue::String(n))).collect();
            writeln!(w, "{}", header.join(",")).map_err(err)?;
        }
        for i in 0..df.height() {
            if format == "csv" {
                let mut line = String::new();
                for (j, c) in cols.iter().enumerate() {
                    if j > 0 {
                        line.push(',');
                    }
                    line.push_str(&csv_of(c.get(i).map_err(|e| e.to_string())?));
                }
                writeln!(w, "{line}").map_err(err)?;
            } else {
                let mut m = serde_json::Map::new();
                for (c, n) in cols.iter().zip(&names) {
                    m.insert(n.clone(), json_of(c.get(i).map_err(|e| e.to_string())?));
                }
                writeln!(w, "{}", serde_json::Value::Object(m)).map_err(err)?;
            }
        }
        w.flush().map_err(err)?;
        listing.push_str(&format!("{}\t{}\n", df.height(), path.display()));
    }
    if n_found == 0 {
        return Err(format!("{} holds no swarmtap tables", dir.display()));
    }
    write_stdout(&listing)
}
