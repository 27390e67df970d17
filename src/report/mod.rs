//! `swarmtap report DIR -o report.html`: one self-contained HTML page (inline
//! SVG charts drawn here, inline CSS and JavaScript, nothing fetched) for an
//! offline or a live dataset. Tables are read with polars (only the columns
//! used); what is too large to draw or list is sampled or cut, and the page
//! says so.

mod data;
mod html;
pub mod svg;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;

use data::{Dataset, Kind, Table};
use html::Cell;
use svg::{color, esc, fmt_bytes, fmt_int, fmt_rate, fmt_ts, AuditBar, MapPoint};

/// Country outlines: Natural Earth 1:110m (public domain), simplified by
/// `world_outline.py` (see there).
const WORLD: &str = include_str!("world.path");

/// Bounds that keep the page small and quick on large datasets.
#[derive(Clone, Copy, Debug)]
pub struct ReportLimits {
    /// Rows of each listed table.
    pub table_rows: usize,
    /// Torrents that get a heatmap.
    pub heatmaps: usize,
    /// Peers (rows) per heatmap.
    pub heatmap_peers: usize,
    /// Time columns per heatmap.
    pub heatmap_bins: usize,
    /// Series in the audit chart.
    pub audit_bars: usize,
    /// Peers on the map.
    pub map_points: usize,
    /// Dots per client in the rate chart.
    pub strip_dots: usize,
}

impl Default for ReportLimits {
    fn default() -> Self {
        ReportLimits {
            table_rows: 500,
            heatmaps: 6,
            heatmap_peers: 60,
            heatmap_bins: 90,
            audit_bars: 40,
            map_points: 4000,
            strip_dots: 400,
        }
    }
}

/// What was written.
#[derive(Debug)]
pub struct Written {
    pub bytes: usize,
    pub charts: usize,
}

/// Writes the report of the dataset in `dir` to `out`.
pub fn write(dir: &Path, out: &Path) -> Result<Written, String> {
    let page = render(dir, &ReportLimits::default())?;
    std::fs::write(out, &page.0).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    Ok(Written {
        bytes: page.0.len(),
        charts: page.1,
    })
}

/// Torrent labels and colours, in the order of their piece bytes.
struct Torrents {
    order: Vec<String>,
    label: HashMap<String, String>,
}

impl Torrents {
    fn color(&self, ih: &str) -> &'static str {
        match self.order.iter().position(|x| x == ih) {
            Some(i) => color(i),
            None => svg::OTHER,
        }
    }
    fn label(&self, ih: &str) -> String {
        self.label.get(ih).cloned().unwrap_or_else(|| short(ih))
    }
}

fn short(ih: &str) -> String {
    if ih.is_empty() {
        "(unknown torrent)".into()
    } else {
        format!("{}…", ih.chars().take(10).collect::<String>())
    }
}

/// Client family: the name without its version ("qBittorrent 4.3.1" → "qBittorrent").
fn family(c: &str) -> String {
    let c = c.trim();
    if c.is_empty() {
        return "(unknown)".into();
    }
    let words: Vec<&str> = c
        .split([' ', '/'])
        .take_while(|w| {
            !w.chars().next().is_some_and(|ch| {
                ch.is_ascii_digit() || ch == 'v' && w.len() > 1 && w[1..].starts_with(|d: char| d.is_ascii_digit())
            })
        })
        .collect();
    if words.is_empty() {
        c.to_string()
    } else {
        words.join(" ")
    }
}

struct Page {
    body: String,
    nav: Vec<(&'static str, &'static str)>,
    notes: Vec<String>,
    charts: usize,
}

impl Page {
    fn section(&mut self, id: &'static str, title: &'static str) {
        if !self.body.is_empty() {
            self.body.push_str("</section>");
        }
        self.nav.push((id, title));
        let _ = write!(self.body, "<section id=\"{id}\"><h2>{}</h2>", esc(title));
    }
    fn figure(&mut self, caption: &str, svg: String) {
        self.charts += 1;
        let _ = write!(
            self.body,
            "<figure><figcaption>{}</figcaption>{svg}</figure>",
            esc(caption)
        );
    }
    fn note(&mut self, s: &str) {
        let _ = write!(self.body, "<p class=\"note\">{}</p>", esc(s));
    }
    fn empty(&mut self, s: &str) {
        let _ = write!(self.body, "<p class=\"empty\">{}</p>", esc(s));
    }
    fn h3(&mut self, s: &str) {
        let _ = write!(self.body, "<h3>{}</h3>", esc(s));
    }
}

use Kind::{B, F, I, L, S};

