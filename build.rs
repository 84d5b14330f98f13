//! Build script of the splitvm package: assembles the micro-guests.
//!
//! Every `tests/guests/NAME.S` is assembled with GNU `as --32` (include path
//! `tests/guests/lib`), linked with the shared runtime `tests/guests/lib/*.S`
//! by `ld -m elf_i386 -T tests/guests/lib/guest.ld` into a Multiboot v1
//! ELF32 image, and written to:
//!
//! - `$OUT_DIR/guests/NAME.elf`, exported to the crate as
//!   `env!("SPLITVM_MICRO_GUESTS_DIR")` (used by `tests/micro_guests.rs`);
//! - `<target dir>/micro-guests/NAME.elf`, a stable path for people
//!   (`target/micro-guests/hello.elf`).  The target dir is found by walking
//!   up from `OUT_DIR` (`<target>/[<triple>/]<profile>/build/<pkg>-<hash>/out`)
//!   to the directory that holds the `<profile>` directory (and the
//!   `<triple>` one, when cross-compiling).
//!
//! The assembler and linker can be overridden with `SPLITVM_AS` and
//! `SPLITVM_LD`.  Missing tools fail the build with a message that says
//! what to install.

use std::env;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let guests_dir = manifest_dir.join("tests").join("guests");
    let lib_dir = guests_dir.join("lib");

    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=tests/guests");
    println!("cargo:rerun-if-env-changed=SPLITVM_AS");
    println!("cargo:rerun-if-env-changed=SPLITVM_LD");

    let out_guests = out_dir.join("guests");
    println!(
        "cargo:rustc-env=SPLITVM_MICRO_GUESTS_DIR={}",
        out_guests.display()
    );

    let assembler = env::var("SPLITVM_AS").unwrap_or_else(|_| "as".to_string());
    let linker = env::var("SPLITVM_LD").unwrap_or_else(|_| "ld".to_string());
    check_tool(&assembler, "SPLITVM_AS");
    check_tool(&linker, "SPLITVM_LD");

    let obj_dir = out_dir.join("guest-obj");
    create_dir(&obj_dir);
    create_dir(&out_guests);

    let runtime: Vec<PathBuf> = sources(&lib_dir)
        .iter()
        .map(|src| assemble(&assembler, src, &lib_dir, &obj_dir, "lib_"))
        .collect();
    let script = lib_dir.join("guest.ld");

    let target_guests = target_dir(&out_dir).map(|t| t.join("micro-guests"));
    if let Some(dir) = &target_guests {
        create_dir(dir);
    }

    for src in sources(&guests_dir) {
        let name = src
            .file_stem()
            .and_then(OsStr::to_str)
            .expect("guest file name")
            .to_string();
        let obj = assemble(&assembler, &src, &lib_dir, &obj_dir, "");
        let elf = out_guests.join(format!("{name}.elf"));
        let mut cmd = Command::new(&linker);
        cmd.args(["-m", "elf_i386", "-nostdlib", "--build-id=none", "-T"])
            .arg(&script)
            .arg("-o")
            .arg(&elf)
            .arg(&obj)
            .args(&runtime);
        run(cmd, &format!("link micro-guest {name}"));
        if let Some(dir) = &target_guests {
            let dest = dir.join(format!("{name}.elf"));
            if let Err(e) = fs::copy(&elf, &dest) {
                panic!("copying {} to {}: {e}", elf.display(), dest.display());
            }
        }
    }
}

/// The `*.S` files directly in `dir`, sorted.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.is_file() && p.extension() == Some(OsStr::new("S")))
        .collect();
    files.sort();
    files
}

fn assemble(assembler: &str, src: &Path, include: &Path, obj_dir: &Path, prefix: &str) -> PathBuf {
    let stem = src
        .file_stem()
        .and_then(OsStr::to_str)
        .expect("source file name");
    let obj = obj_dir.join(format!("{prefix}{stem}.o"));
    let mut cmd = Command::new(assembler);
    cmd.arg("--32")
        .arg("-I")
        .arg(include)
        .arg("-o")
        .arg(&obj)
        .arg(src);
    run(cmd, &format!("assemble {}", src.display()));
    obj
}

fn run(mut cmd: Command, what: &str) {
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot {what}: running {cmd:?}: {e}"));
    if !output.status.success() {
        panic!(
            "cannot {what}: {cmd:?} {}\n{}{}",
            describe(output.status),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

fn describe(status: ExitStatus) -> String {
    match status.code() {
        Some(code) => format!("exited with status {code}"),
        None => "was killed by a signal".to_string(),
    }
}

/// Fails the build with a clear message if `tool` cannot be run.
fn check_tool(tool: &str, var: &str) {
    match Command::new(tool).arg("--version").output() {
        Ok(out) if out.status.success() => {}
        _ => panic!(
            "splitvm's micro-guests (tests/guests) need the GNU assembler and linker: \
             `{tool}` could not be run. Install binutils (Debian/Ubuntu: \
             `apt-get install binutils`), or point {var} at a working tool."
        ),
    }
}

fn create_dir(dir: &Path) {
    fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
}

/// `<target>` from `<target>/[<triple>/]<profile>/build/<pkg>-<hash>/out`.
fn target_dir(out_dir: &Path) -> Option<PathBuf> {
    // out -> <pkg>-<hash> -> build -> <profile>
    let build = out_dir.parent()?.parent()?;
    if build.file_name() != Some(OsStr::new("build")) {
        return None;
    }
    let mut dir = build.parent()?.parent()?;
    // With an explicit --target, cargo puts the profiles under <target>/<triple>.
    if let Ok(triple) = env::var("TARGET") {
        if dir.file_name() == Some(OsStr::new(triple.as_str())) {
            dir = dir.parent()?;
        }
    }
    Some(dir.to_path_buf())
}
