//! docs/MERGE.md sections 2 and 3: flows and connections joined across
//! pieces and deduplicated across sensors; peers, torrents, the announce
//! audit and the DHT tables recomputed from the merged events.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};

use polars::prelude::*;

use super::frame::*;
use super::MergeOptions;
use crate::analyze::audit::Audit;
use crate::analyze::swarm::{fuse_points, progress, PieceSet, Signal, ALL};
use crate::analyze::tracker::{AnnounceMark, MarkEvent};
use crate::analyze::{FrameCtx, PeerSource, SwarmEvent, SwarmEventKind};
use crate::sink::{ConnTransport, ConnectionRow, FlowRow, Ip, Row, RowBatch, TrackerAnnounceRow, Ts};

/// (info_hash, ip, port) of a later piece → the port of the same end in
/// the earlier piece of a joined connection.
pub type PeerRenames = HashMap<(String, String, i64), i64>;

pub struct Joined {
    pub ids: HashMap<i64, i64>,
    pub peer_renames: PeerRenames,
}

/// Columns summed over the pieces of a joined flow / connection, with the
/// (orig, resp) pairs swapped for a piece of reversed orientation.
const FLOW_SUMS: &[&str] = &["n_packets", "gap_bytes", "retrans_bytes", "n_bad_checksums"];
const FLOW_PAIRS: &[(&str, &str)] = &[
    ("n_packets_orig", "n_packets_resp"),
    ("payload_bytes_orig", "payload_bytes_resp"),
];
const CONN_SUMS: &[&str] = &["gap_bytes", "unframed_bytes", "n_resyncs"];
const CONN_PAIRS: &[(&str, &str)] = &[
    ("piece_bytes_orig", "piece_bytes_resp"),
    ("payload_bytes_orig", "payload_bytes_resp"),
    ("n_msgs_orig", "n_msgs_resp"),
];
/// Nullable identity columns filled from a later piece where the first has none.
const CONN_FILL_PAIRS: &[(&str, &str)] = &[
    ("orig_peer_id", "resp_peer_id"),
    ("orig_client", "resp_client"),
    ("orig_ltep_v", "resp_ltep_v"),
    ("orig_peer_port", "resp_peer_port"),
    ("orig_listen_port", "resp_listen_port"),
];

/// Section 2: rows of one sensor and community_id that continue each
/// other across a cut are joined; copies across sensors are removed.
/// Returns the merged frame, the id rewrites, the number of rows joined
/// into an earlier one, and (flows) which merged flows ended closed.
pub fn join_flows(df: &DataFrame, opts: &MergeOptions) -> Res<(DataFrame, HashMap<i64, i64>, usize)> {
    let (out, joined, n) = join_inner(df, opts, false, None)?;
    Ok((out, joined.ids, n))
}

pub fn join_connections(
    df: &DataFrame,
    opts: &MergeOptions,
    flow_closed: &HashMap<i64, bool>,
) -> Res<(DataFrame, Joined, usize)> {
    join_inner(df, opts, true, Some(flow_closed))
}

fn join_inner(
    df: &DataFrame,
    opts: &MergeOptions,
    is_conn: bool,
    flow_closed: Option<&HashMap<i64, bool>>,
) -> Res<(DataFrame, Joined, usize)> {
    let h = df.height();
    let proto = strs0(df, if is_conn { "transport" } else { "proto" })?;
    let cid = strs0(df, "community_id")?;
    let sensor = strs0(df, "sensor")?;
    let first = i64s0(df, "first_ts")?;
    let last = i64s0(df, "last_ts")?;
    let mid: Vec<bool> = bools(df, "midstream")?
        .into_iter()
        .map(|b| b.unwrap_or(false))
        .collect();
    let ids = i64s0(df, "conn_id")?;
    let ds = ds_of(df)?;
    let (oip, oport, rip, rport) = (
        strs0(df, "orig_ip")?,
        i64s0(df, "orig_port")?,
        strs0(df, "resp_ip")?,
        i64s0(df, "resp_port")?,
    );
    let closed: Vec<bool> = if is_conn {
        let fid = i64s0(df, "flow_id")?;
        fid.iter()
            .map(|f| flow_closed.and_then(|m| m.get(f)).copied().unwrap_or(false))
            .collect()
    } else {
        strs0(df, "end_reason")?
            .iter()
            .map(|e| matches!(e.as_str(), "fin" | "rst" | "reused"))
            .collect()
    };
    // uTP connections of one UDP flow are told apart by their connection id.
    let utp_id: Vec<Option<i64>> = if is_conn {
        i64s(df, "utp_conn_id")?
    } else {
        vec![None; h]
    };
    let mut order: Vec<usize> = (0..h).collect();
    order.sort_by(|&a, &b| {
        (&sensor[a], &cid[a], &proto[a], first[a], a).cmp(&(&sensor[b], &cid[b], &proto[b], first[b], b))
    });
    // Pieces of one connection, per sensor.
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut g_last = 0i64;
    for &i in &order {
        if let Some(g) = groups.last_mut() {
            let r = g[0];
            let prev = *g.last().unwrap_or(&r);
            // uTP connections share their UDP flow's community_id: a
            // later piece's mid-stream uTP connection continues the
            // latest one of that flow (a connection that ended before the
            // cut is not picked up mid-stream: its successor opens with
            // ST_SYN, not mid-stream).
            let same_utp = match (utp_id[i], utp_id[prev]) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            };
            if sensor[i] == sensor[r]
                && same_utp
                && ds[i] != ds[prev]
                && cid[i] == cid[r]
                && proto[i] == proto[r]
                && !cid[i].is_empty()
                && mid[i]
                && first[i] >= first[r]
                && first[i] - g_last <= opts.join_gap_us
                && !closed[prev]
            {
                g.push(i);
                g_last = g_last.max(last[i]);
                continue;
            }
        }
        groups.push(vec![i]);
        g_last = last[i];
    }
    let n_joined = groups.iter().map(|g| g.len() - 1).sum();
    let reversed =
        |r: usize, i: usize| oip[i] == rip[r] && oport[i] == rport[r] && !(oip[i] == oip[r] && oport[i] == oport[r]);
    // Copies across sensors: groups of one community_id overlapping in time.
    let weight_cols: &[&str] = if is_conn {
        &["payload_bytes_orig", "payload_bytes_resp"]
    } else {
        &["n_packets"]
    };
    let mut weight = vec![0i64; h];
    for c in weight_cols {
        for (w, v) in weight.iter_mut().zip(i64s0(df, c)?) {
            *w += v;
        }
    }
    let gw: Vec<i64> = groups.iter().map(|g| g.iter().map(|&i| weight[i]).sum()).collect();
    let gspan: Vec<(i64, i64)> = groups
        .iter()
        .map(|g| {
            (
                g.iter().map(|&i| first[i]).min().unwrap_or(0),
                g.iter().map(|&i| last[i]).max().unwrap_or(0),
            )
        })
        .collect();
    let mut gorder: Vec<usize> = (0..groups.len()).collect();
    gorder.sort_by(|&a, &b| {
        let (ra, rb) = (groups[a][0], groups[b][0]);
        (&cid[ra], &proto[ra], gspan[a].0, a).cmp(&(&cid[rb], &proto[rb], gspan[b].0, b))
    });
    let mut clusters: Vec<Vec<usize>> = Vec::new();
    let mut c_last = 0i64;
    for &g in &gorder {
        let r = groups[g][0];
        if let Some(c) = clusters.last_mut() {
            let r0 = groups[c[0]][0];
            if cid[r] == cid[r0]
                && !cid[r].is_empty()
                && proto[r] == proto[r0]
                && gspan[g].0 <= c_last + opts.tolerance_us
                && !c.iter().any(|&x| sensor[groups[x][0]] == sensor[r])
            {
                c.push(g);
                c_last = c_last.max(gspan[g].1);
                continue;
            }
        }
        clusters.push(vec![g]);
        c_last = gspan[g].1;
    }
    // The kept group of each cluster (most data; the first on a tie).
    let mut kept: Vec<(usize, String)> = Vec::new();
    let mut id_map: HashMap<i64, i64> = HashMap::new();
    for c in &clusters {
        let best = *c
            .iter()
            .max_by_key(|&&g| (gw[g], std::cmp::Reverse(g)))
            .unwrap_or(&c[0]);
        let rid = ids[groups[best][0]];
        for &g in c {
            for &m in &groups[g] {
                if ids[m] != rid {
                    id_map.insert(ids[m], rid);
                }
            }
        }
        kept.push((best, sensor_set(c.iter().map(|&g| sensor[groups[g][0]].as_str()))));
    }
    kept.sort_by_key(|&(g, _)| (gspan[g].0, groups[g][0]));
    let reps: Vec<usize> = kept.iter().map(|&(g, _)| groups[g][0]).collect();
    let mut out = take(df, &reps)?;
    set(
        &mut out,
        col_str("sensor", kept.iter().map(|k| Some(k.1.clone())).collect()),
    )?;
    let kg: Vec<&Vec<usize>> = kept.iter().map(|&(g, _)| &groups[g]).collect();
    set(
        &mut out,
        col_ts(
            "first_ts",
            kg.iter().map(|g| g.iter().map(|&i| first[i]).min()).collect(),
        ),
    )?;
    set(
        &mut out,
        col_ts("last_ts", kg.iter().map(|g| g.iter().map(|&i| last[i]).max()).collect()),
    )?;
    let (sums, pairs) = if is_conn {
        (CONN_SUMS, CONN_PAIRS)
    } else {
        (FLOW_SUMS, FLOW_PAIRS)
    };
    for c in sums {
        let v = i64s0(df, c)?;
        set(
            &mut out,
            col_i64(c, kg.iter().map(|g| Some(g.iter().map(|&i| v[i]).sum())).collect()),
        )?;
    }
    for (a, b) in pairs {
        let (va, vb) = (i64s0(df, a)?, i64s0(df, b)?);
        let mut sa = Vec::new();
        let mut sb = Vec::new();
        for g in &kg {
            let r = g[0];
            let (mut x, mut y) = (0, 0);
            for &i in g.iter() {
                if reversed(r, i) {
                    x += vb[i];
                    y += va[i];
                } else {
                    x += va[i];
                    y += vb[i];
                }
            }
            sa.push(Some(x));
            sb.push(Some(y));
        }
        set(&mut out, col_i64(a, sa))?;
        set(&mut out, col_i64(b, sb))?;
    }
    if !is_conn {
        // The last piece says how the flow ended.
        let lasts: Vec<usize> = kg.iter().map(|g| *g.last().unwrap_or(&g[0])).collect();
        let er = take(df, &lasts)?;
        set(&mut out, er.column("end_reason").map_err(err)?.clone())?;
    }
    let mut renames = PeerRenames::new();
    if is_conn {
        // Identity: the first piece's, filled from later ones.
        let ih = strs(df, "info_hash")?;
        let pick: Vec<usize> = kg
            .iter()
            .map(|g| *g.iter().find(|&&i| ih[i].is_some()).unwrap_or(&g[0]))
            .collect();
        let src = take(df, &pick)?;
        for c in ["info_hash", "info_hash_source", "attribution_confidence"] {
            set(&mut out, src.column(c).map_err(err)?.clone())?;
        }
        for (a, b) in CONN_FILL_PAIRS {
            let (na, nb) = (
                df.column(a).map_err(err)?.is_null(),
                df.column(b).map_err(err)?.is_null(),
            );
            let (na, nb): (Vec<bool>, Vec<bool>) = (
                na.iter().map(|v| v.unwrap_or(true)).collect(),
                nb.iter().map(|v| v.unwrap_or(true)).collect(),
            );
            // For each kept group: the row and whether to read the other side.
            let mut from_a: Vec<(usize, bool)> = Vec::new();
            let mut from_b: Vec<(usize, bool)> = Vec::new();
            for g in &kg {
                let r = g[0];
                let fa = g
                    .iter()
                    .map(|&i| (i, reversed(r, i)))
                    .find(|&(i, rev)| if rev { !nb[i] } else { !na[i] })
                    .unwrap_or((r, false));
                let fb = g
                    .iter()
                    .map(|&i| (i, reversed(r, i)))
                    .find(|&(i, rev)| if rev { !na[i] } else { !nb[i] })
                    .unwrap_or((r, false));
                from_a.push(fa);
                from_b.push(fb);
            }
            let ca = df.column(a).map_err(err)?.as_materialized_series().clone();
            let cb = df.column(b).map_err(err)?.as_materialized_series().clone();
            let pickcol = |name: &str, sel: &[(usize, bool)], own: &Series, other: &Series| -> Res<Column> {
                let rows: Vec<usize> = sel.iter().map(|s| s.0).collect();
                let idx = IdxCa::from_vec("idx".into(), rows.iter().map(|&i| i as IdxSize).collect());
                let o = own.take(&idx).map_err(err)?;
                let x = other.take(&idx).map_err(err)?;
                let mask = BooleanChunked::from_iter_values("m".into(), sel.iter().map(|s| s.1));
                let mut s = x.zip_with(&mask, &o).map_err(err)?;
                s.rename(name.into());
                Ok(s.into_column())
            };
            let new_a = pickcol(a, &from_a, &ca, &cb)?;
            let new_b = pickcol(b, &from_b, &cb, &ca)?;
            set(&mut out, new_a)?;
            set(&mut out, new_b)?;
        }
        // Peer keys of later pieces → the first piece's.
        let ih_out = strs(&out, "info_hash")?;
        let src_out = strs(&out, "info_hash_source")?;
        let (opp, rpp) = (i64s(df, "orig_peer_port")?, i64s(df, "resp_peer_port")?);
        let (opp_o, rpp_o) = (i64s(&out, "orig_peer_port")?, i64s(&out, "resp_peer_port")?);
        for (k, g) in kg.iter().enumerate() {
            let r = g[0];
            let Some(h0) = ih_out[k].clone() else { continue };
            let exact = src_out[k].as_deref() == Some("handshake");
            for &i in g.iter().skip(1) {
                // A later piece's own attribution (by endpoint) gives way
                // to the handshake's torrent: its rows are re-keyed to it
                // (`rekey_misattributed`), so the rename is keyed there too.
                let h = match &ih[i] {
                    Some(x) if !exact => x.clone(),
                    _ => h0.clone(),
                };
                let rev = reversed(r, i);
                // (ip, this piece's peer port, its transport port) per end,
                // and the first piece's (peer port, transport port).
                let ends = [(&oip[i], opp[i], oport[i]), (&rip[i], rpp[i], rport[i])];
                // The first piece's responder of a connection whose start
                // it saw is at the port it accepted on: a listen port.
                let accepted = !mid[r];
                let firsts = if rev {
                    [(rpp_o[k], rport[r], accepted), (opp_o[k], oport[r], false)]
                } else {
                    [(opp_o[k], oport[r], false), (rpp_o[k], rport[r], accepted)]
                };
                for ((ip, port, raw), (to, to_raw, accepted)) in ends.into_iter().zip(firsts) {
                    let (Some(p), Some(t)) = (port, to) else { continue };
                    if p == t {
                        continue;
                    }
                    // The listen port wins over a source port, whichever
                    // piece knew it (a later piece's mid-stream end keyed
                    // by its BEP 10 `p` is at one; so is the first piece's
                    // accepting responder); else the first piece's.
                    if t == to_raw && p != raw && !accepted {
                        renames.insert((h.clone(), ip.clone(), t), p);
                    } else {
                        renames.insert((h.clone(), ip.clone(), p), t);
                    }
                }
            }
        }
    }
    Ok((
        out,
        Joined {
            ids: id_map,
            peer_renames: renames,
        },
        n_joined,
    ))
}