/// The page as HTML, and the number of charts on it.
pub fn render(dir: &Path, lim: &ReportLimits) -> Result<(String, usize), String> {
    let ds = Dataset::open(dir)?;
    let mut p = Page {
        body: String::new(),
        nav: Vec::new(),
        notes: Vec::new(),
        charts: 0,
    };

    let stats = ds.read(
        "capture_stats",
        &[
            ("capture", S),
            ("first_ts", I),
            ("last_ts", I),
            ("n_packets", I),
            ("n_bytes", I),
            ("n_anomalies", I),
            ("n_dropped", I),
            ("interval_start", I),
        ],
    )?;
    let torrents_t = ds.read(
        "torrents",
        &[
            ("info_hash", S),
            ("name", S),
            ("n_pieces", I),
            ("n_pieces_source", S),
            ("n_peers", I),
            ("n_confirmed_downloads", I),
            ("piece_bytes", I),
            ("total_bytes", I),
            ("first_ts", I),
            ("last_ts", I),
        ],
    )?;
    let peers = ds.read(
        "peers",
        &[
            ("info_hash", S),
            ("peer_ip", S),
            ("peer_port", I),
            ("client", S),
            ("first_ts", I),
            ("last_ts", I),
            ("first_pieces", I),
            ("last_pieces", I),
            ("n_pieces", I),
            ("completed_ts", I),
            ("confirmed_download", B),
            ("uploaded_bytes", I),
            ("downloaded_bytes", I),
            ("max_rate_bps", F),
            ("n_connections", I),
            ("sources", L),
            ("country", S),
            ("city", S),
            ("latitude", F),
            ("longitude", F),
            ("asn", I),
            ("as_org", S),
            ("encrypted_bytes_sent", I),
        ],
    )?;

    // Torrents by piece bytes, then peers: their colours everywhere.
    let mut tidx: Vec<usize> = (0..torrents_t.rows).collect();
    tidx.sort_by_key(|&r| {
        (
            std::cmp::Reverse(torrents_t.u("piece_bytes", r)),
            std::cmp::Reverse(torrents_t.u("n_peers", r)),
            torrents_t.t("info_hash", r).to_string(),
        )
    });
    let tor = Torrents {
        order: tidx.iter().map(|&r| torrents_t.t("info_hash", r).to_string()).collect(),
        label: tidx
            .iter()
            .map(|&r| {
                let ih = torrents_t.t("info_hash", r);
                let l = match torrents_t.s("name", r) {
                    Some(n) if !n.is_empty() => svg::clip(n, 40),
                    _ => short(ih),
                };
                (ih.to_string(), l)
            })
            .collect(),
    };

    overview(&ds, &mut p, &stats)?;
    torrents(&ds, &mut p, &torrents_t, &tor, &peers, lim)?;
    downloads(&mut p, &peers, &tor, lim);
    audit(&ds, &mut p, &tor, lim)?;
    discovery(&ds, &mut p, &peers, &tor)?;
    geography(&mut p, &peers, &tor, lim);
    tables(&ds, &mut p, &peers, &tor, lim)?;
    if !p.body.is_empty() {
        p.body.push_str("</section>");
    }

    let kind = if ds.live {
        "live dataset (hive-partitioned; latest snapshot per key)"
    } else {
        "offline dataset"
    };
    let mut notes = String::new();
    if !p.notes.is_empty() {
        notes.push_str("<section id=\"notes\"><h2>What this page leaves out</h2><ul class=\"notes\">");
        for n in &p.notes {
            let _ = write!(notes, "<li>{}</li>", esc(n));
        }
        notes.push_str("</ul></section>");
    }
    let body = format!("{notes}{}", p.body);
    let html = html::page(
        "swarmtap report",
        &format!("{} — {kind}", dir.display()),
        &p.nav,
        &body,
        &format!(
            "Written by swarmtap {} from the Parquet tables in {}. Column meanings: docs/SCHEMA.md. Times are UTC.",
            env!("CARGO_PKG_VERSION"),
            dir.display()
        ),
    );
    Ok((html, p.charts))
}

fn kpi(o: &mut String, value: &str, what: &str) {
    let _ = write!(
        o,
        "<div class=\"kpi\"><b>{}</b><span>{}</span></div>",
        esc(value),
        esc(what)
    );
}

