//! Hand-made SVG charts: axes with readable ticks, legends beside the plot
//! (never on the data), one colour per torrent or series. Every data mark
//! carries class `mark` (the browser test counts them) and a `<title>` a
//! browser shows on hover.

use std::fmt::Write as _;

/// Categorical colours (Tableau 10): distinct from each other, and in
/// lightness enough that neighbours stay apart for most colour-blind readers.
pub const PALETTE: [&str; 10] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bcbd22",
];
/// Colour of "everything else" (series beyond the palette).
pub const OTHER: &str = "#c7c7c7";

pub fn color(i: usize) -> &'static str {
    PALETTE.get(i).copied().unwrap_or(OTHER)
}

/// Escapes text for HTML and SVG.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => o.push('\u{fffd}'),
            c => o.push(c),
        }
    }
    o
}

/// Shortens `s` to `n` characters with an ellipsis.
pub fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut o: String = s.chars().take(n.saturating_sub(1)).collect();
        o.push('…');
        o
    }
}

/// 1.2 MB style (powers of 1000, as the README's figures).
pub fn fmt_bytes(v: f64) -> String {
    let a = v.abs();
    let (d, u) = if a >= 1e12 {
        (1e12, "TB")
    } else if a >= 1e9 {
        (1e9, "GB")
    } else if a >= 1e6 {
        (1e6, "MB")
    } else if a >= 1e3 {
        (1e3, "kB")
    } else {
        return format!("{} B", v.round() as i64);
    };
    let x = v / d;
    if x.abs() >= 100.0 {
        format!("{x:.0} {u}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1} {u}")
    } else {
        format!("{x:.2} {u}")
    }
}

/// Counts with thin separators: 12 345.
pub fn fmt_int(v: i64) -> String {
    let s = v.unsigned_abs().to_string();
    let mut o = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            o.push('\u{202f}');
        }
        o.push(c);
    }
    if v < 0 {
        format!("−{o}")
    } else {
        o
    }
}

/// A tick label for a plain number.
pub fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{}G", trim(v / 1e9))
    } else if a >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if a >= 1e4 {
        format!("{}k", trim(v / 1e3))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.to_string()
    }
}

/// Bits per second from bytes per second.
pub fn fmt_rate(bps: f64) -> String {
    let b = bps * 8.0;
    if b >= 1e9 {
        format!("{:.1} Gbit/s", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} Mbit/s", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.0} kbit/s", b / 1e3)
    } else {
        format!("{b:.0} bit/s")
    }
}

/// Civil date (UTC) of a day number since 1970-01-01 (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `2020-09-13 12:26:40` (UTC) of a timestamp in microseconds.
pub fn fmt_ts(us: i64) -> String {
    let s = us.div_euclid(1_000_000);
    let (y, m, d) = civil(s.div_euclid(86_400));
    let t = s.rem_euclid(86_400);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", t / 3600, t / 60 % 60, t % 60)
}

/// A duration in words: 3 h 12 min, 45 s.
pub fn fmt_dur(us: i64) -> String {
    let s = us / 1_000_000;
    if s >= 86_400 {
        format!("{} d {} h", s / 86_400, s % 86_400 / 3600)
    } else if s >= 3600 {
        format!("{} h {} min", s / 3600, s % 3600 / 60)
    } else if s >= 60 {
        format!("{} min {} s", s / 60, s % 60)
    } else if us >= 1_000_000 {
        format!("{:.1} s", us as f64 / 1e6)
    } else {
        format!("{} ms", us / 1000)
    }
}

/// A linear or log10 map from data to pixels.
#[derive(Clone, Copy, Debug)]
pub struct Scale {
    pub d0: f64,
    pub d1: f64,
    pub r0: f64,
    pub r1: f64,
    pub log: bool,
}

impl Scale {
    pub fn lin(d0: f64, d1: f64, r0: f64, r1: f64) -> Scale {
        let d1 = if d1 > d0 { d1 } else { d0 + 1.0 };
        Scale {
            d0,
            d1,
            r0,
            r1,
            log: false,
        }
    }
    /// Log scale over whole decades covering [lo, hi] (lo > 0).
    pub fn log(lo: f64, hi: f64, r0: f64, r1: f64) -> Scale {
        let lo = lo.max(1e-9);
        let a = lo.log10().floor();
        let b = hi.max(lo * 10.0).log10().ceil().max(a + 1.0);
        Scale {
            d0: a,
            d1: b,
            r0,
            r1,
            log: true,
        }
    }
    pub fn at(&self, v: f64) -> f64 {
        let x = if self.log {
            v.max(10f64.powf(self.d0)).log10()
        } else {
            v
        };
        self.r0 + (x - self.d0) / (self.d1 - self.d0) * (self.r1 - self.r0)
    }
    /// Tick values (data units).
    pub fn ticks(&self, n: usize) -> Vec<f64> {
        if self.log {
            let mut v = Vec::new();
            let span = (self.d1 - self.d0) as i64;
            let step = (span as f64 / n.max(1) as f64).ceil().max(1.0) as i64;
            let mut e = self.d0 as i64;
            while e <= self.d1 as i64 {
                v.push(10f64.powi(e as i32));
                e += step;
            }
            v
        } else {
            nice_ticks(self.d0, self.d1, n)
        }
    }
}

