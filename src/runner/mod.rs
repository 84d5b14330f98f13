//! `splitvm test MANIFEST`: run a manifest's cases, each as its own
//! `splitvm run ... -- CMD` child process, up to `--jobs` at once; print a
//! result line per case, a summary table and optionally JUnit XML.

pub mod manifest;
mod results;

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use devices::channel::MAX_LINE;
use devices::control::command_status;
use devices::sync::lock;

use crate::cli::{TestArgs, Transport};
use manifest::Case;
use results::read_capped;
pub use results::{junit, summary};

/// How a case ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The command's status was the expected one.
    Pass,
    /// The command ran and returned another status, or the guest panicked.
    Fail,
    /// The case's timeout passed.
    Timeout,
    /// splitvm could not run the case, or the VM stopped without a status.
    Error,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Fail => "fail",
            Outcome::Timeout => "timeout",
            Outcome::Error => "error",
        }
    }

    /// Classify the child's exit status against the expected one.
    pub fn of(status: Option<i32>, expect: i32) -> (Outcome, String) {
        match status {
            Some(s) if s == expect => (Outcome::Pass, format!("status {s}")),
            Some(command_status::TIMEOUT) => (Outcome::Timeout, "timed out".into()),
            Some(command_status::PANIC) => (Outcome::Fail, "the guest kernel panicked".into()),
            Some(command_status::NO_STATUS) => (
                Outcome::Error,
                "the VM stopped without reporting the command's status".into(),
            ),
            Some(command_status::SPLITVM_ERROR) | Some(2) => {
                (Outcome::Error, "splitvm failed (see stderr)".into())
            }
            Some(s) => (Outcome::Fail, format!("status {s}, expected {expect}")),
            None => (Outcome::Error, "splitvm was killed by a signal".into()),
        }
    }
}

/// A finished case.
#[derive(Debug, Clone)]
pub struct CaseResult {
    pub name: String,
    pub outcome: Outcome,
    pub status: Option<i32>,
    pub expect: i32,
    pub detail: String,
    pub seconds: f64,
    pub dir: PathBuf,
}

/// Extra time the runner gives a child past its own `--timeout` before it
/// kills it (the child normally stops itself and writes its report).
const KILL_GRACE: Duration = Duration::from_secs(30);

/// The `splitvm run` arguments for `case`, writing into `dir`.
pub fn run_args(case: &Case, dir: &Path, default_cmdline: &str) -> Vec<String> {
    if let Some(snap) = &case.snapshot {
        let mut a: Vec<String> = vec!["run".into(), "--restore".into(), snap.display().to_string()];
        a.extend(report_args(case, dir));
        a.push("--".into());
        a.extend(case.command.iter().cloned());
        return a;
    }
    let mut a = boot_args(case, default_cmdline);
    a.extend(report_args(case, dir));
    a.push("--".into());
    a.extend(case.command.iter().cloned());
    a
}

/// Timeout, console log, exit report, no progress line.
fn report_args(case: &Case, dir: &Path) -> Vec<String> {
    let mut a = vec![
        "--timeout".into(),
        case.timeout.to_string(),
        "--serial".into(),
        format!("file:{}", dir.join("console.log").display()),
        "--stats-json".into(),
        dir.join("report.json").display().to_string(),
        "--progress".into(),
        "never".into(),
    ];
    if let Some(s) = &case.api_socket {
        a.extend(["--api-socket".into(), s.display().to_string()]);
    }
    a
}

