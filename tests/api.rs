//! The API socket (`--api-socket`, docs/api.md), end to end on the
//! project's Linux guest: one boot per test binary takes a snapshot at the
//! agent's ready, and each test restores it with an API socket and a
//! command that counts, pokes the API, then checks that the command still
//! finished with its own status and all of its output.
//!
//! The client here writes requests by hand on purpose: the tests must be
//! able to send what no HTTP library would (garbage, silence, 64 KiB+).

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("splitvm-api-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The Linux guest at its agent's ready (one boot per test binary).
fn snapshot() -> &'static PathBuf {
    static SNAP: OnceLock<PathBuf> = OnceLock::new();
    SNAP.get_or_init(|| {
        let snap = scratch("ready").join("snap");
        let _one = common::ONE_AT_A_TIME
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let o = common::output(common::guest_command(
            &["--snapshot-on-ready".into(), snap.display().to_string()],
            &["true"],
        ));
        assert_eq!(o.status.code(), Some(0), "{o:?}");
        assert!(snap.join("state.json").is_file());
        snap
    })
}

/// A restored guest with an API socket, running a loop that prints
/// 0..lines, a line each `pause` seconds, then exits with `status`.
struct Vm {
    child: Child,
    sock: PathBuf,
    report: PathBuf,
    dir: PathBuf,
}

fn counting_command(lines: u32, pause: &str, status: u8) -> String {
    format!(
        "i=0; while [ $i -lt {lines} ]; do echo $i; i=$((i+1)); sleep {pause}; done; exit {status}"
    )
}