fn overview(ds: &Dataset, p: &mut Page, stats: &Table) -> Result<(), String> {
    p.section("overview", "Capture at a glance");
    let t0 = (0..stats.rows).filter_map(|r| stats.i("first_ts", r)).min();
    let t1 = (0..stats.rows).filter_map(|r| stats.i("last_ts", r)).max();
    let packets: i64 = (0..stats.rows).map(|r| stats.u("n_packets", r)).sum();
    let bytes: i64 = (0..stats.rows).map(|r| stats.u("n_bytes", r)).sum();
    let anomalies: i64 = (0..stats.rows).map(|r| stats.u("n_anomalies", r)).sum();
    let dropped: i64 = (0..stats.rows).map(|r| stats.u("n_dropped", r)).sum();
    let captures: HashSet<&str> = (0..stats.rows).map(|r| stats.t("capture", r)).collect();
    let mut k = String::from("<div class=\"kpis\">");
    match (t0, t1) {
        (Some(a), Some(b)) => {
            let (fa, fb) = (fmt_ts(a), fmt_ts(b));
            let end = if fa[..10] == fb[..10] {
                fb[11..].to_string()
            } else {
                fb.clone()
            };
            kpi(&mut k, &svg::fmt_dur(b - a), &format!("{fa} → {end}"));
        }
        _ => kpi(&mut k, "—", "time span (no packets)"),
    }
    kpi(&mut k, &fmt_int(packets), "packets");
    kpi(&mut k, &fmt_bytes(bytes as f64), "captured bytes");
    if ds.live {
        kpi(&mut k, &fmt_int(stats.rows as i64), "live intervals");
        kpi(&mut k, &fmt_int(dropped), "packets dropped");
    } else {
        kpi(&mut k, &fmt_int(captures.len() as i64), "capture files");
    }
    kpi(&mut k, &fmt_int(anomalies), "anomalies (capture_stats)");
    k.push_str("</div>");
    p.body.push_str(&k);
    if stats.rows > 1 {
        // One row per capture file (offline) or per interval (live).
        let mut idx: Vec<usize> = (0..stats.rows).collect();
        idx.sort_by_key(|&r| {
            (
                stats.i("interval_start", r),
                stats.i("first_ts", r),
                stats.t("capture", r).to_string(),
            )
        });
        if stats.rows > 500 {
            p.notes
                .push(format!("Captures table: the first 500 of {} rows.", stats.rows));
        }
        // Live: one row per interval, with its start and drops; offline:
        // one row per file.
        let live = ds.live;
        let rows: Vec<Vec<Cell>> = idx
            .iter()
            .take(500)
            .map(|&r| {
                let mut v = vec![Cell::text(stats.t("capture", r))];
                if live {
                    v.push(Cell::text(stats.i("interval_start", r).map(fmt_ts).unwrap_or_default()));
                }
                v.extend([
                    Cell::text(stats.i("first_ts", r).map(fmt_ts).unwrap_or_default()),
                    Cell::text(stats.i("last_ts", r).map(fmt_ts).unwrap_or_default()),
                    Cell::int(stats.u("n_packets", r)),
                    Cell::bytes(stats.u("n_bytes", r)),
                ]);
                if live {
                    v.push(Cell::int(stats.u("n_dropped", r)));
                }
                v.push(Cell::int(stats.u("n_anomalies", r)));
                v
            })
            .collect();
        let mut headers = vec![("capture", "capture_stats.capture")];
        if live {
            headers.push(("interval start", "interval_start"));
        }
        headers.extend([
            ("first packet", "first_ts"),
            ("last packet", "last_ts"),
            ("packets", "n_packets"),
            ("bytes", "n_bytes"),
        ]);
        if live {
            headers.push(("dropped", "n_dropped"));
        }
        headers.push(("anomalies", "n_anomalies"));
        p.body.push_str(
            &html::Table {
                id: "t-captures".into(),
                headers,
                rows,
            }
            .render(),
        );
    }
    p.body.push_str("<div class=\"row\">");

    let flows = ds.read(
        "flows",
        &[("app", S), ("payload_bytes_orig", I), ("payload_bytes_resp", I)],
    )?;
    let mut apps: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for r in 0..flows.rows {
        let e = apps.entry(flows.t("app", r).to_string()).or_default();
        e.0 += 1;
        e.1 += flows.u("payload_bytes_orig", r) + flows.u("payload_bytes_resp", r);
    }
    let anom = ds.read("anomalies", &[("layer", S), ("kind", S)])?;
    let mut kinds: HashMap<String, i64> = HashMap::new();
    for r in 0..anom.rows {
        *kinds
            .entry(format!("{}/{}", anom.t("layer", r), anom.t("kind", r)))
            .or_default() += 1;
    }
    if apps.is_empty() {
        p.empty("No flows in this dataset.");
    } else {
        let mut v: Vec<_> = apps.into_iter().collect();
        v.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then(a.0.cmp(&b.0)));
        let items: Vec<(String, f64, String, String)> = v
            .iter()
            .map(|(a, (n, b))| {
                (
                    a.clone(),
                    *n as f64,
                    svg::PALETTE[0].to_string(),
                    format!("{a}: {} flows, {} payload", fmt_int(*n), fmt_bytes(*b as f64)),
                )
            })
            .collect();
        p.figure(
            "Flows by application (flows.app); hover a bar for its payload bytes",
            svg::hbars("flows by application", &items, &|v| svg::fmt_num(v), "flows"),
        );
    }
    if kinds.is_empty() {
        p.empty("No anomalies recorded.");
    } else {
        let mut v: Vec<_> = kinds.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let total = v.len();
        v.truncate(20);
        let items: Vec<(String, f64, String, String)> = v
            .iter()
            .map(|(k, n)| {
                (
                    k.clone(),
                    *n as f64,
                    svg::PALETTE[2].to_string(),
                    format!("{k}: {} rows", fmt_int(*n)),
                )
            })
            .collect();
        let cap = if total > 20 {
            format!(" (20 most frequent of {total} kinds)")
        } else {
            String::new()
        };
        p.figure(
            &format!(
                "Anomalies by layer/kind: {} rows of the anomalies table (a capped number per kind); capture_stats.n_anomalies sums to {}{cap}",
                fmt_int(anom.rows as i64),
                fmt_int(anomalies)
            ),
            svg::hbars("anomalies by kind", &items, &|v| svg::fmt_num(v), "anomaly rows"),
        );
    }
    p.body.push_str("</div>");
    Ok(())
}