/// Round ticks (1, 2, 5 × 10^k) covering [lo, hi].
pub fn nice_ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) {
        return vec![lo];
    }
    let raw = (hi - lo) / n.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let mut v = Vec::new();
    let mut t = (lo / step).ceil() * step;
    while t <= hi + step * 1e-9 {
        v.push(if t.abs() < step * 1e-9 { 0.0 } else { t });
        t += step;
    }
    v
}

/// A round upper bound for a linear axis from 0.
pub fn nice_max(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    [1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= v)
        .unwrap_or(10.0 * mag)
}

/// Upper bound and ticks of an axis of counts: whole numbers only.
pub fn count_axis(max: f64) -> (f64, Vec<f64>) {
    if max <= 5.0 {
        let m = max.ceil().max(1.0);
        return (m, (0..=m as i64).map(|v| v as f64).collect());
    }
    let m = nice_max(max);
    (
        m,
        nice_ticks(0.0, m, 5).into_iter().filter(|t| t.fract() == 0.0).collect(),
    )
}

/// Time ticks (microseconds) at a round step, with their labels.
pub fn time_ticks(t0: i64, t1: i64, n: usize) -> Vec<(i64, String)> {
    const S: i64 = 1_000_000;
    let steps = [
        1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172_800, 604_800,
    ];
    let span = (t1 - t0).max(1);
    let step = steps
        .iter()
        .map(|s| s * S)
        .find(|s| span / s <= n as i64)
        .unwrap_or(604_800 * S * (span / (604_800 * S * n as i64) + 1));
    let multi_day = fmt_ts(t0)[..10] != fmt_ts(t1)[..10];
    let mut v = Vec::new();
    let mut t = t0.div_euclid(step) * step;
    if t < t0 {
        t += step;
    }
    while t <= t1 {
        let full = fmt_ts(t);
        let label = if step >= 86_400 * S && span > 300 * 86_400 * S {
            full[..10].to_string()
        } else if step >= 86_400 * S {
            full[5..10].to_string()
        } else if multi_day && (step >= 3600 * S || v.is_empty()) {
            format!("{} {}", &full[5..10], &full[11..16])
        } else if step >= 60 * S {
            full[11..16].to_string()
        } else {
            full[11..19].to_string()
        };
        v.push((t, label));
        t += step;
    }
    v
}

/// An SVG being built: a plot area inside margins, text in the page's font.
pub struct Chart {
    pub w: f64,
    pub h: f64,
    /// Plot area.
    pub x0: f64,
    pub x1: f64,
    pub y0: f64,
    pub y1: f64,
    pub body: String,
    label: String,
}

impl Chart {
    /// A chart `w` × `h` whose plot area leaves `left`, `right` (legend),
    /// `top` and `bottom` margins.
    pub fn new(label: &str, w: f64, h: f64, left: f64, right: f64, top: f64, bottom: f64) -> Chart {
        Chart {
            w,
            h,
            x0: left,
            x1: w - right,
            y0: top,
            y1: h - bottom,
            body: String::new(),
            label: label.to_string(),
        }
    }

    pub fn finish(self) -> String {
        format!(
            "<svg class=\"chart\" role=\"img\" aria-label=\"{}\" viewBox=\"0 0 {} {}\" width=\"{}\" height=\"{}\" xmlns=\"http://www.w3.org/2000/svg\">{}</svg>",
            esc(&self.label),
            self.w,
            self.h,
            self.w,
            self.h,
            self.body
        )
    }

    pub fn text(&mut self, x: f64, y: f64, anchor: &str, class: &str, s: &str) {
        let _ = write!(
            self.body,
            "<text x=\"{x:.1}\" y=\"{y:.1}\" text-anchor=\"{anchor}\" class=\"{class}\">{}</text>",
            esc(s)
        );
    }

    /// X axis with ticks `(pos_px, label)` and a title below.
    pub fn x_axis(&mut self, ticks: &[(f64, String)], title: &str, grid: bool) {
        let _ = write!(
            self.body,
            "<line class=\"axis\" x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\"/>",
            self.x0, self.y1, self.x1, self.y1
        );
        let mut last_end = f64::NEG_INFINITY;
        for (x, l) in ticks {
            if grid {
                let _ = write!(
                    self.body,
                    "<line class=\"grid\" x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\"/>",
                    self.y0, self.y1
                );
            }
            let _ = write!(
                self.body,
                "<line class=\"axis\" x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\"/>",
                self.y1,
                self.y1 + 4.0
            );
            // Skip a label that would overlap the previous one.
            let half = l.chars().count() as f64 * 3.3;
            if x - half > last_end + 4.0 {
                self.text(*x, self.y1 + 16.0, "middle", "tick", l);
                last_end = x + half;
            }
        }
        let (cx, y) = ((self.x0 + self.x1) / 2.0, self.y1 + 34.0);
        self.text(cx, y, "middle", "axtitle", title);
    }

