//! `swarmtap merge DIR... -o OUT`: several datasets (time pieces of one
//! tap, several sensors, offline or live) into one, with the tables and
//! types `analyze` writes. docs/MERGE.md is the definition, table by table;
//! this module follows it section by section:
//!
//! 0. inputs ordered by their first capture time, conn_ids rebased;
//! 1. event tables unioned, copies of one event seen by two sensors removed;
//! 2. flows and connections cut by a time piece joined back, copies seen by
//!    two sensors removed;
//! 3. entity tables recomputed from the merged events, with the analysis's
//!    own code where it decides (completion: `analyze::swarm`; the announce
//!    audit: `analyze::audit`).
//!
//! The inputs are read table by table (each table of every dataset, then
//! the next), so memory holds one table of the merge at a time plus the
//! extracts the entity tables need.

mod entities;
mod frame;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use polars::prelude::*;

use crate::sink::layout::{self, Layout, Staging};
use crate::sink::{table_schema, write_table_frame, TABLE_NAMES};
use frame::*;

/// What to merge and how.
#[derive(Debug, Clone)]
pub struct MergeOptions {
    pub inputs: Vec<PathBuf>,
    pub output: PathBuf,
    pub force: bool,
    /// How far apart two sensors' timestamps of one packet may be (µs).
    pub tolerance_us: i64,
    /// How far apart a connection's end in one piece and its pick-up in the
    /// next may be (µs).
    pub join_gap_us: i64,
    /// Completion threshold (as `analyze --threshold`).
    pub threshold: f64,
    /// The audit's link-rate bound (`Settings::audit_max_link_bps`).
    pub max_link_bps: f64,
}

impl MergeOptions {
    pub fn new(inputs: Vec<PathBuf>, output: PathBuf) -> Self {
        let s = crate::config::Settings::default();
        MergeOptions {
            inputs,
            output,
            force: false,
            tolerance_us: 2_000_000,
            join_gap_us: 120_000_000,
            threshold: s.threshold,
            max_link_bps: s.audit_max_link_bps,
        }
    }
}

/// What a merge did, for the summary line and the tests.
#[derive(Debug, Clone, Default)]
pub struct MergeSummary {
    pub n_datasets: usize,
    pub rows: BTreeMap<String, usize>,
    /// Rows removed as copies of another sensor's row, per table.
    pub deduplicated: BTreeMap<String, usize>,
    /// Flow / connection rows joined into an earlier piece's row.
    pub joined_flows: usize,
    pub joined_connections: usize,
}

/// Event tables and their dedup keys (docs/MERGE.md section 1).
const EVENT_KEYS: &[(&str, &[&str])] = &[
    (
        "peer_messages",
        &[
            "src_ip", "src_port", "dst_ip", "dst_port", "msg", "ext", "piece", "begin", "length", "wire_len",
        ],
    ),
    (
        "peer_progress",
        &["info_hash", "peer_ip", "peer_port", "cause", "n_pieces_have"],
    ),
    (
        "pieces",
        &[
            "info_hash",
            "piece",
            "sender_ip",
            "sender_port",
            "receiver_ip",
            "receiver_port",
            "bytes",
            "verified",
        ],
    ),
    (
        "pex_peers",
        &["reporter_ip", "info_hash", "peer_ip", "peer_port", "action"],
    ),
    (
        "tracker_announces",
        &[
            "client_ip",
            "client_port",
            "tracker_ip",
            "tracker_port",
            "transport",
            "info_hash",
            "peer_id",
            "uploaded",
            "downloaded",
            "left",
            "event",
        ],
    ),
    (
        "tracker_peers",
        &[
            "tracker_ip",
            "tracker_port",
            "client_ip",
            "info_hash",
            "peer_ip",
            "peer_port",
        ],
    ),
    (
        "tracker_scrapes",
        &[
            "client_ip",
            "tracker_ip",
            "tracker_port",
            "transport",
            "info_hash",
            "seeders",
            "leechers",
            "completed",
        ],
    ),
    (
        "dht_messages",
        &["src_ip", "src_port", "dst_ip", "dst_port", "tid", "kind", "method"],
    ),
    (
        "dht_peers",
        &[
            "info_hash",
            "peer_ip",
            "peer_port",
            "via",
            "reporter_ip",
            "reporter_port",
        ],
    ),
    ("lsd_announces", &["src_ip", "src_port", "info_hash", "port"]),
    (
        "probe_visits",
        &["peer_ip", "peer_port", "info_hash", "conn_id", "attempt"],
    ),
    ("anomalies", &["layer", "kind", "detail"]),
];