fn torrents(
    ds: &Dataset,
    p: &mut Page,
    t: &Table,
    tor: &Torrents,
    peers: &Table,
    lim: &ReportLimits,
) -> Result<(), String> {
    p.section("torrents", "Torrents");
    if t.rows == 0 {
        p.empty("No torrent was seen.");
        return Ok(());
    }
    let rows: Vec<Vec<Cell>> = tor
        .order
        .iter()
        .filter_map(|ih| (0..t.rows).find(|&r| t.t("info_hash", r) == ih))
        .map(|r| {
            let ih = t.t("info_hash", r);
            vec![
                Cell::text(tor.label(ih)),
                Cell::text(ih),
                Cell::opt_int(t.i("n_pieces", r)),
                Cell::text(t.t("n_pieces_source", r)),
                Cell::int(t.u("n_peers", r)),
                Cell::int(t.u("n_confirmed_downloads", r)),
                Cell::bytes(t.u("piece_bytes", r)),
                Cell::text(t.i("first_ts", r).map(fmt_ts).unwrap_or_default()),
                Cell::text(t.i("last_ts", r).map(fmt_ts).unwrap_or_default()),
            ]
        })
        .collect();
    let table = html::Table {
        id: "t-torrents".into(),
        headers: vec![
            ("name", "torrents.name, else the info hash's start"),
            (
                "info_hash",
                "join key: torrents.info_hash = peers.info_hash = connections.info_hash",
            ),
            ("pieces", "torrents.n_pieces"),
            ("pieces from", "torrents.n_pieces_source"),
            ("peers", "torrents.n_peers"),
            ("confirmed downloads", "torrents.n_confirmed_downloads"),
            ("piece bytes", "torrents.piece_bytes"),
            ("first seen", "torrents.first_ts"),
            ("last seen", "torrents.last_ts"),
        ],
        rows,
    };
    p.body.push_str(&table.render());

    // Swarm progress heatmaps from peer_progress.
    let prog = ds.read(
        "peer_progress",
        &[
            ("ts", I),
            ("info_hash", S),
            ("peer_ip", S),
            ("peer_port", I),
            ("n_pieces_have", I),
            ("n_pieces", I),
        ],
    )?;
    // (info_hash, ip, port) -> events (ts, have, n)
    // (ts, n_pieces_have, n_pieces) per (info_hash, peer_ip, peer_port)
    type Events = Vec<(i64, Option<i64>, Option<i64>)>;
    let mut by: HashMap<(&str, &str, i64), Events> = HashMap::new();
    for r in 0..prog.rows {
        let Some(ts) = prog.i("ts", r) else { continue };
        by.entry((prog.t("info_hash", r), prog.t("peer_ip", r), prog.u("peer_port", r)))
            .or_default()
            .push((ts, prog.i("n_pieces_have", r), prog.i("n_pieces", r)));
    }
    let mut confirmed: HashSet<(&str, &str, i64)> = HashSet::new();
    let mut n_of: HashMap<&str, i64> = HashMap::new();
    for r in 0..peers.rows {
        if peers.b("confirmed_download", r) == Some(true) {
            confirmed.insert((peers.t("info_hash", r), peers.t("peer_ip", r), peers.u("peer_port", r)));
        }
        if let Some(n) = peers.i("n_pieces", r) {
            n_of.entry(peers.t("info_hash", r)).or_insert(n);
        }
    }
    for r in 0..t.rows {
        if let Some(n) = t.i("n_pieces", r) {
            n_of.insert(t.t("info_hash", r), n);
        }
    }
    p.h3("Swarm progress: each peer's share of the torrent's pieces over time");
    let mut drawn = 0;
    for ih in tor.order.iter() {
        if drawn >= lim.heatmaps {
            p.notes.push(format!(
                "Swarm progress heatmaps are drawn for the {} torrents with the most piece bytes; {} more are listed in the torrents table only.",
                lim.heatmaps,
                tor.order.len() - lim.heatmaps
            ));
            break;
        }
        let mut keys: Vec<&(&str, &str, i64)> = by.keys().filter(|k| k.0 == ih).collect();
        if keys.is_empty() {
            continue;
        }
        let total_peers = keys.len();
        // Confirmed downloaders first, then the peers with the most changes.
        keys.sort_by_key(|k| (!confirmed.contains(*k), std::cmp::Reverse(by[*k].len()), k.1, k.2));
        keys.truncate(lim.heatmap_peers);
        keys.sort_by_key(|k| (by[*k].iter().map(|e| e.0).min().unwrap_or(0), k.1, k.2));
        let t0 = keys.iter().flat_map(|k| by[*k].iter().map(|e| e.0)).min().unwrap_or(0);
        let t1 = keys.iter().flat_map(|k| by[*k].iter().map(|e| e.0)).max().unwrap_or(0);
        let nb = lim.heatmap_bins;
        let step = ((t1 - t0) / nb as i64 + 1).max(1);
        let n_default = n_of.get(ih.as_str()).copied();
        let mut rows = Vec::new();
        for k in &keys {
            let mut ev = by[*k].clone();
            ev.sort_by_key(|e| e.0);
            let mut cells = vec![None; nb];
            let mut cur: Option<f64> = None;
            let mut j = 0;
            for (b, cell) in cells.iter_mut().enumerate() {
                let end = t0 + step * (b as i64 + 1);
                while j < ev.len() && ev[j].0 < end {
                    let n = ev[j].2.or(n_default).unwrap_or(0);
                    if let (Some(h), true) = (ev[j].1, n > 0) {
                        cur = Some((h as f64 / n as f64).min(1.0));
                    }
                    j += 1;
                }
                *cell = cur;
            }
            if cells.iter().any(Option::is_some) {
                rows.push((format!("{}:{}", k.1, k.2), cells, confirmed.contains(*k)));
            }
        }
        if rows.is_empty() {
            p.notes.push(format!(
                "No heatmap for {}: its piece count is unknown, so shares cannot be computed.",
                tor.label(ih)
            ));
            continue;
        }
        let cap = format!(
            "{} — {} of {} peers with known pieces{}; {} columns of {}",
            tor.label(ih),
            rows.len(),
            total_peers,
            if rows.len() < total_peers {
                " (confirmed downloaders first, then the most active)"
            } else {
                ""
            },
            nb,
            svg::fmt_dur(step)
        );
        if rows.len() < total_peers {
            p.notes.push(format!(
                "Heatmap of {}: {} of {} peers drawn.",
                tor.label(ih),
                rows.len(),
                total_peers
            ));
        }
        p.figure(
            &cap,
            svg::heatmap(&format!("swarm progress of {}", tor.label(ih)), &rows, t0, step, nb),
        );
        drawn += 1;
    }
    if drawn == 0 {
        p.empty("No peer's piece count was seen (peer_progress is empty).");
    }
    Ok(())
}