/// Renames (info_hash, ip, port) keys of `df` (section 3, peers 1).
pub fn rename_peers(df: &mut DataFrame, renames: &PeerRenames, ip_col: &str, port_col: &str) -> Res<()> {
    if renames.is_empty() || df.height() == 0 {
        return Ok(());
    }
    let ih = strs0(df, "info_hash")?;
    let ip = strs0(df, ip_col)?;
    let port = i64s(df, port_col)?;
    let out: Vec<Option<i64>> = (0..df.height())
        .map(|i| port[i].map(|p| renames.get(&(ih[i].clone(), ip[i].clone(), p)).copied().unwrap_or(p)))
        .collect();
    set(df, col_i64(port_col, out))
}

/// One merged connection, as the entity tables need it.
#[derive(Debug, Clone)]
pub struct Conn {
    pub first_ts: i64,
    pub orig_ip: String,
    pub orig_port: i64,
    pub orig_peer_port: Option<i64>,
    pub resp_ip: String,
    pub resp_port: i64,
    pub resp_peer_port: Option<i64>,
    pub piece: [i64; 2],
    pub payload: [i64; 2],
    pub encrypted: bool,
    pub info_hash: Option<String>,
    /// The info_hash came from a captured handshake (`info_hash_source`
    /// handshake), not from an attribution by endpoint or address.
    pub exact: bool,
}

pub struct ConnInfo {
    pub by_id: HashMap<i64, Conn>,
}

impl ConnInfo {
    pub fn from_frame(df: &DataFrame) -> Res<ConnInfo> {
        let ids = i64s0(df, "conn_id")?;
        let first = i64s0(df, "first_ts")?;
        let (oip, oport, opp) = (
            strs0(df, "orig_ip")?,
            i64s0(df, "orig_port")?,
            i64s(df, "orig_peer_port")?,
        );
        let (rip, rport, rpp) = (
            strs0(df, "resp_ip")?,
            i64s0(df, "resp_port")?,
            i64s(df, "resp_peer_port")?,
        );
        let (po, pr) = (i64s0(df, "piece_bytes_orig")?, i64s0(df, "piece_bytes_resp")?);
        let (yo, yr) = (i64s0(df, "payload_bytes_orig")?, i64s0(df, "payload_bytes_resp")?);
        let enc = bools(df, "encrypted")?;
        let ih = strs(df, "info_hash")?;
        let src = strs(df, "info_hash_source")?;
        let mut by_id = HashMap::new();
        for i in 0..df.height() {
            by_id.insert(
                ids[i],
                Conn {
                    first_ts: first[i],
                    orig_ip: oip[i].clone(),
                    orig_port: oport[i],
                    orig_peer_port: opp[i],
                    resp_ip: rip[i].clone(),
                    resp_port: rport[i],
                    resp_peer_port: rpp[i],
                    piece: [po[i], pr[i]],
                    payload: [yo[i], yr[i]],
                    encrypted: enc[i].unwrap_or(false),
                    info_hash: ih[i].clone(),
                    exact: src[i].as_deref() == Some("handshake"),
                },
            );
        }
        Ok(ConnInfo { by_id })
    }

    /// Which end of `c` the peer (ip, port) is: 0 orig, 1 resp.
    fn side(c: &Conn, ip: &str, port: i64) -> Option<usize> {
        if c.orig_ip == ip && c.orig_peer_port == Some(port) {
            Some(0)
        } else if c.resp_ip == ip && c.resp_peer_port == Some(port) {
            Some(1)
        } else if c.orig_ip == ip && c.resp_ip != ip {
            Some(0)
        } else if c.resp_ip == ip && c.orig_ip != ip {
            Some(1)
        } else {
            None
        }
    }
}

/// Flows and connections as the audit reads them (`Audit::observe_rows`).
pub struct OpaqueFlows {
    flows: Vec<FlowRow>,
    conns: Vec<ConnectionRow>,
}

/// The name the audit's rows carry for every merged input.
const MERGED_CAPTURE: &str = "merged";

impl OpaqueFlows {
    pub fn from_frames(flows: &DataFrame, conns: &DataFrame) -> Res<OpaqueFlows> {
        let mut out = OpaqueFlows {
            flows: Vec::new(),
            conns: Vec::new(),
        };
        let proto = strs0(flows, "proto")?;
        let app = strs0(flows, "app")?;
        let (oip, rip) = (strs0(flows, "orig_ip")?, strs0(flows, "resp_ip")?);
        let (f, l) = (i64s0(flows, "first_ts")?, i64s0(flows, "last_ts")?);
        let (po, pr) = (i64s0(flows, "payload_bytes_orig")?, i64s0(flows, "payload_bytes_resp")?);
        for i in 0..flows.height() {
            let app: &'static str = match app[i].as_str() {
                "other" => "other",
                "mse" => "mse",
                _ => "bittorrent",
            };
            // A row whose addresses are not addresses (not written by
            // swarmtap) still dates its capture but adds no span.
            let (o, r, app) = match (oip[i].parse::<IpAddr>(), rip[i].parse::<IpAddr>()) {
                (Ok(o), Ok(r)) => (Ip(o), Ip(r), app),
                _ => (Ip::default(), Ip::default(), "bittorrent"),
            };
            out.flows.push(FlowRow {
                capture: MERGED_CAPTURE.into(),
                proto: if proto[i] == "tcp" { "tcp" } else { "udp" },
                app,
                orig_ip: o,
                resp_ip: r,
                first_ts: Ts(f[i]),
                last_ts: Ts(l[i]),
                payload_bytes_orig: po[i].max(0) as u64,
                payload_bytes_resp: pr[i].max(0) as u64,
                ..Default::default()
            });
        }
        let tr = strs0(conns, "transport")?;
        let (oip, rip) = (strs0(conns, "orig_ip")?, strs0(conns, "resp_ip")?);
        let (f, l) = (i64s0(conns, "first_ts")?, i64s0(conns, "last_ts")?);
        let (po, pr) = (i64s0(conns, "payload_bytes_orig")?, i64s0(conns, "payload_bytes_resp")?);
        let (qo, qr) = (i64s0(conns, "piece_bytes_orig")?, i64s0(conns, "piece_bytes_resp")?);
        let enc = bools(conns, "encrypted")?;
        let ih = strs(conns, "info_hash")?;
        for i in 0..conns.height() {
            // The audit counts the spans of both addresses: a row whose
            // address is not one (not written by swarmtap) has none.
            let (Ok(o), Ok(r)) = (oip[i].parse::<IpAddr>(), rip[i].parse::<IpAddr>()) else {
                continue;
            };
            out.conns.push(ConnectionRow {
                capture: MERGED_CAPTURE.into(),
                transport: if tr[i] == "tcp" {
                    ConnTransport::Tcp
                } else {
                    ConnTransport::Utp
                },
                orig_ip: Ip(o),
                resp_ip: Ip(r),
                first_ts: Ts(f[i]),
                last_ts: Ts(l[i]),
                payload_bytes_orig: po[i].max(0) as u64,
                payload_bytes_resp: pr[i].max(0) as u64,
                piece_bytes_orig: qo[i].max(0) as u64,
                piece_bytes_resp: qr[i].max(0) as u64,
                encrypted: enc[i].unwrap_or(false),
                // The audit asks only whether there is one.
                info_hash: ih[i].as_deref().map(|h| unhex20(h).unwrap_or_default()),
                ..Default::default()
            });
        }
        Ok(out)
    }
}

