//! Small SVG charts a person reads at a glance: grouped horizontal bars
//! (`splitvm paths`, `splitvm report --svg`) and stacked timelines. Plain
//! SVG 1.1 text, no script, no external font: it opens in any browser.

use std::fmt::Write;

/// Colours of the series, in order (colour-blind-safe: Okabe-Ito).
const COLOURS: [&str; 6] = [
    "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00",
];

/// Escape text for SVG.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One bar: its value, and an optional whisker (e.g. a p99) and label.
#[derive(Debug, Clone)]
pub struct Bar {
    pub value: f64,
    pub whisker: Option<f64>,
    pub label: String,
}

/// A panel of horizontal bars: one group per row label, one bar per
/// series in each group.
#[derive(Debug, Clone)]
pub struct Panel {
    pub title: String,
    /// What the axis counts ("exits per interrupt", "ns").
    pub unit: String,
    /// A logarithmic axis (for latencies, whose tails span decades).
    pub log: bool,
    pub groups: Vec<(String, Vec<Bar>)>,
}

/// Round `v` up to a 1, 2 or 5 times a power of ten.
fn nice(v: f64) -> f64 {
    if !(v.is_finite() && v > 0.0) {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|x| *x >= v)
        .unwrap_or(10.0 * p)
}

/// Panels side by side under one title, with the series' legend.
pub fn bar_chart(title: &str, subtitle: &str, series: &[String], panels: &[Panel]) -> String {
    const PANEL_W: f64 = 330.0;
    /// Room right of a panel's bars for their labels.
    const LABEL_ROOM: f64 = 130.0;
    // Room for the longest row label (about 6.5 px a character at 11 px).
    let longest = panels
        .iter()
        .flat_map(|p| p.groups.iter().map(|(l, _)| l.chars().count()))
        .max()
        .unwrap_or(0);
    let label_w = (longest as f64 * 6.5 + 16.0).max(110.0);
    const BAR_H: f64 = 14.0;
    const GAP: f64 = 10.0;
    let groups = panels.iter().map(|p| p.groups.len()).max().unwrap_or(0);
    let group_h = BAR_H * series.len().max(1) as f64 + GAP;
    let top = 78.0;
    let height = top + group_h * groups as f64 + 40.0;
    let width = label_w + (PANEL_W + LABEL_ROOM) * panels.len() as f64 + 20.0;
    let mut s = String::new();
    open(&mut s, width, height, title, subtitle);
    for (i, name) in series.iter().enumerate() {
        let x = 10.0 + 150.0 * i as f64;
        let _ = writeln!(
            s,
            r##"<rect x="{x:.0}" y="44" width="12" height="12" fill="{}"/><text x="{:.0}" y="54">{}</text>"##,
            COLOURS[i % COLOURS.len()],
            x + 16.0,
            esc(name)
        );
    }
    for (pi, p) in panels.iter().enumerate() {
        let x0 = label_w + (PANEL_W + LABEL_ROOM) * pi as f64;
        let values = || {
            p.groups
                .iter()
                .flat_map(|(_, bars)| bars.iter().flat_map(|b| [Some(b.value), b.whisker]))
                .flatten()
                .filter(|v| v.is_finite())
        };
        let max = values().fold(0.0f64, f64::max);
        let scale_max = nice(max);
        // Log axis: whole decades from below the smallest value.
        let lo = values()
            .filter(|v| *v > 0.0)
            .fold(f64::INFINITY, f64::min)
            .log10()
            .floor();
        let (lo, hi) = if lo.is_finite() {
            (lo, scale_max.log10().ceil().max(lo + 1.0))
        } else {
            (0.0, 1.0)
        };
        let sx = |v: f64| {
            let f = if p.log {
                (v.max(10f64.powf(lo)).log10() - lo) / (hi - lo)
            } else {
                v / scale_max
            };
            x0 + f.clamp(0.0, 1.0) * PANEL_W
        };
        let ticks: Vec<f64> = if p.log {
            (lo as i32..=hi as i32).map(|e| 10f64.powi(e)).collect()
        } else {
            let step = nice(scale_max / 5.0);
            (0..)
                .map(|i| step * i as f64)
                .take_while(|v| *v <= scale_max * 1.0001)
                .collect()
        };
        let _ = writeln!(
            s,
            r##"<text x="{x0:.0}" y="{:.0}" font-weight="bold">{} ({})</text>"##,
            top - 6.0,
            esc(&p.title),
            esc(&p.unit)
        );
        for &v in &ticks {
            let x = sx(v);
            let y1 = top + group_h * groups as f64;
            let _ = writeln!(
                s,
                r##"<line x1="{x:.1}" y1="{top:.0}" x2="{x:.1}" y2="{y1:.0}" stroke="#ddd"/><text x="{x:.1}" y="{:.0}" text-anchor="middle" fill="#444">{}</text>"##,
                y1 + 14.0,
                fmt_tick(v)
            );
        }
        for (gi, (label, bars)) in p.groups.iter().enumerate() {
            let gy = top + group_h * gi as f64;
            if pi == 0 {
                let _ = writeln!(
                    s,
                    r##"<text x="{:.0}" y="{:.1}" text-anchor="end">{}</text>"##,
                    label_w - 8.0,
                    gy + group_h / 2.0,
                    esc(label)
                );
            }
            for (bi, b) in bars.iter().enumerate() {
                let y = gy + BAR_H * bi as f64;
                let w = sx(b.value) - x0;
                let _ = writeln!(
                    s,
                    r##"<rect x="{x0:.1}" y="{y:.1}" width="{w:.1}" height="{:.1}" fill="{}"><title>{}</title></rect>"##,
                    BAR_H - 2.0,
                    COLOURS[bi % COLOURS.len()],
                    esc(&b.label)
                );
                if let Some(wv) = b.whisker {
                    let wx = sx(wv);
                    let _ = writeln!(
                        s,
                        r##"<line x1="{:.1}" y1="{:.1}" x2="{wx:.1}" y2="{:.1}" stroke="black"/><line x1="{wx:.1}" y1="{:.1}" x2="{wx:.1}" y2="{:.1}" stroke="black"/>"##,
                        sx(b.value),
                        y + BAR_H / 2.0 - 1.0,
                        y + BAR_H / 2.0 - 1.0,
                        y + 2.0,
                        y + BAR_H - 4.0
                    );
                }
                let _ = writeln!(
                    s,
                    r##"<text x="{:.1}" y="{:.1}" fill="#222">{}</text>"##,
                    sx(b.whisker.unwrap_or(b.value).max(b.value)) + 4.0,
                    y + BAR_H - 4.0,
                    esc(&b.label)
                );
            }
        }
    }
    s.push_str("</svg>\n");
    s
}

