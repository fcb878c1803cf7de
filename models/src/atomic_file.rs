//! Output files appear whole or not at all: written to a temporary sibling, synced, then
//! renamed over the final name. An interrupted or failed write leaves no file behind.

use std::fs::File;
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};

pub fn write_atomically(path: &Path, write: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>) -> io::Result<()> {
    let tmp = temporary_sibling(path);
    let result = (|| {
        let mut out = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
        write(&mut out)?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()
    })();
    match result {
        Ok(()) => std::fs::rename(&tmp, path),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// `model.gguf` -> `model.gguf.<pid>.tmp` in the same directory, so the rename is atomic.
fn temporary_sibling(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".{}.tmp", std::process::id()));
    path.with_file_name(name)
}