/// The machine of `case`: kernel, initrd, vCPUs, memory, command line, disks.
fn boot_args(case: &Case, default_cmdline: &str) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "run".into(),
        "--kernel".into(),
        case.kernel.display().to_string(),
        "--cpus".into(),
        case.cpus.to_string(),
        "--memory".into(),
        case.memory.clone(),
        "--transport".into(),
        match case.transport {
            Transport::Pci => "pci".into(),
            Transport::Mmio => "mmio".into(),
        },
    ];
    if let Some(m) = case.irqchip {
        a.extend(["--irqchip".into(), m.name().into()]);
    }
    if let Some(i) = &case.initrd {
        a.extend(["--initrd".into(), i.display().to_string()]);
    }
    let cmdline = match (&case.cmdline, &case.extra_cmdline) {
        (None, None) => None,
        (c, extra) => Some(format!(
            "{} {}",
            c.as_deref().unwrap_or(default_cmdline),
            extra.as_deref().unwrap_or("")
        )),
    };
    if let Some(c) = cmdline {
        a.extend(["--cmdline".into(), c.trim().to_string()]);
    }
    for d in &case.disks {
        a.extend(["--disk".into(), d.clone()]);
    }
    for d in &case.add {
        a.extend(["--add".into(), d.clone()]);
    }
    a
}

fn wait_with_deadline(child: &mut Child, deadline: Instant) -> (Option<i32>, bool) {
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return (st.code(), false),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return (Some(command_status::TIMEOUT), true);
            }
            Ok(None) => thread::sleep(Duration::from_millis(50)),
            Err(_) => return (None, false),
        }
    }
}

fn run_case(exe: &Path, case: &Case, out_root: &Path, default_cmdline: &str) -> CaseResult {
    let started = Instant::now();
    let dir = out_root.join(&case.name);
    let result = |outcome, status, detail: String| CaseResult {
        name: case.name.clone(),
        outcome,
        status,
        expect: case.expect,
        detail,
        seconds: started.elapsed().as_secs_f64(),
        dir: dir.clone(),
    };
    let _ = fs::remove_dir_all(&dir);
    let files = fs::create_dir_all(&dir).and_then(|_| {
        Ok((
            File::create(dir.join("stdout"))?,
            File::create(dir.join("stderr"))?,
        ))
    });
    let (stdout, stderr) = match files {
        Ok(f) => f,
        Err(e) => {
            return result(
                Outcome::Error,
                None,
                format!("cannot create {}: {e}", dir.display()),
            )
        }
    };
    let args = run_args(case, &dir, default_cmdline);
    let _ = fs::write(dir.join("command"), shell_words(exe, &args));
    let child = Command::new(exe)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return result(Outcome::Error, None, format!("cannot start splitvm: {e}")),
    };
    let deadline = started + Duration::from_secs_f64(case.timeout) + KILL_GRACE;
    let (status, killed) = wait_with_deadline(&mut child, deadline);
    let (outcome, mut detail) = Outcome::of(status, case.expect);
    if killed {
        detail = "timed out (killed by the runner)".into();
    }
    if outcome != Outcome::Pass {
        if let Some(v) = stuck_verdict(&dir.join("stderr")) {
            detail = format!("{detail}; stuck: {v}");
        }
    }
    result(outcome, status, detail)
}

/// The last stuck-guest verdict a case's splitvm printed (src/forensics/).
fn stuck_verdict(stderr: &Path) -> Option<String> {
    let text = read_capped(stderr, 1 << 20);
    text.lines()
        .rev()
        .find_map(|l| l.strip_prefix(crate::forensics::VERDICT_PREFIX))
        .map(str::to_string)
}

