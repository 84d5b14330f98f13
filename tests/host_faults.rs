//! Host-side faults lose nothing and stop nothing: a disk file that returns
//! EIO (a FUSE file exported by qemu-storage-daemon through a blkdebug node
//! that fails every write) or ENOSPC (a file on a 1 MiB tmpfs) gives the
//! guest VIRTIO_BLK_S_IOERR while splitvm keeps running; data the guest
//! flushed is in the host file after SIGKILL of splitvm, after SIGTERM in
//! the middle of heavy I/O (which also writes the report and exits 143),
//! and after a guest kernel panic; a TAP deleted under a running VM is
//! counted and the VM runs on. Each is a Linux boot in command mode.
//! Needs root (mounts, TAP devices) and qemu-utils (scripts/setup.sh).

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("splitvm-fault-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

fn splitvm_cmd(extra: &[String], cmd: &str) -> Command {
    common::guest_command(extra, &["sh", "-c", cmd])
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn report(path: &Path) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(path).expect("report written")).expect("report JSON")
}

fn virtio_counter(r: &serde_json::Value, device: &str, counter: &str) -> u64 {
    r["virtio_devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == device)
        .unwrap_or_else(|| panic!("no {device} in {r}"))["counters"][counter]
        .as_u64()
        .unwrap()
}

/// Start splitvm and wait for `line` on its stdout (the guest's command);
/// the rest of stdout is collected by a thread whose handle is returned.
fn start_until(mut c: Command, line: &str) -> (Child, std::thread::JoinHandle<String>) {
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut l = String::new();
    while out.read_line(&mut l).unwrap_or(0) > 0 {
        if l.trim_end() == line {
            let rest = std::thread::spawn(move || {
                let mut s = String::new();
                let _ = std::io::Read::read_to_string(&mut out, &mut s);
                s
            });
            return (child, rest);
        }
        seen.push(std::mem::take(&mut l));
    }
    let o = child.wait_with_output().unwrap();
    panic!(
        "'{line}' never came; status {:?}; stdout {seen:?}; stderr:\n{}",
        o.status.code(),
        text(&o.stderr)
    );
}

/// A FUSE file whose writes fail with EIO, served by qemu-storage-daemon.
struct EioDisk {
    daemon: Child,
    file: PathBuf,
}

impl EioDisk {
    #[allow(clippy::zombie_processes)] // killed and reaped in Drop, or below
    fn new(dir: &Path) -> EioDisk {
        let base = dir.join("base.img");
        fs::write(&base, vec![0u8; 4 << 20]).unwrap();
        let conf = dir.join("blkdebug.conf");
        fs::write(
            &conf,
            "[inject-error]\nevent = \"write_aio\"\nerrno = \"5\"\n",
        )
        .unwrap();
        let file = dir.join("eio.img");
        fs::write(&file, b"").unwrap();
        let daemon = Command::new("qemu-storage-daemon")
            .arg("--blockdev")
            .arg(format!(
                "driver=file,node-name=f0,filename={}",
                base.display()
            ))
            .arg("--blockdev")
            .arg(format!(
                "driver=blkdebug,node-name=d0,image=f0,config={}",
                conf.display()
            ))
            .args(["--blockdev", "driver=raw,node-name=r0,file=d0"])
            .arg("--export")
            .arg(format!(
                "type=fuse,id=e0,node-name=r0,mountpoint={},writable=on",
                file.display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("qemu-storage-daemon (qemu-utils; scripts/setup.sh installs it)");
        for _ in 0..100 {
            if fs::metadata(&file).is_ok_and(|m| m.len() == 4 << 20) {
                return EioDisk { daemon, file };
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let mut daemon = daemon;
        let _ = daemon.kill();
        let _ = daemon.wait();
        panic!("the FUSE export of qemu-storage-daemon did not appear");
    }
}

impl Drop for EioDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.file).status();
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

/// A tmpfs of 1 MiB holding a sparse 8 MiB disk: writes run out of space.
struct FullDisk {
    mnt: PathBuf,
    file: PathBuf,
}

impl FullDisk {
    fn new(dir: &Path) -> FullDisk {
        let mnt = dir.join("small");
        fs::create_dir_all(&mnt).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1M", "tmpfs"])
            .arg(&mnt)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs (needs root)");
        let file = mnt.join("disk.img");
        let f = fs::File::create(&file).unwrap();
        f.set_len(8 << 20).unwrap();
        FullDisk { mnt, file }
    }
}

impl Drop for FullDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
    }
}

#[test]
fn eio_and_enospc_disks_give_the_guest_io_errors_and_splitvm_runs_on() {
    let dir = tmpdir("eio");
    let eio = EioDisk::new(&dir);
    let full = FullDisk::new(&dir);
    let json = dir.join("r.json");
    let o: Output = common::output({
        splitvm_cmd(
            &[
                "--disk".into(),
                eio.file.display().to_string(),
                "--disk".into(),
                full.file.display().to_string(),
                "--stats-json".into(),
                json.display().to_string(),
            ],
            "dd if=/dev/zero of=/dev/vda bs=4096 count=1 oflag=direct; echo eio=$?; \
         dd if=/dev/zero of=/dev/vdb bs=65536 count=64 oflag=direct; echo enospc=$?; \
         dd if=/dev/vdb of=/dev/null bs=4096 count=1 iflag=direct; echo read=$?; echo alive",
        )
    });
    let (stdout, stderr) = (text(&o.stdout), text(&o.stderr));
    eprintln!("guest stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(o.status.code(), Some(0), "stderr:\n{stderr}");
    // Both writes failed in the guest, which went on running.
    assert!(stdout.contains("eio=1"), "{stdout}");
    assert!(stdout.contains("enospc=1"), "{stdout}");
    assert!(
        stdout.contains("read=0") && stdout.contains("alive"),
        "{stdout}"
    );
    assert!(stderr.contains("Input/output error"), "{stderr}");
    // splitvm said what happened on the host, once per kind.
    assert!(
        stderr.contains("write failed: Input/output error"),
        "{stderr}"
    );
    assert!(
        stderr.contains("write failed: No space left on device"),
        "{stderr}"
    );
    let r = report(&json);
    assert!(virtio_counter(&r, "virtio-blk0", "io_errors") >= 1, "{r}");
    assert!(virtio_counter(&r, "virtio-blk1", "io_errors") >= 1, "{r}");
    let _ = fs::remove_dir_all(&dir);
}

const WRITE_MARKER: &str = "printf flushed-%s $MARK | dd of=/dev/vda bs=512 count=1 conv=fsync,sync oflag=direct 2>/dev/null";

fn marker_on_disk(disk: &Path, mark: &str) -> bool {
    let data = fs::read(disk).unwrap();
    data.starts_with(format!("flushed-{mark}").as_bytes())
}

#[test]
fn flushed_data_is_on_the_host_file_after_sigkill() {
    let dir = tmpdir("kill");
    let disk = dir.join("d.img");
    fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let (mut child, _) = start_until(
        {
            splitvm_cmd(
                &["--disk".into(), disk.display().to_string()],
                &format!("MARK=kill; {WRITE_MARKER}; echo flushed; sleep 1000"),
            )
        },
        "flushed",
    );
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(marker_on_disk(&disk, "kill"));
    let _ = fs::remove_dir_all(&dir);
}

/// The write counter of virtio-blk0 in a report.
fn blk_writes(r: &serde_json::Value) -> u64 {
    virtio_counter(r, "virtio-blk0", "writes")
}

#[test]
fn sigterm_during_heavy_io_keeps_flushed_data_writes_the_report_and_exits_143() {
    let dir = tmpdir("term");
    let disk = dir.join("d.img");
    // 0xA5 everywhere: the guest's zeros show where its writes landed.
    fs::write(&disk, vec![0xa5u8; 1 << 20]).unwrap();
    let json = dir.join("r.json");
    // The marker in sector 0 with fsync, then 512 KiB writes of zeros from
    // 64 KiB on, O_DIRECT, without end; a line after each.
    let (child, rest) = start_until(
        splitvm_cmd(
            &[
                "--disk".into(),
                disk.display().to_string(),
                "--stats-json".into(),
                json.display().to_string(),
                "--stats-interval".into(),
                "0.1".into(),
            ],
            &format!(
                "MARK=term; {WRITE_MARKER}; echo flushed; \
                 while :; do dd if=/dev/zero of=/dev/vda bs=65536 count=8 seek=1 oflag=direct 2>/dev/null; echo wrote; done"
            ),
        ),
        "flushed",
    );
    // The guest's I/O is in flight when the signal comes: the writes
    // counted in a live report read now grow by at least one more whole
    // dd (8 requests) before SIGTERM, which is sent while the loop runs.
    let wait_for = |n: u64| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            let r: serde_json::Value = fs::read_to_string(&json)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or(serde_json::Value::Null);
            if !r.is_null() && blk_writes(&r) >= n {
                return blk_writes(&r);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the guest wrote fewer than {n} requests in 120 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    let before = wait_for(1);
    let during = wait_for(before + 16);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(143), "stderr:\n{}", text(&o.stderr));
    assert!(rest.join().unwrap().contains("wrote"));
    let r = report(&json);
    assert_eq!(r["exit_reason"], "signal");
    assert_eq!(r["snapshot"]["final"], true);
    let at_end = blk_writes(&r);
    eprintln!("[term] writes: {before} when first seen, {during} just before SIGTERM, {at_end} in the final report");
    assert!(at_end >= during, "{r}");
    // The flushed marker survived; the loop's zeros reached the file.
    assert!(marker_on_disk(&disk, "term"));
    let data = fs::read(&disk).unwrap();
    assert!(
        data[65536..65536 + 4096].iter().all(|&b| b == 0),
        "the guest's writes are not in the host file"
    );
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn flushed_data_is_on_the_host_file_after_a_guest_panic() {
    let dir = tmpdir("panic");
    let disk = dir.join("d.img");
    fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let o = common::output({
        splitvm_cmd(
            &["--disk".into(), disk.display().to_string()],
            &format!("MARK=panic; {WRITE_MARKER}; echo c > /proc/sysrq-trigger"),
        )
    });
    assert_eq!(o.status.code(), Some(255), "stderr:\n{}", text(&o.stderr));
    assert!(marker_on_disk(&disk, "panic"));
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_tap_deleted_under_a_running_vm_is_counted_and_the_vm_runs_on() {
    let tap = format!("svtap{}", std::process::id() % 100_000);
    let st = Command::new("ip")
        .args(["tuntap", "add", &tap, "mode", "tap"])
        .status()
        .unwrap();
    assert!(st.success(), "ip tuntap add (needs root)");
    let dir = tmpdir("tap");
    let json = dir.join("r.json");
    let (child, rest) = start_until(
        {
            splitvm_cmd(
                &[
                    "--net".into(),
                    format!("tap={tap}"),
                    "--stats-json".into(),
                    json.display().to_string(),
                ],
                "ip addr add 10.77.0.2/24 dev eth0; ip link set eth0 up; echo up; \
             i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; \
             for i in 1 2 3; do echo x | nc -u 10.77.0.1 9; done; echo alive",
            )
        },
        "up",
    );
    let st = Command::new("ip")
        .args(["link", "delete", &tap])
        .status()
        .unwrap();
    assert!(st.success());
    let o = child.wait_with_output().unwrap();
    let stdout = rest.join().unwrap();
    assert_eq!(o.status.code(), Some(0), "stderr:\n{}", text(&o.stderr));
    assert!(stdout.contains("alive"), "stdout after 'up': {stdout:?}");
    let r = report(&json);
    let errors = virtio_counter(&r, "virtio-net0", "tx_errors")
        + virtio_counter(&r, "virtio-net0", "rx_errors")
        + virtio_counter(&r, "virtio-net0", "tx_dropped");
    eprintln!("[tap] net counters: {}", r["virtio_devices"][0]["counters"]);
    assert!(errors >= 1, "nothing counted: {r}");
    let _ = fs::remove_dir_all(&dir);
}
