//! Writing a GGUF tensor by tensor: each tensor's rows are read as f32 in chunks,
//! quantized in parallel, and written in order, so memory holds a few chunks, never a
//! whole model (nor a whole embedding table). A tensor already in its target type is
//! copied byte for byte.

use std::io::Write;
use std::time::Instant;

use rayon::prelude::*;
use retort_kernels::DType;
use retort_models::gguf::{GgufWriter, Value};

use crate::error::{Error, Result};

/// Where a tensor's values come from.
pub trait TensorSource: Sync {
    fn name(&self) -> &str;
    /// ggml order (row length first).
    fn dims(&self) -> &[u64];
    /// The type the values are stored in.
    fn dtype(&self) -> DType;
    /// Rows [first, first + out.len() / row_len) as f32.
    fn rows_f32(&self, first: usize, out: &mut [f32]) -> Result<()>;
    /// The stored bytes, when they are already in `dtype()` (enables exact copies).
    fn raw(&self) -> Option<&[u8]>;
    /// Called once the tensor is written: a mapped source can give its pages back.
    fn release(&self) {}
    /// Called once rows [first, first + rows) are converted, for the same reason: memory
    /// stays flat even through a tensor larger than it (an embedding table of a large vocab).
    fn release_rows(&self, _first: usize, _rows: usize) {}
}

/// Rows quantized per parallel task: 256 rows of a 4k-wide layer are 4 MiB of f32.
const ROWS_PER_TASK: usize = 256;

pub struct Progress {
    enabled: bool,
    start: Instant,
    last_draw: Option<Instant>,
    total_bytes: u64,
    done_bytes: u64,
    total_tensors: usize,
    done_tensors: usize,
}

impl Progress {
    /// Draws on stderr only when stdout is a terminal (quiet in scripts and pipes).
    pub fn new(total_tensors: usize, total_bytes: u64) -> Progress {
        use std::io::IsTerminal;
        Progress { enabled: std::io::stdout().is_terminal(), start: Instant::now(), last_draw: None, total_bytes, done_bytes: 0, total_tensors, done_tensors: 0 }
    }

    fn advance(&mut self, bytes: u64, tensor_done: bool) {
        self.done_bytes += bytes;
        self.done_tensors += tensor_done as usize;
        let finished = self.done_tensors == self.total_tensors;
        // A few redraws a second are enough for the eye and cost nothing.
        let due = self.last_draw.is_none_or(|t| t.elapsed().as_millis() >= 200);
        if !self.enabled || !(due || finished) {
            return;
        }
        self.last_draw = Some(Instant::now());
        let secs = self.start.elapsed().as_secs_f64().max(1e-3);
        let rate = self.done_bytes as f64 / secs;
        let eta = (self.total_bytes.saturating_sub(self.done_bytes)) as f64 / rate.max(1.0);
        eprint!(
            "\r[{}/{} tensors] {:.2}/{:.2} GB  {:.0} MB/s  ETA {:.0}s   ",
            self.done_tensors,
            self.total_tensors,
            self.done_bytes as f64 / 1e9,
            self.total_bytes as f64 / 1e9,
            rate / 1e6,
            eta
        );
        if finished {
            eprintln!();
        }
    }
}

/// Writes `metadata` and each source converted to its target type into `path` (atomically:
/// nothing appears under `path` unless the whole file was written).
pub fn write_gguf(path: &std::path::Path, metadata: Vec<(String, Value)>, tensors: &[(&dyn TensorSource, DType)]) -> Result<()> {
    let mut writer = GgufWriter::new();
    for (k, v) in metadata {
        writer.set(k, v)?;
    }
    for (source, target) in tensors {
        writer.add_tensor(source.name(), source.dims(), *target)?;
    }
    let total_bytes = tensors.iter().map(|(s, _)| s.dims().iter().product::<u64>() * 4).sum();
    let mut progress = Progress::new(tensors.len(), total_bytes);
    let mut failure: Option<Error> = None;
    let result = writer.write(path, |i, _, out| {
        let (source, target) = tensors[i];
        let written = write_tensor(source, target, out, &mut progress);
        source.release();
        match written {
            Ok(()) => Ok(()),
            Err(e) => {
                let message = e.to_string();
                failure = Some(e);
                Err(std::io::Error::other(message))
            }
        }
    });
    match (result, failure) {
        (Ok(()), _) => Ok(()),
        (Err(_), Some(e)) => Err(e),
        (Err(e), None) => Err(e.into()),
    }
}

