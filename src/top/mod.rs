//! `splitvm top SOCKET`: a live view of a running VM's exits, as kvm_stat
//! shows KVM's, but by device and by interrupt source, from its API socket
//! (docs/api.md, docs/top.md). Modes as kvm_stat's: a terminal view
//! (ratatui), `-1` one interval as plain text, `-l`/`-L FILE` one line per
//! interval (`-c`: CSV).

mod client;
pub mod rates;
mod view;

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use regex::Regex;

use client::Client;
use rates::{event_rows, source_rows, EventRow, Sample, SourceRow};

#[derive(Args, Debug)]
pub struct TopArgs {
    /// The VM's API socket (`splitvm run --api-socket PATH`).
    #[arg(value_name = "SOCKET")]
    pub socket: PathBuf,
    /// Seconds between refreshes.
    #[arg(short = 's', long = "set", value_name = "SECS", default_value_t = 1.0, value_parser = parse_secs)]
    pub interval: f64,
    /// Show only rows whose name matches this regular expression.
    #[arg(short = 'f', long = "fields", value_name = "REGEX")]
    pub filter: Option<String>,
    /// Batch mode: one interval, printed as plain text, then exit.
    #[arg(short = '1', long = "once")]
    pub once: bool,
    /// Log mode: one line per interval on stdout (a header every 20 lines).
    #[arg(short = 'l', long = "log")]
    pub log: bool,
    /// Log mode into FILE (appended; the header once).
    #[arg(short = 'L', long = "log-to-file", value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    /// Log mode as CSV (with -l or -L).
    #[arg(short = 'c', long = "csv")]
    pub csv: bool,
    /// Stop after N intervals in log mode (default: until the VM ends).
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
}

/// A `-f` (or `f` key) filter, its error in one line.
pub fn compile_filter(f: &str) -> Result<Regex, String> {
    Regex::new(f).map_err(|e| {
        // regex's message draws the pattern over several lines.
        let why = e.to_string();
        let why = why.lines().last().unwrap_or("").trim().to_string();
        format!("-f '{f}' is not a regular expression ({why})")
    })
}

fn parse_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.1..=3600.0).contains(&v) => Ok(v),
        _ => Err(format!("'{s}' is not an interval in seconds (0.1 to 3600)")),
    }
}

/// What is shown and how: filter, sort, drill-down.
pub struct Shape {
    pub filter: Option<Regex>,
    /// Sort column of the exits table (0 name, 1 total, 2 rate) and of the
    /// sources table (0 name .. 6 total exits); descending unless reversed.
    pub sort_events: usize,
    pub sort_sources: usize,
    pub reverse: bool,
    /// `x`: each source's vectors under it.
    pub drill: bool,
}

impl Shape {
    fn keep(&self, name: &str) -> bool {
        self.filter.as_ref().is_none_or(|f| f.is_match(name))
    }

    /// The rows shown, filtered and sorted.
    pub fn apply(
        &self,
        mut events: Vec<EventRow>,
        mut sources: Vec<SourceRow>,
    ) -> (Vec<EventRow>, Vec<SourceRow>) {
        events.retain(|r| self.keep(&r.name));
        sources.retain(|r| self.keep(&r.name));
        let f = |x: Option<f64>| x.unwrap_or(-1.0);
        let ord = |a: f64, b: f64| b.partial_cmp(&a).unwrap_or(std::cmp::Ordering::Equal);
        match self.sort_events {
            0 => events.sort_by(|a, b| a.name.cmp(&b.name)),
            1 => events.sort_by_key(|r| std::cmp::Reverse(r.total)),
            _ => events.sort_by(|a, b| ord(f(a.rate), f(b.rate)).then(b.total.cmp(&a.total))),
        }
        let key = |r: &SourceRow| match self.sort_sources {
            1 => f(r.raised),
            2 => f(r.delivered),
            3 => f(r.eoi_exits),
            4 => f(r.register_exits),
            5 => f(r.exits_per_irq),
            _ => r.total_exits.map_or(-1.0, |t| t as f64),
        };
        if self.sort_sources == 0 {
            sources.sort_by(|a, b| a.name.cmp(&b.name));
        } else {
            sources.sort_by(|a, b| ord(key(a), key(b)));
        }
        if self.reverse {
            events.reverse();
            sources.reverse();
        }
        (events, sources)
    }
}