/// Columns holding a conn_id (rebased and rewritten to joined ids).
const ID_COLUMNS: &[&str] = &["conn_id", "flow_id"];

const ID_BITS: u32 = 40;

/// `(c << 40) | frame` of dataset `base` → `((base + c) << 40) | frame`.
fn rebase(id: i64, base: i64) -> i64 {
    ((base + (id >> ID_BITS)) << ID_BITS) | (id & ((1i64 << ID_BITS) - 1))
}

/// The merge's state between tables.
struct Ctx<'a> {
    opts: &'a MergeOptions,
    inputs: Vec<PathBuf>,
    /// capture offset per dataset (docs/MERGE.md 0.2).
    base: Vec<i64>,
    /// rebased conn_id → the merged row's conn_id (joined or deduplicated).
    ids: HashMap<i64, i64>,
    /// Whether several sensors take part (else no event can be a copy).
    multi_sensor: bool,
    staging: PathBuf,
    summary: MergeSummary,
    /// Rows of layer `merge` for `anomalies`.
    notes: Vec<(String, String)>,
}

impl Ctx<'_> {
    /// Table `t` of every dataset, aligned to its schema, with `_ds`, and
    /// conn_ids rebased and rewritten.
    fn load(&mut self, t: &str) -> Res<DataFrame> {
        let schema = table_schema(t).ok_or_else(|| format!("unknown table {t}"))?;
        let mut frames = Vec::new();
        for (i, dir) in self.inputs.iter().enumerate() {
            match crate::summary::read(dir, t)? {
                Some(df) => frames.push(conform(df, &schema, i as u32)?),
                None => self.notes.push((
                    "merge_table_missing".into(),
                    format!("{}: no {t} table; merged without it", dir.display()),
                )),
            }
        }
        let mut df = concat(frames, &schema)?;
        self.remap_ids(&mut df)?;
        Ok(df)
    }

    fn remap_ids(&self, df: &mut DataFrame) -> Res<()> {
        self.ids_with(df, true)
    }

    /// Ids already rebased: only the rewrites of joined and deduplicated rows.
    fn rewrite_ids(&self, df: &mut DataFrame) -> Res<()> {
        self.ids_with(df, false)
    }

    fn ids_with(&self, df: &mut DataFrame, rebase_first: bool) -> Res<()> {
        let ds = ds_of(df)?;
        let base: Vec<i64> = ds
            .iter()
            .map(|&d| if rebase_first { self.base[d] } else { -1 })
            .collect();
        let re = |id: i64, b: i64| if b < 0 { id } else { rebase(id, b) };
        for name in ID_COLUMNS {
            if df.column(name).is_err() {
                continue;
            }
            let v = i64s(df, name)?;
            let out: Vec<Option<i64>> = v
                .iter()
                .zip(&base)
                .map(|(v, &b)| v.map(|id| self.id(re(id, b))))
                .collect();
            set(df, col_i64(name, out))?;
        }
        if df.column("conn_ids").is_ok() {
            let lists = i64_lists(df, "conn_ids")?;
            let out: Vec<Vec<i64>> = lists
                .into_iter()
                .zip(&base)
                .map(|(l, &b)| l.into_iter().map(|id| self.id(re(id, b))).collect())
                .collect();
            set(df, col_i64_list("conn_ids", out))?;
        }
        Ok(())
    }

    fn id(&self, id: i64) -> i64 {
        self.ids.get(&id).copied().unwrap_or(id)
    }

    fn write(&mut self, t: &str, df: &DataFrame) -> Res<()> {
        let path = self.staging.join(format!("{t}.parquet"));
        write_table_frame(t, &path, df).map_err(|e| format!("writing {t}: {e}"))?;
        self.summary.rows.insert(t.to_string(), df.height());
        Ok(())
    }

    /// Section 1: union (done by `load`), copies across sensors removed,
    /// rows in time order.
    fn events(&mut self, t: &str, df: DataFrame) -> Res<DataFrame> {
        let keys = EVENT_KEYS.iter().find(|(n, _)| *n == t).map(|(_, k)| *k).unwrap_or(&[]);
        let ts = i64s(&df, "ts")?;
        let h = df.height();
        if !self.multi_sensor || keys.is_empty() {
            let mut idx: Vec<usize> = (0..h).collect();
            if df.column("ts").is_ok() {
                idx.sort_by_key(|&i| ts[i].unwrap_or(i64::MIN));
            }
            return take(&df, &idx);
        }
        let key = row_keys(&df, keys)?;
        let sensors = strs0(&df, "sensor")?;
        let mut idx: Vec<usize> = (0..h).collect();
        idx.sort_by(|&a, &b| {
            key[a]
                .cmp(&key[b])
                .then(ts[a].cmp(&ts[b]))
                .then(sensors[a].cmp(&sensors[b]))
                .then(a.cmp(&b))
        });
        // Two equal events of one sensor at one instant (two messages in
        // one packet): the n-th of each sensor's pair with the n-th of the
        // other's.
        let mut occ = vec![0u32; h];
        for w in 1..h {
            let (p, c) = (idx[w - 1], idx[w]);
            if key[p] == key[c] && ts[p] == ts[c] && sensors[p] == sensors[c] {
                occ[c] = occ[p] + 1;
            }
        }
        idx.sort_by(|&a, &b| {
            key[a]
                .cmp(&key[b])
                .then(ts[a].cmp(&ts[b]))
                .then(occ[a].cmp(&occ[b]))
                .then(sensors[a].cmp(&sensors[b]))
                .then(a.cmp(&b))
        });
        let tol = self.opts.tolerance_us;
        let mut kept: Vec<(usize, String)> = Vec::with_capacity(h);
        let mut i = 0;
        while i < h {
            // A cluster: same key, ts within tol of its first, one row per
            // sensor.
            let a = idx[i];
            let mut members = vec![a];
            let mut j = i + 1;
            while j < h {
                let b = idx[j];
                let same = key[b] == key[a]
                    && match (ts[a], ts[b]) {
                        (Some(x), Some(y)) => y - x <= tol,
                        (None, None) => true,
                        _ => false,
                    }
                    && !members.iter().any(|&m| sensors[m] == sensors[b]);
                if !same {
                    break;
                }
                members.push(b);
                j += 1;
            }
            let first = *members
                .iter()
                .min_by(|&&x, &&y| sensors[x].cmp(&sensors[y]))
                .unwrap_or(&a);
            kept.push((first, sensor_set(members.iter().map(|&m| sensors[m].as_str()))));
            i = j;
        }
        let removed = h - kept.len();
        if removed > 0 {
            *self.summary.deduplicated.entry(t.to_string()).or_default() += removed;
        }
        kept.sort_by_key(|&(r, _)| (ts[r].unwrap_or(i64::MIN), r));
        let rows: Vec<usize> = kept.iter().map(|k| k.0).collect();
        let mut out = take(&df, &rows)?;
        set(
            &mut out,
            col_str("sensor", kept.into_iter().map(|k| Some(k.1)).collect()),
        )?;
        Ok(out)
    }
}