fn downloads(p: &mut Page, peers: &Table, tor: &Torrents, lim: &ReportLimits) {
    p.section("downloads", "Confirmed downloads and download rates");
    let done: Vec<(i64, &str)> = (0..peers.rows)
        .filter(|&r| peers.b("confirmed_download", r) == Some(true))
        .filter_map(|r| peers.i("completed_ts", r).map(|t| (t, peers.t("info_hash", r))))
        .collect();
    if done.is_empty() {
        p.empty("No confirmed download: no peer was seen below the completion threshold and later at or above it.");
    } else {
        const HOUR: i64 = 3_600_000_000;
        let lo = done.iter().map(|d| d.0).min().unwrap_or(0).div_euclid(HOUR) * HOUR;
        let hi = done.iter().map(|d| d.0).max().unwrap_or(0);
        let mut step = HOUR;
        let mut nb = ((hi - lo) / step + 1) as usize;
        if nb > 240 {
            step = 24 * HOUR;
            nb = ((hi - lo) / step + 1) as usize;
        }
        let nb = nb.max(1);
        let mut series: Vec<(String, String, Vec<f64>)> = Vec::new();
        let mut idx: HashMap<String, usize> = HashMap::new();
        for (t, ih) in &done {
            let in_palette = tor
                .order
                .iter()
                .position(|x| x == ih)
                .is_some_and(|i| i < svg::PALETTE.len());
            let name = if in_palette {
                tor.label(ih)
            } else {
                "other torrents".into()
            };
            let i = *idx.entry(name.clone()).or_insert_with(|| {
                series.push((
                    name.clone(),
                    if in_palette {
                        tor.color(ih).to_string()
                    } else {
                        svg::OTHER.into()
                    },
                    vec![0.0; nb],
                ));
                series.len() - 1
            });
            let b = (((t - lo) / step) as usize).min(nb - 1);
            series[i].2[b] += 1.0;
        }
        series.sort_by_key(|s| tor.order.iter().position(|x| tor.label(x) == s.0).unwrap_or(usize::MAX));
        p.figure(
            &format!(
                "Confirmed downloads per {} (peers.completed_ts of peers with confirmed_download), {} in all",
                if step == HOUR { "hour" } else { "day" },
                done.len()
            ),
            svg::time_columns(
                "confirmed downloads per hour",
                lo,
                step,
                nb,
                &series,
                "confirmed downloads",
            ),
        );
    }
    let rates: Vec<(f64, String)> = (0..peers.rows)
        .filter_map(|r| {
            peers
                .f("max_rate_bps", r)
                .filter(|v| *v > 0.0)
                .map(|v| (v, family(peers.t("client", r))))
        })
        .collect();
    if rates.is_empty() {
        p.empty("No peer downloaded piece data on a captured connection (peers.max_rate_bps is empty).");
        return;
    }
    let vals: Vec<f64> = rates.iter().map(|r| r.0).collect();
    p.figure(
        &format!(
            "Peers' highest download rate (peers.max_rate_bps, over windows of --rate-window seconds), {} peers, log scale",
            vals.len()
        ),
        svg::log_histogram("download rate distribution", &vals, &|v| fmt_rate(v), "highest download rate"),
    );
    let mut groups: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for (v, c) in &rates {
        groups.entry(c.clone()).or_default().push(*v);
    }
    let mut g: Vec<(String, Vec<f64>)> = groups.into_iter().collect();
    g.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(&b.0)));
    let n_clients = g.len();
    g.truncate(12);
    let mut sampled = false;
    for (_, v) in g.iter_mut() {
        if v.len() > lim.strip_dots {
            let k = v.len().div_ceil(lim.strip_dots);
            let mut s: Vec<f64> = v.clone();
            s.sort_by(|a, b| a.total_cmp(b));
            *v = s.into_iter().step_by(k).collect();
            sampled = true;
        }
    }
    if sampled {
        p.notes.push(format!(
            "Download rates by client: at most {} dots per client (every k-th by rate).",
            lim.strip_dots
        ));
    }
    p.figure(
        &format!(
            "Highest download rate by client (from the peer id or BEP 10 v; version dropped){}; the black tick is the median",
            if n_clients > 12 { format!(", 12 most common of {n_clients} clients") } else { String::new() }
        ),
        svg::strips("download rate by client", &g, &|v| fmt_rate(v), "highest download rate"),
    );
}

fn audit(ds: &Dataset, p: &mut Page, tor: &Torrents, lim: &ReportLimits) -> Result<(), String> {
    p.section("audit", "Announce audit");
    let a = ds.read(
        "announce_audit",
        &[
            ("info_hash", S),
            ("client_ip", S),
            ("peer_id", S),
            ("client", S),
            ("tracker_ip", S),
            ("tracker_port", I),
            ("transport", S),
            ("n_announces", I),
            ("n_intervals", I),
            ("reported_uploaded", I),
            ("observed_uploaded", I),
            ("opaque_sent_bytes", I),
            ("tolerance_bytes", I),
            ("coverage", S),
            ("flags", L),
            ("suspicious", B),
        ],
    )?;
    p.note(
        "Per announce series: what the client reported uploading against what the capture saw its address send. \
         The rule (docs/SCHEMA.md, upload_above_wire): flag when reported > observed + opaque + tolerance, \
         tolerance = max(10 % of observed + opaque, 2 blocks of 16 KiB per compared interval), and coverage is client. \
         The bar is exactly that allowance; a diamond right of its dashed end is over it. \
         Opaque bytes (MSE-encrypted and unattributable flows) are drawn, so encrypted series do not sit at 0.",
    );
    if a.rows == 0 {
        p.empty("No announce series (no tracker announce was captured).");
        return Ok(());
    }
    let mut idx: Vec<usize> = (0..a.rows).collect();
    idx.sort_by_key(|&r| {
        (
            a.b("suspicious", r) != Some(true),
            std::cmp::Reverse(a.u("reported_uploaded", r)),
        )
    });
    let flagged = idx.iter().filter(|&&r| a.b("suspicious", r) == Some(true)).count();
    let label = |r: usize| {
        format!(
            "{} → {}:{}",
            a.t("client_ip", r),
            a.t("tracker_ip", r),
            a.u("tracker_port", r)
        )
    };
    let bars: Vec<AuditBar> = idx
        .iter()
        .take(lim.audit_bars)
        .map(|&r| AuditBar {
            label: label(r),
            observed: a.u("observed_uploaded", r) as f64,
            opaque: a.u("opaque_sent_bytes", r) as f64,
            tolerance: a.u("tolerance_bytes", r) as f64,
            reported: a.u("reported_uploaded", r) as f64,
            flagged: a.b("suspicious", r) == Some(true),
            flags: a.l("flags", r).join(", "),
            coverage: a.t("coverage", r).to_string(),
            color: tor.color(a.t("info_hash", r)).to_string(),
            torrent: tor.label(a.t("info_hash", r)),
        })
        .collect();
    if a.rows > lim.audit_bars {
        p.notes.push(format!(
            "Audit chart: {} of {} series (flagged first, then by reported upload); the table lists up to {}.",
            lim.audit_bars, a.rows, lim.table_rows
        ));
    }
    p.figure(
        &format!(
            "{} series, {flagged} flagged (red labels; any flag, see the table for which)",
            a.rows
        ),
        svg::audit("announce audit", &bars),
    );
    let rows: Vec<Vec<Cell>> = idx
        .iter()
        .take(lim.table_rows)
        .map(|&r| {
            vec![
                Cell::text(if a.b("suspicious", r) == Some(true) { "yes" } else { "" }),
                Cell::text(a.l("flags", r).join(", ")),
                Cell::text(a.t("client_ip", r)),
                Cell::text(a.t("peer_id", r)),
                Cell::text(a.t("client", r)),
                Cell::text(a.t("tracker_ip", r)),
                Cell::int(a.u("tracker_port", r)),
                Cell::text(a.t("transport", r)),
                Cell::text(a.t("info_hash", r)),
                Cell::int(a.u("n_announces", r)),
                Cell::bytes(a.u("reported_uploaded", r)),
                Cell::bytes(a.u("observed_uploaded", r)),
                Cell::bytes(a.u("opaque_sent_bytes", r)),
                Cell::bytes(a.u("tolerance_bytes", r)),
                Cell::text(a.t("coverage", r)),
            ]
        })
        .collect();
    p.h3("Announce series (flagged first)");
    p.body.push_str(
        &html::Table {
            id: "t-audit".into(),
            headers: vec![
                ("flagged", "announce_audit.suspicious"),
                ("flags", "announce_audit.flags"),
                ("client_ip", "key"),
                ("peer_id", "key"),
                ("client", "from the peer id"),
                ("tracker_ip", "key"),
                ("tracker_port", "key"),
                ("transport", "key"),
                ("info_hash", "key"),
                ("announces", "n_announces"),
                ("reported up", "reported_uploaded"),
                ("observed up", "observed_uploaded"),
                ("opaque sent", "opaque_sent_bytes"),
                ("tolerance", "tolerance_bytes"),
                ("coverage", "what the capture saw of the client"),
            ],
            rows,
        }
        .render(),
    );
    Ok(())
}

