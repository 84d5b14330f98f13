//! Writing output files a user names (`--stats-json`): a new or regular
//! file is replaced atomically (temporary file, then rename), so a reader
//! never sees half a report; anything else is written in place and never
//! replaced: a symlink is followed (the link stays), a character device,
//! FIFO or socket is opened and written (`/dev/stdout`, a pipe), and a FIFO
//! without a reader is an error instead of a hang.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Write `data` to `path` as described in the module documentation.
pub fn write_output(path: &Path, data: &[u8]) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => replace_atomically(path, data),
        Err(e) => Err(e),
        Ok(m) if m.file_type().is_file() => replace_atomically(path, data),
        Ok(m) if m.file_type().is_symlink() => match fs::metadata(path) {
            Ok(t) if t.is_file() => replace_atomically(&fs::canonicalize(path)?, data),
            Ok(t) if t.is_dir() => Err(io::Error::from_raw_os_error(libc::EISDIR)),
            Ok(_) => write_in_place(path, data),
            Err(e) => Err(e),
        },
        Ok(m) if m.is_dir() => Err(io::Error::from_raw_os_error(libc::EISDIR)),
        Ok(_) => write_in_place(path, data),
    }
}

fn replace_atomically(path: &Path, data: &[u8]) -> io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "output".into());
    let tmp = path.with_file_name(format!(".{name}.tmp.{}", std::process::id()));
    fs::write(&tmp, data)?;
    fs::rename(&tmp, path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

fn write_in_place(path: &Path, data: &[u8]) -> io::Result<()> {
    // O_NONBLOCK: opening a FIFO with no reader fails (ENXIO) at once.
    let mut f = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    if f.metadata()?.file_type().is_fifo() {
        // Blocking writes from here on: a reader exists.
        // SAFETY: F_SETFL on a descriptor we own.
        unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&f), libc::F_SETFL, 0) };
    }
    f.write_all(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;
    use std::path::PathBuf;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("splitvm-output-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn new_and_regular_files_are_replaced_whole() {
        let d = tmpdir("reg");
        let p = d.join("r.json");
        write_output(&p, b"first").unwrap();
        write_output(&p, b"second").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"second");
        assert_eq!(
            fs::read_dir(&d).unwrap().count(),
            1,
            "no temporary file left"
        );
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_symlink_stays_a_symlink_and_its_target_gets_the_data() {
        let d = tmpdir("link");
        fs::write(d.join("target"), b"old").unwrap();
        std::os::unix::fs::symlink(d.join("target"), d.join("link")).unwrap();
        write_output(&d.join("link"), b"new").unwrap();
        assert!(fs::symlink_metadata(d.join("link"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read(d.join("target")).unwrap(), b"new");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_fifo_without_a_reader_is_an_error_not_a_hang_and_with_one_gets_the_data() {
        let d = tmpdir("fifo");
        let p = d.join("f");
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = write_output(&p, b"x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENXIO));
        let reader = {
            let p = p.clone();
            std::thread::spawn(move || fs::read(p).unwrap())
        };
        // The reader may not have opened yet: retry briefly.
        let mut ok = false;
        for _ in 0..200 {
            if write_output(&p, b"report").is_ok() {
                ok = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(ok);
        assert_eq!(reader.join().unwrap(), b"report");
        assert!(fs::symlink_metadata(&p).unwrap().file_type().is_fifo());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_directory_is_refused() {
        let d = tmpdir("dir");
        assert_eq!(
            write_output(&d, b"x").unwrap_err().raw_os_error(),
            Some(libc::EISDIR)
        );
        fs::remove_dir_all(&d).unwrap();
    }
}
