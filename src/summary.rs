//! `swarmtap summary DIR`: a dataset as readable tables (row counts, inputs,
//! torrents, top peers, clients, connections, announce audit). Reads the
//! Parquet files back with polars, exactly as a notebook would.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

use polars::prelude::*;

use crate::sink::TABLE_NAMES;

fn read(dir: &Path, table: &str) -> Result<Option<DataFrame>, String> {
    let p = dir.join(format!("{table}.parquet"));
    if !p.exists() {
        return Ok(None);
    }
    let f = File::open(&p).map_err(|e| format!("cannot open {}: {e}", p.display()))?;
    ParquetReader::new(f)
        .finish()
        .map(Some)
        .map_err(|e| format!("cannot read {}: {e}", p.display()))
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