/// Boot once for each snapshot directory the cases name that holds no
/// snapshot yet (the first case naming it gives the machine), stopping at
/// the agent's ready: every case of that directory then starts from it.
fn take_missing_snapshots(
    exe: &Path,
    cases: &[Case],
    out_root: &Path,
    default_cmdline: &str,
) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for c in cases {
        let Some(dir) = &c.snapshot else { continue };
        if !seen.insert(dir.clone()) || dir.join(crate::snapshot::STATE_FILE).is_file() {
            continue;
        }
        let log = out_root.join(format!("snapshot-{}.log", seen.len()));
        let mut a = boot_args(c, default_cmdline);
        a.extend([
            "--snapshot-on-ready".into(),
            dir.display().to_string(),
            "--timeout".into(),
            c.timeout.to_string(),
            "--serial".into(),
            format!("file:{}", log.display()),
            "--progress".into(),
            "never".into(),
            "--".into(),
            "true".into(),
        ]);
        println!(
            "splitvm test: taking snapshot {} (one boot, machine of case '{}')",
            dir.display(),
            c.name
        );
        let t = Instant::now();
        let out = Command::new(exe)
            .args(&a)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| format!("cannot start splitvm: {e}"))?;
        if !out.status.success() || !dir.join(crate::snapshot::STATE_FILE).is_file() {
            let err = String::from_utf8_lossy(&out.stderr);
            return Err(format!(
                "taking snapshot '{}' failed (status {}): {}; console in {}",
                dir.display(),
                out.status.code().unwrap_or(-1),
                err.lines().last().unwrap_or("no message"),
                log.display()
            ));
        }
        println!(
            "splitvm test: snapshot {} taken in {:.1} s",
            dir.display(),
            t.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// A command line that can be pasted into a shell to rerun a case.
fn shell_words(exe: &Path, args: &[String]) -> String {
    let q = |s: &str| {
        if !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "/._-=:,+".contains(c))
        {
            s.to_string()
        } else {
            format!("'{}'", s.replace('\'', "'\\''"))
        }
    };
    let mut v = vec![q(&exe.display().to_string())];
    v.extend(args.iter().map(|a| q(a)));
    v.join(" ") + "\n"
}