/// A `peer_progress` row, as the peers recomputation reads it.
#[derive(Debug, Clone)]
struct Prog {
    ts: i64,
    cause: Signal,
    have: Option<i64>,
    piece: Option<i64>,
    bitfield: Option<Vec<u8>>,
    ds: usize,
}

/// A piece message: `bytes` sent by `from` to `to` for `info_hash`.
#[derive(Debug, Clone)]
struct Transfer {
    ts: i64,
    info_hash: String,
    from: (String, i64),
    to: (String, i64),
    bytes: i64,
}

/// What the entity tables need from the merged event tables.
#[derive(Default)]
pub struct Extracts {
    progress: HashMap<(String, String, i64), Vec<Prog>>,
    /// Peer keys moved to the other hash of a hybrid torrent
    /// ([`hybrid_renames`]).
    pub hybrid: HybridRenames,
    /// A hybrid torrent's hashes → the one its audit series go by (the v1
    /// hash, as `Metainfo::wire_hashes` lists it first).
    pub hash_alias: Vec<([u8; 20], [u8; 20])>,
    transfers: Vec<Transfer>,
    has_messages: bool,
    announces: Option<DataFrame>,
    /// (ts, info_hash, address) of peers named by trackers, DHT, PEX.
    learned: Vec<(i64, String, String)>,
    /// (node_id, ip, port) → [queries, responses, errors].
    node_msgs: HashMap<(String, String, i64), [i64; 3]>,
    /// info_hash → [get_peers, announce_peer] queries.
    ih_queries: HashMap<String, [i64; 2]>,
    /// info_hash → (verified, failed) pieces.
    piece_checks: HashMap<String, (i64, i64)>,
}

