//! The CI runner as a user meets it: `splitvm run -- CMD` returns the
//! command's status with its stdout and stderr apart from the kernel
//! console; a guest panic has its own status; `splitvm test` runs a
//! manifest in parallel with a summary and JUnit XML; shards split a
//! manifest; bad manifests and options are one line and status 2.
//!
//! The Linux boots here run in parallel with each other (each is its own
//! process), unlike tests/linux_boot.rs.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::guest;

fn splitvm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_splitvm"))
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run_cmd(extra: &[&str], cmd: &[&str]) -> Output {
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    common::output(common::guest_command(&extra, cmd))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Environment for the example manifests (they name the guest through it).
fn with_guest_env(c: &mut Command) -> &mut Command {
    let (kernel, initrd) = guest();
    c.env("SPLITVM_GUEST_KERNEL", kernel)
        .env("SPLITVM_GUEST_INITRD", initrd)
}

#[test]
fn command_status_comes_back_with_stdout_and_stderr_apart_from_the_console() {
    let out = run_cmd(
        &[],
        &["sh", "-c", "echo out-line; echo err-line >&2; exit 3"],
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(3),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    // Exactly the command's bytes: no kernel console line, no CR added.
    assert_eq!(stdout, "out-line\n", "stderr:\n{stderr}");
    assert!(stderr.contains("err-line\n"), "stderr:\n{stderr}");
    assert!(
        !stderr.contains("Linux version"),
        "console leaked:\n{stderr}"
    );
}

#[test]
fn guest_kernel_panic_gives_the_panic_status() {
    let out = run_cmd(
        &[],
        &[
            "sh",
            "-c",
            "echo 1 > /proc/sys/kernel/sysrq; echo c > /proc/sysrq-trigger",
        ],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "stderr:\n{stderr}");
    assert!(
        stderr.contains("the guest kernel panicked"),
        "stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("Kernel panic - not syncing"),
        "stderr:\n{stderr}"
    );
}

#[test]
fn example_manifest_runs_in_parallel_with_summary_and_valid_junit() {
    let dir = std::env::temp_dir().join(format!("splitvm-ci-runner-{}", std::process::id()));
    let junit = dir.join("out.xml");
    let out = with_guest_env(&mut splitvm())
        .arg("test")
        .arg(repo().join("examples/ci.toml"))
        .args(["--jobs", "2", "--progress", "never"])
        .arg("--junit")
        .arg(&junit)
        .arg("--output")
        .arg(dir.join("cases"))
        .stdin(Stdio::null())
        .output()
        .expect("run splitvm test");
    let stdout = text(&out.stdout);
    eprintln!("{stdout}");
    // One case fails and one times out on purpose.
    assert_eq!(out.status.code(), Some(1), "stderr:\n{}", text(&out.stderr));
    assert!(
        stdout.contains("7 cases in") && stdout.contains("5 pass, 1 fail, 1 timeout, 0 error"),
        "{stdout}"
    );

    let xml = std::fs::read_to_string(&junit).expect("JUnit file written");
    let doc = roxmltree::Document::parse(&xml).expect("JUnit is well-formed XML");
    let suite = doc
        .descendants()
        .find(|n| n.has_tag_name("testsuite"))
        .expect("a testsuite");
    assert_eq!(suite.attribute("tests"), Some("7"));
    assert_eq!(suite.attribute("failures"), Some("2"));
    assert_eq!(suite.attribute("errors"), Some("0"));
    let outcome = |name: &str| {
        let tc = doc
            .descendants()
            .find(|n| n.has_tag_name("testcase") && n.attribute("name") == Some(name))
            .unwrap_or_else(|| panic!("no testcase {name}"));
        let failure = tc.children().find(|c| c.has_tag_name("failure"));
        (
            failure.and_then(|f| f.attribute("type")).unwrap_or("pass"),
            tc.attribute("time").unwrap().parse::<f64>().unwrap(),
        )
    };
    for pass in [
        "disk-pci-1cpu",
        "disk-mmio-2cpu",
        "true-kernel-irqchip",
        "false-is-1",
        "added-script",
    ] {
        assert_eq!(outcome(pass).0, "pass", "{pass}");
    }
    assert_eq!(outcome("fails-on-purpose").0, "fail");
    let (kind, secs) = outcome("times-out-on-purpose");
    assert_eq!(kind, "timeout");
    // Its JUnit message carries the stuck-guest verdict.
    let message = doc
        .descendants()
        .find(|n| n.has_tag_name("testcase") && n.attribute("name") == Some("times-out-on-purpose"))
        .and_then(|tc| tc.children().find(|c| c.has_tag_name("failure")))
        .and_then(|f| f.attribute("message"))
        .unwrap_or("");
    assert!(message.contains("; stuck: "), "{message}");
    // The case's timeout is 60 s: splitvm ends it by itself (status 124),
    // not the runner's kill, not earlier, and once (no --retries).
    assert!(secs >= 60.0, "timeout case took {secs} s");
    assert!(!stdout.contains("killed by the runner"), "{stdout}");
    assert!(!stdout.contains("retry"), "{stdout}");

    let case_out = |name: &str, file: &str| {
        std::fs::read_to_string(dir.join("cases").join(name).join(file)).unwrap_or_default()
    };
    // The disk (the initramfs itself) is read over both transports.
    assert_eq!(case_out("disk-pci-1cpu", "stdout"), "070701");
    assert_eq!(case_out("disk-mmio-2cpu", "stdout"), "070701");
    // The script added from the host ran in the guest.
    assert_eq!(
        case_out("added-script", "stdout"),
        "hello from the manifest (from splitvm)\n"
    );
    // Each case keeps its console log and its exit report.
    assert!(case_out("false-is-1", "console.log").contains("Run /init as init process"));
    let report: serde_json::Value =
        serde_json::from_str(&case_out("false-is-1", "report.json")).expect("report JSON");
    assert_eq!(report["exit_reason"], "command-exit");
    assert_eq!(report["exit_status"], 1);
    assert_eq!(report["irqchip"], "split");
    // The manifest's `irqchip` key reached the case's splitvm.
    let kernel: serde_json::Value =
        serde_json::from_str(&case_out("true-kernel-irqchip", "report.json")).expect("report JSON");
    assert_eq!(kernel["irqchip"], "kernel");
    let _ = std::fs::remove_dir_all(&dir);
}

fn list(manifest: &Path, shard: Option<&str>) -> Vec<String> {
    let mut c = splitvm();
    with_guest_env(&mut c);
    c.arg("test").arg(manifest).arg("--list");
    if let Some(s) = shard {
        c.args(["--shard", s]);
    }
    let out = c.output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout).lines().map(str::to_string).collect()
}

#[test]
fn shards_together_run_every_case_exactly_once() {
    let m = repo().join("examples/ci.toml");
    let all = list(&m, None);
    assert_eq!(all.len(), 7);
    for n in 2..=3 {
        let mut seen = HashSet::new();
        for k in 1..=n {
            for name in list(&m, Some(&format!("{k}/{n}"))) {
                assert!(seen.insert(name.clone()), "{name} in two shards of {n}");
            }
        }
        assert_eq!(
            seen,
            all.iter().cloned().collect::<HashSet<_>>(),
            "shards of {n}"
        );
    }
}

fn one_line_error(c: &mut Command) -> String {
    let out = c.stdin(Stdio::null()).output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr:\n{stderr}");
    assert_eq!(stderr.lines().count(), 1, "not one line:\n{stderr}");
    assert!(
        out.stdout.is_empty(),
        "something ran:\n{}",
        text(&out.stdout)
    );
    stderr
}

#[test]
fn bad_manifests_are_one_line_naming_file_line_and_key() {
    let dir = std::env::temp_dir().join(format!("splitvm-bad-manifest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kernel = env!("CARGO_BIN_EXE_splitvm");
    let cases = [
        ("unknown-key", format!("[[case]]\nname = 'a'\nkernel = '{kernel}'\ncommand = 'true'\ncpu = 2\n"), ":5:", "cpu"),
        ("missing-kernel", "[[case]]\nname = 'a'\ncommand = 'true'\n".to_string(), ":1:", "kernel"),
        ("bad-size", format!("[[case]]\nname = 'a'\nkernel = '{kernel}'\ncommand = 'true'\nmemory = '12Q'\n"), ":5:", "memory"),
        ("duplicate", format!("[defaults]\nkernel = '{kernel}'\ncommand = 'true'\n[[case]]\nname = 'a'\n[[case]]\nname = 'a'\n"), ":7:", "duplicate"),
        ("zero-timeout", format!("[[case]]\nname = 'a'\nkernel = '{kernel}'\ncommand = 'true'\ntimeout = 0\n"), ":5:", "timeout"),
    ];
    for (name, body, line, key) in cases {
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, body).unwrap();
        let e = one_line_error(
            splitvm()
                .arg("test")
                .arg(&path)
                .arg("--output")
                .arg(dir.join("out")),
        );
        assert!(
            e.contains(&format!("{name}.toml{line}")) && e.contains(key),
            "{name}: {e}"
        );
    }
    assert!(!dir.join("out").exists(), "a bad manifest must run nothing");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_shard_and_add_options_are_one_line() {
    let m = repo().join("examples/ci.toml");
    let e = one_line_error(
        with_guest_env(&mut splitvm())
            .arg("test")
            .arg(&m)
            .args(["--shard", "3/2"]),
    );
    assert!(e.contains("--shard"), "{e}");
    let e = one_line_error(splitvm().args([
        "run",
        "--kernel",
        "/proc/self/exe",
        "--add",
        "Cargo.toml",
    ]));
    assert!(e.contains("--add needs --initrd"), "{e}");
}