fn discovery(ds: &Dataset, p: &mut Page, peers: &Table, tor: &Torrents) -> Result<(), String> {
    p.section("discovery", "Discovery: which sources found which peers");
    let _ = tor;
    // First sighting of each (info_hash, ip, port) per source.
    let mut first: BTreeMap<&'static str, HashMap<(String, String, i64), i64>> = BTreeMap::new();
    let mut add = |src: &'static str, ih: &str, ip: &str, port: i64, ts: Option<i64>| {
        if let Some(ts) = ts {
            let e = first
                .entry(src)
                .or_default()
                .entry((ih.to_string(), ip.to_string(), port))
                .or_insert(ts);
            if ts < *e {
                *e = ts;
            }
        }
    };
    let c = ds.read(
        "connections",
        &[
            ("first_ts", I),
            ("info_hash", S),
            ("resp_ip", S),
            ("resp_port", I),
            ("orig_ip", S),
            ("orig_port", I),
            ("orig_listen_port", I),
        ],
    )?;
    for r in 0..c.rows {
        let ih = c.t("info_hash", r);
        add("wire", ih, c.t("resp_ip", r), c.u("resp_port", r), c.i("first_ts", r));
        let op = c.i("orig_listen_port", r).unwrap_or(c.u("orig_port", r));
        add("wire", ih, c.t("orig_ip", r), op, c.i("first_ts", r));
    }
    let t = ds.read(
        "tracker_peers",
        &[("ts", I), ("info_hash", S), ("peer_ip", S), ("peer_port", I)],
    )?;
    for r in 0..t.rows {
        add(
            "tracker",
            t.t("info_hash", r),
            t.t("peer_ip", r),
            t.u("peer_port", r),
            t.i("ts", r),
        );
    }
    let d = ds.read(
        "dht_peers",
        &[("ts", I), ("info_hash", S), ("peer_ip", S), ("peer_port", I)],
    )?;
    for r in 0..d.rows {
        add(
            "dht",
            d.t("info_hash", r),
            d.t("peer_ip", r),
            d.u("peer_port", r),
            d.i("ts", r),
        );
    }
    let x = ds.read(
        "pex_peers",
        &[
            ("ts", I),
            ("info_hash", S),
            ("peer_ip", S),
            ("peer_port", I),
            ("action", S),
        ],
    )?;
    for r in 0..x.rows {
        if x.t("action", r) == "added" {
            add(
                "pex",
                x.t("info_hash", r),
                x.t("peer_ip", r),
                x.u("peer_port", r),
                x.i("ts", r),
            );
        }
    }
    let l = ds.read(
        "lsd_announces",
        &[("ts", I), ("info_hash", S), ("src_ip", S), ("port", I)],
    )?;
    for r in 0..l.rows {
        add(
            "lsd",
            l.t("info_hash", r),
            l.t("src_ip", r),
            l.u("port", r),
            l.i("ts", r),
        );
    }
    let v = ds.read(
        "probe_visits",
        &[("ts", I), ("info_hash", S), ("peer_ip", S), ("peer_port", I)],
    )?;
    for r in 0..v.rows {
        add(
            "probe",
            v.t("info_hash", r),
            v.t("peer_ip", r),
            v.u("peer_port", r),
            v.i("ts", r),
        );
    }
    let order = ["wire", "tracker", "dht", "pex", "lsd", "probe"];
    let mut series = Vec::new();
    for (i, src) in order.iter().enumerate() {
        let Some(m) = first.get(src) else { continue };
        let mut ts: Vec<i64> = m.values().copied().collect();
        ts.sort_unstable();
        // Cumulative count, thinned to at most ~400 steps.
        let k = ts.len().div_ceil(400).max(1);
        let mut pts: Vec<(i64, f64)> = ts
            .iter()
            .enumerate()
            .filter(|(j, _)| j % k == 0)
            .map(|(j, t)| (*t, (j + 1) as f64))
            .collect();
        if let Some(last) = ts.last() {
            pts.push((*last, ts.len() as f64));
        }
        series.push((
            format!("{src} ({})", fmt_int(ts.len() as i64)),
            color(i).to_string(),
            pts,
        ));
    }
    if series.is_empty() {
        p.empty("No peer was learned from any source.");
    } else {
        p.figure(
            "Distinct peers (torrent, address, port) each source had named by then: wire = captured peer-wire connections; tracker, dht, pex, lsd = peers those messages listed; probe = active contacts",
            svg::time_lines("peers found per source over time", &series, "distinct peers found"),
        );
    }
    // Which combinations of sources the peers table records.
    let mut combos: HashMap<String, i64> = HashMap::new();
    for r in 0..peers.rows {
        let mut s: Vec<&str> = peers.l("sources", r).iter().map(String::as_str).collect();
        s.sort_by_key(|x| order.iter().position(|o| o == x).unwrap_or(99));
        let k = if s.is_empty() {
            "(none)".to_string()
        } else {
            s.join(" + ")
        };
        *combos.entry(k).or_default() += 1;
    }
    if !combos.is_empty() {
        let mut v: Vec<_> = combos.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v.truncate(15);
        let items: Vec<(String, f64, String, String)> = v
            .iter()
            .map(|(k, n)| {
                (
                    k.clone(),
                    *n as f64,
                    svg::PALETTE[3].to_string(),
                    format!("{k}: {} peers", fmt_int(*n)),
                )
            })
            .collect();
        p.figure(
            "Peers by the set of sources that named them (peers.sources)",
            svg::hbars("peers by sources", &items, &|v| svg::fmt_num(v), "peers"),
        );
    }
    Ok(())
}