    /// Y axis with ticks and a rotated title at the left.
    pub fn y_axis(&mut self, ticks: &[(f64, String)], title: &str, grid: bool) {
        let _ = write!(
            self.body,
            "<line class=\"axis\" x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\"/>",
            self.x0, self.y0, self.x0, self.y1
        );
        for (y, l) in ticks {
            if grid {
                let _ = write!(
                    self.body,
                    "<line class=\"grid\" x1=\"{:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\"/>",
                    self.x0, self.x1
                );
            }
            let _ = write!(
                self.body,
                "<line class=\"axis\" x1=\"{:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\"/>",
                self.x0 - 4.0,
                self.x0
            );
            self.text(self.x0 - 7.0, y + 4.0, "end", "tick", l);
        }
        let cy = (self.y0 + self.y1) / 2.0;
        let _ = write!(
            self.body,
            "<text class=\"axtitle\" text-anchor=\"middle\" transform=\"translate(14,{cy:.1}) rotate(-90)\">{}</text>",
            esc(title)
        );
    }

    /// A legend in the right margin: swatches and labels, one per line.
    pub fn legend(&mut self, items: &[(String, String, &str)]) {
        // (label, colour, shape: "box", "line", "dot", "ring")
        let x = self.x1 + 18.0;
        let mut y = self.y0 + 4.0;
        let chars = ((self.w - x - 24.0) / 7.4).max(6.0) as usize;
        for (label, col, shape) in items {
            match *shape {
                "line" => {
                    let _ = write!(
                        self.body,
                        "<line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"{col}\" stroke-width=\"2.5\"/>",
                        y + 5.0,
                        x + 14.0,
                        y + 5.0
                    );
                }
                "dash" => {
                    let _ = write!(
                        self.body,
                        "<line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"{col}\" stroke-width=\"1.5\" stroke-dasharray=\"4 3\"/>",
                        y + 5.0,
                        x + 14.0,
                        y + 5.0
                    );
                }
                "dot" => {
                    let _ = write!(
                        self.body,
                        "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"{col}\" stroke=\"#333\" stroke-width=\"0.5\"/>",
                        x + 7.0,
                        y + 5.0
                    );
                }
                "ring" => {
                    let _ = write!(
                        self.body,
                        "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"5\" fill=\"none\" stroke=\"{col}\" stroke-width=\"2\"/>",
                        x + 7.0,
                        y + 5.0
                    );
                }
                "diamond" => {
                    let (cx, cy) = (x + 7.0, y + 5.0);
                    let _ = write!(
                        self.body,
                        "<path d=\"M{cx:.1} {:.1}L{:.1} {cy:.1}L{cx:.1} {:.1}L{:.1} {cy:.1}Z\" fill=\"{col}\" stroke=\"#222\" stroke-width=\"0.7\"/>",
                        cy - 5.0,
                        cx + 5.0,
                        cy + 5.0,
                        cx - 5.0
                    );
                }
                _ => {
                    let _ = write!(
                        self.body,
                        "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"14\" height=\"10\" fill=\"{col}\"/>"
                    );
                }
            }
            let _ = write!(
                self.body,
                "<text x=\"{:.1}\" y=\"{:.1}\" class=\"legend\"><title>{}</title>{}</text>",
                x + 20.0,
                y + 9.5,
                esc(label),
                esc(&clip(label, chars))
            );
            y += 17.0;
        }
    }

    pub fn rect(&mut self, x: f64, y: f64, w: f64, h: f64, fill: &str, title: &str) {
        let _ = write!(
            self.body,
            "<rect class=\"mark\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{fill}\"><title>{}</title></rect>",
            w.max(0.5),
            h.max(0.0),
            esc(title)
        );
    }

    pub fn raw(&mut self, s: &str) {
        self.body.push_str(s);
    }
}