/// `splitvm test`: returns the process status (0 all passed, 1 otherwise).
pub fn run(args: &TestArgs) -> Result<i32, String> {
    let cases = manifest::load(&args.manifest).map_err(|e| e.to_string())?;
    let (k, n) = match &args.shard {
        Some(s) => manifest::parse_shard(s)?,
        None => (1, 1),
    };
    let mut cases = manifest::shard(&cases, k, n);
    if let Some(f) = &args.filter {
        cases.retain(|c| c.name.contains(f.as_str()));
    }
    if let Some(dir) = &args.api_sockets {
        fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create --api-sockets '{}': {e}", dir.display()))?;
        for c in cases.iter_mut().filter(|c| c.api_socket.is_none()) {
            c.api_socket = Some(dir.join(format!("{}.sock", c.name)));
        }
    }
    if args.list {
        for c in &cases {
            println!("{}", c.name);
        }
        return Ok(0);
    }
    for c in &cases {
        let len = devices::channel::Message::Run(c.command.clone())
            .encode()
            .len();
        if len > MAX_LINE {
            return Err(format!(
                "{}: case '{}': the command is {len} bytes encoded, more than the channel's {MAX_LINE}",
                args.manifest.display(),
                c.name
            ));
        }
    }
    let jobs = match args.jobs {
        Some(0) => return Err("--jobs must be at least 1".into()),
        Some(j) => j,
        None => thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    };
    fs::create_dir_all(&args.output)
        .map_err(|e| format!("cannot create --output '{}': {e}", args.output.display()))?;
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find the splitvm binary: {e}"))?;
    let default_cmdline = crate::vmm::default_linux_cmdline(&crate::host::detect());
    let progress = match args.progress.as_str() {
        "always" => true,
        "never" => false,
        _ => std::io::stderr().is_terminal(),
    };

    take_missing_snapshots(&exe, &cases, &args.output, &default_cmdline)?;
    let total = cases.len();
    let started = Instant::now();
    println!(
        "splitvm test: {total} case(s) from {} (shard {k}/{n}), {} at a time, output in {}",
        args.manifest.display(),
        jobs.min(total.max(1)),
        args.output.display()
    );
    let queue = Arc::new(Mutex::new(
        cases.into_iter().enumerate().collect::<VecDeque<_>>(),
    ));
    let (tx, rx) = mpsc::channel();
    let mut workers = Vec::new();
    for _ in 0..jobs.min(total) {
        let retries = args.retries;
        let (queue, tx, exe, out, dc) = (
            queue.clone(),
            tx.clone(),
            exe.clone(),
            args.output.clone(),
            default_cmdline.clone(),
        );
        workers.push(thread::spawn(move || loop {
            let next = lock(&queue).pop_front();
            let Some((i, case)) = next else { break };
            let mut r = run_case(&exe, &case, &out, &dc);
            let mut tries = 0;
            while tries < retries && matches!(r.outcome, Outcome::Timeout | Outcome::Error) {
                tries += 1;
                let before = r.detail.clone();
                r = run_case(&exe, &case, &out, &dc);
                r.detail = if r.outcome == Outcome::Pass {
                    format!(
                        "{} (FLAKY: passed on retry {tries} after: {before})",
                        r.detail
                    )
                } else {
                    format!("{} (retry {tries}; before: {before})", r.detail)
                };
            }
            if tx.send((i, r)).is_err() {
                break;
            }
        }));
    }
    drop(tx);
    let mut results: Vec<Option<CaseResult>> = vec![None; total];
    let mut done = 0;
    loop {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok((i, r)) => {
                done += 1;
                if progress {
                    eprint!("\r\x1b[K");
                }
                println!(
                    "{:<7} {} ({:.1} s, {})",
                    r.outcome.name().to_uppercase(),
                    r.name,
                    r.seconds,
                    r.detail
                );
                results[i] = Some(r);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if progress {
            eprint!(
                "\r\x1b[K[splitvm test {:6.1}s] {done}/{total} done, {} running",
                started.elapsed().as_secs_f64(),
                (total - done).min(jobs)
            );
        }
    }
    if progress {
        eprint!("\r\x1b[K");
    }
    for w in workers {
        let _ = w.join();
    }
    let results: Vec<CaseResult> = results.into_iter().flatten().collect();
    let wall = started.elapsed().as_secs_f64();
    print!("{}", summary(&results, wall, jobs, (k, n)));
    if let Some(path) = &args.junit {
        let xml = junit(&args.manifest, &results, wall)?;
        fs::write(path, xml)
            .map_err(|e| format!("cannot write --junit '{}': {e}", path.display()))?;
    }
    Ok(
        if results.iter().all(|r| r.outcome == Outcome::Pass) && results.len() == total {
            0
        } else {
            1
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(name: &str, outcome: Outcome) -> CaseResult {
        CaseResult {
            name: name.into(),
            outcome,
            status: Some(0),
            expect: 0,
            detail: "d <&> \"x\"".into(),
            seconds: 1.5,
            dir: PathBuf::from("/nonexistent"),
        }
    }

    #[test]
    fn statuses_map_to_outcomes() {
        assert_eq!(Outcome::of(Some(0), 0).0, Outcome::Pass);
        assert_eq!(Outcome::of(Some(1), 1).0, Outcome::Pass);
        assert_eq!(Outcome::of(Some(1), 0).0, Outcome::Fail);
        assert_eq!(Outcome::of(Some(124), 0).0, Outcome::Timeout);
        assert_eq!(Outcome::of(Some(255), 0).0, Outcome::Fail);
        assert_eq!(Outcome::of(Some(254), 0).0, Outcome::Error);
        assert_eq!(Outcome::of(Some(253), 0).0, Outcome::Error);
        assert_eq!(Outcome::of(None, 0).0, Outcome::Error);
    }

    #[test]
    fn junit_counts_failures_and_errors_and_escapes_text() {
        let rs = [
            res("a", Outcome::Pass),
            res("b", Outcome::Fail),
            res("c", Outcome::Timeout),
            res("d", Outcome::Error),
        ];
        let xml = junit(Path::new("x/demo.toml"), &rs, 3.0).unwrap();
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let suite = doc
            .descendants()
            .find(|n| n.has_tag_name("testsuite"))
            .unwrap();
        assert_eq!(suite.attribute("name"), Some("demo"));
        assert_eq!(suite.attribute("tests"), Some("4"));
        assert_eq!(suite.attribute("failures"), Some("2"));
        assert_eq!(suite.attribute("errors"), Some("1"));
        let failure = doc
            .descendants()
            .find(|n| n.has_tag_name("failure"))
            .unwrap();
        assert_eq!(failure.attribute("message"), Some("d <&> \"x\""));
    }

    /// A case with every machine key set: 2 vCPUs over mmio, a disk.
    fn full_case() -> Case {
        Case {
            name: "a".into(),
            kernel: "/k".into(),
            initrd: Some("/i".into()),
            cpus: 2,
            memory: "256M".into(),
            transport: Transport::Mmio,
            irqchip: Some(crate::irqchip::IrqChipMode::Kernel),
            cmdline: None,
            extra_cmdline: Some("quiet".into()),
            disks: vec!["/d,readonly".into()],
            add: vec![],
            command: vec!["sh".into(), "-c".into(), "exit 3".into()],
            timeout: 9.0,
            expect: 3,
            snapshot: None,
            api_socket: None,
        }
    }

    #[test]
    fn run_args_end_with_the_command_after_a_double_dash() {
        let a = run_args(&full_case(), Path::new("/out/a"), "console=ttyS0");
        let dd = a.iter().position(|x| x == "--").unwrap();
        assert_eq!(&a[dd + 1..], ["sh", "-c", "exit 3"]);
        let c = a.iter().position(|x| x == "--cmdline").unwrap();
        assert_eq!(a[c + 1], "console=ttyS0 quiet");
        assert!(a.windows(2).any(|w| w == ["--transport", "mmio"]));
        assert!(a.windows(2).any(|w| w == ["--irqchip", "kernel"]));
        assert!(a.windows(2).any(|w| w == ["--disk", "/d,readonly"]));
        assert!(a
            .windows(2)
            .any(|w| w == ["--serial", "file:/out/a/console.log"]));
    }

    #[test]
    fn a_case_with_a_snapshot_restores_it_instead_of_booting() {
        let case = Case {
            snapshot: Some("/snap".into()),
            ..full_case()
        };
        let a = run_args(&case, Path::new("/out/a"), "console=ttyS0");
        assert_eq!(a[..3], ["run", "--restore", "/snap"]);
        for machine in [
            "--kernel",
            "--initrd",
            "--cpus",
            "--memory",
            "--cmdline",
            "--transport",
            "--irqchip",
            "--disk",
        ] {
            assert!(!a.iter().any(|x| x == machine), "{machine} in {a:?}");
        }
        assert!(a.windows(2).any(|w| w == ["--timeout", "9"]));
        assert_eq!(a[a.len() - 4..], ["--", "sh", "-c", "exit 3"]);
    }

    #[test]
    fn a_case_with_an_api_socket_serves_it_booted_or_restored() {
        for snapshot in [None, Some("/snap".into())] {
            let case = Case {
                snapshot,
                api_socket: Some("/s/a.sock".into()),
                ..full_case()
            };
            let a = run_args(&case, Path::new("/out/a"), "console=ttyS0");
            assert!(
                a.windows(2).any(|w| w == ["--api-socket", "/s/a.sock"]),
                "{a:?}"
            );
        }
        let a = run_args(&full_case(), Path::new("/out/a"), "console=ttyS0");
        assert!(!a.iter().any(|x| x == "--api-socket"));
    }

    #[test]
    fn summary_counts_each_outcome() {
        let rs = [res("a", Outcome::Pass), res("b", Outcome::Timeout)];
        let s = summary(&rs, 2.0, 2, (1, 1));
        assert!(
            s.contains(
                "2 cases in 2.0 s (2 at a time, shard 1/1): 1 pass, 0 fail, 1 timeout, 0 error"
            ),
            "{s}"
        );
    }
}
