#!/usr/bin/env python3
"""Counts per file of a cargo-mutants outcomes.json (tests/mutants.sh):
caught, missed, timeout, unviable, and the missed mutants by name."""
import collections
import json
import sys

data = json.load(open(sys.argv[1]))
kinds = ["caught", "missed", "timeout", "unviable"]
names = {
    "CaughtMutant": "caught",
    "MissedMutant": "missed",
    "Timeout": "timeout",
    "Unviable": "unviable",
}
per_file = collections.defaultdict(collections.Counter)
missed = []
for o in data["outcomes"]:
    sc = o.get("scenario")
    if not isinstance(sc, dict) or "Mutant" not in sc:
        continue  # the baseline
    m = sc["Mutant"]
    kind = names.get(o.get("summary"), o.get("summary"))
    per_file[m["file"]][kind] += 1
    if kind == "missed":
        span = m.get("span", {}).get("start", {})
        missed.append(f'{m["file"]}:{span.get("line")}:{span.get("column")}: {m.get("name") or m}')
total = collections.Counter()
print(f'{"file":32} {"tested":>6} ' + " ".join(f"{k:>8}" for k in kinds))
for f in sorted(per_file):
    c = per_file[f]
    total.update(c)
    print(f"{f:32} {sum(c.values()):6} " + " ".join(f"{c[k]:8}" for k in kinds))
print(f'{"total":32} {sum(total.values()):6} ' + " ".join(f"{total[k]:8}" for k in kinds))
print(f"of {data.get('total_mutants', '?')} mutants in scope")
for line in sorted(missed):
    print("missed:", line)
