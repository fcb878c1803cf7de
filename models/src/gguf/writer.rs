//! Streaming GGUF writer. The header is written first (all tensor shapes are known up
//! front), then each tensor's bytes in table order, produced on demand by the caller, so
//! memory never holds more than one tensor. The file appears under its final name only
//! when complete: it is written to a temporary sibling and renamed.

use std::io::{self, Write};
use std::path::Path;

use retort_kernels::DType;

use super::reader::tensor_bytes;
use super::value::{Array, Value};
use super::{TensorInfo, DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_DIMS};
use crate::atomic_file::write_atomically;
use crate::error::{Error, Result};

/// ggml's GGML_MAX_NAME is 64 including the terminating NUL.
const MAX_TENSOR_NAME_BYTES: usize = 63;

#[derive(Default)]
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    tensors: Vec<TensorInfo>,
    next_offset: u64,
}

impl GgufWriter {
    pub fn new() -> GgufWriter {
        GgufWriter::default()
    }

    fn alignment(&self) -> usize {
        self.metadata
            .iter()
            .find(|(k, _)| k == "general.alignment")
            .and_then(|(_, v)| v.as_u64())
            .map_or(DEFAULT_ALIGNMENT, |a| a as usize)
    }

    /// Sets a metadata value (replacing an earlier one under the same key, keeping its place).
    pub fn set(&mut self, key: impl Into<String>, value: Value) -> Result<()> {
        let key = key.into();
        if key == "general.alignment" {
            let ok = matches!(value, Value::U32(a) if a.is_power_of_two() && a <= 1 << 30);
            if !ok {
                return Err(Error::Model(format!("general.alignment must be a u32 power of two, got {value:?}")));
            }
            if !self.tensors.is_empty() {
                return Err(Error::Model("general.alignment must be set before tensors are added".into()));
            }
        }
        match self.metadata.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.metadata.push((key, value)),
        }
        Ok(())
    }

    /// Declares the next tensor. `dims` are in ggml order (row length first).
    pub fn add_tensor(&mut self, name: &str, dims: &[u64], dtype: DType) -> Result<()> {
        let bad = |m: String| Error::Model(format!("tensor '{name}': {m}"));
        if name.len() > MAX_TENSOR_NAME_BYTES {
            return Err(bad(format!("name longer than {MAX_TENSOR_NAME_BYTES} bytes")));
        }
        if dims.is_empty() || dims.len() > MAX_DIMS {
            return Err(bad(format!("{} dimensions (1 to {MAX_DIMS} allowed)", dims.len())));
        }
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(bad("added twice".into()));
        }
        let n_bytes = tensor_bytes(dims, dtype).map_err(bad)?;
        let offset = self.next_offset;
        let end = offset.checked_add(n_bytes as u64).ok_or_else(|| bad("data offset overflows".into()))?;
        self.next_offset = end
            .checked_next_multiple_of(self.alignment() as u64)
            .ok_or_else(|| bad("data offset overflows".into()))?;
        self.tensors.push(TensorInfo { name: name.to_owned(), dims: dims.to_vec(), dtype, offset, n_bytes });
        Ok(())
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// Writes the file. `write_tensor(i, info, out)` must write exactly `info.n_bytes`
    /// bytes of tensor `i`. On any error the partial file is removed.
    pub fn write(
        &self,
        path: impl AsRef<Path>,
        mut write_tensor: impl FnMut(usize, &TensorInfo, &mut dyn Write) -> io::Result<()>,
    ) -> Result<()> {
        let path = path.as_ref();
        let alignment = self.alignment() as u64;
        write_atomically(path, |out| {
            let mut written = self.write_header(out)?;
            written = pad_to(out, written, alignment)?;
            let data_start = written;
            for (i, t) in self.tensors.iter().enumerate() {
                written = pad_to(out, written, alignment)?;
                debug_assert_eq!(written - data_start, t.offset);
                let mut counted = CountingWriter { inner: out, count: 0 };
                write_tensor(i, t, &mut counted)?;
                if counted.count != t.n_bytes as u64 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("tensor '{}': {} bytes written, {} expected", t.name, counted.count, t.n_bytes),
                    ));
                }
                written += counted.count;
            }
            Ok(())
        })
        .map_err(|source| Error::Io { path: path.to_path_buf(), source })
    }

    fn write_header(&self, out: &mut impl Write) -> io::Result<u64> {
        let mut w = CountingWriter { inner: out, count: 0 };
        w.write_all(&GGUF_MAGIC.to_le_bytes())?;
        w.write_all(&3u32.to_le_bytes())?;
        w.write_all(&(self.tensors.len() as u64).to_le_bytes())?;
        w.write_all(&(self.metadata.len() as u64).to_le_bytes())?;
        for (key, value) in &self.metadata {
            write_string(&mut w, key)?;
            w.write_all(&(value.value_type() as u32).to_le_bytes())?;
            write_value(&mut w, value)?;
        }
        for t in &self.tensors {
            write_string(&mut w, &t.name)?;
            w.write_all(&(t.dims.len() as u32).to_le_bytes())?;
            for d in &t.dims {
                w.write_all(&d.to_le_bytes())?;
            }
            w.write_all(&t.dtype.ggml_id().to_le_bytes())?;
            w.write_all(&t.offset.to_le_bytes())?;
        }
        Ok(w.count)
    }
}

