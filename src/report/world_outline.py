#!/usr/bin/env python3
"""Writes src/report/world.path: the country outlines of `swarmtap report`'s map.

Source: Natural Earth 1:110m "Admin 0 – Countries" (public domain,
https://www.naturalearthdata.com/about/terms-of-use/), as shipped in the PyPI
package geopandas 0.14.4 (geopandas/datasets/naturalearth_lowres/, removed
from geopandas in 1.0). The shapefile is read here with the standard library
only; rings are simplified (Douglas-Peucker, 0.25°) and small islands under
0.5 square degrees dropped, then written as one SVG path in a 360 × 180 frame
(x = longitude + 180, y = 90 − latitude; one decimal).

    python3 src/report/world_outline.py              # pip-downloads the wheel
    python3 src/report/world_outline.py WHEEL.whl    # or uses one at hand
"""

import io
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

OUT = Path(__file__).resolve().parent / "world.path"
TOL = 0.25
MIN_AREA = 0.5


def wheel() -> Path:
    if len(sys.argv) > 1:
        return Path(sys.argv[1])
    d = Path(tempfile.mkdtemp())
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(d), "geopandas==0.14.4"],
        check=True,
    )
    return next(d.glob("geopandas-*.whl"))


def rings(shp: bytes):
    """Polygon rings of an ESRI shapefile (shape type 5)."""
    pos = 100
    while pos + 8 <= len(shp):
        _, length = struct.unpack(">ii", shp[pos : pos + 8])
        rec = shp[pos + 8 : pos + 8 + 2 * length]
        pos += 8 + 2 * length
        (stype,) = struct.unpack("<i", rec[:4])
        if stype != 5:
            continue
        nparts, npoints = struct.unpack("<ii", rec[36:44])
        parts = list(struct.unpack(f"<{nparts}i", rec[44 : 44 + 4 * nparts]))
        base = 44 + 4 * nparts
        pts = [struct.unpack("<2d", rec[base + 16 * i : base + 16 * i + 16]) for i in range(npoints)]
        for k, a in enumerate(parts):
            b = parts[k + 1] if k + 1 < nparts else npoints
            yield pts[a:b]


def simplify(pts, tol):
    if len(pts) < 3:
        return pts
    keep = [False] * len(pts)
    keep[0] = keep[-1] = True
    stack = [(0, len(pts) - 1)]
    while stack:
        a, b = stack.pop()
        (x1, y1), (x2, y2) = pts[a], pts[b]
        dx, dy = x2 - x1, y2 - y1
        norm = (dx * dx + dy * dy) ** 0.5
        best, idx = 0.0, -1
        for i in range(a + 1, b):
            x, y = pts[i]
            d = abs(dy * (x - x1) - dx * (y - y1)) / norm if norm else ((x - x1) ** 2 + (y - y1) ** 2) ** 0.5
            if d > best:
                best, idx = d, i
        if best > tol and idx > 0:
            keep[idx] = True
            stack += [(a, idx), (idx, b)]
    return [p for p, k in zip(pts, keep) if k]


def area(pts):
    return abs(sum(x1 * y2 - x2 * y1 for (x1, y1), (x2, y2) in zip(pts, pts[1:] + pts[:1]))) / 2


def main():
    with zipfile.ZipFile(wheel()) as z:
        shp = z.read("geopandas/datasets/naturalearth_lowres/naturalearth_lowres.shp")
    out = io.StringIO()
    n = 0
    for r in rings(shp):
        if area(r) < MIN_AREA:
            continue
        s = simplify(r, TOL)
        if len(s) < 4:
            continue
        out.write("M" + "L".join(f"{x + 180:.1f} {90 - y:.1f}".replace(".0 ", " ") for x, y in s[:-1]) + "Z")
        n += 1
    OUT.write_text(out.getvalue() + "\n")
    print(f"{OUT}: {n} rings, {OUT.stat().st_size} bytes")


if __name__ == "__main__":
    main()