/// Horizontal bars: one per item (label, value, colour, hover text).
pub fn hbars(label: &str, items: &[(String, f64, String, String)], fmt: &dyn Fn(f64) -> String, axis: &str) -> String {
    let rowh = 22.0;
    let h = 50.0 + rowh * items.len() as f64;
    let mut c = Chart::new(label, 520.0, h, 210.0, 56.0, 8.0, 42.0);
    let max = items.iter().map(|i| i.1).fold(0.0, f64::max);
    let (m, ticks) = count_axis(max);
    let s = Scale::lin(0.0, m, c.x0, c.x1);
    let ticks: Vec<(f64, String)> = ticks.into_iter().map(|t| (s.at(t), fmt(t))).collect();
    c.x_axis(&ticks, axis, true);
    for (i, (l, v, col, tip)) in items.iter().enumerate() {
        let y = c.y0 + i as f64 * rowh + 3.0;
        c.text(c.x0 - 8.0, y + 12.0, "end", "tick", &clip(l, 27));
        c.rect(c.x0, y, s.at(*v) - c.x0, rowh - 6.0, col, tip);
        let shown = if v.fract() == 0.0 && v.abs() < 1e15 {
            fmt_int(*v as i64)
        } else {
            fmt(*v)
        };
        c.text(s.at(*v) + 5.0, y + 12.0, "start", "value", &shown);
    }
    c.finish()
}

/// Stacked columns over time bins: `series` (name, colour, value per bin).
pub fn time_columns(
    label: &str,
    t0: i64,
    step: i64,
    nbins: usize,
    series: &[(String, String, Vec<f64>)],
    yaxis: &str,
) -> String {
    let mut c = Chart::new(label, 900.0, 300.0, 64.0, 230.0, 12.0, 46.0);
    let totals: Vec<f64> = (0..nbins)
        .map(|b| series.iter().map(|s| s.2.get(b).copied().unwrap_or(0.0)).sum())
        .collect();
    let (ymax, yticks) = count_axis(totals.iter().copied().fold(0.0, f64::max));
    let ys = Scale::lin(0.0, ymax, c.y1, c.y0);
    let t1 = t0 + step * nbins as i64;
    let xs = Scale::lin(t0 as f64, t1 as f64, c.x0, c.x1);
    let yt: Vec<(f64, String)> = yticks.into_iter().map(|t| (ys.at(t), fmt_num(t))).collect();
    c.y_axis(&yt, yaxis, true);
    let xt: Vec<(f64, String)> = time_ticks(t0, t1, 8)
        .into_iter()
        .map(|(t, l)| (xs.at(t as f64), l))
        .collect();
    c.x_axis(&xt, "time (UTC)", false);
    let slot = (c.x1 - c.x0) / nbins.max(1) as f64;
    let bw = (slot - 1.0).clamp(1.0, 48.0);
    for b in 0..nbins {
        let mut acc = 0.0;
        let x = xs.at((t0 + step * b as i64) as f64) + (slot - bw) / 2.0;
        for (name, col, vals) in series {
            let v = vals.get(b).copied().unwrap_or(0.0);
            if v <= 0.0 {
                continue;
            }
            let ya = ys.at(acc + v);
            let tip = format!(
                "{}: {} in the hour from {}",
                name,
                fmt_num(v),
                fmt_ts(t0 + step * b as i64)
            );
            c.rect(x, ya, bw, ys.at(acc) - ya, col, &tip);
            acc += v;
        }
    }
    let items: Vec<(String, String, &str)> = series
        .iter()
        .map(|(n, col, _)| (n.clone(), col.clone(), "box"))
        .collect();
    c.legend(&items);
    c.finish()
}

/// A named, coloured series of (time in µs, value) points sorted by time.
pub type TimeSeries = (String, String, Vec<(i64, f64)>);

/// Step lines over time.
pub fn time_lines(label: &str, series: &[TimeSeries], yaxis: &str) -> String {
    let mut c = Chart::new(label, 900.0, 300.0, 64.0, 230.0, 12.0, 46.0);
    let t0 = series
        .iter()
        .filter_map(|s| s.2.first().map(|p| p.0))
        .min()
        .unwrap_or(0);
    let t1 = series
        .iter()
        .filter_map(|s| s.2.last().map(|p| p.0))
        .max()
        .unwrap_or(1)
        .max(t0 + 1_000_000);
    let (ymax, yticks) = count_axis(series.iter().flat_map(|s| s.2.iter().map(|p| p.1)).fold(0.0, f64::max));
    let xs = Scale::lin(t0 as f64, t1 as f64, c.x0, c.x1);
    let ys = Scale::lin(0.0, ymax, c.y1, c.y0);
    let yt: Vec<(f64, String)> = yticks.into_iter().map(|t| (ys.at(t), fmt_num(t))).collect();
    c.y_axis(&yt, yaxis, true);
    let xt: Vec<(f64, String)> = time_ticks(t0, t1, 8)
        .into_iter()
        .map(|(t, l)| (xs.at(t as f64), l))
        .collect();
    c.x_axis(&xt, "time (UTC)", false);
    for (name, col, pts) in series {
        if pts.is_empty() {
            continue;
        }
        let mut d = String::new();
        let mut prev_y = ys.at(0.0);
        let _ = write!(d, "M{:.1} {:.1}", xs.at(pts[0].0 as f64), prev_y);
        for (t, v) in pts {
            let x = xs.at(*t as f64);
            let y = ys.at(*v);
            let _ = write!(d, "L{x:.1} {prev_y:.1}L{x:.1} {y:.1}");
            prev_y = y;
        }
        let _ = write!(d, "L{:.1} {prev_y:.1}", c.x1);
        let last = pts.last().map(|p| p.1).unwrap_or(0.0);
        let _ = write!(
            c.body,
            "<path class=\"mark\" d=\"{d}\" fill=\"none\" stroke=\"{col}\" stroke-width=\"2\"><title>{}: {} by {}</title></path>",
            esc(name),
            fmt_num(last),
            fmt_ts(pts.last().map(|p| p.0).unwrap_or(0))
        );
    }
    let items: Vec<(String, String, &str)> = series
        .iter()
        .map(|(n, col, _)| (n.clone(), col.clone(), "line"))
        .collect();
    c.legend(&items);
    c.finish()
}