fn write_tensor(source: &dyn TensorSource, target: DType, out: &mut dyn Write, progress: &mut Progress) -> Result<()> {
    let io = |e: std::io::Error| Error::Checkpoint(format!("writing tensor '{}': {e}", source.name()));
    let row_len = source.dims()[0] as usize;
    let n_rows: usize = source.dims()[1..].iter().product::<u64>() as usize;
    let f32_bytes = (row_len * n_rows * 4) as u64;
    if n_rows == 0 {
        progress.advance(0, true);
        return Ok(());
    }
    if source.dtype() == target {
        if let Some(raw) = source.raw() {
            out.write_all(raw).map_err(io)?;
            progress.advance(f32_bytes, true);
            return Ok(());
        }
    }
    let row_bytes = target.row_bytes(row_len).ok_or_else(|| {
        Error::Checkpoint(format!("tensor '{}': row length {row_len} does not fit {}", source.name(), target.name()))
    })?;
    let quantize = target
        .traits()
        .from_f32
        .ok_or_else(|| Error::Checkpoint(format!("no quantizer for {} (tensor '{}')", target.name(), source.name())))?;
    // Batches are decoded and quantized in parallel on a producer thread while this thread
    // writes the previous one: reading, arithmetic and writing overlap, and memory holds
    // three batches at most (one being filled, one in the channel, one being written).
    let batch_rows = ROWS_PER_TASK * rayon::current_num_threads().max(1);
    let (to_writer, filled) = std::sync::mpsc::sync_channel::<Result<(usize, Vec<u8>)>>(1);
    let (recycle, empty) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::scope(|scope| -> Result<()> {
        scope.spawn(move || {
            for first in (0..n_rows).step_by(batch_rows) {
                let rows = batch_rows.min(n_rows - first);
                let mut bytes = empty.try_recv().unwrap_or_default();
                bytes.resize(rows * row_bytes, 0);
                let done = bytes.par_chunks_mut(ROWS_PER_TASK * row_bytes).enumerate().try_for_each_init(Vec::new, |values, (task, dst)| {
                    let task_rows = dst.len() / row_bytes;
                    values.resize(task_rows * row_len, 0f32);
                    source.rows_f32(first + task * ROWS_PER_TASK, values)?;
                    for (row, out) in values.chunks_exact(row_len).zip(dst.chunks_exact_mut(row_bytes)) {
                        quantize(row, out);
                    }
                    Ok(())
                });
                source.release_rows(first, rows);
                // A closed channel means the writer gave up: stop producing.
                if to_writer.send(done.map(|()| (rows, bytes))).is_err() {
                    return;
                }
            }
        });
        // Owned here so that an early return (a failed write) hangs up on the producer before
        // the scope waits for it.
        let (filled, recycle) = (filled, recycle);
        let mut written = 0;
        while written < n_rows {
            // The producer only hangs up early after sending an error, received first.
            let (rows, bytes) = filled.recv().map_err(|_| Error::Checkpoint(format!("tensor '{}': quantizer stopped", source.name())))??;
            out.write_all(&bytes).map_err(io)?;
            written += rows;
            progress.advance((rows * row_len * 4) as u64, written == n_rows);
            let _ = recycle.send(bytes);
        }
        Ok(())
    })?;
    Ok(())
}
