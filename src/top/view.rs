//! `splitvm top`'s terminal view (ratatui on crossterm): a header, the
//! interrupt sources table, the exits table, a footer with the keys.
//! Keys as kvm_stat's: q quit, s interval, f filter, p pause the display,
//! x drill into each source's vectors, o reverse the sort; Tab picks the
//! table, < and > its sort column.

use std::path::Path;
use std::time::{Duration, Instant};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Paragraph, Row, Table};
use ratatui::Frame;

use super::client::Client;
use super::rates::{event_rows, source_rows, EventRow, Sample, SourceRow};
use super::{fmt_rate, Shape, EVENT_COLUMNS, SOURCE_COLUMNS};

/// A line being typed after `s` or `f`.
enum Prompt {
    None,
    Interval(String),
    Filter(String),
}

struct State {
    shape: Shape,
    interval: Duration,
    paused_display: bool,
    /// 0: sources table, 1: exits table.
    focus: usize,
    prompt: Prompt,
    message: String,
    prev: Sample,
    cur: Sample,
    events: Vec<EventRow>,
    sources: Vec<SourceRow>,
}

pub fn run(
    client: &Client,
    socket: &Path,
    interval: Duration,
    shape: Shape,
    info: &serde_json::Value,
) -> Result<i32, String> {
    let first = Sample::from_report(&client.get("/api/v1/vm.counters")?);
    let title = format!(
        "splitvm top {} | {} vCPU(s), {} MiB, irqchip {}",
        socket.display(),
        info["config"]["cpus"]["boot_vcpus"],
        info["config"]["memory"]["size"].as_u64().unwrap_or(0) >> 20,
        info["config"]["irqchip"].as_str().unwrap_or("?"),
    );
    let mut st = State {
        shape,
        interval,
        paused_display: false,
        focus: 0,
        prompt: Prompt::None,
        message: String::new(),
        prev: first.clone(),
        cur: first,
        events: Vec::new(),
        sources: Vec::new(),
    };
    let mut terminal = ratatui::init();
    let result = (|| -> Result<i32, String> {
        let mut next = Instant::now();
        loop {
            if Instant::now() >= next {
                next = Instant::now() + st.interval;
                match client.get("/api/v1/vm.counters") {
                    Ok(r) => {
                        st.prev = std::mem::take(&mut st.cur);
                        st.cur = Sample::from_report(&r);
                        if !st.paused_display {
                            st.events = event_rows(&st.prev, &st.cur);
                            st.sources = source_rows(&st.prev, &st.cur);
                        }
                    }
                    Err(_) if !socket.exists() => {
                        return Ok(0);
                    }
                    Err(e) => st.message = e,
                }
            }
            terminal
                .draw(|f| draw(f, &title, &st))
                .map_err(|e| e.to_string())?;
            let wait = next.saturating_duration_since(Instant::now());
            if event::poll(wait.min(Duration::from_millis(200))).map_err(|e| e.to_string())? {
                if let Event::Key(k) = event::read().map_err(|e| e.to_string())? {
                    if k.kind == KeyEventKind::Press && key(&mut st, k.code) {
                        return Ok(0);
                    }
                }
            }
        }
    })();
    ratatui::restore();
    if result.is_ok() && !socket.exists() {
        eprintln!("splitvm top: the VM ended (its API socket is gone)");
    }
    result
}

/// Handle a key; true to quit.
fn key(st: &mut State, code: KeyCode) -> bool {
    match &mut st.prompt {
        Prompt::Interval(s) | Prompt::Filter(s) => {
            match code {
                KeyCode::Char(c) => s.push(c),
                KeyCode::Backspace => {
                    s.pop();
                }
                KeyCode::Esc => st.prompt = Prompt::None,
                KeyCode::Enter => {
                    let p = std::mem::replace(&mut st.prompt, Prompt::None);
                    st.message = match p {
                        Prompt::Interval(s) => match super::parse_secs(s.trim()) {
                            Ok(v) => {
                                st.interval = Duration::from_secs_f64(v);
                                String::new()
                            }
                            Err(e) => e,
                        },
                        Prompt::Filter(s) if s.is_empty() => {
                            st.shape.filter = None;
                            String::new()
                        }
                        Prompt::Filter(s) => match super::compile_filter(&s) {
                            Ok(r) => {
                                st.shape.filter = Some(r);
                                String::new()
                            }
                            Err(e) => e,
                        },
                        Prompt::None => String::new(),
                    };
                }
                _ => {}
            }
            return false;
        }
        Prompt::None => {}
    }
    match code {
        KeyCode::Char('q') | KeyCode::Esc => return true,
        KeyCode::Char('s') => st.prompt = Prompt::Interval(String::new()),
        KeyCode::Char('f') => st.prompt = Prompt::Filter(String::new()),
        KeyCode::Char('p') => st.paused_display = !st.paused_display,
        KeyCode::Char('x') => st.shape.drill = !st.shape.drill,
        KeyCode::Char('o') => st.shape.reverse = !st.shape.reverse,
        KeyCode::Tab => st.focus = 1 - st.focus,
        KeyCode::Char('<') | KeyCode::Char('>') | KeyCode::Left | KeyCode::Right => {
            let right = matches!(code, KeyCode::Char('>') | KeyCode::Right);
            let (col, n) = if st.focus == 0 {
                (&mut st.shape.sort_sources, SOURCE_COLUMNS.len())
            } else {
                (&mut st.shape.sort_events, EVENT_COLUMNS.len())
            };
            *col = if right {
                (*col + 1) % n
            } else {
                (*col + n - 1) % n
            };
        }
        _ => {}
    }
    false
}

