//! GGUF v2/v3 reader over a memory map. The file is untrusted: every count, length, offset
//! and size is checked (with checked arithmetic) before it is used, and nothing is
//! allocated in proportion to a number the file claims unless the file is long enough to
//! hold that many items.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use retort_kernels::DType;

use super::value::{Array, Value, ValueType};
use super::{TensorInfo, DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_DIMS};
use crate::error::{Error, Result};

/// Longest key or string value accepted (chat templates are tens of KB; 64 MiB is generous).
const MAX_STRING_BYTES: usize = 64 << 20;
/// Longest tensor name accepted. ggml itself stops at 63 bytes; be lenient when reading.
const MAX_TENSOR_NAME_BYTES: usize = 1024;
/// Arrays of arrays are legal; deeper nesting than this is an attack, not a model.
const MAX_ARRAY_DEPTH: usize = 3;

/// An open GGUF file: metadata, tensor table, and the mapped bytes the tensors view.
pub struct GgufFile {
    path: PathBuf,
    map: Option<Mmap>,
    pub version: u32,
    metadata: Vec<(String, Value)>,
    metadata_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    alignment: usize,
    data_start: usize,
    data_checked: bool,
}

impl GgufFile {
    /// Opens a model file: header, metadata and tensor table are parsed and every tensor's
    /// data range is checked to lie inside the file, without overlaps.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let mut file = Self::open_header(path)?;
        file.check_tensor_data()?;
        file.data_checked = true;
        Ok(file)
    }

    /// Opens only the header: metadata and tensor table, without requiring the tensor data
    /// to be present (a truncated download still yields its tokenizer and hyperparameters).
    /// [`GgufFile::tensor_data`] still checks each range before returning it.
    pub fn open_header(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref().to_path_buf();
        let map = crate::mapped_file::map_read_only(&path).map_err(|source| Error::Io { path: path.clone(), source })?;
        let bytes: &[u8] = map.as_deref().unwrap_or(&[]);
        let header = parse_header(bytes).map_err(|message| Error::Format { path: path.clone(), message })?;
        let metadata_index = header.metadata.iter().enumerate().map(|(i, (k, _))| (k.clone(), i)).collect();
        let tensor_index = header.tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        Ok(GgufFile {
            path,
            map,
            version: header.version,
            metadata: header.metadata,
            metadata_index,
            tensors: header.tensors,
            tensor_index,
            alignment: header.alignment,
            data_start: header.data_start,
            data_checked: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file_len(&self) -> usize {
        self.map.as_ref().map_or(0, |m| m.len())
    }

    pub fn alignment(&self) -> usize {
        self.alignment
    }

    /// Byte offset of the tensor data section in the file.
    pub fn data_start(&self) -> usize {
        self.data_start
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// Metadata in file order.
    pub fn metadata(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.metadata.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The tensor's bytes, a view into the map.
    pub fn tensor_data(&self, tensor: &TensorInfo) -> Result<&[u8]> {
        let range = self.data_range(tensor).map_err(|message| self.format_error(message))?;
        Ok(&self.map.as_deref().unwrap_or(&[])[range])
    }

    /// Gives resident pages of a tensor back to the kernel (they are read again from the
    /// file if touched later): a converter streaming through a file keeps its memory flat.
    /// `len` bytes of the tensor's data from byte `offset` on.
    pub fn release_tensor(&self, tensor: &TensorInfo, offset: usize, len: usize) {
        let (Some(map), Ok(range)) = (&self.map, self.data_range(tensor)) else { return };
        if offset.checked_add(len).is_none_or(|end| end > range.len()) {
            return;
        }
        // SAFETY: the map is a read-only view of a file retort does not write; dropping its
        // pages only means they are paged in again from the file on the next access.
        let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, range.start + offset, len) };
    }

    fn data_range(&self, t: &TensorInfo) -> std::result::Result<std::ops::Range<usize>, String> {
        data_range(t, self.data_start, self.file_len())
    }

    /// Every tensor inside the file, no two overlapping (see [`check_tensor_ranges`]).
    fn check_tensor_data(&self) -> Result<()> {
        check_tensor_ranges(&self.tensors, self.data_start, self.file_len()).map_err(|message| self.format_error(message))
    }

    /// Runs the checks of [`GgufFile::open`] (header, metadata, tensor table, every tensor's
    /// data range inside `bytes` and no overlaps) on bytes in memory, without a file.
    /// Returns the tensor count. Used by the fuzz targets.
    pub fn validate_bytes(bytes: &[u8]) -> std::result::Result<usize, String> {
        let header = parse_header(bytes)?;
        check_tensor_ranges(&header.tensors, header.data_start, bytes.len())?;
        Ok(header.tensors.len())
    }

    /// True when [`GgufFile::open`] (not just the header) succeeded.
    pub fn data_checked(&self) -> bool {
        self.data_checked
    }

    fn format_error(&self, message: String) -> Error {
        Error::Format { path: self.path.clone(), message }
    }
}

/// Where a tensor's data lies in a file of `file_len` bytes whose data section starts at
/// `data_start`; an error if the range overflows or runs past the end.
fn data_range(t: &TensorInfo, data_start: usize, file_len: usize) -> std::result::Result<std::ops::Range<usize>, String> {
    let start = usize::try_from(t.offset)
        .ok()
        .and_then(|o| data_start.checked_add(o))
        .ok_or_else(|| format!("tensor '{}' offset {} overflows", t.name, t.offset))?;
    let end = start
        .checked_add(t.n_bytes)
        .ok_or_else(|| format!("tensor '{}' size {} overflows", t.name, t.n_bytes))?;
    if end > file_len {
        return Err(format!(
            "tensor '{}' data [{start}, {end}) lies past the end of the file ({file_len} bytes): the file is truncated or corrupt",
            t.name
        ));
    }
    Ok(start..end)
}

/// Every tensor inside the file, no two overlapping. Reports the first offender in
/// tensor-table order, which is what a truncated download hits first.
fn check_tensor_ranges(tensors: &[TensorInfo], data_start: usize, file_len: usize) -> std::result::Result<(), String> {
    let mut ranges = Vec::with_capacity(tensors.len());
    let mut past_end = 0usize;
    let mut first_error = None;
    for t in tensors {
        match data_range(t, data_start, file_len) {
            Ok(r) => ranges.push((r, &t.name)),
            Err(e) => {
                past_end += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        let others = past_end - 1;
        return Err(if others > 0 { format!("{e} (and {others} more tensors after it)") } else { e });
    }
    ranges.sort_by_key(|(r, _)| (r.start, r.end));
    for pair in ranges.windows(2) {
        let ((a, a_name), (b, b_name)) = (&pair[0], &pair[1]);
        if b.start < a.end {
            return Err(format!(
                "tensors '{a_name}' [{}, {}) and '{b_name}' [{}, {}) overlap",
                a.start, a.end, b.start, b.end
            ));
        }
    }
    Ok(())
}

struct Header {
    version: u32,
    metadata: Vec<(String, Value)>,
    tensors: Vec<TensorInfo>,
    alignment: usize,
    data_start: usize,
}

/// Parses magic, version, metadata and the tensor table; checks each tensor's shape and
/// type but not where its data lies (see [`GgufFile::open`]).
fn parse_header(bytes: &[u8]) -> std::result::Result<Header, String> {
    let mut cur = Cursor { bytes, pos: 0 };
    let magic = cur.u32().map_err(|_| format!("file is {} bytes, too short for a GGUF header", bytes.len()))?;
    if magic != GGUF_MAGIC {
        return Err(format!(
            "bad magic {:?} (expected \"GGUF\")",
            String::from_utf8_lossy(&magic.to_le_bytes())
        ));
    }
    let version = cur.u32()?;
    if !(2..=3).contains(&version) {
        return Err(format!("unsupported GGUF version {version} (supported: 2, 3)"));
    }
    let tensor_count = cur.u64()?;
    let kv_count = cur.u64()?;
    cur.check_count(kv_count, 8 + 4 + 1, "metadata key-value pairs")?;
    cur.check_count(tensor_count, 8 + 4 + 8 + 4 + 8, "tensors")?;

    let mut metadata: Vec<(String, Value)> = Vec::with_capacity(kv_count as usize);
    let mut seen = HashMap::with_capacity(kv_count as usize);
    for i in 0..kv_count {
        let key = cur.string().map_err(|e| format!("metadata entry {i}: key: {e}"))?;
        let type_id = cur.u32().map_err(|e| format!("metadata '{key}': {e}"))?;
        let value = cur.value(type_id, 0).map_err(|e| format!("metadata '{key}': {e}"))?;
        if seen.insert(key.clone(), i).is_some() {
            return Err(format!("metadata key '{key}' appears twice"));
        }
        metadata.push((key, value));
    }

    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some((_, v)) => {
            let a = v.as_u64().ok_or("general.alignment is not an integer")?;
            if a == 0 || !a.is_power_of_two() || a > (1 << 30) {
                return Err(format!("general.alignment {a} is not a power of two up to 2^30"));
            }
            a as usize
        }
    };

    let mut tensors = Vec::with_capacity(tensor_count as usize);
    let mut names = HashMap::with_capacity(tensor_count as usize);
    for i in 0..tensor_count {
        let t = cur.tensor_info(alignment).map_err(|e| format!("tensor {i}: {e}"))?;
        if names.insert(t.name.clone(), i).is_some() {
            return Err(format!("tensor name '{}' appears twice", t.name));
        }
        tensors.push(t);
    }
    let data_start = cur.pos.checked_next_multiple_of(alignment).ok_or("data offset overflows")?;
    Ok(Header { version, metadata, tensors, alignment, data_start })
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        if n > self.remaining() {
            return Err(format!(
                "needs {n} bytes at offset {} but the file ends at {}",
                self.pos,
                self.bytes.len()
            ));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> std::result::Result<[u8; N], String> {
        Ok(self.take(N)?.try_into().expect("take returned N bytes"))
    }

    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A claimed count of items, each at least `min_item_bytes` long, must fit in what is
    /// left of the file: this bounds every allocation by the file's real size.
    fn check_count(&self, count: u64, min_item_bytes: usize, what: &str) -> std::result::Result<(), String> {
        let fits = (count as u128) * (min_item_bytes as u128) <= self.remaining() as u128;
        if !fits {
            return Err(format!(
                "claims {count} {what}, more than the {} bytes left in the file can hold",
                self.remaining()
            ));
        }
        Ok(())
    }

    fn string(&mut self) -> std::result::Result<String, String> {
        let len = self.u64()?;
        if len > MAX_STRING_BYTES as u64 {
            return Err(format!("string of {len} bytes exceeds the {MAX_STRING_BYTES}-byte limit"));
        }
        let at = self.pos;
        let raw = self.take(len as usize)?;
        match std::str::from_utf8(raw) {
            Ok(s) => Ok(s.to_owned()),
            Err(e) => Err(format!("string at offset {at} is not valid UTF-8 ({e})")),
        }
    }

    fn value(&mut self, type_id: u32, depth: usize) -> std::result::Result<Value, String> {
        let ty = ValueType::from_id(type_id).ok_or_else(|| format!("unknown value type id {type_id}"))?;
        Ok(match ty {
            ValueType::U8 => Value::U8(self.array::<1>()?[0]),
            ValueType::I8 => Value::I8(self.array::<1>()?[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array()?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array()?)),
            ValueType::U32 => Value::U32(self.u32()?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array()?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array()?)),
            ValueType::Bool => Value::Bool(self.bool()?),
            ValueType::String => Value::String(self.string()?),
            ValueType::Array => Value::Array(self.array_value(depth)?),
            ValueType::U64 => Value::U64(self.u64()?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array()?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array()?)),
        })
    }

    fn bool(&mut self) -> std::result::Result<bool, String> {
        match self.array::<1>()?[0] {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(format!("bool byte {b} at offset {} is neither 0 nor 1", self.pos - 1)),
        }
    }

    fn array_value(&mut self, depth: usize) -> std::result::Result<Array, String> {
        if depth >= MAX_ARRAY_DEPTH {
            return Err(format!("arrays nested deeper than {MAX_ARRAY_DEPTH}"));
        }
        let type_id = self.u32()?;
        let ty = ValueType::from_id(type_id).ok_or_else(|| format!("array of unknown value type id {type_id}"))?;
        let count = self.u64()?;
        self.check_count(count, ty.min_encoded_size(), "array items")?;
        let n = count as usize;
        fn collect<T>(n: usize, mut item: impl FnMut() -> std::result::Result<T, String>) -> std::result::Result<Vec<T>, String> {
            let mut v = Vec::with_capacity(n);
            for i in 0..n {
                v.push(item().map_err(|e| format!("array item {i}: {e}"))?);
            }
            Ok(v)
        }
        Ok(match ty {
            ValueType::U8 => Array::U8(self.take(n)?.to_vec()),
            ValueType::I8 => Array::I8(self.take(n)?.iter().map(|&b| b as i8).collect()),
            ValueType::U16 => Array::U16(collect(n, || Ok(u16::from_le_bytes(self.array()?)))?),
            ValueType::I16 => Array::I16(collect(n, || Ok(i16::from_le_bytes(self.array()?)))?),
            ValueType::U32 => Array::U32(collect(n, || self.u32())?),
            ValueType::I32 => Array::I32(collect(n, || Ok(i32::from_le_bytes(self.array()?)))?),
            ValueType::F32 => Array::F32(collect(n, || Ok(f32::from_le_bytes(self.array()?)))?),
            ValueType::Bool => Array::Bool(collect(n, || self.bool())?),
            ValueType::String => Array::String(collect(n, || self.string())?),
            ValueType::Array => Array::Array(collect(n, || self.array_value(depth + 1))?),
            ValueType::U64 => Array::U64(collect(n, || self.u64())?),
            ValueType::I64 => Array::I64(collect(n, || Ok(i64::from_le_bytes(self.array()?)))?),
            ValueType::F64 => Array::F64(collect(n, || Ok(f64::from_le_bytes(self.array()?)))?),
        })
    }

    fn tensor_info(&mut self, alignment: usize) -> std::result::Result<TensorInfo, String> {
        let name = self.string()?;
        if name.len() > MAX_TENSOR_NAME_BYTES {
            return Err(format!("tensor name of {} bytes is too long", name.len()));
        }
        let in_tensor = |e: String| format!("'{name}': {e}");
        let n_dims = self.u32().map_err(in_tensor)?;
        if n_dims == 0 || n_dims as usize > MAX_DIMS {
            return Err(in_tensor(format!("{n_dims} dimensions (1 to {MAX_DIMS} allowed)")));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(self.u64().map_err(in_tensor)?);
        }
        let type_id = self.u32().map_err(in_tensor)?;
        let dtype = DType::from_ggml_id(type_id)
            .ok_or_else(|| in_tensor(format!("unknown or unsupported tensor type id {type_id}")))?;
        let offset = self.u64().map_err(in_tensor)?;
        if offset % alignment as u64 != 0 {
            return Err(in_tensor(format!("data offset {offset} is not a multiple of the alignment {alignment}")));
        }
        let n_bytes = tensor_bytes(&dims, dtype).map_err(in_tensor)?;
        Ok(TensorInfo { name, dims, dtype, offset, n_bytes })
    }
}

/// Bytes a tensor of these dims and type occupies; rows must be whole blocks.
pub(crate) fn tensor_bytes(dims: &[u64], dtype: DType) -> std::result::Result<usize, String> {
    let too_big = || format!("shape {dims:?} is too large");
    let row_len = usize::try_from(dims[0]).map_err(|_| too_big())?;
    let row_bytes = dtype.row_bytes(row_len).ok_or_else(|| {
        format!(
            "row length {row_len} is not a multiple of {}'s block size {}",
            dtype.name(),
            dtype.block_size()
        )
    })?;
    let mut bytes = row_bytes;
    let mut elements = dims[0];
    for &d in &dims[1..] {
        let d_usize = usize::try_from(d).map_err(|_| too_big())?;
        bytes = bytes.checked_mul(d_usize).ok_or_else(too_big)?;
        elements = elements.checked_mul(d).ok_or_else(too_big)?;
    }
    // ggml counts elements in i64.
    if elements > i64::MAX as u64 || bytes > isize::MAX as usize {
        return Err(too_big());
    }
    Ok(bytes)
}