fn geography(p: &mut Page, peers: &Table, tor: &Torrents, lim: &ReportLimits) {
    p.section("map", "Where the peers are");
    let located: Vec<usize> = (0..peers.rows)
        .filter(|&r| peers.f("latitude", r).is_some() && peers.f("longitude", r).is_some())
        .collect();
    if located.is_empty() {
        p.empty(
            "No peer has coordinates: run analyze or live with --geoip CITY.mmdb (a GeoLite2 or DB-IP City database) to fill peers.latitude/longitude.",
        );
        return;
    }
    let mut pick = located.clone();
    if pick.len() > lim.map_points {
        // Confirmed downloaders always, the rest every k-th.
        let conf: Vec<usize> = pick
            .iter()
            .copied()
            .filter(|&r| peers.b("confirmed_download", r) == Some(true))
            .collect();
        let rest: Vec<usize> = pick
            .iter()
            .copied()
            .filter(|&r| peers.b("confirmed_download", r) != Some(true))
            .collect();
        let room = lim.map_points.saturating_sub(conf.len()).max(1);
        let k = rest.len().div_ceil(room).max(1);
        pick = conf
            .into_iter()
            .chain(rest.into_iter().step_by(k))
            .take(lim.map_points)
            .collect();
        p.notes.push(format!(
            "Map: {} of {} located peers drawn (every confirmed downloader, then every k-th).",
            pick.len(),
            located.len()
        ));
    }
    let points: Vec<MapPoint> = pick
        .iter()
        .map(|&r| {
            let ih = peers.t("info_hash", r);
            MapPoint {
                lat: peers.f("latitude", r).unwrap_or(0.0),
                lon: peers.f("longitude", r).unwrap_or(0.0),
                color: tor.color(ih).to_string(),
                confirmed: peers.b("confirmed_download", r) == Some(true),
                title: format!(
                    "{}:{} {} {} — {}{}",
                    peers.t("peer_ip", r),
                    peers.u("peer_port", r),
                    peers.t("city", r),
                    peers.t("country", r),
                    tor.label(ih),
                    if peers.b("confirmed_download", r) == Some(true) {
                        " — confirmed download"
                    } else {
                        ""
                    }
                ),
            }
        })
        .collect();
    let mut legend: Vec<(String, String, &str)> = Vec::new();
    let shown: HashSet<&str> = pick.iter().map(|&r| peers.t("info_hash", r)).collect();
    for (i, ih) in tor.order.iter().enumerate().take(svg::PALETTE.len()) {
        if shown.contains(ih.as_str()) {
            legend.push((tor.label(ih), color(i).to_string(), "dot"));
        }
    }
    if shown.iter().any(|ih| {
        tor.order
            .iter()
            .position(|x| x == ih)
            .is_none_or(|i| i >= svg::PALETTE.len())
    }) {
        legend.push(("other torrents".into(), svg::OTHER.into(), "dot"));
    }
    legend.push(("confirmed download".into(), "#111".into(), "ring"));
    let mut countries: HashMap<&str, i64> = HashMap::new();
    for r in 0..peers.rows {
        if let Some(c) = peers.s("country", r) {
            *countries.entry(c).or_default() += 1;
        }
    }
    p.figure(
        &format!(
            "{} located peers (peers.latitude/longitude from --geoip), coloured by torrent; country outlines: Natural Earth 1:110m (public domain), simplified",
            located.len()
        ),
        svg::world_map("map of peers", WORLD, &points, &legend),
    );
    if !countries.is_empty() {
        let mut v: Vec<_> = countries.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        v.truncate(15);
        let items: Vec<(String, f64, String, String)> = v
            .iter()
            .map(|(k, n)| {
                (
                    k.to_string(),
                    *n as f64,
                    svg::PALETTE[4].to_string(),
                    format!("{k}: {} peers", fmt_int(*n)),
                )
            })
            .collect();
        p.figure(
            "Peers by country (peers.country, ISO 3166-1)",
            svg::hbars("peers by country", &items, &|v| svg::fmt_num(v), "peers"),
        );
    }
}

