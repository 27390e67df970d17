#!/usr/bin/env python3
"""Medians of the benchmark runs: prints a table, writes results.json.

usage: summarize.py RAW.jsonl CAPTURE_DIR ENV.txt RESULTS.json
"""
import json
import statistics
import sys
from pathlib import Path

TARGET_RATIO = 100.0  # DESIGN.md: >= 100x tshark on both kinds of capture
FLAT_TOLERANCE = 1.25  # peak RSS on 4x the capture may grow by at most 25 %


def read_kv(path):
    out = {}
    for line in Path(path).read_text().splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            try:
                out[k] = int(v)
            except ValueError:
                try:
                    out[k] = float(v)
                except ValueError:
                    out[k] = v
    return out


def main():
    raw_path, capdir, env_path, results_path = sys.argv[1:5]
    env = read_kv(env_path)
    runs = [json.loads(l) for l in Path(raw_path).read_text().splitlines() if l.strip()]
    captures = {p.stem: read_kv(p) for p in sorted(Path(capdir).glob("*.meta"))}

    # rows per output table of swarmtap's with-messages run, per capture
    output_rows = {p.stem[len("rows-"):]: read_kv(p) for p in sorted(Path(capdir).parent.glob("rows-*.txt"))}

    groups = {}
    for r in runs:
        groups.setdefault((r["tool"], r["capture"]), []).append(r)

    rows = []
    for (tool, cap), rs in groups.items():
        ok = [r for r in rs if r["exit"] == 0]
        row = {"tool": tool, "capture": cap, "runs": len(rs), "failed_runs": len(rs) - len(ok)}
        if ok:
            wall = statistics.median(r["wall_s"] for r in ok)
            meta = captures.get(cap, {})
            mb = meta.get("bytes", 0) / 1e6
            pk = meta.get("packets", 0)
            row.update(
                wall_s_median=round(wall, 4),
                wall_s_min=round(min(r["wall_s"] for r in ok), 4),
                wall_s_max=round(max(r["wall_s"] for r in ok), 4),
                cpu_s_median=round(statistics.median(r["user_s"] + r["sys_s"] for r in ok), 3),
                max_rss_mib_median=round(statistics.median(r["max_rss_kib"] for r in ok) / 1024, 1),
                mb_per_s=round(mb / wall, 2) if wall > 0 else None,
                packets_per_s=round(pk / wall) if wall > 0 else None,
            )
            if "krpc_datagrams" in meta:
                row["krpc_per_s"] = round(meta["krpc_datagrams"] / wall) if wall > 0 else None
        rows.append(row)

    def get(tool, cap):
        for row in rows:
            if row["tool"] == tool and row["capture"] == cap and "wall_s_median" in row:
                return row
        return None

    # ratios: rate of swarmtap / rate of the other tool. "same file" ratios
    # compare runs on one capture; the 1 GB ones compare swarmtap's rate on
    # bulk-1g with tshark's rate on bulk-250m (tshark is not run on 1 GB).
    ratios = []
    for kind, st_cap, other_cap, metric in (
        ("bulk", "bulk-250m", "bulk-250m", "mb_per_s"),
        ("bulk", "bulk-1g", "bulk-250m", "mb_per_s"),
        ("bulk", "bulk-1g", "bulk-1g", "mb_per_s"),
        ("dht", "dht-500k", "dht-500k", "krpc_per_s"),
        ("mixed", "mixed-250m", "mixed-250m", "mb_per_s"),
    ):
        for st in ("swarmtap-msg", "swarmtap-nomsg", "floor-read", "floor-cat"):
            for other in ("tshark", "ndpi"):
                if st.startswith("floor") and other != "tshark":
                    continue
                a, b = get(st, st_cap), get(other, other_cap)
                if a and b and b.get(metric):
                    # the same ratio in CPU time (user + sys), less sensitive to
                    # other load on the machine than wall time
                    units = {"mb_per_s": lambda c: captures[c]["bytes"] / 1e6,
                             "krpc_per_s": lambda c: captures[c]["krpc_datagrams"]}[metric]
                    cpu_ratio = None
                    if a["cpu_s_median"] > 0 and b["cpu_s_median"] > 0:
                        cpu_ratio = round((units(st_cap) / a["cpu_s_median"]) / (units(other_cap) / b["cpu_s_median"]), 2)
                    ratios.append({
                        "kind": kind, "swarmtap": st, "swarmtap_capture": st_cap,
                        "vs": other, "vs_capture": other_cap, "metric": metric,
                        "swarmtap_rate": a[metric], "vs_rate": b[metric],
                        "ratio": round(a[metric] / b[metric], 2),
                        "cpu_ratio": cpu_ratio,
                        "same_file": st_cap == other_cap,
                    })

    memory = []
    for kind, small, big in (("bulk", "bulk-250m", "bulk-1g"), ("dht", "dht-125k", "dht-500k")):
        for st in ("swarmtap-msg", "swarmtap-nomsg"):
            a, b = get(st, small), get(st, big)
            if a and b:
                growth = b["max_rss_mib_median"] / a["max_rss_mib_median"]
                memory.append({
                    "kind": kind, "swarmtap": st,
                    "small_capture": small, "small_bytes": captures[small]["bytes"],
                    "small_rss_mib": a["max_rss_mib_median"],
                    "big_capture": big, "big_bytes": captures[big]["bytes"],
                    "big_rss_mib": b["max_rss_mib_median"],
                    "growth": round(growth, 3), "flat": growth <= FLAT_TOLERANCE,
                })

    # --threads 1 vs --threads 2 on the same file (same output: the
    # comparison script checks that): wall-time speed-up, and CPU time.
    threads = None
    t1, t2 = get("swarmtap-t1", "bulk-1g"), get("swarmtap-t2", "bulk-1g")
    if t1 and t2 and t2["wall_s_median"] > 0:
        threads = {"capture": "bulk-1g", "t1_wall_s": t1["wall_s_median"], "t2_wall_s": t2["wall_s_median"],
                   "speedup": round(t1["wall_s_median"] / t2["wall_s_median"], 2),
                   "t1_cpu_s": t1["cpu_s_median"], "t2_cpu_s": t2["cpu_s_median"]}

    targets = {}
    for kind in ("bulk", "dht"):
        r = [x for x in ratios if x["kind"] == kind and x["same_file"] and x["vs"] == "tshark"
             and x["swarmtap"] == "swarmtap-msg"]
        if r:
            targets[f"{kind}_vs_tshark_100x"] = {"ratio": r[0]["ratio"], "met": r[0]["ratio"] >= TARGET_RATIO}
        m = [x for x in memory if x["kind"] == kind and x["swarmtap"] == "swarmtap-msg"]
        if m:
            targets[f"{kind}_memory_flat"] = {"growth": m[0]["growth"], "met": m[0]["flat"]}

    # ---- print ---------------------------------------------------------------
    print()
    print(f"swarmtap benchmark, {env.get('date')}, {env.get('cores')} cores ({env.get('cpu')}), "
          f"{env.get('runs')} runs each, medians; load average {env.get('loadavg_start')} -> {env.get('loadavg_end')}")
    print()
    print("captures:")
    for name, m in captures.items():
        extra = f", {m['krpc_datagrams']} KRPC datagrams" if "krpc_datagrams" in m else \
            f", ~{m.get('tcp_connections', '?')} TCP connections"
        print(f"  {name:10s} {m['bytes'] / 1e6:9.1f} MB {m['packets']:9d} packets, {m['copies']} copies{extra}")
    print()
    hdr = f"{'tool':16s} {'capture':10s} {'wall s':>8s} {'MB/s':>9s} {'packets/s':>11s} {'KRPC/s':>10s} {'RSS MiB':>8s} {'CPU s':>7s}"
    print(hdr)
    print("-" * len(hdr))
    order = {"swarmtap-nomsg": 0, "swarmtap-msg": 1, "swarmtap-t1": 2, "swarmtap-t2": 3, "floor-read": 4,
             "floor-cat": 5, "tshark": 6, "ndpi": 7}
    for row in sorted(rows, key=lambda r: (r["capture"].startswith("dht"), -captures.get(r["capture"], {}).get("bytes", 0), order.get(r["tool"], 9))):
        if "wall_s_median" not in row:
            print(f"{row['tool']:16s} {row['capture']:10s}   all {row['runs']} runs failed")
            continue
        kr = f"{row['krpc_per_s']:10d}" if "krpc_per_s" in row else f"{'':10s}"
        print(f"{row['tool']:16s} {row['capture']:10s} {row['wall_s_median']:8.3f} {row['mb_per_s']:9.1f} "
              f"{row['packets_per_s']:11d} {kr} {row['max_rss_mib_median']:8.1f} {row['cpu_s_median']:7.2f}")
    print()
    print("tshark runs on bulk-250m only (it is slow); the bulk-1g ratios divide swarmtap's rate on")
    print("bulk-1g by tshark's rate on bulk-250m. ndpiReader also runs on bulk-1g and mixed-250m")
    print("(other protocols only). DHT rates are KRPC datagrams per second.")
    print()
    print("floor-cat = cat CAP >/dev/null; floor-read = swarmtap with a BPF filter no packet passes")
    print("(reading only). Their ratios to tshark bound what any analysis can reach on this machine.")
    print()
    print("ratios (swarmtap rate / other tool's rate, wall time; in brackets the same in CPU time):")
    for x in ratios:
        cr = f"[{x['cpu_ratio']:.1f}x CPU]" if x["cpu_ratio"] is not None else ""
        print(f"  {x['kind']:4s} {x['swarmtap']:15s} on {x['swarmtap_capture']:9s} / {x['vs']:6s} on "
              f"{x['vs_capture']:9s}: {x['ratio']:8.2f}x {cr:>13s}  ({x['swarmtap_rate']} vs {x['vs_rate']} {x['metric']})")
    print()
    if threads:
        print(f"--threads 2 vs --threads 1 on {threads['capture']} (--no-messages): {threads['speedup']}x wall "
              f"({threads['t1_wall_s']} s -> {threads['t2_wall_s']} s; CPU {threads['t1_cpu_s']} s -> {threads['t2_cpu_s']} s)")
        print()
    print(f"memory flat (peak RSS on the small vs the 4x capture; flat if growth <= {FLAT_TOLERANCE}):")
    for x in memory:
        print(f"  {x['kind']:4s} {x['swarmtap']:15s} {x['small_capture']} {x['small_rss_mib']:.1f} MiB -> "
              f"{x['big_capture']} {x['big_rss_mib']:.1f} MiB  (x{x['growth']:.2f}: {'flat' if x['flat'] else 'NOT flat'})")
    print()
    if output_rows:
        print("swarmtap output (rows of the with-messages run):")
        for cap, t in output_rows.items():
            keys = ("flows", "connections", "peer_messages", "peers", "dht_messages", "anomalies")
            print(f"  {cap:10s} " + ", ".join(f"{k} {t.get(k, 0)}" for k in keys))
            if cap.startswith("dht") and t.get("dht_messages", 0) == 0:
                print(f"  NOTE: no dht_messages rows on {cap}: this swarmtap does not decode KRPC yet, so the "
                      "DHT timings cover capture reading and UDP flow tracking only")
        print()
    print("targets (DESIGN.md, default mode = with messages):")
    for k, v in targets.items():
        val = f"{v['ratio']}x" if "ratio" in v else f"RSS x{v['growth']}"
        print(f"  {k:24s} {val:>12s}  {'MET' if v['met'] else 'NOT MET'}")
    print()

    Path(results_path).write_text(json.dumps({
        "env": env,
        "captures": captures,
        "swarmtap_output_rows": output_rows,
        "medians": rows,
        "ratios": ratios,
        "memory_flat": memory,
        "threads": threads,
        "targets": targets,
        "notes": [
            "medians of the runs; wall time from clock reads around each run, peak RSS and CPU from /usr/bin/time -v",
            "tshark is measured on bulk-250m only, ndpiReader on bulk-250m and bulk-1g; ratios marked same_file=false use the bulk-250m rate",
            "swarmtap-nomsg = analyze --no-messages; swarmtap-msg = analyze with the per-message table",
            "floor-cat = cat CAP > /dev/null; floor-read = swarmtap analyze -f 'ip proto 255' (reads and filters every packet, analyzes none)",
            "tshark bulk: -Y bittorrent -T fields -e bittorrent.msg.type; DHT: --enable-heuristic bittorrent_dht_udp -Y bt-dht -T fields -e bt-dht.id",
        ],
    }, indent=2) + "\n")


if __name__ == "__main__":
    main()