pub const EVENT_COLUMNS: [&str; 3] = ["Event", "Total", "Rate/s"];
pub const SOURCE_COLUMNS: [&str; 7] = [
    "Source",
    "Raised/s",
    "Deliv/s",
    "EOI ex/s",
    "Reg ex/s",
    "Exits/irq",
    "Total exits",
];

pub fn fmt_rate(r: Option<f64>) -> String {
    match r {
        None => "-".into(),
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.1}"),
    }
}

/// `splitvm top`: returns the process status.
pub fn run(args: &TopArgs) -> Result<i32, String> {
    let filter = match &args.filter {
        Some(f) => Some(compile_filter(f)?),
        None => None,
    };
    if args.csv && !args.log && args.log_file.is_none() {
        return Err("-c needs log mode (-l or -L FILE)".into());
    }
    let client = Client::new(&args.socket)?;
    let info = client.get("/api/v1/vm.info")?;
    let shape = Shape {
        filter,
        sort_events: 2,
        sort_sources: 2,
        reverse: false,
        drill: false,
    };
    let interval = Duration::from_secs_f64(args.interval);
    if args.once {
        return once(&client, interval, &shape);
    }
    if args.log || args.log_file.is_some() {
        return log_mode(&client, args, interval, &shape, &info);
    }
    view::run(&client, &args.socket, interval, shape, &info)
}

/// Two readings `interval` apart.
fn interval_rows(
    client: &Client,
    prev: &Sample,
    interval: Duration,
) -> Result<(Sample, Vec<EventRow>, Vec<SourceRow>), String> {
    std::thread::sleep(interval);
    let cur = Sample::from_report(&client.get("/api/v1/vm.counters")?);
    let (e, s) = (event_rows(prev, &cur), source_rows(prev, &cur));
    Ok((cur, e, s))
}

/// `-1`: one interval, plain text (the rows with a count).
fn once(client: &Client, interval: Duration, shape: &Shape) -> Result<i32, String> {
    let first = Sample::from_report(&client.get("/api/v1/vm.counters")?);
    let (cur, e, s) = interval_rows(client, &first, interval)?;
    let (e, s) = shape.apply(e, s);
    let mut out = String::new();
    out.push_str(&format!(
        "state {}, wall {:.1} s, paused {:.1} s, interval {:.1} s\n\n",
        cur.state,
        cur.wall_ms as f64 / 1e3,
        cur.paused_ms as f64 / 1e3,
        interval.as_secs_f64()
    ));
    out.push_str(&format!(
        "{:<40} {:>12} {:>10}\n",
        EVENT_COLUMNS[0], EVENT_COLUMNS[1], EVENT_COLUMNS[2]
    ));
    for r in e.iter().filter(|r| r.total > 0) {
        out.push_str(&format!(
            "{:<40} {:>12} {:>10}\n",
            r.name,
            r.total,
            fmt_rate(r.rate)
        ));
    }
    out.push('\n');
    out.push_str(&format!("{:<28}", SOURCE_COLUMNS[0]));
    for c in &SOURCE_COLUMNS[1..] {
        out.push_str(&format!(" {c:>11}"));
    }
    out.push('\n');
    for r in &s {
        out.push_str(&format!(
            "{:<28} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11}\n",
            r.name,
            fmt_rate(r.raised),
            fmt_rate(r.delivered),
            fmt_rate(r.eoi_exits),
            fmt_rate(r.register_exits),
            r.exits_per_irq.map_or("-".into(), |x| format!("{x:.2}")),
            r.total_exits.map_or("-".into(), |t| t.to_string())
        ));
    }
    print!("{out}");
    Ok(0)
}

/// The log columns: every exit kind, device, vCPU and KVM counter the VM
/// has, and each source's deliveries and exits, filtered once at start.
fn log_fields(info: &serde_json::Value, first: &Sample, shape: &Shape) -> Vec<String> {
    let mut f: Vec<String> = crate::counters::EXIT_KINDS
        .iter()
        .map(|k| format!("exit {}", k.name()))
        .collect();
    for (bus, key) in [("pio", "pio"), ("mmio", "mmio")] {
        for d in info["devices"][key].as_array().into_iter().flatten() {
            f.push(format!("{bus} {}", d.as_str().unwrap_or("?")));
        }
    }
    for v in 0..info["config"]["cpus"]["boot_vcpus"].as_u64().unwrap_or(1) {
        f.push(format!("vcpu {v}"));
    }
    f.extend(
        first
            .events
            .keys()
            .filter(|k| k.starts_with("kvm "))
            .cloned(),
    );
    for s in &first.sources {
        f.push(format!("irq {}", s.name));
        f.push(format!("irq-exits {}", s.name));
    }
    f.sort();
    f.dedup();
    f.retain(|n| shape.keep(n));
    f
}

