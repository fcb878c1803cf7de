//! Read-only memory maps of model files.

use std::fs::File;
use std::path::Path;

use memmap2::Mmap;

/// Maps `path` read-only; None for an empty file (mapping one fails on some systems, and
/// an empty file is simply too short for any format).
pub fn map_read_only(path: &Path) -> std::io::Result<Option<Mmap>> {
    let file = File::open(path)?;
    if file.metadata()?.len() == 0 {
        return Ok(None);
    }
    // SAFETY: the map is read-only and retort never writes the files it maps. If another
    // process truncates the file while it is mapped, reads may fault (SIGBUS): the contract
    // of every mmap-based loader, llama.cpp's included.
    Ok(Some(unsafe { Mmap::map(&file) }?))
}