/// One text key per row from `cols` (compared for equality only).
fn row_keys(df: &DataFrame, cols: &[&str]) -> Res<Vec<String>> {
    let mut keys = vec![String::new(); df.height()];
    for c in cols {
        let v = strs(df, c)?;
        for (k, v) in keys.iter_mut().zip(v) {
            if let Some(v) = v {
                k.push_str(&v);
            } else {
                k.push('\u{0}');
            }
            k.push('\u{1f}');
        }
    }
    Ok(keys)
}

/// Whether `dir` is a swarmtap dataset (analyze or live layout).
fn is_dataset(dir: &Path) -> bool {
    dir.join("capture_stats.parquet").is_file() || dir.join("capture_stats").is_dir()
}

/// Runs the merge: reads every input, writes OUT (aside, then swapped in;
/// a folder that is not an analyze dataset is refused without `force`).
pub fn merge(opts: &MergeOptions) -> Result<MergeSummary, String> {
    if opts.inputs.is_empty() {
        return Err("merge: no input dataset".into());
    }
    for d in &opts.inputs {
        if !is_dataset(d) {
            return Err(format!(
                "{}: not a swarmtap dataset (no capture_stats table)",
                d.display()
            ));
        }
        if same_dir(d, &opts.output) {
            return Err(format!("{}: an input cannot be the output", d.display()));
        }
    }
    layout::check_target(&opts.output, Layout::Single, opts.force).map_err(|e| e.to_string())?;
    let staging = Staging::new(&opts.output)
        .map_err(|e| format!("cannot create output directory {}: {e}", opts.output.display()))?;
    let summary = run(opts, staging.path())?;
    staging.commit().map_err(|e| {
        format!(
            "cannot put the merged dataset in place of {}: {e}",
            opts.output.display()
        )
    })?;
    Ok(summary)
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn run(opts: &MergeOptions, staging: &Path) -> Res<MergeSummary> {
    // 0. Order the datasets by their first capture time.
    let mut firsts: Vec<(i64, usize, usize, String)> = Vec::new();
    for (i, d) in opts.inputs.iter().enumerate() {
        let cs = crate::summary::read(d, "capture_stats")?.unwrap_or_default();
        let first = i64s(&cs, "first_ts")?.into_iter().flatten().min().unwrap_or(i64::MAX);
        let sensors = sensor_set(strs0(&cs, "sensor")?.iter().map(String::as_str));
        firsts.push((first, i, cs.height(), sensors));
    }
    firsts.sort();
    let inputs: Vec<PathBuf> = firsts.iter().map(|f| opts.inputs[f.1].clone()).collect();
    let mut base = Vec::new();
    let mut acc = 0i64;
    for f in &firsts {
        base.push(acc);
        acc += f.2.max(1) as i64;
    }
    let all_sensors = sensor_set(firsts.iter().map(|f| f.3.as_str()));
    let mut cx = Ctx {
        opts,
        inputs,
        base,
        ids: HashMap::new(),
        multi_sensor: all_sensors.contains(','),
        staging: staging.to_path_buf(),
        summary: MergeSummary {
            n_datasets: opts.inputs.len(),
            ..Default::default()
        },
        notes: Vec::new(),
    };

    // capture_stats: the union.
    let cs = cx.load("capture_stats")?;
    let capture_start = i64s(&cs, "first_ts")?.into_iter().flatten().min();
    let first = i64s(&cs, "first_ts")?;
    let mut idx: Vec<usize> = (0..cs.height()).collect();
    idx.sort_by_key(|&i| (first[i].unwrap_or(i64::MIN), i));
    let cs = take(&cs, &idx)?;
    cx.write("capture_stats", &cs)?;
    drop(cs);

    // 2. Flows and connections.
    let flows = cx.load("flows")?;
    // Whether each piece of a flow ended closed (fin, rst, reused): a
    // connection piece that did cannot continue in the next.
    let flow_closed: HashMap<i64, bool> = i64s0(&flows, "conn_id")?
        .into_iter()
        .zip(strs0(&flows, "end_reason")?)
        .map(|(id, e)| (id, matches!(e.as_str(), "fin" | "rst" | "reused")))
        .collect();
    let (mut flows, flow_ids, n_joined) = entities::join_flows(&flows, opts)?;
    cx.summary.joined_flows = n_joined;
    let conns = cx.load("connections")?;
    let (mut conns, joined, n_joined_c) = entities::join_connections(&conns, opts, &flow_closed)?;
    cx.ids = flow_ids;
    cx.summary.joined_connections = n_joined_c;
    cx.ids.extend(joined.ids.iter().map(|(a, b)| (*a, *b)));
    // The joined rows keep their first piece's id; connections' flow_id
    // and uTP ids follow the rewrites; later tables are rewritten by `load`.
    cx.rewrite_ids(&mut flows)?;
    cx.rewrite_ids(&mut conns)?;
    let aligned = entities::align_tcp_connections(&mut conns, &flows)?;
    for v in cx.ids.values_mut() {
        if let Some(n) = aligned.get(v) {
            *v = *n;
        }
    }
    cx.ids.extend(aligned);
    // Peer keys: a later piece's ports of joined connections, then
    // ephemeral ports joining the one listen endpoint of their address.
    let mut peer_renames = joined.peer_renames;
    let mut peers_in = cx.load("peers")?;
    entities::rekey_misattributed(&mut peers_in, &conns)?;
    entities::rename_peers(&mut peers_in, &peer_renames, "peer_ip", "peer_port")?;
    let eph = entities::ephemeral_renames(&peers_in, &conns)?;
    entities::rename_peers(&mut peers_in, &eph, "peer_ip", "peer_port")?;
    // Compose: a cut rename may land on an ephemeral key.
    let composed: Vec<_> = peer_renames
        .iter()
        .map(|((h, ip, p), t)| {
            (
                (h.clone(), ip.clone(), *p),
                eph.get(&(h.clone(), ip.clone(), *t)).copied().unwrap_or(*t),
            )
        })
        .collect();
    peer_renames.extend(composed);
    for (k, v) in &eph {
        peer_renames.entry(k.clone()).or_insert(*v);
    }
    // Connection ends follow their peers rows through both renames (a
    // joined connection's first piece may name an end by the source port
    // a later piece's `p` renamed).
    entities::rename_conn_ports(&mut conns, &peer_renames)?;
    let enc_owners = entities::encrypted_originators(&peers_in, &conns, &eph)?;
    // Hybrid torrents: a peer known under one hash off the wire joins the
    // wire's peer at that endpoint under the other.
    let torrents_in = cx.load("torrents")?;
    let hybrid = entities::hybrid_renames(&peers_in, &torrents_in)?;
    entities::rename_hashes(&mut peers_in, &hybrid)?;
    entities::set_orig_ports(&mut conns, &enc_owners)?;
    cx.write("flows", &flows)?;
    cx.write("connections", &conns)?;
    let conn_info = entities::ConnInfo::from_frame(&conns)?;
    let opaque_flows = entities::OpaqueFlows::from_frames(&flows, &conns)?;
    drop(flows);
    drop(conns);

    // 1. Event tables, one at a time; what the entity tables need is kept.
    let mut ex = entities::Extracts::default();
    ex.hybrid = hybrid;
    ex.hash_alias = entities::hash_aliases(&torrents_in)?;
    for &t in TABLE_NAMES {
        if matches!(
            t,
            "flows"
                | "connections"
                | "capture_stats"
                | "peers"
                | "torrents"
                | "announce_audit"
                | "dht_nodes"
                | "dht_infohashes"
                | "anomalies"
        ) {
            continue;
        }
        let df = cx.load(t)?;
        let mut df = cx.events(t, df)?;
        if matches!(t, "peer_messages" | "peer_progress" | "pex_peers") {
            entities::fill_info_hash(&mut df, &conn_info)?;
        }
        ex.take_from(t, &df, &conn_info, &peer_renames)?;
        cx.write(t, &df)?;
    }

    // 3. Entity tables.
    let n_pieces = entities::torrent_pieces(&torrents_in)?;
    let peers = entities::peers(&peers_in, &ex, &conn_info, &enc_owners, &n_pieces, opts.threshold)?;
    drop(peers_in);
    let torrents = entities::torrents(&torrents_in, &peers, &conn_info, &ex)?;
    cx.write("peers", &peers)?;
    cx.write("torrents", &torrents)?;
    drop((peers, torrents, torrents_in));

    let audit_in = cx.load("announce_audit")?;
    let (audit, audit_notes) = entities::audit(&audit_in, &ex, &conn_info, &opaque_flows, opts, capture_start)?;
    cx.notes.extend(audit_notes);
    cx.write("announce_audit", &audit)?;

    let nodes = cx.load("dht_nodes")?;
    let nodes = entities::dht_nodes(&nodes, &ex)?;
    cx.write("dht_nodes", &nodes)?;
    let ih = cx.load("dht_infohashes")?;
    let ih = entities::dht_infohashes(&ih, &ex)?;
    cx.write("dht_infohashes", &ih)?;

    // anomalies: the union, then the merge's own notes.
    let an = cx.load("anomalies")?;
    let mut an = cx.events("anomalies", an)?;
    if !cx.notes.is_empty() {
        let mut notes = cx.notes.clone();
        notes.sort();
        notes.dedup();
        let n = notes.len();
        let extra = df!(
            "capture" => vec![String::new(); n],
            "layer" => vec!["merge".to_string(); n],
            "kind" => notes.iter().map(|n| n.0.clone()).collect::<Vec<_>>(),
            "detail" => notes.iter().map(|n| n.1.clone()).collect::<Vec<_>>(),
            "sensor" => vec![all_sensors.clone(); n],
        )
        .map_err(err)?;
        let schema = table_schema("anomalies").ok_or("anomalies schema")?;
        let extra = conform(extra, &schema, 0)?;
        an.vstack_mut(&extra).map_err(err)?;
    }
    cx.write("anomalies", &an)?;
    Ok(cx.summary)
}