impl Extracts {
    pub fn take_from(&mut self, t: &str, df: &DataFrame, conns: &ConnInfo, renames: &PeerRenames) -> Res<()> {
        match t {
            "peer_progress" => {
                let ts = i64s0(df, "ts")?;
                let ih = strs0(df, "info_hash")?;
                let ip = strs0(df, "peer_ip")?;
                let port = i64s0(df, "peer_port")?;
                let cause = strs0(df, "cause")?;
                let have = i64s(df, "n_pieces_have")?;
                let piece = i64s(df, "piece")?;
                let bitfield = strs(df, "bitfield")?;
                let cid = i64s0(df, "conn_id")?;
                let ds = ds_of(df)?;
                for i in 0..df.height() {
                    let Some(sig) = Signal::from_name(&cause[i]) else {
                        continue;
                    };
                    // A row keyed by the connection's source port, whose
                    // connection names the peer's listen port: the peer
                    // the analysis merged it into at its end.
                    let mut p = port[i];
                    if let Some(c) = conns.by_id.get(&cid[i]) {
                        if c.orig_ip == ip[i] && c.orig_port == p {
                            p = c.orig_peer_port.unwrap_or(p);
                        } else if c.resp_ip == ip[i] && c.resp_port == p {
                            p = c.resp_peer_port.unwrap_or(p);
                        }
                    }
                    let p = renames.get(&(ih[i].clone(), ip[i].clone(), p)).copied().unwrap_or(p);
                    let mut key = (ih[i].clone(), ip[i].clone(), p);
                    if let Some(h) = self.hybrid.get(&key) {
                        key.0 = h.clone();
                    }
                    self.progress.entry(key).or_default().push(Prog {
                        ts: ts[i],
                        cause: sig,
                        have: have[i],
                        piece: piece[i],
                        bitfield: bitfield[i].as_deref().and_then(unhex),
                        ds: ds[i],
                    });
                }
            }
            "peer_messages" => {
                self.has_messages |= df.height() > 0;
                let msg = strs0(df, "msg")?;
                let ts = i64s0(df, "ts")?;
                let ih = strs(df, "info_hash")?;
                let (sip, sp, dip, dp) = (
                    strs0(df, "src_ip")?,
                    i64s0(df, "src_port")?,
                    strs0(df, "dst_ip")?,
                    i64s0(df, "dst_port")?,
                );
                let len = i64s0(df, "length")?;
                for i in 0..df.height() {
                    if msg[i] != "piece" {
                        continue;
                    }
                    let Some(h) = &ih[i] else { continue };
                    self.transfers.push(Transfer {
                        ts: ts[i],
                        info_hash: h.clone(),
                        from: (sip[i].clone(), sp[i]),
                        to: (dip[i].clone(), dp[i]),
                        bytes: len[i],
                    });
                }
            }
            "tracker_announces" => self.announces = Some(df.clone()),
            "tracker_peers" | "dht_peers" | "pex_peers" => {
                let ts = i64s0(df, "ts")?;
                let ih = strs(df, "info_hash")?;
                let ip = strs0(df, "peer_ip")?;
                for i in 0..df.height() {
                    if let Some(h) = &ih[i] {
                        self.learned.push((ts[i], h.clone(), ip[i].clone()));
                    }
                }
            }
            "dht_messages" => {
                let kind = strs0(df, "kind")?;
                let method = strs0(df, "method")?;
                let node = strs(df, "node_id")?;
                let ip = strs0(df, "src_ip")?;
                let port = i64s0(df, "src_port")?;
                let ih = strs(df, "info_hash")?;
                for i in 0..df.height() {
                    let k = match kind[i].as_str() {
                        "query" => 0,
                        "response" => 1,
                        _ => 2,
                    };
                    if let Some(n) = &node[i] {
                        self.node_msgs.entry((n.clone(), ip[i].clone(), port[i])).or_default()[k] += 1;
                    }
                    if k == 0 {
                        if let Some(h) = &ih[i] {
                            let j = match method[i].as_str() {
                                "get_peers" => 0,
                                "announce_peer" => 1,
                                _ => continue,
                            };
                            self.ih_queries.entry(h.clone()).or_default()[j] += 1;
                        }
                    }
                }
            }
            "pieces" => {
                let ih = strs0(df, "info_hash")?;
                let ok = bools(df, "verified")?;
                for i in 0..df.height() {
                    let e = self.piece_checks.entry(ih[i].clone()).or_default();
                    if ok[i].unwrap_or(false) {
                        e.0 += 1;
                    } else {
                        e.1 += 1;
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// info_hash → merged piece count and its source (metadata first, else
/// the largest estimate).
pub fn torrent_pieces(df: &DataFrame) -> Res<HashMap<String, (Option<i64>, String)>> {
    let ih = strs0(df, "info_hash")?;
    let n = i64s(df, "n_pieces")?;
    let src = strs0(df, "n_pieces_source")?;
    let mut out: HashMap<String, (Option<i64>, String)> = HashMap::new();
    let rank = |s: &str| match s {
        "torrent_file" => 3,
        "ut_metadata" => 2,
        "bitfield_estimate" => 1,
        _ => 0,
    };
    for i in 0..df.height() {
        let e = out.entry(ih[i].clone()).or_insert((None, "none".into()));
        let (r_new, r_old) = (rank(&src[i]), rank(&e.1));
        let better = r_new > r_old || (r_new == r_old && r_new <= 1 && n[i] > e.0);
        if better && (n[i].is_some() || r_new == 0) {
            *e = (n[i], src[i].clone());
        }
    }
    Ok(out)
}

/// Groups row indices of `df` by a text key, groups in first-row order.
/// The latest row of each group (by last_ts; the earlier row on a tie):
/// its identity columns are the last seen.
fn latest_of(groups: &[Vec<usize>], last: &[i64]) -> Vec<usize> {
    groups
        .iter()
        .map(|g| {
            *g.iter()
                .max_by_key(|&&i| (last[i], std::cmp::Reverse(i)))
                .unwrap_or(&g[0])
        })
        .collect()
}

/// One row per group: the row `reps` names, with the sensors of the whole
/// group, its earliest first_ts and its latest last_ts.
fn collapse(df: &DataFrame, groups: &[Vec<usize>], reps: &[usize], first: &[i64], last: &[i64]) -> Res<DataFrame> {
    let mut out = take(df, reps)?;
    let sensor = strs0(df, "sensor")?;
    set(
        &mut out,
        col_str(
            "sensor",
            groups
                .iter()
                .map(|g| Some(sensor_set(g.iter().map(|&i| sensor[i].as_str()))))
                .collect(),
        ),
    )?;
    set(
        &mut out,
        col_ts(
            "first_ts",
            groups.iter().map(|g| g.iter().map(|&i| first[i]).min()).collect(),
        ),
    )?;
    set(
        &mut out,
        col_ts(
            "last_ts",
            groups.iter().map(|g| g.iter().map(|&i| last[i]).max()).collect(),
        ),
    )?;
    Ok(out)
}

/// Row indices grouped by key, groups in first-row order. Keys are typed
/// values (tuples of borrowed columns), not a text built per row.
fn group_by_key<K: std::hash::Hash + Eq>(keys: impl IntoIterator<Item = K>) -> Vec<Vec<usize>> {
    let mut at: HashMap<K, usize> = HashMap::new();
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, k) in keys.into_iter().enumerate() {
        match at.entry(k) {
            std::collections::hash_map::Entry::Occupied(e) => groups[*e.get()].push(i),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(groups.len());
                groups.push(vec![i]);
            }
        }
    }
    groups
}

/// Section 3, peers.
pub fn peers(
    df: &DataFrame,
    ex: &Extracts,
    conns: &ConnInfo,
    enc_owners: &HashMap<i64, Option<i64>>,
    n_pieces: &HashMap<String, (Option<i64>, String)>,
    threshold: f64,
) -> Res<DataFrame> {
    let ih = strs0(df, "info_hash")?;
    let ip = strs0(df, "peer_ip")?;
    let port = i64s0(df, "peer_port")?;
    let mut groups = group_by_key((0..df.height()).map(|i| (ih[i].as_str(), ip[i].as_str(), port[i])));
    groups.sort_by(|a, b| (&ih[a[0]], &ip[a[0]], port[a[0]]).cmp(&(&ih[b[0]], &ip[b[0]], port[b[0]])));
    let first = i64s0(df, "first_ts")?;
    let last = i64s0(df, "last_ts")?;
    // The representative: the latest row (its peer_id and client are the
    // last seen), filled from the others where null.
    let reps = latest_of(&groups, &last);
    let mut out = collapse(df, &groups, &reps, &first, &last)?;
    // Fill nullable identity and geo columns from other rows, latest first.
    for c in [
        "peer_id",
        "client",
        "country",
        "city",
        "latitude",
        "longitude",
        "asn",
        "as_org",
    ] {
        let nulls: Vec<bool> = df
            .column(c)
            .map_err(err)?
            .is_null()
            .iter()
            .map(|v| v.unwrap_or(true))
            .collect();
        let pick: Vec<usize> = groups
            .iter()
            .zip(&reps)
            .map(|(g, &r)| {
                if !nulls[r] {
                    return r;
                }
                let mut o: Vec<usize> = g.clone();
                o.sort_by_key(|&i| std::cmp::Reverse(last[i]));
                *o.iter().find(|&&i| !nulls[i]).unwrap_or(&r)
            })
            .collect();
        let src = take(df, &pick)?;
        set(&mut out, src.column(c).map_err(err)?.clone())?;
    }
    // sources: union, in PeerSource order.
    let sources = str_lists(df, "sources")?;
    let order: Vec<&str> = PeerSource::ALL.iter().map(|s| s.name()).collect();
    set(
        &mut out,
        col_str_list(
            "sources",
            groups
                .iter()
                .map(|g| {
                    let set: BTreeSet<&str> = g.iter().flat_map(|&i| sources[i].iter().map(String::as_str)).collect();
                    let mut v: Vec<String> = order
                        .iter()
                        .filter(|s| set.contains(*s))
                        .map(|s| s.to_string())
                        .collect();
                    v.extend(set.iter().filter(|s| !order.contains(s)).map(|s| s.to_string()));
                    v
                })
                .collect(),
        ),
    )?;
    for c in ["prefers_encryption", "utp"] {
        let v = bools(df, c)?;
        set(
            &mut out,
            col_bool(
                c,
                groups
                    .iter()
                    .map(|g| {
                        let any = |b: bool| g.iter().any(|&i| v[i] == Some(b));
                        if any(true) {
                            Some(true)
                        } else if any(false) {
                            Some(false)
                        } else {
                            None
                        }
                    })
                    .collect(),
            ),
        )?;
    }
    for c in ["max_rate_bps", "max_upload_rate_bps"] {
        let v: Vec<Option<f64>> = df
            .column(c)
            .map_err(err)?
            .cast(&DataType::Float64)
            .map_err(err)?
            .f64()
            .map_err(err)?
            .iter()
            .collect();
        set(
            &mut out,
            col_f64(
                c,
                groups
                    .iter()
                    .map(|g| {
                        g.iter()
                            .filter_map(|&i| v[i])
                            .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))))
                    })
                    .collect(),
            ),
        )?;
    }
    // Connections and bytes, from the merged connections.
    let cids = i64_lists(df, "conn_ids")?;
    let nconn = i64s0(df, "n_connections")?;
    let (up_in, down_in) = (i64s0(df, "uploaded_bytes")?, i64s0(df, "downloaded_bytes")?);
    let (es_in, er_in) = (
        i64s0(df, "encrypted_bytes_sent")?,
        i64s0(df, "encrypted_bytes_received")?,
    );
    let mut col_ids = Vec::new();
    let mut n_conns = Vec::new();
    let mut bytes: [Vec<Option<i64>>; 4] = Default::default();
    // Connections by the peers rows their ends name (a connection an
    // earlier piece could not attribute is attributed by a later one).
    let mut by_end: HashMap<(&str, &str, i64), Vec<i64>> = HashMap::new();
    // Ends no peers row names (an ephemeral port the analysis merged into
    // the address's one listen endpoint without writing it back).
    let mut unnamed: HashMap<(&str, &str), Vec<i64>> = HashMap::new();
    for (id, c) in &conns.by_id {
        let Some(h) = c.info_hash.as_deref() else { continue };
        for (ip, p) in [(&c.orig_ip, c.orig_peer_port), (&c.resp_ip, c.resp_peer_port)] {
            match p {
                Some(p) => by_end.entry((h, ip.as_str(), p)).or_default().push(*id),
                None => unnamed.entry((h, ip.as_str())).or_default().push(*id),
            }
        }
    }
    let mut enc_by_owner: HashMap<(&str, &str, i64), Vec<i64>> = HashMap::new();
    for (id, t) in enc_owners {
        if let (Some(t), Some(c)) = (t, conns.by_id.get(id)) {
            if let Some(h) = c.info_hash.as_deref() {
                enc_by_owner.entry((h, c.orig_ip.as_str(), *t)).or_default().push(*id);
            }
        }
    }
    let mut per_addr: HashMap<(&str, &str), usize> = HashMap::new();
    for g in &groups {
        *per_addr.entry((ih[g[0]].as_str(), ip[g[0]].as_str())).or_default() += 1;
    }
    for g in &groups {
        let r = g[0];
        // Listed: the connections the rows name (as analyze lists them),
        // an encrypted connection's originator end only at the peer
        // `encrypted_originators` named.
        let mut ids: BTreeSet<i64> = g
            .iter()
            .flat_map(|&i| cids[i].iter().copied())
            // A connection a later piece attributed to this torrent whose
            // joined row's handshake names another is not this peer's.
            .filter(|id| {
                conns
                    .by_id
                    .get(id)
                    .is_none_or(|c| !c.exact || c.info_hash.as_deref() == Some(ih[r].as_str()))
            })
            .filter(|id| match (enc_owners.get(id), conns.by_id.get(id)) {
                (Some(t), Some(c)) if c.orig_ip == ip[r] => {
                    *t == Some(port[r]) || (c.resp_ip == ip[r] && c.resp_port == port[r])
                }
                _ => true,
            })
            .collect();
        if let Some(v) = enc_by_owner.get(&(ih[r].as_str(), ip[r].as_str(), port[r])) {
            ids.extend(v.iter().copied());
        }
        // Counted for bytes: also those whose ends name the peer.
        let mut counted = ids.clone();
        if let Some(v) = by_end.get(&(ih[r].as_str(), ip[r].as_str(), port[r])) {
            counted.extend(v.iter().copied());
        }
        let addr = (ih[r].as_str(), ip[r].as_str());
        if per_addr.get(&addr) == Some(&1) {
            counted.extend(unnamed.get(&addr).into_iter().flatten().copied());
        }
        // Rows whose list was cut at its bound: their extra connections are
        // counted, not listed (as in analyze).
        let extra: i64 = g.iter().map(|&i| (nconn[i] - cids[i].len() as i64).max(0)).sum();
        let complete = extra == 0;
        let mut b = [0i64; 4];
        for id in &counted {
            let Some(c) = conns.by_id.get(id) else { continue };
            let Some(s) = ConnInfo::side(c, &ip[r], port[r]) else {
                continue;
            };
            if c.encrypted {
                b[2] += c.payload[s];
                b[3] += c.payload[1 - s];
            } else {
                b[0] += c.piece[s];
                b[1] += c.piece[1 - s];
            }
        }
        if !complete {
            // Not every connection is listed: the datasets' own sums.
            b = [
                g.iter().map(|&i| up_in[i]).sum(),
                g.iter().map(|&i| down_in[i]).sum(),
                g.iter().map(|&i| es_in[i]).sum(),
                g.iter().map(|&i| er_in[i]).sum(),
            ];
        }
        n_conns.push(Some(ids.len() as i64 + extra));
        col_ids.push(ids.into_iter().take(1024).collect::<Vec<_>>());
        for k in 0..4 {
            bytes[k].push(Some(b[k]));
        }
    }
    set(&mut out, col_i64_list("conn_ids", col_ids))?;
    set(&mut out, col_i64("n_connections", n_conns))?;
    let [up, down, es, er] = bytes;
    set(&mut out, col_i64("uploaded_bytes", up))?;
    set(&mut out, col_i64("downloaded_bytes", down))?;
    set(&mut out, col_i64("encrypted_bytes_sent", es))?;
    set(&mut out, col_i64("encrypted_bytes_received", er))?;
    // Progress and completion (section 3, peers 5).
    let fp_in = i64s(df, "first_pieces")?;
    let lp_in = i64s(df, "last_pieces")?;
    let ct_in = i64s(df, "completed_ts")?;
    let cd_in = bools(df, "confirmed_download")?;
    let cs_in = strs(df, "completion_source")?;
    let mut cols = ProgressCols::default();
    for g in &groups {
        let r = g[0];
        let n = n_pieces.get(&ih[r]).and_then(|x| x.0);
        cols.2.push(n);
        let key = (ih[r].clone(), ip[r].clone(), port[r]);
        match ex.progress.get(&key) {
            Some(rows) if !rows.is_empty() => {
                let (wire, claims) = points(rows);
                if std::env::var_os("SWARMTAP_MERGE_DEBUG").is_some() {
                    eprintln!("{key:?} n={n:?} wire={wire:?} claims={claims:?}");
                }
                let fused = fuse_points(&wire, &claims, n.map(|n| n.max(0) as u64));
                let p = progress(&fused, n.map(|n| n.max(0) as u64), threshold);
                cols.0.push(p.first_pieces.map(|v| v as i64));
                cols.1.push(p.last_pieces.map(|v| v as i64));
                cols.3.push(p.completed_ts);
                cols.4.push(Some(p.confirmed));
                cols.5.push(p.source.map(str::to_string));
            }
            _ => {
                let e = *g.iter().min_by_key(|&&i| first[i]).unwrap_or(&r);
                let l = *g.iter().max_by_key(|&&i| last[i]).unwrap_or(&r);
                cols.0.push(fp_in[e]);
                cols.1.push(lp_in[l]);
                cols.3.push(g.iter().filter_map(|&i| ct_in[i]).min());
                cols.4.push(Some(g.iter().any(|&i| cd_in[i] == Some(true))));
                cols.5.push(cs_in[l].clone());
            }
        }
    }
    set(&mut out, col_i64("first_pieces", cols.0))?;
    set(&mut out, col_i64("last_pieces", cols.1))?;
    set(&mut out, col_i64("n_pieces", cols.2))?;
    set(&mut out, col_ts("completed_ts", cols.3))?;
    set(&mut out, col_bool("confirmed_download", cols.4))?;
    set(&mut out, col_str("completion_source", cols.5))?;
    Ok(out)
}