/// Histogram of positive values on log10 bins (4 per decade).
pub fn log_histogram(label: &str, values: &[f64], fmt: &dyn Fn(f64) -> String, xaxis: &str) -> String {
    let mut c = Chart::new(label, 900.0, 280.0, 64.0, 40.0, 12.0, 46.0);
    let pos: Vec<f64> = values.iter().copied().filter(|v| *v > 0.0 && v.is_finite()).collect();
    let lo = pos.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = pos.iter().copied().fold(0.0, f64::max);
    let xs = Scale::log(lo, hi, c.x0, c.x1);
    let per = 4.0;
    let nb = ((xs.d1 - xs.d0) * per) as usize;
    let mut counts = vec![0u64; nb.max(1)];
    for v in &pos {
        let b = (((v.log10() - xs.d0) * per).floor() as usize).min(counts.len() - 1);
        counts[b] += 1;
    }
    let (ymax, yticks) = count_axis(counts.iter().copied().max().unwrap_or(0) as f64);
    let ys = Scale::lin(0.0, ymax, c.y1, c.y0);
    let yt: Vec<(f64, String)> = yticks.into_iter().map(|t| (ys.at(t), fmt_num(t))).collect();
    c.y_axis(&yt, "peers", true);
    let xt: Vec<(f64, String)> = xs.ticks(8).into_iter().map(|t| (xs.at(t), fmt(t))).collect();
    c.x_axis(&xt, xaxis, false);
    for (b, n) in counts.iter().enumerate() {
        if *n == 0 {
            continue;
        }
        let a = 10f64.powf(xs.d0 + b as f64 / per);
        let z = 10f64.powf(xs.d0 + (b + 1) as f64 / per);
        let (xa, xz) = (xs.at(a), xs.at(z));
        let y = ys.at(*n as f64);
        c.rect(
            xa + 0.5,
            y,
            xz - xa - 1.0,
            c.y1 - y,
            PALETTE[0],
            &format!("{n} peers from {} to {}", fmt(a), fmt(z)),
        );
    }
    c.finish()
}

/// One row of dots per group on a log x axis, with the median marked.
pub fn strips(label: &str, groups: &[(String, Vec<f64>)], fmt: &dyn Fn(f64) -> String, xaxis: &str) -> String {
    let rowh = 26.0;
    let h = 56.0 + rowh * groups.len() as f64;
    let mut c = Chart::new(label, 900.0, h, 190.0, 40.0, 8.0, 46.0);
    let all: Vec<f64> = groups
        .iter()
        .flat_map(|g| g.1.iter().copied())
        .filter(|v| *v > 0.0)
        .collect();
    let lo = all.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = all.iter().copied().fold(0.0, f64::max);
    let xs = Scale::log(lo, hi, c.x0, c.x1);
    let xt: Vec<(f64, String)> = xs.ticks(8).into_iter().map(|t| (xs.at(t), fmt(t))).collect();
    c.x_axis(&xt, xaxis, true);
    for (i, (g, vals)) in groups.iter().enumerate() {
        let yc = c.y0 + i as f64 * rowh + rowh / 2.0;
        c.text(
            c.x0 - 8.0,
            yc + 4.0,
            "end",
            "tick",
            &format!("{} ({})", clip(g, 22), vals.len()),
        );
        let col = color(i);
        for (j, v) in vals.iter().enumerate() {
            if *v <= 0.0 {
                continue;
            }
            // Deterministic jitter so equal rates stay visible.
            let jit = ((j * 7919) % 13) as f64 - 6.0;
            let _ = write!(
                c.body,
                "<circle class=\"mark\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{col}\" fill-opacity=\"0.65\"><title>{}: {}</title></circle>",
                xs.at(*v),
                yc + jit,
                esc(g),
                fmt(*v)
            );
        }
        let mut s: Vec<f64> = vals.iter().copied().filter(|v| *v > 0.0).collect();
        if !s.is_empty() {
            s.sort_by(|a, b| a.total_cmp(b));
            let m = s[s.len() / 2];
            let x = xs.at(m);
            let _ = write!(
                c.body,
                "<line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#111\" stroke-width=\"2.5\"><title>median {}</title></line>",
                yc - 10.0,
                yc + 10.0,
                fmt(m)
            );
        }
    }
    c.finish()
}

