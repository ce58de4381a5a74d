//! Atomic file replacement: write a temporary file next to the target, fsync it, rename it
//! over the target. Readers see the old file or the complete new one, never a partial one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Error, Result};

/// Makes temporary names unique between concurrent writers of one process.
static NEXT_TEMP: AtomicU64 = AtomicU64::new(0);

/// Writes `path` with the bytes `write` produces. On any error the target is untouched and the
/// temporary file is removed.
pub fn write_atomically(path: impl AsRef<Path>, write: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> Result<()> {
    let path = path.as_ref();
    let temp = temp_path(path)?;
    // `create_new` so that a stale or foreign file of that name is never clobbered (or removed below).
    let file = OpenOptions::new().write(true).create_new(true).open(&temp).map_err(|e| Error::io(path, e))?;
    let written = fill_and_rename(file, &temp, path, write);
    if let Err(e) = written {
        // Best effort: the write error is what the caller needs to see.
        let _ = fs::remove_file(&temp);
        return Err(Error::io(path, e));
    }
    sync_parent(path).map_err(|e| Error::io(path, e))
}

fn fill_and_rename(
    file: File,
    temp: &Path,
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    let mut out = BufWriter::new(file);
    write(&mut out)?;
    let file = out.into_inner().map_err(io::IntoInnerError::into_error)?;
    file.sync_all()?;
    fs::rename(temp, path)
}

/// Refuses a folder this process cannot create files in, by creating and removing one: mode bits
/// do not tell (root ignores them, a read-only mount overrides them). For refusing an output
/// before the slow work that would produce it.
pub fn check_writable(dir: impl AsRef<Path>) -> Result<()> {
    let dir = dir.as_ref();
    let n = NEXT_TEMP.fetch_add(1, Ordering::Relaxed);
    let probe = dir.join(format!(".write-check.{}.{n}.tmp", std::process::id()));
    OpenOptions::new().write(true).create_new(true).open(&probe).map_err(|e| Error::io(dir, e))?;
    fs::remove_file(&probe).map_err(|e| Error::io(&probe, e))
}

/// `.<name>.<pid>.<n>.tmp` in the target's directory: a rename is only atomic within one file system.
fn temp_path(path: &Path) -> Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| Error::format(path, "not a file path"))?;
    let n = NEXT_TEMP.fetch_add(1, Ordering::Relaxed);
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".{}.{n}.tmp", std::process::id()));
    Ok(path.with_file_name(temp_name))
}

/// Makes the rename itself durable: the new directory entry is only on disk once the
/// directory is synced.
fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => File::open(dir)?.sync_all(),
        _ => File::open(".")?.sync_all(),
    }
}