impl Vm {
    fn restore(name: &str, snap: &Path, command: Option<&str>) -> Vm {
        let dir = scratch(name);
        let sock = dir.join("api.sock");
        let report = dir.join("report.json");
        let mut c = Command::new(env!("CARGO_BIN_EXE_splitvm"));
        c.args(["run", "--restore"])
            .arg(snap)
            .args(["--timeout", "200", "--api-socket"])
            .arg(&sock)
            .arg("--stats-json")
            .arg(&report)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(cmd) = command {
            c.args(["--", "sh", "-c", cmd]);
        }
        let child = c.spawn().unwrap();
        let mut vm = Vm {
            child,
            sock,
            report,
            dir,
        };
        let t = Instant::now();
        while UnixStream::connect(&vm.sock).is_err() {
            if t.elapsed() > Duration::from_secs(30) || vm.child.try_wait().ok().flatten().is_some()
            {
                let (status, _, stderr, _, _) = vm.finish();
                panic!("no API socket; splitvm ended with {status}: {stderr}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        vm
    }

    /// One request on its own connection: (status, body).
    fn call(&self, method: &str, path: &str, body: &[u8]) -> (u16, String) {
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        raw(&self.sock, &req)
    }

    fn json(&self, path: &str) -> Value {
        let (status, body) = self.call("GET", path, b"");
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    fn put(&self, path: &str) -> (u16, String) {
        self.call("PUT", path, b"")
    }

    /// Wait for the VM's end: (status, stdout, stderr).
    fn finish(self) -> (i32, String, String, PathBuf, PathBuf) {
        let o = self.child.wait_with_output().unwrap();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
            self.report,
            self.sock,
        )
    }
}

/// Send `bytes` on a new connection and read the answer to its end.
fn raw(sock: &Path, bytes: &[u8]) -> (u16, String) {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(bytes).unwrap();
    read_answer(&mut s)
}

fn read_answer(s: &mut UnixStream) -> (u16, String) {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
    (status, body.unwrap_or(text))
}

fn total_exits(v: &Value) -> u64 {
    v["total_exits"].as_u64().unwrap()
}

fn expected_lines(n: u32) -> String {
    (0..n).map(|i| format!("{i}\n")).collect()
}

#[test]
fn counters_are_live_and_a_paused_vm_counts_nothing_then_finishes_its_command() {
    let vm = Vm::restore("live", snapshot(), Some(&counting_command(60, "0.2", 7)));
    // Live: the counts grow while the guest runs.
    let a = vm.json("/api/v1/vm.counters");
    assert_eq!(a["state"], "running");
    assert_eq!(a["exit_reason"], "running");
    let t = Instant::now();
    let b = loop {
        std::thread::sleep(Duration::from_millis(300));
        let b = vm.json("/api/v1/vm.counters");
        if total_exits(&b) > total_exits(&a) || t.elapsed() > Duration::from_secs(20) {
            break b;
        }
    };
    assert!(
        total_exits(&b) > total_exits(&a),
        "counts did not grow: {a} / {b}"
    );
    assert!(b["wall_time_ms"].as_u64() > a["wall_time_ms"].as_u64());
    let info = vm.json("/api/v1/vm.info");
    assert_eq!(info["state"], "Running");
    assert_eq!(info["config"]["cpus"]["boot_vcpus"], 1);
    assert_eq!(info["config"]["irqchip"], "split");
    assert!(info["config"]["memory"]["size"].as_u64().unwrap() >= 64 << 20);
    // Paused: no vCPU runs, so no exit is taken; the paused time grows.
    assert_eq!(vm.put("/api/v1/vm.pause").0, 204);
    let p1 = vm.json("/api/v1/vm.counters");
    std::thread::sleep(Duration::from_millis(1500));
    let p2 = vm.json("/api/v1/vm.counters");
    assert_eq!(p1["state"], "paused");
    assert_eq!(vm.json("/api/v1/vm.info")["state"], "Paused");
    assert_eq!(total_exits(&p1), total_exits(&p2), "exits while paused");
    assert!(
        p2["paused_ms"].as_u64().unwrap() >= 1400,
        "{}",
        p2["paused_ms"]
    );
    let (status, body) = vm.put("/api/v1/vm.pause");
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("already paused"), "{body}");
    assert_eq!(vm.put("/api/v1/vm.resume").0, 204);
    assert_eq!(vm.put("/api/v1/vm.resume").0, 409);
    let t = Instant::now();
    loop {
        let r = vm.json("/api/v1/vm.counters");
        if total_exits(&r) > total_exits(&p2) {
            assert_eq!(r["state"], "running");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no exit after resume"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (status, stdout, stderr, report, sock) = vm.finish();
    assert_eq!(status, 7, "{stderr}");
    assert_eq!(stdout, expected_lines(60), "{stderr}");
    assert!(!sock.exists(), "the socket outlived the VM");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(report).unwrap()).unwrap();
    assert_eq!(r["state"], "stopped");
    assert!(r["paused_ms"].as_u64().unwrap() >= 1400);
    assert!(
        common::schema::check_report(&r).is_empty(),
        "{:?}",
        common::schema::check_report(&r)
    );
}

#[test]
fn bad_requests_get_their_status_and_the_vm_finishes_its_command() {
    let vm = Vm::restore("bad", snapshot(), Some(&counting_command(40, "0.2", 3)));
    let (s, body) = vm.call("GET", "/api/v1/vm.nothing", b"");
    assert_eq!(s, 404, "{body}");
    let e: Value = serde_json::from_str(&body).unwrap();
    assert!(
        e["error"].as_str().unwrap().contains("vm.nothing"),
        "{body}"
    );
    let (s, body) = vm.call("POST", "/api/v1/vm.pause", b"");
    assert_eq!(s, 405, "{body}");
    assert!(body.contains("PUT"), "{body}");
    assert_eq!(vm.call("DELETE", "/api/v1/vm.counters", b"").0, 405);
    // A malformed body: 400 with a JSON error naming what is wrong.
    let (s, body) = vm.call("PUT", "/api/v1/vm.snapshot", b"{\"destination\": 1");
    assert_eq!(s, 400, "{body}");
    let e: Value = serde_json::from_str(&body).unwrap();
    assert!(
        e["error"].as_str().unwrap().contains("destination_url"),
        "{body}"
    );
    let (s, body) = vm.call(
        "PUT",
        "/api/v1/vm.snapshot",
        br#"{"destination_url":"http://x/"}"#,
    );
    assert_eq!(s, 400, "{body}");
    // Over 64 KiB: 413, whether announced or not.
    let big = vec![b'x'; (64 << 10) + 1];
    let (s, body) = vm.call("PUT", "/api/v1/vm.snapshot", &big);
    assert_eq!(s, 413, "{body}");
    let mut chunked = b"PUT /api/v1/vm.snapshot HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..17 {
        chunked.extend_from_slice(b"1000\r\n");
        chunked.extend_from_slice(&[b'y'; 0x1000]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let (s, body) = raw(&vm.sock, &chunked);
    assert_eq!(s, 413, "{body}");
    // Not HTTP at all: 400 (hyper's own, before any route).
    let (s, _) = raw(&vm.sock, b"HELLO THERE\r\n\r\n");
    assert_eq!(s, 400);
    // A client that connects and sends nothing is dropped.
    let mut idle = UnixStream::connect(&vm.sock).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 64];
    let n = idle.read(&mut buf).unwrap_or(0);
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_secs(4) && waited < Duration::from_secs(20),
        "idle client dropped after {waited:?} (read {n} bytes)"
    );
    // 64 clients at once: all connected first, then all asking.
    let mut clients: Vec<UnixStream> = (0..64)
        .map(|_| UnixStream::connect(&vm.sock).unwrap())
        .collect();
    for c in &mut clients {
        c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        c.write_all(b"GET /api/v1/vm.counters HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let (s, body) = read_answer(c);
        assert_eq!(s, 200, "client {i}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["schema_version"], 2);
    }
    let (status, stdout, stderr, _, _) = vm.finish();
    assert_eq!(status, 3, "{stderr}");
    assert_eq!(stdout, expected_lines(40), "{stderr}");
}

#[test]
fn a_snapshot_through_the_api_restores_and_shutdown_ends_as_sigterm_with_the_report() {
    let vm = Vm::restore("snap", snapshot(), Some(&counting_command(30, "0.2", 9)));
    std::thread::sleep(Duration::from_millis(1500));
    let dest = vm.dir.join("api-snap");
    let body = format!("{{\"destination_url\": \"file://{}\"}}", dest.display());
    let (s, text) = vm.call("PUT", "/api/v1/vm.snapshot", body.as_bytes());
    assert_eq!(s, 204, "{text}");
    assert!(dest.join("state.json").is_file());
    // One header line, then the JSON (docs/snapshot.md).
    let text = std::fs::read_to_string(dest.join("state.json")).unwrap();
    let state: Value = serde_json::from_str(text.split_once('\n').unwrap().1).unwrap();
    assert_eq!(state["trigger"], "api");
    let (status, stdout, stderr, _, _) = vm.finish();
    assert_eq!((status, stdout), (9, expected_lines(30)), "{stderr}");
    // The API's snapshot ends that command from where it was: no `-- CMD`.
    let again = Vm::restore("snap-restored", &dest, None);
    // ...and PUT vm.shutdown ends it as SIGTERM would, with the report,
    // once the restored command has written to its stdout port (counts
    // start at the restore).
    let t = Instant::now();
    loop {
        let c = again.json("/api/v1/vm.counters");
        let port = |k: &str| c[k]["cmd-stdout"].as_u64().unwrap_or(0);
        // A few lines' bytes (each line is 3 or 4).
        if port("pio_exits_per_device") + port("coalesced_pio_per_device") >= 12 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no output after the restore: {c}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (s, text) = again.put("/api/v1/vm.shutdown");
    assert_eq!(s, 204, "{text}");
    let (status, stdout, stderr, report, sock) = again.finish();
    assert_eq!(status, 143, "{stderr}");
    // The shutdown may cut the last line short: whole lines only.
    let whole = &stdout[..stdout.rfind('\n').map_or(0, |i| i + 1)];
    let n: Vec<u32> = whole.lines().map(|l| l.parse().unwrap()).collect();
    assert!(
        !n.is_empty() && n[0] > 0,
        "restored output starts after the snapshot: {stdout}"
    );
    assert!(n.windows(2).all(|w| w[1] == w[0] + 1), "{stdout}");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(report).unwrap()).unwrap();
    assert_eq!(r["exit_reason"], "signal");
    assert_eq!(r["exit_detail"], "signal 15");
    assert!(!sock.exists());
}

#[test]
fn an_existing_file_that_is_not_a_socket_is_refused_and_kept() {
    let dir = scratch("refuse");
    let f = dir.join("precious");
    std::fs::write(&f, "data").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_splitvm"))
        .args(["run", "--kernel"])
        .arg(common::micro_guest("hello"))
        .arg("--api-socket")
        .arg(&f)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "data");
}

/// `splitvm top SOCKET ARGS...` to its end: (status, stdout, stderr).
fn top(sock: &Path, args: &[&str]) -> (i32, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_splitvm"))
        .arg("top")
        .arg(sock)
        .args(args)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn top_batch_and_csv_log_show_the_command_channel_moving() {
    let vm = Vm::restore("top", snapshot(), Some(&counting_command(50, "0.2", 4)));
    // -1: one interval as plain text; the guest's output port is busy.
    let (status, out, err) = top(&vm.sock, &["-1"]);
    assert_eq!(status, 0, "{err}");
    assert!(out.starts_with("state running"), "{out}");
    let row = |name: &str| {
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no {name} row in:\n{out}"))
            .to_string()
    };
    let stdout_port = row("cmd-stdout+cmd-control");
    let delivered: f64 = stdout_port
        .split_whitespace()
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    assert!(delivered > 0.0, "{stdout_port}");
    assert!(
        out.lines().any(|l| l.starts_with("pio cmd-stdout ")),
        "{out}"
    );
    // -L FILE -c: a CSV header of the filtered fields, one line per interval.
    let csv = vm.dir.join("top.csv");
    let (status, _, err) = top(
        &vm.sock,
        &[
            "-L",
            csv.to_str().unwrap(),
            "-c",
            "--count",
            "3",
            "-s",
            "0.5",
            "-f",
            "cmd-stdout",
        ],
    );
    assert_eq!(status, 0, "{err}");
    let text = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    let header: Vec<&str> = lines[0].split(',').collect();
    assert_eq!(header[0], "timestamp");
    assert!(
        header[1..].iter().all(|h| h.contains("cmd-stdout")),
        "{header:?}"
    );
    assert!(header.contains(&"pio cmd-stdout"), "{header:?}");
    let col = header
        .iter()
        .position(|h| *h == "irq cmd-stdout+cmd-control")
        .unwrap();
    let mut moved = 0.0;
    for l in &lines[1..] {
        let f: Vec<&str> = l.split(',').collect();
        assert_eq!(f.len(), header.len(), "{l}");
        moved += f[col].parse::<f64>().unwrap();
    }
    assert!(moved > 0.0, "{text}");
    // A filter that is not a regex is one line and status 1.
    let (status, _, err) = top(&vm.sock, &["-1", "-f", "("]);
    assert_eq!(status, 1);
    assert_eq!(err.lines().count(), 1, "{err}");
    let (status, stdout, stderr, _, _) = vm.finish();
    assert_eq!((status, stdout), (4, expected_lines(50)), "{stderr}");
}

#[test]
fn top_in_a_terminal_shows_the_rows_and_quits_on_q() {
    let vm = Vm::restore("top-tty", snapshot(), Some(&counting_command(50, "0.2", 5)));
    let session = format!("splitvm-top-{}", std::process::id());
    let tmux = |args: &[&str]| {
        let o = Command::new("tmux")
            .args(args)
            .output()
            .expect("tmux (scripts/setup.sh installs it)");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let cmd = format!(
        "{} top {}",
        env!("CARGO_BIN_EXE_splitvm"),
        vm.sock.display()
    );
    tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "110",
        "-y",
        "36",
        &cmd,
    ]);
    let screen = || tmux(&["capture-pane", "-p", "-t", &session]);
    let t = Instant::now();
    let mut s = screen();
    while !s.contains("cmd-stdout+cmd-control") && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(300));
        s = screen();
    }
    assert!(s.contains("Interrupt sources"), "{s}");
    assert!(s.contains("state running"), "{s}");
    // x: the source's vector appears under it.
    tmux(&["send-keys", "-t", &session, "x"]);
    std::thread::sleep(Duration::from_millis(1500));
    let s = screen();
    assert!(s.contains("  vector 0x"), "{s}");
    tmux(&["send-keys", "-t", &session, "q"]);
    std::thread::sleep(Duration::from_millis(1500));
    let alive = tmux(&["list-sessions"]).contains(&session);
    if alive {
        tmux(&["kill-session", "-t", &session]);
    }
    assert!(!alive, "top did not quit on q");
    let (status, stdout, stderr, _, _) = vm.finish();
    assert_eq!((status, stdout), (5, expected_lines(50)), "{stderr}");
}

#[test]
fn splitvm_test_gives_each_case_an_api_socket_on_request() {
    let dir = scratch("runner");
    let manifest = dir.join("m.toml");
    std::fs::write(
        &manifest,
        format!(
            "[defaults]\nsnapshot = '{}'\ntimeout = 200\n\n[[case]]\nname = 'counted'\ncommand = \"{}\"\nexpect = 6\n",
            snapshot().display(),
            counting_command(40, "0.2", 6)
        ),
    )
    .unwrap();
    let socks = dir.join("socks");
    let mut runner = Command::new(env!("CARGO_BIN_EXE_splitvm"))
        .arg("test")
        .arg(&manifest)
        .arg("--output")
        .arg(dir.join("out"))
        .arg("--api-sockets")
        .arg(&socks)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let sock = socks.join("counted.sock");
    let t = Instant::now();
    while UnixStream::connect(&sock).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no socket for the case"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, body) = raw(
        &sock,
        b"GET /api/v1/vm.info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200, "{body}");
    let info: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        info["config"]["restored_from"],
        snapshot().display().to_string()
    );
    assert!(runner.wait().unwrap().success());
    let mut out = String::new();
    runner
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(out.contains("1 pass"), "{out}");
    assert!(!sock.exists(), "the case's socket outlived its VM");
}