/// Sequential colour (viridis, interpolated) for a share in [0, 1].
pub fn seq_color(v: f64) -> String {
    const STOPS: [(f64, f64, f64); 6] = [
        (68.0, 1.0, 84.0),
        (65.0, 68.0, 135.0),
        (42.0, 120.0, 142.0),
        (34.0, 168.0, 132.0),
        (122.0, 209.0, 81.0),
        (253.0, 231.0, 37.0),
    ];
    let v = v.clamp(0.0, 1.0) * (STOPS.len() - 1) as f64;
    let i = (v.floor() as usize).min(STOPS.len() - 2);
    let f = v - i as f64;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    let m = |x: f64, y: f64| (x + (y - x) * f).round() as u8;
    format!("#{:02x}{:02x}{:02x}", m(a.0, b.0), m(a.1, b.1), m(a.2, b.2))
}

/// Heatmap: rows (label, cells over `nbins` time bins from t0 by `step`;
/// None where the peer's progress is not known yet).
pub fn heatmap(label: &str, rows: &[(String, Vec<Option<f64>>, bool)], t0: i64, step: i64, nbins: usize) -> String {
    let rowh = if rows.len() > 40 { 9.0 } else { 14.0 };
    let h = 60.0 + rowh * rows.len() as f64;
    let mut c = Chart::new(label, 900.0, h.max(160.0), 190.0, 150.0, 8.0, 46.0);
    let t1 = t0 + step * nbins as i64;
    let xs = Scale::lin(t0 as f64, t1 as f64, c.x0, c.x1);
    let cw = (c.x1 - c.x0) / nbins.max(1) as f64;
    for (i, (name, cells, confirmed)) in rows.iter().enumerate() {
        let y = c.y0 + i as f64 * rowh;
        if rowh >= 12.0 || i % 2 == 0 {
            let l = if *confirmed {
                format!("✓ {}", clip(name, 26))
            } else {
                clip(name, 28)
            };
            c.text(
                c.x0 - 6.0,
                y + rowh - 3.0,
                "end",
                if rowh >= 12.0 { "tick" } else { "tick small" },
                &l,
            );
        }
        // Runs of cells of one colour are one rectangle (a page of 60 x 90
        // cells per torrent stays small).
        let mut b = 0;
        while b < cells.len() {
            let Some(v) = cells[b] else {
                b += 1;
                continue;
            };
            let col = seq_color(v);
            let mut e = b + 1;
            while e < cells.len() && cells[e].is_some_and(|w| seq_color(w) == col) {
                e += 1;
            }
            let x = c.x0 + b as f64 * cw;
            let tip = if e - b == 1 {
                format!(
                    "{name}: {:.1} % of pieces at {}",
                    v * 100.0,
                    fmt_ts(t0 + step * b as i64)
                )
            } else {
                format!(
                    "{name}: {:.1} % of pieces from {} to {}",
                    v * 100.0,
                    fmt_ts(t0 + step * b as i64),
                    fmt_ts(t0 + step * e as i64)
                )
            };
            let _ = write!(
                c.body,
                "<rect class=\"mark\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.2}\" height=\"{:.1}\" fill=\"{col}\"><title>{}</title></rect>",
                cw * (e - b) as f64 + 0.3,
                rowh - 1.0,
                esc(&tip)
            );
            b = e;
        }
    }
    let xt: Vec<(f64, String)> = time_ticks(t0, t1, 8)
        .into_iter()
        .map(|(t, l)| (xs.at(t as f64), l))
        .collect();
    c.x_axis(&xt, "time (UTC)", false);
    // Colour legend at the right, outside the cells.
    let lx = c.x1 + 24.0;
    let lh = (c.y1 - c.y0 - 56.0).clamp(40.0, 120.0);
    c.text(lx, c.y0 + 8.0, "start", "legend", "share of pieces");
    for k in 0..20 {
        let v = 1.0 - k as f64 / 20.0;
        let _ = write!(
            c.body,
            "<rect x=\"{lx:.1}\" y=\"{:.1}\" width=\"14\" height=\"{:.2}\" fill=\"{}\"/>",
            c.y0 + 16.0 + k as f64 * lh / 20.0,
            lh / 20.0 + 0.3,
            seq_color(v)
        );
    }
    c.text(lx + 20.0, c.y0 + 26.0, "start", "tick", "100 %");
    c.text(lx + 20.0, c.y0 + 16.0 + lh / 2.0 + 4.0, "start", "tick", "50 %");
    c.text(lx + 20.0, c.y0 + 16.0 + lh, "start", "tick", "0 %");
    c.text(lx, c.y0 + 36.0 + lh, "start", "legend", "✓ confirmed");
    c.text(lx, c.y0 + 52.0 + lh, "start", "legend", "blank: not seen yet");
    c.finish()
}

