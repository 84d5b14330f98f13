//! Errors a user can meet, each printed as one line.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open /dev/kvm: {0}")]
    KvmOpen(String),
    #[error("/dev/kvm speaks KVM API version {0}, splitvm needs 12")]
    KvmApiVersion(i32),
    #[error("this host's KVM lacks {0}, which splitvm needs")]
    MissingCapability(&'static str),
    #[error("KVM refused {what}: {err}")]
    Kvm {
        what: &'static str,
        err: kvm_ioctls::Error,
    },
    #[error("--cpus must be between 1 and {max}, not {got}")]
    Cpus { got: u32, max: u32 },
    #[error("bad memory size '{0}': use a number with an optional K, M or G suffix, e.g. 128M")]
    MemorySyntax(String),
    #[error("memory size {got} MiB is too small: splitvm needs at least {min} MiB")]
    MemoryTooSmall { got: u64, min: u64 },
    #[error("memory size {got} MiB is more than this host has ({host} MiB)")]
    MemoryTooLarge { got: u64, host: u64 },
    #[error("cannot allocate guest memory: {0}")]
    GuestMemory(String),
    #[error("cannot read {what} '{path}': {err}")]
    File {
        what: &'static str,
        path: PathBuf,
        err: std::io::Error,
    },
    #[error("{what} '{path}' is not a regular file")]
    NotRegular { what: &'static str, path: PathBuf },
    #[error("{what} '{path}' is {size} bytes, more than the {max} bytes it may be")]
    TooLarge {
        what: &'static str,
        path: PathBuf,
        size: u64,
        max: u64,
    },
    #[error("kernel '{0}' is not a format splitvm can boot (multiboot, ELF vmlinux, bzImage; use --kernel-format raw for a flat binary)")]
    UnknownFormat(PathBuf),
    #[error("kernel '{path}': {msg}")]
    Load { path: PathBuf, msg: String },
    #[error("--entry is required with --kernel-format raw")]
    RawNeedsEntry,
    #[error("bad --serial '{0}': use stdout, none or file:PATH")]
    SerialSyntax(String),
    #[error("{0}")]
    DeviceSpec(String),
    #[error("cannot set up {what}: {msg}")]
    Setup { what: &'static str, msg: String },
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("{0}")]
    Restore(String),
    #[error("cannot write {what} '{path}': {err}")]
    Output {
        what: &'static str,
        path: PathBuf,
        err: std::io::Error,
    },
}

/// What a snapshot cannot be taken or restored for, each one line
/// (docs/snapshot.md lists them).
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot read snapshot '{path}': {err}")]
    Read { path: PathBuf, err: std::io::Error },
    #[error("no snapshot in '{0}' (it has no state.json)")]
    Missing(PathBuf),
    #[error("'{0}' is not a splitvm snapshot (its state file has no 'splitvm-snapshot' header)")]
    NotSnapshot(PathBuf),
    #[error("snapshot '{path}' has format {found}; this splitvm reads format {ours} only (take the snapshot again)")]
    Format {
        path: PathBuf,
        found: String,
        ours: u32,
    },
    #[error("snapshot '{path}' is truncated: its state has {got} of {want} bytes")]
    Truncated {
        path: PathBuf,
        got: usize,
        want: usize,
    },
    #[error("snapshot '{path}' is corrupted: its state's CRC-32 is {got:08x}, the header says {want:08x}")]
    Checksum { path: PathBuf, got: u32, want: u32 },
    #[error("snapshot '{path}' is corrupted: {msg}")]
    Decode { path: PathBuf, msg: String },
    #[error("snapshot '{path}' was written by splitvm {theirs}; this is splitvm {ours}, which restores only its own snapshots")]
    Version {
        path: PathBuf,
        theirs: String,
        ours: String,
    },
    #[error("snapshot '{path}' was taken on another CPU or KVM ({theirs}); this host is {ours}")]
    ForeignCpu {
        path: PathBuf,
        theirs: String,
        ours: String,
    },
    #[error("snapshot '{path}': its memory file '{file}' is {got} bytes, the snapshot's guest has {want}")]
    MemorySize {
        path: PathBuf,
        file: String,
        got: u64,
        want: u64,
    },
    #[error("cannot map snapshot memory '{path}': {msg}")]
    Map { path: PathBuf, msg: String },
    #[error("cannot write snapshot '{path}': {err}")]
    Write { path: PathBuf, err: std::io::Error },
}

pub type Result<T> = std::result::Result<T, Error>;

pub fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |err| Error::Kvm { what, err }
}