fn pad_to(out: &mut impl Write, written: u64, alignment: u64) -> io::Result<u64> {
    let target = written.next_multiple_of(alignment);
    let zeros = [0u8; 64];
    let mut left = target - written;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        out.write_all(&zeros[..n])?;
        left -= n as u64;
    }
    Ok(target)
}

struct CountingWriter<'a, W: Write + ?Sized> {
    inner: &'a mut W,
    count: u64,
}

impl<W: Write + ?Sized> Write for CountingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn write_string(w: &mut impl Write, s: &str) -> io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

fn write_value(w: &mut impl Write, v: &Value) -> io::Result<()> {
    match v {
        Value::U8(x) => w.write_all(&x.to_le_bytes()),
        Value::I8(x) => w.write_all(&x.to_le_bytes()),
        Value::U16(x) => w.write_all(&x.to_le_bytes()),
        Value::I16(x) => w.write_all(&x.to_le_bytes()),
        Value::U32(x) => w.write_all(&x.to_le_bytes()),
        Value::I32(x) => w.write_all(&x.to_le_bytes()),
        Value::F32(x) => w.write_all(&x.to_le_bytes()),
        Value::Bool(x) => w.write_all(&[*x as u8]),
        Value::String(s) => write_string(w, s),
        Value::Array(a) => write_array(w, a),
        Value::U64(x) => w.write_all(&x.to_le_bytes()),
        Value::I64(x) => w.write_all(&x.to_le_bytes()),
        Value::F64(x) => w.write_all(&x.to_le_bytes()),
    }
}

fn write_array(w: &mut impl Write, a: &Array) -> io::Result<()> {
    w.write_all(&(a.element_type() as u32).to_le_bytes())?;
    w.write_all(&(a.len() as u64).to_le_bytes())?;
    fn each<T>(w: &mut impl Write, items: &[T], f: impl Fn(&T) -> Vec<u8>) -> io::Result<()> {
        items.iter().try_for_each(|x| w.write_all(&f(x)))
    }
    match a {
        Array::U8(v) => w.write_all(v),
        Array::I8(v) => each(w, v, |x| x.to_le_bytes().to_vec()),
        Array::U16(v) => each(w, v, |x| x.to_le_bytes().to_vec()),
        Array::I16(v) => each(w, v, |x| x.to_le_bytes().to_vec()),
        Array::U32(v) => each(w, v, |x| x.to_le_bytes().to_vec()),
        Array::I32(v) => each(w, v, |x| x.to_le_bytes().to_vec()),
        Array::F32(v) => each(w, v, |x| x.to_le_bytes().to_vec()),
        Array::Bool(v) => each(w, v, |x| vec![*x as u8]),
        Array::U64(v) => each(w, v, |x| x.to_le_bytes().to_vec()),
        Array::I64(v) => each(w, v, |x| x.to_le_bytes().to_vec()),
        Array::F64(v) => each(w, v, |x| x.to_le_bytes().to_vec()),
        Array::String(v) => v.iter().try_for_each(|s| write_string(w, s)),
        Array::Array(v) => v.iter().try_for_each(|inner| write_array(w, inner)),
    }
}