/// One announce series of the audit chart.
pub struct AuditBar {
    pub label: String,
    pub observed: f64,
    pub opaque: f64,
    pub tolerance: f64,
    pub reported: f64,
    pub flagged: bool,
    pub flags: String,
    pub coverage: String,
    /// The torrent's colour (as in the other charts).
    pub color: String,
    pub torrent: String,
}

/// The audit: per series, observed upload, opaque bytes and the tolerance
/// stacked (the band the rule allows), and the reported upload as a marker.
/// `upload_above_wire` is raised exactly when the marker lies right of the
/// band's end (coverage client).
pub fn audit(label: &str, bars: &[AuditBar]) -> String {
    let rowh = 24.0;
    let h = 60.0 + rowh * bars.len() as f64;
    let mut c = Chart::new(label, 900.0, h, 262.0, 200.0, 8.0, 46.0);
    let max = bars
        .iter()
        .map(|b| b.reported.max(b.observed + b.opaque + b.tolerance))
        .fold(0.0, f64::max);
    let xs = Scale::lin(0.0, nice_max(max), c.x0, c.x1);
    let xt: Vec<(f64, String)> = xs.ticks(5).into_iter().map(|t| (xs.at(t), fmt_bytes(t))).collect();
    c.x_axis(&xt, "bytes uploaded in the compared intervals", true);
    for (i, b) in bars.iter().enumerate() {
        let y = c.y0 + i as f64 * rowh + 4.0;
        let bh = rowh - 8.0;
        let cls = if b.flagged { "tick flag" } else { "tick" };
        c.text(c.x0 - 22.0, y + 12.0, "end", cls, &clip(&b.label, 31));
        let _ = write!(
            c.body,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"10\" height=\"10\" fill=\"{}\"><title>{}</title></rect>",
            c.x0 - 16.0,
            y + 3.0,
            b.color,
            esc(&b.torrent)
        );
        let mut x = c.x0;
        for (v, col, what) in [
            (b.observed, PALETTE[0], "observed on the wire"),
            (b.opaque, "#9c755f", "opaque (encrypted or unattributable) sent"),
            (b.tolerance, "#d9e6f2", "tolerance"),
        ] {
            let w = xs.at(v) - c.x0;
            if v > 0.0 {
                let tip = format!("{}: {what} {}", b.label, fmt_bytes(v));
                c.rect(x, y, w, bh, col, &tip);
            }
            x += w;
        }
        // The band's end: the flag threshold.
        let _ = write!(
            c.body,
            "<line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#333\" stroke-width=\"1.2\" stroke-dasharray=\"3 2\"/>",
            y - 2.0,
            y + bh + 2.0
        );
        let rx = xs.at(b.reported);
        let cy = y + bh / 2.0;
        let col = if b.flagged { "#d62728" } else { "#222" };
        let tip = format!(
            "{} ({}): reported {} ; observed {} + opaque {} + tolerance {} = {} ; coverage {} ; flags: {}",
            b.label,
            b.torrent,
            fmt_bytes(b.reported),
            fmt_bytes(b.observed),
            fmt_bytes(b.opaque),
            fmt_bytes(b.tolerance),
            fmt_bytes(b.observed + b.opaque + b.tolerance),
            b.coverage,
            if b.flags.is_empty() { "none" } else { &b.flags }
        );
        let _ = write!(
            c.body,
            "<path class=\"mark\" d=\"M{rx:.1} {:.1}L{:.1} {cy:.1}L{rx:.1} {:.1}L{:.1} {cy:.1}Z\" fill=\"{col}\" stroke=\"#fff\" stroke-width=\"0.8\"><title>{}</title></path>",
            cy - 7.0,
            rx + 7.0,
            cy + 7.0,
            rx - 7.0,
            esc(&tip)
        );
    }
    c.legend(&[
        ("observed (wire)".into(), PALETTE[0].into(), "box"),
        ("opaque bytes sent".into(), "#9c755f".into(), "box"),
        ("tolerance (see above)".into(), "#d9e6f2".into(), "box"),
        ("flag threshold".into(), "#333".into(), "dash"),
        ("reported upload".into(), "#222".into(), "diamond"),
        ("reported, flagged".into(), "#d62728".into(), "diamond"),
    ]);
    c.finish()
}

/// A peer on the map.
pub struct MapPoint {
    pub lat: f64,
    pub lon: f64,
    pub color: String,
    pub confirmed: bool,
    pub title: String,
}

