//! Output files appear whole or not at all: written to a temporary sibling, synced, then
//! renamed over the final name. A failed write removes the temporary file; a killed
//! process cannot, and leaves `NAME.retort-tmp`, which the next write to NAME replaces.
//! Either way the final name never holds a partial file.

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

/// `model.gguf` -> `model.gguf.retort-tmp` in the same directory, so the rename is atomic.
/// The name is fixed (not per process) so a killed run's leftover is reused, not piled up.
fn temporary_sibling(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".retort-tmp");
    path.with_file_name(name)
}