fn log_mode(
    client: &Client,
    args: &TopArgs,
    interval: Duration,
    shape: &Shape,
    info: &serde_json::Value,
) -> Result<i32, String> {
    let mut out: Box<dyn Write> = match &args.log_file {
        Some(p) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| format!("-L {}: {e}", p.display()))?,
        ),
        None => Box::new(std::io::stdout()),
    };
    let mut prev = Sample::from_report(&client.get("/api/v1/vm.counters")?);
    let fields = log_fields(info, &prev, shape);
    let started = Instant::now();
    let mut lines = 0u64;
    loop {
        let (cur, events, sources) = match interval_rows(client, &prev, interval) {
            Ok(x) => x,
            // The VM ended: its socket went with it.
            Err(_) if !args.socket.exists() => return Ok(0),
            Err(e) => return Err(e),
        };
        let value = |name: &str| -> Option<f64> {
            if let Some(n) = name.strip_prefix("irq-exits ") {
                let s = sources.iter().find(|s| s.name == n)?;
                match (s.eoi_exits, s.register_exits) {
                    (None, None) => None,
                    (a, b) => Some(a.unwrap_or(0.0) + b.unwrap_or(0.0)),
                }
            } else if let Some(n) = name.strip_prefix("irq ") {
                sources.iter().find(|s| s.name == n)?.delivered
            } else {
                match events.iter().find(|r| r.name == name) {
                    Some(r) => r.rate,
                    None => cur.running_secs_since(&prev).map(|_| 0.0),
                }
            }
        };
        let header = if args.csv {
            lines == 0
        } else {
            lines % 20 == 0 && (args.log_file.is_none() || lines == 0)
        };
        let sep = if args.csv { "," } else { " " };
        if header {
            let mut h = vec!["timestamp".to_string()];
            h.extend(fields.iter().cloned());
            let h: Vec<String> = if args.csv {
                h
            } else {
                h.iter().map(|n| format!("{n:>12}")).collect()
            };
            writeln!(out, "{}", h.join(sep)).map_err(|e| e.to_string())?;
        }
        let t = format!("{:.3}", started.elapsed().as_secs_f64());
        let mut row = vec![if args.csv { t } else { format!("{t:>12}") }];
        for f in &fields {
            let v = match value(f) {
                Some(v) => format!("{v:.1}"),
                None if args.csv => String::new(),
                None => "-".into(),
            };
            row.push(if args.csv { v } else { format!("{v:>12}") });
        }
        writeln!(out, "{}", row.join(sep)).map_err(|e| e.to_string())?;
        out.flush().map_err(|e| e.to_string())?;
        lines += 1;
        prev = cur;
        if args.count.is_some_and(|n| lines >= n) {
            return Ok(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(name: &str, total: u64, rate: Option<f64>) -> EventRow {
        EventRow {
            name: name.into(),
            total,
            rate,
        }
    }

    #[test]
    fn rows_are_filtered_by_regex_and_sorted_by_the_chosen_column() {
        let mut shape = Shape {
            filter: Some(Regex::new("^pio").unwrap()),
            sort_events: 2,
            sort_sources: 2,
            reverse: false,
            drill: false,
        };
        let rows = vec![
            ev("pio serial", 10, Some(1.0)),
            ev("exit io", 99, Some(50.0)),
            ev("pio pit", 5, Some(3.0)),
            ev("pio pic", 50, None),
        ];
        let (e, _) = shape.apply(rows.clone(), vec![]);
        let names: Vec<&str> = e.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["pio pit", "pio serial", "pio pic"]);
        shape.sort_events = 1;
        shape.reverse = true;
        let (e, _) = shape.apply(rows, vec![]);
        let names: Vec<&str> = e.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["pio pit", "pio serial", "pio pic"]);
    }
}