/// Equirectangular world map: country outlines (`outlines`: SVG path data in
/// a 360 × 180 frame, x = lon + 180, y = 90 − lat) and peers as dots;
/// confirmed downloaders as a ring around their dot.
pub fn world_map(label: &str, outlines: &str, points: &[MapPoint], legend: &[(String, String, &str)]) -> String {
    let mut c = Chart::new(label, 900.0, 365.0, 10.0, 200.0, 10.0, 10.0);
    let sx = (c.x1 - c.x0) / 360.0;
    let sy = (c.y1 - c.y0) / 180.0;
    let k = sx.min(sy);
    let ox = c.x0;
    let oy = c.y0 + ((c.y1 - c.y0) - 180.0 * k) / 2.0;
    let _ = write!(
        c.body,
        "<rect x=\"{ox:.1}\" y=\"{oy:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#eef4f8\"/>",
        360.0 * k,
        180.0 * k
    );
    let _ = write!(c.body, "<g transform=\"translate({ox:.1},{oy:.1}) scale({k:.4})\">");
    // Graticule every 30°.
    for i in 1..12 {
        let x = i as f64 * 30.0;
        let _ = write!(
            c.body,
            "<line class=\"grat\" x1=\"{x}\" y1=\"0\" x2=\"{x}\" y2=\"180\"/>"
        );
    }
    for i in 1..6 {
        let y = i as f64 * 30.0;
        let _ = write!(
            c.body,
            "<line class=\"grat\" x1=\"0\" y1=\"{y}\" x2=\"360\" y2=\"{y}\"/>"
        );
    }
    let _ = write!(
        c.body,
        "<path d=\"{outlines}\" fill=\"#fbfbf8\" stroke=\"#9aa5ad\" stroke-width=\"{:.3}\" fill-rule=\"evenodd\"/></g>",
        0.6 / k
    );
    c.w = 900.0;
    c.x1 = ox + 360.0 * k;
    // Non-confirmed first, so rings sit on top.
    let mut ordered: Vec<&MapPoint> = points.iter().filter(|p| !p.confirmed).collect();
    ordered.extend(points.iter().filter(|p| p.confirmed));
    for p in ordered {
        let x = ox + (p.lon.clamp(-180.0, 180.0) + 180.0) * k;
        let y = oy + (90.0 - p.lat.clamp(-90.0, 90.0)) * k;
        if p.confirmed {
            let _ = write!(
                c.body,
                "<g class=\"mark\"><circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"7\" fill=\"none\" stroke=\"#111\" stroke-width=\"2\"/><circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3.5\" fill=\"{}\" stroke=\"#111\" stroke-width=\"0.6\"/><title>{}</title></g>",
                p.color,
                esc(&p.title)
            );
        } else {
            let _ = write!(
                c.body,
                "<circle class=\"mark\" cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3.5\" fill=\"{}\" fill-opacity=\"0.8\" stroke=\"#333\" stroke-width=\"0.5\"><title>{}</title></circle>",
                p.color,
                esc(&p.title)
            );
        }
    }
    c.legend(legend);
    c.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(fmt_ts(1_600_000_000_000_000), "2020-09-13 12:26:40");
        assert_eq!(fmt_bytes(1_234_567.0), "1.23 MB");
        assert_eq!(fmt_bytes(512.0), "512 B");
        assert_eq!(fmt_int(1234567), "1\u{202f}234\u{202f}567");
        assert_eq!(nice_ticks(0.0, 10.0, 5), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(nice_max(730.0), 800.0);
        assert_eq!(esc("<a&\"b'>"), "&lt;a&amp;&quot;b&#39;&gt;");
        assert_eq!(seq_color(0.0), "#440154");
        assert_eq!(seq_color(1.0), "#fde725");
    }

    #[test]
    fn count_axes_tick_whole_numbers() {
        assert_eq!(count_axis(2.0), (2.0, vec![0.0, 1.0, 2.0]));
        assert_eq!(count_axis(0.0), (1.0, vec![0.0, 1.0]));
        assert_eq!(count_axis(7.0).0, 8.0);
        assert!(count_axis(7.0).1.iter().all(|t| t.fract() == 0.0));
    }

    #[test]
    fn time_ticks_are_round_and_inside() {
        let t0 = 1_600_000_000_000_000; // 12:26:40
        let t = time_ticks(t0, t0 + 3_600_000_000, 8);
        assert_eq!(t.first().map(|x| x.1.as_str()), Some("12:30"));
        assert!(t.iter().all(|(x, _)| *x >= t0 && *x <= t0 + 3_600_000_000));
        assert!(t.len() <= 9 && t.len() >= 4, "{t:?}");
    }

    #[test]
    fn log_scale_covers_whole_decades() {
        let s = Scale::log(3.0, 4000.0, 0.0, 100.0);
        assert_eq!((s.d0, s.d1), (0.0, 4.0));
        assert_eq!(s.ticks(8), vec![1.0, 10.0, 100.0, 1000.0, 10000.0]);
        assert!((s.at(100.0) - 50.0).abs() < 1e-9);
    }
}