/// A peer's merged progress rows as the analysis's fusion reads them: the
/// wire points, with the counts of a dataset that picked the peer up
/// mid-stream made absolute (docs/MERGE.md, peers 5), and the claim points.
/// The peers progress columns being built: first_pieces, last_pieces,
/// n_pieces, completed_ts, confirmed_download, completion_source.
#[derive(Default)]
struct ProgressCols(
    Vec<Option<i64>>,
    Vec<Option<i64>>,
    Vec<Option<i64>>,
    Vec<Option<i64>>,
    Vec<Option<bool>>,
    Vec<Option<String>>,
);

/// (ts, count or ALL, signal) points, as `fuse_points` reads them.
type Points = Vec<(i64, u32, Signal)>;

fn points(rows: &[Prog]) -> (Points, Points) {
    let mut rows: Vec<&Prog> = rows.iter().collect();
    rows.sort_by_key(|r| (r.ts, r.ds));
    let val = |h: Option<i64>| h.map_or(ALL, |v| v.clamp(0, i64::from(ALL - 1)) as u32);
    let mut claims = Vec::new();
    let mut by_ds: BTreeMap<usize, Vec<&Prog>> = BTreeMap::new();
    for r in &rows {
        if r.cause.is_claim() {
            // A tracker `left` read without the torrent's shape says nothing.
            if r.cause == Signal::TrackerLeft && r.have.is_none() {
                continue;
            }
            let v = if r.cause == Signal::TrackerLeft {
                val(r.have)
            } else {
                ALL
            };
            claims.push((r.ts, v, r.cause));
        } else {
            by_ds.entry(r.ds).or_default().push(r);
        }
    }
    // Every wire row names what changed (`piece`, `bitfield`): the peer's
    // piece set is rebuilt as the analysis builds it, over all datasets.
    let exact = by_ds.values().flatten().all(|r| match r.cause {
        Signal::Have | Signal::DontHave => r.piece.is_some(),
        Signal::Bitfield => r.bitfield.is_some(),
        _ => true,
    });
    if exact {
        let mut wire: Vec<(i64, u32, Signal)> = Vec::new();
        let mut set = PieceSet::default();
        let mut last: Option<u32> = None;
        let mut all: Vec<&Prog> = by_ds.values().flatten().copied().collect();
        all.sort_by_key(|r| (r.ts, r.ds));
        let first_ds = all.first().map(|r| r.ds);
        let mut last_ds = None;
        for r in all {
            let idx = r.piece.and_then(|p| u32::try_from(p).ok());
            match r.cause {
                Signal::Bitfield => set.union_bitfield(r.bitfield.as_deref().unwrap_or_default()),
                Signal::Have => {
                    if let Some(i) = idx {
                        set.set(i);
                    }
                }
                Signal::HaveAll => set.all = true,
                Signal::HaveNone => set.all = false,
                Signal::DontHave => {
                    set.all = false;
                    if let Some(i) = idx {
                        set.clear(i);
                    }
                }
                _ => {}
            }
            let pt = set.point();
            if last != Some(pt) {
                // A later dataset's changes of one instant are one point:
                // it may see at once what one run saw a moment apart (a
                // `have` lost in the bytes passed over at a cut arrives
                // again on another connection).
                match wire.last_mut() {
                    Some(w) if w.0 == r.ts && Some(r.ds) != first_ds && last_ds == Some(r.ds) => {
                        *w = (r.ts, pt, r.cause)
                    }
                    _ => wire.push((r.ts, pt, r.cause)),
                }
                last = Some(pt);
                last_ds = Some(r.ds);
            }
        }
        return (wire, claims);
    }
    // Datasets without those columns (older versions): counts only.
    // Datasets in the order they first saw the peer.
    let mut dss: Vec<(i64, usize)> = by_ds.iter().map(|(d, v)| (v[0].ts, *d)).collect();
    dss.sort();
    let mut wire: Vec<(i64, u32, Signal)> = Vec::new();
    // Pieces announced by `have` so far (earlier datasets, then this one).
    let mut seen: std::collections::HashSet<i64> = std::collections::HashSet::new();
    for (t0, d) in dss {
        let v = &by_ds[&d];
        if !matches!(v[0].cause, Signal::Have | Signal::DontHave) {
            // The dataset saw the peer's start: its counts are whole.
            for r in v {
                wire.push((r.ts, val(r.have), r.cause));
            }
            seen.extend(v.iter().filter(|r| r.cause == Signal::Have).filter_map(|r| r.piece));
            continue;
        }
        // Picked up mid-stream: the peer's count before the dataset, plus
        // each piece its `have`s announce for the first time (the same
        // announcement reaches several connections, and the dataset may
        // have counted it per connection under different source ports).
        let mut cur = wire
            .iter()
            .filter(|w| w.0 <= t0)
            .max_by_key(|w| w.0)
            .map(|w| w.1)
            .unwrap_or(0);
        let mut pushed_here = false;
        for r in v {
            let before = cur;
            match r.cause {
                Signal::Have => {
                    let new = r.piece.is_none_or(|p| seen.insert(p));
                    if new && cur != ALL {
                        cur = (cur + 1).min(ALL - 1);
                    }
                }
                Signal::DontHave => {
                    if cur != ALL {
                        cur = cur.saturating_sub(1);
                    }
                }
                _ => cur = val(r.have),
            }
            // As analyze: a point where the piece set changed; the
            // dataset's `have`s of one instant (from several connections
            // under several source ports) are one point, its last.
            if cur != before || !matches!(r.cause, Signal::Have | Signal::DontHave) {
                match wire.last_mut() {
                    Some(w) if w.0 == r.ts && pushed_here => *w = (r.ts, cur, r.cause),
                    _ => wire.push((r.ts, cur, r.cause)),
                }
                pushed_here = true;
            }
        }
    }
    wire.sort_by_key(|w| w.0);
    (wire, claims)
}