fn tables(ds: &Dataset, p: &mut Page, peers: &Table, tor: &Torrents, lim: &ReportLimits) -> Result<(), String> {
    p.section("tables", "Top peers and connections");
    p.note("Click a column to sort, type to filter. Join keys: peers (info_hash, peer_ip, peer_port); connections conn_id = flows.conn_id (Wireshark frame.number for one capture), flow_id, info_hash.");
    let mut idx: Vec<usize> = (0..peers.rows).collect();
    idx.sort_by_key(|&r| {
        std::cmp::Reverse(
            peers.u("downloaded_bytes", r) + peers.u("uploaded_bytes", r) + peers.u("encrypted_bytes_sent", r),
        )
    });
    if peers.rows > lim.table_rows {
        p.notes.push(format!(
            "Peers table: top {} of {} peers by bytes moved.",
            lim.table_rows, peers.rows
        ));
    }
    let rows: Vec<Vec<Cell>> = idx
        .iter()
        .take(lim.table_rows)
        .map(|&r| {
            vec![
                Cell::text(tor.label(peers.t("info_hash", r))),
                Cell::text(peers.t("info_hash", r)),
                Cell::text(peers.t("peer_ip", r)),
                Cell::int(peers.u("peer_port", r)),
                Cell::text(peers.t("client", r)),
                Cell::text(peers.t("country", r)),
                Cell::opt_int(peers.i("first_pieces", r)),
                Cell::opt_int(peers.i("last_pieces", r)),
                Cell::opt_int(peers.i("n_pieces", r)),
                Cell::text(if peers.b("confirmed_download", r) == Some(true) {
                    "yes"
                } else {
                    ""
                }),
                Cell::bytes(peers.u("downloaded_bytes", r)),
                Cell::bytes(peers.u("uploaded_bytes", r)),
                match peers.f("max_rate_bps", r) {
                    Some(v) => Cell::Num(v, fmt_rate(v)),
                    None => Cell::Num(f64::NEG_INFINITY, String::new()),
                },
                Cell::int(peers.u("n_connections", r)),
                Cell::text(peers.l("sources", r).join(", ")),
            ]
        })
        .collect();
    p.h3("Peers");
    if rows.is_empty() {
        p.empty("No peers.");
    } else {
        p.body.push_str(
            &html::Table {
                id: "t-peers".into(),
                headers: vec![
                    ("torrent", "name"),
                    ("info_hash", "key"),
                    ("peer_ip", "key"),
                    ("peer_port", "key (listen port)"),
                    ("client", "peers.client"),
                    ("country", "peers.country"),
                    ("first pieces", "first_pieces"),
                    ("last pieces", "last_pieces"),
                    ("of pieces", "n_pieces"),
                    ("confirmed", "confirmed_download"),
                    ("downloaded", "downloaded_bytes"),
                    ("uploaded", "uploaded_bytes"),
                    ("max rate", "max_rate_bps (download)"),
                    ("conns", "n_connections"),
                    ("sources", "sources"),
                ],
                rows,
            }
            .render(),
        );
    }
    let c = ds.read(
        "connections",
        &[
            ("conn_id", I),
            ("flow_id", I),
            ("capture", S),
            ("transport", S),
            ("orig_ip", S),
            ("orig_port", I),
            ("resp_ip", S),
            ("resp_port", I),
            ("first_ts", I),
            ("info_hash", S),
            ("attribution_confidence", S),
            ("orig_client", S),
            ("resp_client", S),
            ("encrypted", B),
            ("midstream", B),
            ("piece_bytes_orig", I),
            ("piece_bytes_resp", I),
            ("payload_bytes_orig", I),
            ("payload_bytes_resp", I),
        ],
    )?;
    let mut idx: Vec<usize> = (0..c.rows).collect();
    idx.sort_by_key(|&r| std::cmp::Reverse(c.u("payload_bytes_orig", r) + c.u("payload_bytes_resp", r)));
    if c.rows > lim.table_rows {
        p.notes.push(format!(
            "Connections table: top {} of {} connections by payload bytes.",
            lim.table_rows, c.rows
        ));
    }
    let rows: Vec<Vec<Cell>> = idx
        .iter()
        .take(lim.table_rows)
        .map(|&r| {
            vec![
                Cell::int(c.u("conn_id", r)),
                Cell::int(c.u("flow_id", r)),
                Cell::text(c.t("capture", r)),
                Cell::text(c.t("transport", r)),
                Cell::text(format!("{}:{}", c.t("orig_ip", r), c.u("orig_port", r))),
                Cell::text(format!("{}:{}", c.t("resp_ip", r), c.u("resp_port", r))),
                Cell::text(c.i("first_ts", r).map(fmt_ts).unwrap_or_default()),
                Cell::text(c.t("info_hash", r)),
                Cell::text(c.t("attribution_confidence", r)),
                Cell::text(c.t("orig_client", r)),
                Cell::text(c.t("resp_client", r)),
                Cell::text(match (c.b("encrypted", r), c.b("midstream", r)) {
                    (Some(true), Some(true)) => "encrypted, midstream",
                    (Some(true), _) => "encrypted",
                    (_, Some(true)) => "midstream",
                    _ => "",
                }),
                Cell::bytes(c.u("piece_bytes_orig", r)),
                Cell::bytes(c.u("piece_bytes_resp", r)),
                Cell::bytes(c.u("payload_bytes_orig", r) + c.u("payload_bytes_resp", r)),
            ]
        })
        .collect();
    p.h3("Connections");
    if rows.is_empty() {
        p.empty("No peer-wire connections.");
    } else {
        p.body.push_str(
            &html::Table {
                id: "t-conns".into(),
                headers: vec![
                    ("conn_id", "key: connections.conn_id (frame of the first packet)"),
                    ("flow_id", "flows.conn_id of the carrying flow"),
                    ("capture", "input file"),
                    ("transport", "tcp or utp"),
                    ("originator", "orig_ip:orig_port"),
                    ("responder", "resp_ip:resp_port"),
                    ("first packet", "first_ts"),
                    ("info_hash", "key to torrents and peers"),
                    ("attribution", "attribution_confidence"),
                    ("orig client", "orig_client"),
                    ("resp client", "resp_client"),
                    ("stream", "encrypted / midstream"),
                    ("pieces from orig", "piece_bytes_orig"),
                    ("pieces from resp", "piece_bytes_resp"),
                    ("payload", "payload_bytes_orig + payload_bytes_resp"),
                ],
                rows,
            }
            .render(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::family;

    #[test]
    fn client_families_drop_versions() {
        assert_eq!(family("qBittorrent 4.3.1"), "qBittorrent");
        assert_eq!(family("Transmission 3.00"), "Transmission");
        assert_eq!(family("libtorrent (Rasterbar) 2.0.8"), "libtorrent (Rasterbar)");
        assert_eq!(family("µTorrent v3.5"), "µTorrent");
        assert_eq!(family(""), "(unknown)");
    }
}
