//! A user's mistakes end in one clear line on stderr and a non-zero exit,
//! never a panic or a usage dump.

use std::process::Command;

mod common;

fn splitvm(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_splitvm"))
        .args(args)
        .output()
        .expect("run splitvm");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_one_line_error(args: &[&str], needle: &str) {
    let (code, err) = splitvm(args);
    assert_eq!(code, 2, "{args:?}: status {code}, stderr: {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: expected one line, got: {err}");
    assert!(lines[0].starts_with("splitvm: "), "{args:?}: {err}");
    assert!(
        lines[0].contains(needle),
        "{args:?}: '{needle}' not in: {err}"
    );
    assert!(!err.contains("panicked"), "{args:?}: {err}");
}

fn some_file() -> String {
    // Any readable file that is not a kernel.
    "Cargo.toml".to_string()
}

#[test]
fn missing_kernel_file_is_one_line() {
    assert_one_line_error(&["run", "--kernel", "/no/such/kernel"], "No such file");
}

#[test]
fn kernel_that_is_a_directory_is_one_line() {
    assert_one_line_error(&["run", "--kernel", "/"], "Is a directory");
}

#[test]
fn unknown_kernel_format_is_one_line() {
    assert_one_line_error(
        &["run", "--kernel", &some_file()],
        "not a format splitvm can boot",
    );
}

#[test]
fn zero_cpus_is_one_line() {
    assert_one_line_error(
        &["run", "--kernel", &some_file(), "--cpus", "0"],
        "--cpus must be between 1 and 4096",
    );
}

#[test]
fn too_many_cpus_is_one_line() {
    assert_one_line_error(
        &["run", "--kernel", &some_file(), "--cpus", "5000"],
        "--cpus must be between 1 and 4096",
    );
}

#[test]
fn memory_too_small_is_one_line() {
    assert_one_line_error(
        &["run", "--kernel", &some_file(), "--memory", "1M"],
        "too small",
    );
}

#[test]
fn memory_larger_than_host_is_one_line() {
    assert_one_line_error(
        &["run", "--kernel", &some_file(), "--memory", "1024G"],
        "more than this host has",
    );
}

#[test]
fn memory_with_bad_suffix_is_one_line() {
    assert_one_line_error(
        &["run", "--kernel", &some_file(), "--memory", "12Q"],
        "bad memory size",
    );
}

#[test]
fn bad_serial_destination_is_one_line() {
    assert_one_line_error(
        &["run", "--kernel", &some_file(), "--serial", "tcp:1"],
        "bad --serial",
    );
}

#[test]
fn unknown_flag_is_one_line_without_usage_dump() {
    assert_one_line_error(
        &["run", "--kernel", &some_file(), "--frobnicate"],
        "--frobnicate",
    );
}

#[test]
fn raw_format_without_entry_is_one_line() {
    assert_one_line_error(
        &["run", "--kernel", &some_file(), "--kernel-format", "raw"],
        "--entry is required",
    );
}

#[test]
fn no_dev_kvm_is_one_line() {
    if !common::needs_root(
        "no_dev_kvm_is_one_line",
        "hiding /dev/kvm in a mount namespace",
    ) {
        return;
    }
    // Hide /dev behind an empty tmpfs in a private mount namespace.
    let bin = env!("CARGO_BIN_EXE_splitvm");
    let out = Command::new("unshare")
        .args([
            "-m",
            "sh",
            "-c",
            &format!("mount -t tmpfs none /dev && exec {bin} run --kernel Cargo.toml"),
        ])
        .output()
        .expect("run unshare");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("splitvm: cannot open /dev/kvm: No such file or directory"),
        "{err}"
    );
}

#[test]
fn no_permission_on_dev_kvm_is_one_line() {
    if !common::needs_root(
        "no_permission_on_dev_kvm_is_one_line",
        "dropping to an unprivileged user",
    ) {
        return;
    }
    // Copy the binary where user nobody can execute it, then drop privileges.
    let dir = std::env::temp_dir().join(format!("splitvm-perm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join("splitvm");
    std::fs::copy(env!("CARGO_BIN_EXE_splitvm"), &bin).unwrap();
    let kernel = dir.join("k");
    std::fs::write(&kernel, b"not a kernel").unwrap();
    use std::os::unix::fs::PermissionsExt;
    for p in [&dir, &bin, &kernel] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&bin)
        .args(["run", "--kernel"])
        .arg(&kernel)
        .output()
        .expect("run setpriv");
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("cannot open /dev/kvm: Permission denied"),
        "{err}"
    );
}

/// Random argument vectors (a fixed seed, so a failure reproduces) from a
/// pool of hostile tokens: each ends in one line and status 2 (253 once
/// `-- CMD` made it command mode), never a panic, a hang or a usage dump.
/// The pool has no runnable kernel (and no --entry), so no VM ever starts.
#[test]
fn random_command_lines_always_end_in_one_line() {
    const POOL: &[&str] = &[
        "--kernel",
        "/nonexistent",
        "/",
        "/dev/null",
        "/dev/zero",
        "Cargo.toml",
        "--initrd",
        "--cpus",
        "0",
        "65",
        "99999999999",
        "-1",
        "--memory",
        "12Q",
        "1G",
        "0",
        "--timeout",
        "inf",
        "nan",
        "1e300",
        "--serial",
        "tcp:1",
        "file:",
        "--disk",
        ",readonly",
        "--net",
        "tap=",
        "mac=zz",
        "--add",
        ":/x",
        "--kernel-format",
        "raw",
        "elf",
        "bzimage",
        "--stats-interval",
        "--stats-json",
        "/proc/self/mem",
        "--transport",
        "usb",
        "--cmdline",
        "--log-level",
        "loud",
        "--seccomp",
        "maybe",
        "--disable-exits",
        "everything",
        "--shard",
        "0/0",
        "5/2",
        "--jobs",
        "--list",
        "--",
        "sh",
        "\u{7f}\u{1}",
        "",
    ];
    let mut x = 0x1234_5678_u32;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x as usize
    };
    for case in 0..300 {
        let mut args: Vec<&str> = vec![if rnd() % 5 == 0 { "test" } else { "run" }];
        for _ in 0..1 + rnd() % 8 {
            args.push(POOL[rnd() % POOL.len()]);
        }
        let out = Command::new(env!("CARGO_BIN_EXE_splitvm"))
            .args(&args)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run splitvm");
        let err = String::from_utf8_lossy(&out.stderr);
        let code = out.status.code();
        assert!(
            matches!(code, Some(2) | Some(253)),
            "case {case} {args:?}: status {code:?}, stderr: {err}"
        );
        assert_eq!(err.lines().count(), 1, "case {case} {args:?}: {err}");
        assert!(!err.contains("panicked"), "case {case} {args:?}: {err}");
    }
}