fn header_cells(cols: &[&str], sorted: usize, reverse: bool, focused: bool) -> Row<'static> {
    Row::new(cols.iter().enumerate().map(|(i, c)| {
        if i == sorted && focused {
            format!("{c}{}", if reverse { "^" } else { "v" })
        } else {
            c.to_string()
        }
    }))
    .style(Style::new().add_modifier(Modifier::BOLD | Modifier::REVERSED))
}

fn draw(f: &mut Frame, title: &str, st: &State) {
    let (events, sources) = st.shape.apply(st.events.clone(), st.sources.clone());
    let [head, src, ev, foot] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Percentage(45),
        Constraint::Min(4),
        Constraint::Length(1),
    ])
    .areas(f.area());
    let ran = st.cur.running_secs_since(&st.prev);
    let status = format!(
        "state {} | wall {:.1} s, paused {:.1} s | interval {:.1} s{}{} | sort {} {}",
        st.cur.state,
        st.cur.wall_ms as f64 / 1e3,
        st.cur.paused_ms as f64 / 1e3,
        st.interval.as_secs_f64(),
        if ran.is_none() {
            " (VM paused: no rates)"
        } else {
            ""
        },
        if st.paused_display {
            " | DISPLAY PAUSED"
        } else {
            ""
        },
        if st.focus == 0 {
            SOURCE_COLUMNS[st.shape.sort_sources]
        } else {
            EVENT_COLUMNS[st.shape.sort_events]
        },
        if st.shape.reverse {
            "ascending"
        } else {
            "descending"
        },
    );
    f.render_widget(
        Paragraph::new(vec![Line::from(title.to_string()), Line::from(status)]),
        head,
    );

    let mut rows = Vec::new();
    for s in &sources {
        rows.push(Row::new(vec![
            s.name.clone(),
            fmt_rate(s.raised),
            fmt_rate(s.delivered),
            fmt_rate(s.eoi_exits),
            fmt_rate(s.register_exits),
            s.exits_per_irq.map_or("-".into(), |x| format!("{x:.2}")),
            s.total_exits.map_or("-".into(), |t| t.to_string()),
        ]));
        if st.shape.drill {
            for (v, d, e) in &s.vectors {
                rows.push(Row::new(vec![
                    format!("  vector {v:#04x}"),
                    String::new(),
                    fmt_rate(*d),
                    fmt_rate(*e),
                ]));
            }
        }
    }
    let widths = [
        Constraint::Min(24),
        Constraint::Length(10),
        Constraint::Length(10),
        Constraint::Length(10),
        Constraint::Length(10),
        Constraint::Length(10),
        Constraint::Length(12),
    ];
    let t = Table::new(rows, widths)
        .header(header_cells(
            &SOURCE_COLUMNS,
            st.shape.sort_sources,
            st.shape.reverse,
            st.focus == 0,
        ))
        .block(
            Block::new()
                .borders(Borders::TOP)
                .title(" Interrupt sources (per second of running time) "),
        );
    f.render_widget(t, src);

    let rows = events
        .iter()
        .filter(|r| r.total > 0)
        .map(|r| Row::new(vec![r.name.clone(), r.total.to_string(), fmt_rate(r.rate)]));
    let t = Table::new(
        rows,
        [
            Constraint::Min(30),
            Constraint::Length(14),
            Constraint::Length(12),
        ],
    )
    .header(header_cells(
        &EVENT_COLUMNS,
        st.shape.sort_events,
        st.shape.reverse,
        st.focus == 1,
    ))
    .block(
        Block::new()
            .borders(Borders::TOP)
            .title(" Exits: by reason, device, vCPU; KVM's counters "),
    );
    f.render_widget(t, ev);

    let footer = match &st.prompt {
        Prompt::Interval(s) => format!("interval in seconds: {s}_"),
        Prompt::Filter(s) => format!("filter (regex, empty clears): {s}_"),
        Prompt::None if !st.message.is_empty() => st.message.clone(),
        Prompt::None => "q quit  s interval  f filter  p pause display  x vectors  o reverse  Tab table  < > sort column".into(),
    };
    f.render_widget(Paragraph::new(footer), foot);
}
