//! The logger behind the devices' `log::warn!`s: one line each on stderr
//! (`splitvm: warning: ...`), at most [`PER_SITE`] from one place in the
//! code, then a single note that further ones are suppressed, so a guest
//! repeating a bad access cannot flood the host's log.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;

use log::{Level, LevelFilter, Log, Metadata, Record};

/// Messages printed from one call site before it is silenced.
pub const PER_SITE: u32 = 5;

struct Logger {
    level: LevelFilter,
    sites: Mutex<HashMap<(String, u32), u32>>,
}

/// The text of `--log-level` values.
pub fn parse_level(s: &str) -> Result<LevelFilter, String> {
    s.parse::<LevelFilter>()
        .map_err(|_| format!("'{s}' is not a log level (off, error, warn, info, debug, trace)"))
}

/// Install the logger (once per process; later calls do nothing).
pub fn install(level: LevelFilter) {
    let logger = Box::new(Logger {
        level,
        sites: Mutex::new(HashMap::new()),
    });
    if log::set_boxed_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}

fn label(level: Level) -> &'static str {
    match level {
        Level::Error => "error",
        Level::Warn => "warning",
        Level::Info => "info",
        Level::Debug => "debug",
        Level::Trace => "trace",
    }
}

impl Logger {
    /// The line to print for this record, if any (counts the call site).
    fn line(&self, r: &Record) -> Option<String> {
        let site = (
            r.file().unwrap_or_else(|| r.target()).to_string(),
            r.line().unwrap_or(0),
        );
        let n = {
            let mut sites = devices::sync::lock(&self.sites);
            let n = sites.entry(site).or_insert(0);
            *n = n.saturating_add(1);
            *n
        };
        if n <= PER_SITE {
            Some(format!("splitvm: {}: {}", label(r.level()), r.args()))
        } else if n == PER_SITE + 1 {
            Some(format!(
                "splitvm: {}: (further messages like the last from {}:{} suppressed)",
                label(r.level()),
                r.file().unwrap_or("?"),
                r.line().unwrap_or(0)
            ))
        } else {
            None
        }
    }
}

impl Log for Logger {
    fn enabled(&self, m: &Metadata) -> bool {
        m.level() <= self.level
    }

    fn log(&self, r: &Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        if let Some(l) = self.line(r) {
            let _ = writeln!(std::io::stderr().lock(), "{l}");
        }
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_call_site_prints_five_lines_then_one_note() {
        let l = Logger {
            level: LevelFilter::Warn,
            sites: Mutex::new(HashMap::new()),
        };
        let lines: Vec<String> = (0..100)
            .filter_map(|i| {
                l.line(
                    &Record::builder()
                        .args(format_args!("bad access {i}"))
                        .level(Level::Warn)
                        .file(Some("devices/src/x.rs"))
                        .line(Some(7))
                        .build(),
                )
            })
            .collect();
        assert_eq!(lines.len(), 6);
        assert_eq!(lines[0], "splitvm: warning: bad access 0");
        assert!(lines[5].contains("suppressed"), "{}", lines[5]);
        // Another call site still prints.
        let other = Record::builder()
            .args(format_args!("x"))
            .level(Level::Warn)
            .file(Some("devices/src/y.rs"))
            .line(Some(1))
            .build();
        assert!(l.line(&other).is_some());
    }

    #[test]
    fn log_levels_parse_by_name() {
        assert_eq!(parse_level("warn"), Ok(LevelFilter::Warn));
        assert_eq!(parse_level("off"), Ok(LevelFilter::Off));
        assert!(parse_level("loud").is_err());
    }
}
