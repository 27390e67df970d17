#!/usr/bin/env python3
"""Peak resident memory of one swarmtap run, split into its anonymous part
(heap, stacks: what the analysis holds) and its file-backed part (mostly the
binary's code pages, which move by a few MiB between builds with the code
layout and are the same for every capture of one binary).

    python3 bench/rss_split.py BIN CAPTURE [analyze args...]

Prints `hwm_kib peak_rss_kib peak_anon_kib peak_file_kib`: VmHWM (what
/usr/bin/time -v reports as maximum resident set size), then the largest
VmRSS, RssAnon and RssFile seen, sampling /proc/PID/status every 2 ms (the
two peaks need not fall at the same moment: a short run touches the Parquet
writer's code only at its end). Compare builds by the anonymous peak.
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    out = tempfile.mkdtemp(prefix="rss-split-")
    cmd = [sys.argv[1], "analyze", sys.argv[2], "-o", out + "/o", *sys.argv[3:]]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = {"VmHWM": 0, "VmRSS": 0, "RssAnon": 0, "RssFile": 0}
    status = f"/proc/{p.pid}/status"
    while p.poll() is None:
        try:
            with open(status) as f:
                for line in f:
                    key, _, rest = line.partition(":")
                    if key in peak:
                        peak[key] = max(peak[key], int(rest.split()[0]))
        except (OSError, ValueError, IndexError):
            pass
        time.sleep(0.002)
    shutil.rmtree(out, ignore_errors=True)
    if p.returncode != 0:
        print(f"{cmd[0]} exited {p.returncode}", file=sys.stderr)
        return 1
    print(peak["VmHWM"], peak["VmRSS"], peak["RssAnon"], peak["RssFile"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