/// Section 3, torrents.
pub fn torrents(df: &DataFrame, peers: &DataFrame, conns: &ConnInfo, ex: &Extracts) -> Res<DataFrame> {
    let ih = strs0(df, "info_hash")?;
    let mut groups = group_by_key(ih.iter().map(String::as_str));
    groups.sort_by(|a, b| ih[a[0]].cmp(&ih[b[0]]));
    let msrc = strs0(df, "metadata_source")?;
    let rank = |s: &str| match s {
        "torrent_file" => 2,
        "ut_metadata" => 1,
        _ => 0,
    };
    let reps: Vec<usize> = groups
        .iter()
        .map(|g| {
            *g.iter()
                .max_by_key(|&&i| (rank(&msrc[i]), std::cmp::Reverse(i)))
                .unwrap_or(&g[0])
        })
        .collect();
    let mut out = take(df, &reps)?;
    let sensor = strs0(df, "sensor")?;
    set(
        &mut out,
        col_str(
            "sensor",
            groups
                .iter()
                .map(|g| Some(sensor_set(g.iter().map(|&i| sensor[i].as_str()))))
                .collect(),
        ),
    )?;
    let first = i64s(df, "first_ts")?;
    let last = i64s(df, "last_ts")?;
    set(
        &mut out,
        col_ts(
            "first_ts",
            groups
                .iter()
                .map(|g| g.iter().filter_map(|&i| first[i]).min())
                .collect(),
        ),
    )?;
    set(
        &mut out,
        col_ts(
            "last_ts",
            groups.iter().map(|g| g.iter().filter_map(|&i| last[i]).max()).collect(),
        ),
    )?;
    let np = torrent_pieces(df)?;
    set(
        &mut out,
        col_i64(
            "n_pieces",
            groups.iter().map(|g| np.get(&ih[g[0]]).and_then(|x| x.0)).collect(),
        ),
    )?;
    set(
        &mut out,
        col_str(
            "n_pieces_source",
            groups.iter().map(|g| np.get(&ih[g[0]]).map(|x| x.1.clone())).collect(),
        ),
    )?;
    // From the merged peers.
    let pih = strs0(peers, "info_hash")?;
    let conf = bools(peers, "confirmed_download")?;
    let enc = bools(peers, "prefers_encryption")?;
    let utp = bools(peers, "utp")?;
    let mut per: HashMap<&str, [i64; 6]> = HashMap::new();
    for i in 0..peers.height() {
        let e = per.entry(pih[i].as_str()).or_default();
        e[0] += 1;
        e[1] += i64::from(conf[i] == Some(true));
        e[2] += i64::from(enc[i].is_some());
        e[3] += i64::from(enc[i] == Some(true));
        e[4] += i64::from(utp[i].is_some());
        e[5] += i64::from(utp[i] == Some(true));
    }
    for (k, c) in [
        "n_peers",
        "n_confirmed_downloads",
        "n_peers_encryption_known",
        "n_peers_prefer_encryption",
        "n_peers_utp_known",
        "n_peers_utp",
    ]
    .into_iter()
    .enumerate()
    {
        set(
            &mut out,
            col_i64(
                c,
                groups
                    .iter()
                    .map(|g| Some(per.get(ih[g[0]].as_str()).map_or(0, |e| e[k])))
                    .collect(),
            ),
        )?;
    }
    let mut pb: HashMap<&str, i64> = HashMap::new();
    for c in conns.by_id.values() {
        if let Some(h) = &c.info_hash {
            if !c.encrypted {
                *pb.entry(h.as_str()).or_default() += c.piece[0] + c.piece[1];
            }
        }
    }
    set(
        &mut out,
        col_i64(
            "piece_bytes",
            groups
                .iter()
                .map(|g| Some(pb.get(ih[g[0]].as_str()).copied().unwrap_or(0)))
                .collect(),
        ),
    )?;
    set(
        &mut out,
        col_i64(
            "n_pieces_verified",
            groups
                .iter()
                .map(|g| Some(ex.piece_checks.get(&ih[g[0]]).map_or(0, |c| c.0)))
                .collect(),
        ),
    )?;
    set(
        &mut out,
        col_i64(
            "n_pieces_failed",
            groups
                .iter()
                .map(|g| Some(ex.piece_checks.get(&ih[g[0]]).map_or(0, |c| c.1)))
                .collect(),
        ),
    )?;
    Ok(out)
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

fn unhex20(s: &str) -> Option<[u8; 20]> {
    if s.len() != 40 {
        return None;
    }
    let mut o = [0u8; 20];
    for (i, b) in o.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(o)
}

fn sock(ip: &str, port: i64) -> Option<SocketAddr> {
    Some(SocketAddr::new(ip.parse::<IpAddr>().ok()?, u16::try_from(port).ok()?))
}

/// Section 3, announce_audit: the analysis's audit replayed over the merged
/// events. Without any `peer_messages` the observed bytes are unknown and
/// the datasets' rows are combined instead.
pub fn audit(
    audit_in: &DataFrame,
    ex: &Extracts,
    conns: &ConnInfo,
    opaque: &OpaqueFlows,
    opts: &MergeOptions,
    capture_start: Option<i64>,
) -> Res<(DataFrame, Vec<(String, String)>)> {
    let mut notes = Vec::new();
    let Some(ann) = &ex.announces else {
        return Ok((take(audit_in, &[])?, notes));
    };
    if !ex.has_messages && conns.by_id.values().any(|c| c.piece[0] + c.piece[1] > 0) {
        notes.push((
            "merge_audit_without_messages".into(),
            "no peer_messages rows (--no-messages): announce_audit rows are the datasets' own, not recomputed over whole series".into(),
        ));
        return Ok((take(audit_in, &(0..audit_in.height()).collect::<Vec<_>>())?, notes));
    }
    let mut audit = Audit::new(
        crate::config::Limits::default(),
        opts.max_link_bps,
        &[MERGED_CAPTURE.to_string()],
        &[],
    );
    if let Some(t0) = capture_start {
        audit.note_capture_start(0, t0);
    }
    for (h, c) in &ex.hash_alias {
        audit.alias_hash(*h, *c);
    }
    // The timeline: (ts, order at equal ts, event or mark).
    enum Item {
        Ev(SwarmEvent),
        Mark(AnnounceMark, usize),
    }
    let mut items: Vec<(i64, u8, Item)> = Vec::new();
    let ctx = |ts: i64| FrameCtx {
        ts,
        frame: 0,
        capture: 0,
    };
    let mut conn_list: Vec<&Conn> = conns.by_id.values().collect();
    conn_list.sort_by_key(|c| c.first_ts);
    for c in conn_list {
        let Some(h) = c.info_hash.as_deref().and_then(unhex20) else {
            continue;
        };
        for (ip, p) in [(&c.orig_ip, c.orig_port), (&c.resp_ip, c.resp_port)] {
            if let Some(peer) = sock(ip, p) {
                items.push((
                    c.first_ts,
                    0,
                    Item::Ev(SwarmEvent {
                        ctx: ctx(c.first_ts),
                        conn_id: 0,
                        info_hash: h,
                        peer,
                        kind: SwarmEventKind::Seen {
                            peer_id: None,
                            client: None,
                            listen: false,
                        },
                    }),
                ));
            }
        }
    }
    for t in &ex.transfers {
        let (Some(h), Some(from), Some(to)) = (unhex20(&t.info_hash), sock(&t.from.0, t.from.1), sock(&t.to.0, t.to.1))
        else {
            continue;
        };
        items.push((
            t.ts,
            0,
            Item::Ev(SwarmEvent {
                ctx: ctx(t.ts),
                conn_id: 0,
                info_hash: h,
                peer: from,
                kind: SwarmEventKind::Transfer {
                    to,
                    bytes: t.bytes.max(0) as u64,
                    cut_off: false,
                },
            }),
        ));
    }
    for (ts, h, ip) in &ex.learned {
        let (Some(h), Some(peer)) = (unhex20(h), sock(ip, 0)) else {
            continue;
        };
        items.push((
            *ts,
            0,
            Item::Ev(SwarmEvent {
                ctx: ctx(*ts),
                conn_id: 0,
                info_hash: h,
                peer,
                kind: SwarmEventKind::Learned {
                    source: PeerSource::Tracker,
                },
            }),
        ));
    }
    let ts = i64s0(ann, "ts")?;
    let tr = strs0(ann, "transport")?;
    let cip = strs0(ann, "client_ip")?;
    let (tip, tport) = (strs0(ann, "tracker_ip")?, i64s0(ann, "tracker_port")?);
    let ih = strs(ann, "info_hash")?;
    let pid = strs(ann, "peer_id")?;
    let (up, down, left) = (i64s(ann, "uploaded")?, i64s(ann, "downloaded")?, i64s(ann, "left")?);
    let ev = strs(ann, "event")?;
    let decl = strs(ann, "declared_ip")?;
    let sensor = strs0(ann, "sensor")?;
    let mut series_sensors: HashMap<String, BTreeSet<String>> = HashMap::new();
    for i in 0..ann.height() {
        let (Some(h), Ok(client), Some(tracker)) = (
            ih[i].as_deref().and_then(unhex20),
            cip[i].parse::<IpAddr>(),
            sock(&tip[i], tport[i]),
        ) else {
            continue;
        };
        let transport: &'static str = if tr[i] == "udp" { "udp" } else { "http" };
        let key = format!(
            "{}|{}|{}|{}|{}|{}",
            ih[i].as_deref().unwrap_or(""),
            cip[i],
            pid[i].as_deref().unwrap_or(""),
            tip[i],
            tport[i],
            transport
        );
        series_sensors
            .entry(key)
            .or_default()
            .extend(sensor[i].split(',').map(str::to_string));
        let mark = AnnounceMark {
            ctx: ctx(ts[i]),
            transport,
            client,
            tracker,
            info_hash: h,
            peer_id: pid[i].as_deref().and_then(unhex20),
            uploaded: up[i].map(|v| v.max(0) as u64),
            downloaded: down[i].map(|v| v.max(0) as u64),
            left: left[i].map(|v| v.max(0) as u64),
            event: MarkEvent::from_text(ev[i].as_deref()),
            declared: decl[i]
                .as_deref()
                .unwrap_or("")
                .split(',')
                .filter_map(|s| s.trim().parse().ok())
                .take(3)
                .collect(),
        };
        items.push((ts[i], 1, Item::Mark(mark, i)));
    }
    items.sort_by_key(|x| (x.0, x.1));
    let mut events = Vec::new();
    let mut marks = Vec::new();
    let mut frame_of_row: HashMap<usize, u64> = HashMap::new();
    for (n, (_, _, it)) in items.into_iter().enumerate() {
        let frame = n as u64 + 1;
        match it {
            Item::Ev(mut e) => {
                e.ctx.frame = frame;
                events.push(e);
            }
            Item::Mark(mut m, row) => {
                m.ctx.frame = frame;
                frame_of_row.insert(row, frame);
                marks.push(m);
            }
        }
    }
    audit.observe(&events, &marks);
    drop(events);
    let (iv, se, le) = (i64s(ann, "interval")?, i64s(ann, "seeders")?, i64s(ann, "leechers")?);
    let mut rows = RowBatch {
        flows: opaque.flows.clone(),
        connections: opaque.conns.clone(),
        ..Default::default()
    };
    for (row, frame) in frame_of_row {
        rows.tracker_announces.push(TrackerAnnounceRow {
            capture: MERGED_CAPTURE.into(),
            frame,
            interval: iv[row],
            seeders: se[row],
            leechers: le[row],
            ..Default::default()
        });
    }
    audit.observe_rows(&rows);
    let mut out = RowBatch::default();
    audit.finish(&mut out);
    for a in &out.anomalies {
        notes.push((a.kind.clone(), a.detail.clone().unwrap_or_default()));
    }
    let rows = out.announce_audit;
    let sensors: Vec<Option<String>> = rows
        .iter()
        .map(|r| {
            let key = format!(
                "{}|{}|{}|{}|{}|{}",
                r.info_hash,
                r.client_ip,
                r.peer_id.as_deref().unwrap_or(""),
                r.tracker_ip,
                r.tracker_port,
                r.transport
            );
            Some(sensor_set(
                series_sensors.get(&key).into_iter().flatten().map(String::as_str),
            ))
        })
        .collect();
    let mut df = crate::sink::AnnounceAuditRow::to_frame(&rows).map_err(err)?;
    set(&mut df, col_str("sensor", sensors))?;
    Ok((df, notes))
}

/// Sum over one sensor's rows, the largest over sensors.
fn per_sensor_max(g: &[usize], v: &[i64], sensor: &[String]) -> i64 {
    let mut by: HashMap<&str, i64> = HashMap::new();
    for &i in g {
        *by.entry(sensor[i].as_str()).or_default() += v[i];
    }
    by.values().copied().max().unwrap_or(0)
}

/// Section 3, dht_nodes.
pub fn dht_nodes(df: &DataFrame, ex: &Extracts) -> Res<DataFrame> {
    let id = strs0(df, "node_id")?;
    let ip = strs0(df, "node_ip")?;
    let port = i64s0(df, "node_port")?;
    let groups = group_by_key((0..df.height()).map(|i| (id[i].as_str(), ip[i].as_str(), port[i])));
    let last = i64s0(df, "last_ts")?;
    let first = i64s0(df, "first_ts")?;
    let reps = latest_of(&groups, &last);
    let mut out = collapse(df, &groups, &reps, &first, &last)?;
    let sensor = strs0(df, "sensor")?;
    let counts: Vec<[i64; 3]> = groups
        .iter()
        .map(|g| {
            let r = g[0];
            ex.node_msgs
                .get(&(id[r].clone(), ip[r].clone(), port[r]))
                .copied()
                .unwrap_or_default()
        })
        .collect();
    set(
        &mut out,
        col_i64("n_queries", counts.iter().map(|c| Some(c[0])).collect()),
    )?;
    set(
        &mut out,
        col_i64("n_responses", counts.iter().map(|c| Some(c[1])).collect()),
    )?;
    set(
        &mut out,
        col_i64("n_errors", counts.iter().map(|c| Some(c[2])).collect()),
    )?;
    set(
        &mut out,
        col_i64("n_messages", counts.iter().map(|c| Some(c[0] + c[1] + c[2])).collect()),
    )?;
    let rep = i64s0(df, "n_reported")?;
    set(
        &mut out,
        col_i64(
            "n_reported",
            groups.iter().map(|g| Some(per_sensor_max(g, &rep, &sensor))).collect(),
        ),
    )?;
    let ro = bools(df, "read_only")?;
    set(
        &mut out,
        col_bool(
            "read_only",
            groups
                .iter()
                .map(|g| Some(g.iter().any(|&i| ro[i] == Some(true))))
                .collect(),
        ),
    )?;
    let mut idx: Vec<usize> = (0..out.height()).collect();
    let f = i64s0(&out, "first_ts")?;
    idx.sort_by_key(|&i| (f[i], i));
    take(&out, &idx)
}

/// Section 3, dht_infohashes.
pub fn dht_infohashes(df: &DataFrame, ex: &Extracts) -> Res<DataFrame> {
    let ih = strs0(df, "info_hash")?;
    let groups = group_by_key(ih.iter().map(String::as_str));
    let last = i64s0(df, "last_ts")?;
    let first = i64s0(df, "first_ts")?;
    let name = strs(df, "name")?;
    let reps: Vec<usize> = groups
        .iter()
        .map(|g| *g.iter().find(|&&i| name[i].is_some()).unwrap_or(&g[0]))
        .collect();
    let mut out = collapse(df, &groups, &reps, &first, &last)?;
    let sensor = strs0(df, "sensor")?;
    let q: Vec<[i64; 2]> = groups
        .iter()
        .map(|g| ex.ih_queries.get(&ih[g[0]]).copied().unwrap_or_default())
        .collect();
    set(&mut out, col_i64("n_get_peers", q.iter().map(|c| Some(c[0])).collect()))?;
    set(
        &mut out,
        col_i64("n_announce_peer", q.iter().map(|c| Some(c[1])).collect()),
    )?;
    for c in ["n_values", "n_samples"] {
        let v = i64s0(df, c)?;
        set(
            &mut out,
            col_i64(c, groups.iter().map(|g| Some(per_sensor_max(g, &v, &sensor))).collect()),
        )?;
    }
    let mut idx: Vec<usize> = (0..out.height()).collect();
    let f = i64s0(&out, "first_ts")?;
    idx.sort_by_key(|&i| (f[i], i));
    take(&out, &idx)
}

/// The responder's listen port a connection row shows, as the analysis
/// marks it (`session::State::peer_addr`): the port it accepted on, unless
/// the connection was picked up mid-stream (who connected is then a guess
/// and its transport port may be ephemeral): then the port of its BEP 10
/// `p` (`resp_listen_port`), else none.
fn resp_listen(midstream: Option<bool>, resp_port: i64, resp_listen_port: Option<i64>) -> Option<i64> {
    if midstream == Some(true) {
        resp_listen_port
    } else {
        Some(resp_port)
    }
}

/// Section 3, peers 1: a peer that a piece met only as the originator of
/// connections without its listen port (no BEP 10 `p` in that piece) is
/// keyed there by an ephemeral source port. As the analysis does (its
/// swarm state, `analyze::swarm`), such rows join the listen endpoint
/// another piece knew. The listen endpoints are those the analysis marks
/// so: a connection's responder port unless the connection was picked up
/// mid-stream, the port of a BEP 10 `p` (`orig_listen_port`, and
/// `resp_listen_port` of a mid-stream connection: [`resp_listen`]), and
/// tracker, DHT and LSD sightings (PEX passes on connection ports and is
/// no evidence). A row at another port joins:
/// - the one listen endpoint of its address whose peer id is its own (the
///   analysis merges the rows of one peer id, the listen endpoint winning);
/// - else the one listen endpoint of its address with a peer id of the
///   same 8-byte client prefix (libtorrent and qBittorrent draw a new id
///   per connection);
/// - a row without peer id, and the port-0 key of a tracker claim
///   announced with port 0: the address's one listen endpoint.
pub fn ephemeral_renames(peers: &DataFrame, conns: &DataFrame) -> Res<PeerRenames> {
    let ih = strs0(peers, "info_hash")?;
    let ip = strs0(peers, "peer_ip")?;
    let port = i64s0(peers, "peer_port")?;
    let pid = strs(peers, "peer_id")?;
    let sources = str_lists(peers, "sources")?;
    // (info_hash, ip) → listen port → the peer ids seen at it.
    type Listen = HashMap<(String, String), BTreeMap<i64, BTreeSet<String>>>;
    let mut listen: Listen = HashMap::new();
    fn add(l: &mut Listen, h: &str, ip: &str, p: i64, id: Option<&String>) {
        let ids = l
            .entry((h.to_string(), ip.to_string()))
            .or_default()
            .entry(p)
            .or_default();
        ids.extend(id.cloned());
    }
    let cih = strs(conns, "info_hash")?;
    let (oip, olp, opid) = (
        strs0(conns, "orig_ip")?,
        i64s(conns, "orig_listen_port")?,
        strs(conns, "orig_peer_id")?,
    );
    let (rip, rport, rlp, rpid) = (
        strs0(conns, "resp_ip")?,
        i64s0(conns, "resp_port")?,
        i64s(conns, "resp_listen_port")?,
        strs(conns, "resp_peer_id")?,
    );
    let mid = bools(conns, "midstream")?;
    for i in 0..conns.height() {
        let Some(h) = &cih[i] else { continue };
        if let Some(p) = olp[i] {
            add(&mut listen, h, &oip[i], p, opid[i].as_ref());
        }
        if let Some(p) = resp_listen(mid[i], rport[i], rlp[i]) {
            add(&mut listen, h, &rip[i], p, rpid[i].as_ref());
        }
    }
    for i in 0..peers.height() {
        if sources[i].iter().any(|s| s != "wire" && s != "pex") {
            add(&mut listen, &ih[i], &ip[i], port[i], pid[i].as_ref());
        }
    }
    // The peer ids of rows at a listen port count for it.
    for i in 0..peers.height() {
        if let (Some(id), Some(ports)) = (&pid[i], listen.get_mut(&(ih[i].clone(), ip[i].clone()))) {
            if let Some(ids) = ports.get_mut(&port[i]) {
                ids.insert(id.clone());
            }
        }
    }
    let prefix = |id: &str| id.get(..16).map(str::to_string);
    let mut out = PeerRenames::new();
    for i in 0..peers.height() {
        let Some(ports) = listen.get(&(ih[i].clone(), ip[i].clone())) else {
            continue;
        };
        if ports.contains_key(&port[i]) {
            continue;
        }
        let one = |f: &dyn Fn(&BTreeSet<String>) -> bool| -> Option<i64> {
            let mut m = ports.iter().filter(|(_, ids)| f(ids)).map(|(p, _)| *p);
            match (m.next(), m.next()) {
                (Some(p), None) => Some(p),
                _ => None,
            }
        };
        let target = match &pid[i] {
            Some(a) => one(&|ids| ids.contains(a)).or_else(|| {
                let pa = prefix(a);
                one(&|ids| pa.is_some() && ids.iter().any(|b| prefix(b) == pa))
            }),
            None => one(&|_| true),
        };
        if let Some(t) = target {
            out.insert((ih[i].clone(), ip[i].clone(), port[i]), t);
        }
    }
    // A tracker claim announced with port 0 (qBittorrent over UDP) is
    // keyed (info_hash, ip, 0) in peer_progress: the analysis gives it to
    // the address's one listen endpoint (an anonymous key), else drops it.
    for ((h, a), ports) in &listen {
        if let (Some((&t, _)), 1) = (ports.iter().next(), ports.len()) {
            out.entry((h.clone(), a.clone(), 0)).or_insert(t);
        }
    }
    // Rows of one peer id at ports that are not listen ports, with no
    // listen endpoint to join: the analysis keeps the first key the id was
    // seen at (earliest dataset, then first_ts).
    let ds = ds_of(peers)?;
    let first = i64s0(peers, "first_ts")?;
    let mut by_id: BTreeMap<(&str, &str, &str), (usize, i64, i64)> = BTreeMap::new();
    for i in 0..peers.height() {
        let Some(id) = &pid[i] else { continue };
        let key = (ih[i].clone(), ip[i].clone(), port[i]);
        let at_listen = listen
            .get(&(ih[i].clone(), ip[i].clone()))
            .is_some_and(|ps| ps.contains_key(&port[i]));
        if at_listen || out.contains_key(&key) {
            continue;
        }
        let e = by_id
            .entry((ih[i].as_str(), ip[i].as_str(), id.as_str()))
            .or_insert((ds[i], first[i], port[i]));
        if (ds[i], first[i]) < (e.0, e.1) {
            *e = (ds[i], first[i], port[i]);
        }
    }
    for i in 0..peers.height() {
        let Some(id) = &pid[i] else { continue };
        if let Some(&(_, _, t)) = by_id.get(&(ih[i].as_str(), ip[i].as_str(), id.as_str())) {
            if t != port[i] {
                out.insert((ih[i].clone(), ip[i].clone(), port[i]), t);
            }
        }
    }
    Ok(out)
}

/// Section 3, peers 1: the originator of an MSE-encrypted connection
/// (no handshake is readable) is, as the analysis credits it, its
/// address's one listen endpoint for the torrent, else the address's only
/// peer row, else no peer. `peers` are the renamed rows; `listen` as in
/// [`ephemeral_renames`]. Returns conn_id → that port (None: no peer).
pub fn encrypted_originators(
    peers: &DataFrame,
    conns: &DataFrame,
    renames: &PeerRenames,
) -> Res<HashMap<i64, Option<i64>>> {
    let ih = strs0(peers, "info_hash")?;
    let ip = strs0(peers, "peer_ip")?;
    let port = i64s0(peers, "peer_port")?;
    let sources = str_lists(peers, "sources")?;
    let mut rows: HashMap<(&str, &str), BTreeSet<i64>> = HashMap::new();
    for i in 0..peers.height() {
        rows.entry((ih[i].as_str(), ip[i].as_str()))
            .or_default()
            .insert(port[i]);
    }
    let mut listen: BTreeSet<(String, String, i64)> = BTreeSet::new();
    for i in 0..peers.height() {
        if sources[i].iter().any(|s| s != "wire" && s != "pex") {
            listen.insert((ih[i].clone(), ip[i].clone(), port[i]));
        }
    }
    let cih = strs(conns, "info_hash")?;
    let ids = i64s0(conns, "conn_id")?;
    let enc = bools(conns, "encrypted")?;
    let (oip, olp) = (strs0(conns, "orig_ip")?, i64s(conns, "orig_listen_port")?);
    let (rip, rport, rlp) = (
        strs0(conns, "resp_ip")?,
        i64s0(conns, "resp_port")?,
        i64s(conns, "resp_listen_port")?,
    );
    let mid = bools(conns, "midstream")?;
    let re = |h: &str, a: &str, p: i64| renames.get(&(h.to_string(), a.to_string(), p)).copied().unwrap_or(p);
    for i in 0..conns.height() {
        let Some(h) = &cih[i] else { continue };
        if let Some(p) = olp[i] {
            listen.insert((h.clone(), oip[i].clone(), re(h, &oip[i], p)));
        }
        if let Some(p) = resp_listen(mid[i], rport[i], rlp[i]) {
            listen.insert((h.clone(), rip[i].clone(), re(h, &rip[i], p)));
        }
    }
    let mut out = HashMap::new();
    for i in 0..conns.height() {
        let (Some(h), Some(true)) = (&cih[i], enc[i]) else {
            continue;
        };
        let Some(ports) = rows.get(&(h.as_str(), oip[i].as_str())) else {
            out.insert(ids[i], None);
            continue;
        };
        let l: Vec<i64> = ports
            .iter()
            .copied()
            .filter(|p| listen.contains(&(h.clone(), oip[i].clone(), *p)))
            .collect();
        let t = match (l.as_slice(), ports.len()) {
            ([p], _) => Some(*p),
            ([], 1) => ports.iter().next().copied(),
            _ => None,
        };
        out.insert(ids[i], t);
    }
    Ok(out)
}

/// (info_hash, ip, port) of a peer → the other hash of its hybrid torrent.
pub type HybridRenames = HashMap<(String, String, i64), String>;

/// Section 3, peers 1: a hybrid v1+v2 torrent goes by two hashes (BEP 52),
/// its v1 hash and its v2 hash truncated to 20 bytes, paired in the
/// datasets' `torrents` rows (`info_hash_v2`: a row whose info_hash is
/// either). As the analysis does at its end, a peer known under one hash
/// only from elsewhere than the wire (no dataset's row of it has source
/// `wire`) joins the peer at the same endpoint that the wire showed under
/// the other hash. Needs no `--torrents`: the pieces analysed with the
/// metainfo wrote the pairing.
pub fn hybrid_renames(peers: &DataFrame, torrents: &DataFrame) -> Res<HybridRenames> {
    let tih = strs0(torrents, "info_hash")?;
    let v2 = strs(torrents, "info_hash_v2")?;
    // Every hash of a hybrid torrent → its full v2 hash.
    let mut family: HashMap<&str, &str> = HashMap::new();
    for (h, v) in tih.iter().zip(&v2) {
        if let Some(v) = v {
            family.insert(h.as_str(), v.as_str());
        }
    }
    let mut members: HashMap<&str, BTreeSet<&str>> = HashMap::new();
    for (h, v) in &family {
        members.entry(v).or_default().insert(h);
    }
    let ih = strs0(peers, "info_hash")?;
    let ip = strs0(peers, "peer_ip")?;
    let port = i64s0(peers, "peer_port")?;
    let sources = str_lists(peers, "sources")?;
    let mut wire: HashMap<(&str, &str, i64), bool> = HashMap::new();
    for i in 0..peers.height() {
        *wire.entry((ih[i].as_str(), ip[i].as_str(), port[i])).or_default() |= sources[i].iter().any(|s| s == "wire");
    }
    let mut out = HybridRenames::new();
    for (&(h, a, p), &w) in &wire {
        let Some(v) = family.get(h) else { continue };
        if w {
            continue;
        }
        let other = members
            .get(v)
            .into_iter()
            .flatten()
            .find(|o| **o != h && wire.get(&(**o, a, p)) == Some(&true));
        if let Some(o) = other {
            out.insert((h.to_string(), a.to_string(), p), o.to_string());
        }
    }
    Ok(out)
}

/// A hybrid torrent's hashes paired in the datasets' `torrents` rows →
/// the hash its audit series go by: the v1 hash (the member that is not
/// the truncated v2 hash), else the truncated v2 hash.
pub fn hash_aliases(torrents: &DataFrame) -> Res<Vec<([u8; 20], [u8; 20])>> {
    let tih = strs0(torrents, "info_hash")?;
    let v2 = strs(torrents, "info_hash_v2")?;
    let mut members: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (h, v) in tih.iter().zip(&v2) {
        if let Some(v) = v {
            members.entry(v.as_str()).or_default().insert(h.as_str());
        }
    }
    let mut out = Vec::new();
    for (v, hs) in &members {
        let trunc = v.get(..40).unwrap_or(v);
        let canon = hs.iter().find(|h| **h != trunc).copied().unwrap_or(trunc);
        let Some(c) = unhex20(canon) else { continue };
        for h in hs.iter().chain(std::iter::once(&trunc)) {
            if let Some(h) = unhex20(h) {
                out.push((h, c));
            }
        }
    }
    Ok(out)
}

/// Section 2: a later piece that picked a connection up mid-stream
/// attributes it by endpoint or address, or not at all; the joined
/// connection has its first piece's handshake. An event row of a
/// connection (`peer_messages`, `peer_progress`, `pex_peers`) takes the
/// merged connection's info_hash when the row has none, or when the
/// connection's came from a handshake and the row's differs.
pub fn fill_info_hash(df: &mut DataFrame, conns: &ConnInfo) -> Res<()> {
    let ih = strs(df, "info_hash")?;
    let cid = i64s(df, "conn_id")?;
    let mut changed = false;
    let out: Vec<Option<String>> = ih
        .into_iter()
        .zip(cid)
        .map(|(h, c)| {
            let Some(c) = c.and_then(|c| conns.by_id.get(&c)) else {
                return h;
            };
            match (&h, &c.info_hash) {
                (None, Some(x)) => {
                    changed = true;
                    Some(x.clone())
                }
                (Some(a), Some(x)) if c.exact && a != x => {
                    changed = true;
                    Some(x.clone())
                }
                _ => h,
            }
        })
        .collect();
    if changed {
        set(df, col_str("info_hash", out))?;
    }
    Ok(())
}

/// Section 3, peers 1: a peers row a later piece made only from a
/// connection it attributed to another torrent (by endpoint or address)
/// than the joined connection's handshake says (sources only `wire`, and
/// every listed connection's merged info_hash is another one, from a
/// handshake, the same for all) moves to that torrent.
pub fn rekey_misattributed(peers: &mut DataFrame, conns: &DataFrame) -> Res<()> {
    let cid = i64s0(conns, "conn_id")?;
    let cih = strs(conns, "info_hash")?;
    let src = strs(conns, "info_hash_source")?;
    let exact: HashMap<i64, &str> = (0..conns.height())
        .filter(|&i| src[i].as_deref() == Some("handshake"))
        .filter_map(|i| cih[i].as_deref().map(|h| (cid[i], h)))
        .collect();
    let ih = strs0(peers, "info_hash")?;
    let sources = str_lists(peers, "sources")?;
    let ids = i64_lists(peers, "conn_ids")?;
    let mut changed = false;
    let out: Vec<Option<String>> = (0..peers.height())
        .map(|i| {
            if ids[i].is_empty() || sources[i].iter().any(|s| s != "wire") {
                return Some(ih[i].clone());
            }
            let hs: BTreeSet<Option<&str>> = ids[i].iter().map(|c| exact.get(c).copied()).collect();
            match hs.iter().next() {
                Some(Some(h)) if hs.len() == 1 && *h != ih[i] => {
                    changed = true;
                    Some(h.to_string())
                }
                _ => Some(ih[i].clone()),
            }
        })
        .collect();
    if changed {
        set(peers, col_str("info_hash", out))?;
    }
    Ok(())
}

/// Moves peer rows (info_hash column) as [`hybrid_renames`] says.
pub fn rename_hashes(df: &mut DataFrame, renames: &HybridRenames) -> Res<()> {
    if renames.is_empty() {
        return Ok(());
    }
    let ih = strs0(df, "info_hash")?;
    let ip = strs0(df, "peer_ip")?;
    let port = i64s0(df, "peer_port")?;
    let out: Vec<Option<String>> = (0..df.height())
        .map(|i| {
            Some(
                renames
                    .get(&(ih[i].clone(), ip[i].clone(), port[i]))
                    .cloned()
                    .unwrap_or_else(|| ih[i].clone()),
            )
        })
        .collect();
    set(df, col_str("info_hash", out))
}

/// Sets the originator's peer port of the encrypted connections
/// [`encrypted_originators`] named.
pub fn set_orig_ports(conns: &mut DataFrame, owners: &HashMap<i64, Option<i64>>) -> Res<()> {
    if owners.is_empty() {
        return Ok(());
    }
    let ids = i64s0(conns, "conn_id")?;
    let p = i64s(conns, "orig_peer_port")?;
    let out: Vec<Option<i64>> = ids
        .iter()
        .zip(p)
        .map(|(id, p)| owners.get(id).copied().unwrap_or(p))
        .collect();
    let c = col_i64("orig_peer_port", out).cast(&DataType::Int32).map_err(err)?;
    set(conns, c)
}

/// Renames the peer ports of connection ends (`orig_peer_port`,
/// `resp_peer_port`) as `peers` rows are renamed.
pub fn rename_conn_ports(conns: &mut DataFrame, renames: &PeerRenames) -> Res<()> {
    if renames.is_empty() {
        return Ok(());
    }
    let ih = strs(conns, "info_hash")?;
    for (ipc, pc) in [("orig_ip", "orig_peer_port"), ("resp_ip", "resp_peer_port")] {
        let ip = strs0(conns, ipc)?;
        let p = i64s(conns, pc)?;
        let out: Vec<Option<i64>> = (0..conns.height())
            .map(|i| match (&ih[i], p[i]) {
                (Some(h), Some(v)) => Some(renames.get(&(h.clone(), ip[i].clone(), v)).copied().unwrap_or(v)),
                (_, v) => v,
            })
            .collect();
        let c = col_i64(pc, out).cast(&DataType::Int32).map_err(err)?;
        set(conns, c)?;
    }
    Ok(())
}

/// A TCP connection's part in an earlier piece can be too short to be
/// recognised there (a handshake and fewer than 3 messages each way): its
/// flow was joined, its connection row starts in a later piece. As in one
/// run, a TCP connection is its flow: its id is the flow's and it starts
/// with the flow. Returns the connection ids so rewritten.
pub fn align_tcp_connections(conns: &mut DataFrame, flows: &DataFrame) -> Res<HashMap<i64, i64>> {
    let fid = i64s0(flows, "conn_id")?;
    let ffirst = i64s0(flows, "first_ts")?;
    let first_of: HashMap<i64, i64> = fid.into_iter().zip(ffirst).collect();
    let tr = strs0(conns, "transport")?;
    let ids = i64s0(conns, "conn_id")?;
    let flow = i64s0(conns, "flow_id")?;
    let first = i64s0(conns, "first_ts")?;
    let mut map = HashMap::new();
    let mut new_ids = Vec::with_capacity(ids.len());
    let mut new_first = Vec::with_capacity(ids.len());
    let mut changed = false;
    for i in 0..ids.len() {
        let f = first_of
            .get(&flow[i])
            .copied()
            .filter(|&f| tr[i] == "tcp" && f < first[i]);
        if f.is_some() && ids[i] != flow[i] {
            map.insert(ids[i], flow[i]);
            new_ids.push(Some(flow[i]));
        } else {
            new_ids.push(Some(ids[i]));
        }
        changed |= f.is_some();
        new_first.push(Some(f.unwrap_or(first[i])));
    }
    if changed {
        set(conns, col_i64("conn_id", new_ids))?;
        set(conns, col_ts("first_ts", new_first))?;
    }
    Ok(map)
}