fn fmt_tick(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.0}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Stacked areas over time: `series` names, `xs` the sample times (s),
/// `ys[i][t]` the rate of series i at sample t (per second).
pub fn timeline(
    title: &str,
    subtitle: &str,
    series: &[String],
    xs: &[f64],
    ys: &[Vec<f64>],
) -> String {
    const W: f64 = 760.0;
    const H: f64 = 300.0;
    let (left, top) = (70.0, 80.0);
    let width = left + W + 200.0;
    let height = top + H + 50.0;
    let n = xs.len();
    let totals: Vec<f64> = (0..n).map(|t| ys.iter().map(|y| y[t]).sum()).collect();
    let ymax = nice(totals.iter().copied().fold(0.0, f64::max));
    let xmax = xs.last().copied().unwrap_or(1.0).max(1e-9);
    let px = |x: f64| left + x / xmax * W;
    let py = |y: f64| top + H - (y / ymax).clamp(0.0, 1.0) * H;
    let mut s = String::new();
    open(&mut s, width, height, title, subtitle);
    for t in 0..=4 {
        let v = ymax * t as f64 / 4.0;
        let y = py(v);
        let _ = writeln!(
            s,
            r##"<line x1="{left:.0}" y1="{y:.1}" x2="{:.0}" y2="{y:.1}" stroke="#ddd"/><text x="{:.0}" y="{:.1}" text-anchor="end" fill="#444">{}/s</text>"##,
            left + W,
            left - 4.0,
            y + 4.0,
            fmt_tick(v)
        );
    }
    for t in 0..=5 {
        let v = xmax * t as f64 / 5.0;
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.0}" text-anchor="middle" fill="#444">{v:.1} s</text>"##,
            px(v),
            top + H + 16.0
        );
    }
    let mut base = vec![0.0; n];
    for (i, name) in series.iter().enumerate() {
        let upper: Vec<f64> = (0..n).map(|t| base[t] + ys[i][t]).collect();
        let mut d = String::new();
        for t in 0..n {
            let _ = write!(
                d,
                "{}{:.1},{:.1} ",
                if t == 0 { "M" } else { "L" },
                px(xs[t]),
                py(upper[t])
            );
        }
        for t in (0..n).rev() {
            let _ = write!(d, "L{:.1},{:.1} ", px(xs[t]), py(base[t]));
        }
        d.push('Z');
        let c = COLOURS[i % COLOURS.len()];
        let _ = writeln!(
            s,
            r##"<path d="{d}" fill="{c}" fill-opacity="0.85"><title>{}</title></path>
<rect x="{:.0}" y="{:.0}" width="12" height="12" fill="{c}"/><text x="{:.0}" y="{:.0}">{}</text>"##,
            esc(name),
            left + W + 14.0,
            top + 18.0 * i as f64,
            left + W + 30.0,
            top + 18.0 * i as f64 + 10.0,
            esc(name)
        );
        base = upper;
    }
    s.push_str("</svg>\n");
    s
}

/// The opening of every chart: the `<svg>` element, a white page, the
/// title and the subtitle.
fn open(s: &mut String, width: f64, height: f64, title: &str, subtitle: &str) {
    use std::fmt::Write;
    let _ = writeln!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="11">
<rect width="100%" height="100%" fill="white"/>
<text x="10" y="20" font-size="15" font-weight="bold">{}</text>
<text x="10" y="36" fill="#444">{}</text>"##,
        esc(title),
        esc(subtitle)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_end_on_round_numbers() {
        assert_eq!(nice(3.2), 5.0);
        assert_eq!(nice(0.9), 1.0);
        assert_eq!(nice(1234.0), 2000.0);
        assert_eq!(nice(0.0), 1.0);
    }

    #[test]
    fn a_bar_chart_is_one_well_formed_svg_with_every_label_escaped() {
        let p = Panel {
            title: "exits".into(),
            unit: "per interrupt".into(),
            log: false,
            groups: vec![(
                "a<b".into(),
                vec![Bar {
                    value: 1.5,
                    whisker: Some(2.0),
                    label: "1.50 & more".into(),
                }],
            )],
        };
        let s = bar_chart("t", "s", &["split".into()], &[p]);
        assert!(s.starts_with("<svg ") && s.trim_end().ends_with("</svg>"));
        assert!(s.contains("a&lt;b") && s.contains("1.50 &amp; more"));
        assert!(!s.contains("a<b"));
    }
}
