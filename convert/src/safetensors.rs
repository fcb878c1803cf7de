//! safetensors reader over a memory map, and the decoding of its float tensors to f32.
//!
//! The format: a little-endian u64 N, N bytes of a UTF-8 JSON object, then the data.
//!
//! ```text
//! {"name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}, ...,
//!  "__metadata__": {"format": "pt"}}
//! ```
//!
//! `data_offsets` are relative to the start of the data. The file is untrusted: the header
//! length is capped, every shape product and offset is checked with checked arithmetic, every
//! tensor must lie inside the data and no two may overlap. Unlike serde_json's maps (which
//! keep the last of two equal keys, as Python's json does), the header is read with a visitor
//! that rejects a name given twice: two definitions of one tensor mean the file is corrupt,
//! and silently taking one of them could convert the wrong weights.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use rayon::prelude::*;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::error::{Error, Result};

/// Longest header accepted: the cap of the reference `safetensors` crate (100 MB). Real
/// headers are a few MB even for models with 100k tensors.
pub const MAX_HEADER_BYTES: u64 = 100_000_000;
/// Most dimensions a tensor may have. Weights have up to 5; more is an attack, and the cap
/// keeps a hostile shape from allocating in proportion to the header.
pub const MAX_RANK: usize = 16;
/// Longest tensor name accepted (real ones are under 100 bytes).
pub const MAX_TENSOR_NAME_BYTES: usize = 4096;
/// Length of the little-endian u64 header length that starts the file.
const HEADER_LENGTH_BYTES: usize = 8;
/// Key of the string-to-string metadata table in the header.
const METADATA_KEY: &str = "__metadata__";

/// Element types of safetensors (the byte-sized ones; the sub-byte F4/F6 types are refused
/// as unknown until a model needs them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StDType {
    Bool,
    U8,
    I8,
    F8E4M3,
    F8E5M2,
    F8E8M0,
    I16,
    U16,
    F16,
    BF16,
    I32,
    U32,
    F32,
    I64,
    U64,
    F64,
}

impl StDType {
    pub const ALL: [StDType; 16] = [
        StDType::Bool,
        StDType::U8,
        StDType::I8,
        StDType::F8E4M3,
        StDType::F8E5M2,
        StDType::F8E8M0,
        StDType::I16,
        StDType::U16,
        StDType::F16,
        StDType::BF16,
        StDType::I32,
        StDType::U32,
        StDType::F32,
        StDType::I64,
        StDType::U64,
        StDType::F64,
    ];

    /// The name in the header's "dtype" field.
    pub fn name(self) -> &'static str {
        match self {
            StDType::Bool => "BOOL",
            StDType::U8 => "U8",
            StDType::I8 => "I8",
            StDType::F8E4M3 => "F8_E4M3",
            StDType::F8E5M2 => "F8_E5M2",
            StDType::F8E8M0 => "F8_E8M0",
            StDType::I16 => "I16",
            StDType::U16 => "U16",
            StDType::F16 => "F16",
            StDType::BF16 => "BF16",
            StDType::I32 => "I32",
            StDType::U32 => "U32",
            StDType::F32 => "F32",
            StDType::I64 => "I64",
            StDType::U64 => "U64",
            StDType::F64 => "F64",
        }
    }

    pub fn from_name(name: &str) -> Option<StDType> {
        StDType::ALL.into_iter().find(|d| d.name() == name)
    }

    pub fn size_bytes(self) -> usize {
        match self {
            StDType::Bool | StDType::U8 | StDType::I8 | StDType::F8E4M3 | StDType::F8E5M2 | StDType::F8E8M0 => 1,
            StDType::I16 | StDType::U16 | StDType::F16 | StDType::BF16 => 2,
            StDType::I32 | StDType::U32 | StDType::F32 => 4,
            StDType::I64 | StDType::U64 | StDType::F64 => 8,
        }
    }
}

impl fmt::Display for StDType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One tensor of the header, checked: `end - begin` is exactly the size of `shape` in
/// `dtype`, and `begin..end` lies inside the data section (offsets are relative to it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorEntry {
    pub name: String,
    pub dtype: StDType,
    pub shape: Vec<usize>,
    pub begin: usize,
    pub end: usize,
}

impl TensorEntry {
    pub fn n_bytes(&self) -> usize {
        self.end - self.begin
    }

    /// Element count; cannot overflow, the header check computed it already.
    pub fn n_elements(&self) -> usize {
        self.shape.iter().product()
    }
}

/// An open safetensors file: the checked tensor table and the mapped bytes it views.
pub struct SafetensorsFile {
    path: PathBuf,
    map: Option<Mmap>,
    data_start: usize,
    tensors: Vec<TensorEntry>,
    index: HashMap<String, usize>,
    metadata: BTreeMap<String, String>,
}

impl SafetensorsFile {
    /// Maps the file and checks its header and every tensor's place in the data.
    pub fn open(path: impl AsRef<Path>) -> Result<SafetensorsFile> {
        let path = path.as_ref().to_path_buf();
        let map = retort_models::mapped_file::map_read_only(&path).map_err(|source| Error::Io { path: path.clone(), source })?;
        let header = parse_header(map.as_deref().unwrap_or(&[]))
            .map_err(|message| Error::Safetensors { path: path.clone(), message })?;
        let index = header.tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        Ok(SafetensorsFile { path, map, data_start: header.data_start, tensors: header.tensors, index, metadata: header.metadata })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every tensor, in data-offset order (the order that reads the file front to back).
    pub fn tensors(&self) -> &[TensorEntry] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorEntry> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    /// The `__metadata__` table (empty when the file has none).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// The tensor's bytes, a view into the map (little-endian, in `entry.dtype`).
    ///
    /// # Panics
    /// If `entry` is not one of this file's [`SafetensorsFile::tensors`]: entries of this
    /// file were checked to lie inside it, entries of another file were not.
    pub fn data(&self, entry: &TensorEntry) -> &[u8] {
        let bytes = self.map.as_deref().unwrap_or(&[]);
        let range = self.data_start.checked_add(entry.begin).zip(self.data_start.checked_add(entry.end));
        match range.and_then(|(start, end)| bytes.get(start..end)) {
            Some(data) => data,
            None => panic!("{}: tensor '{}' is not an entry of this file", self.path.display(), entry.name),
        }
    }
}

impl SafetensorsFile {
    /// Lets the OS drop the tensor's pages from this process (they are read again if used
    /// again): a converter done with a tensor keeps its resident memory flat however large
    /// the checkpoint.
    pub fn release(&self, entry: &TensorEntry) {
        self.release_range(entry, 0, entry.n_bytes());
    }

    /// As [`release`](Self::release), for `len` bytes of the tensor from byte `offset` on.
    pub fn release_range(&self, entry: &TensorEntry, offset: usize, len: usize) {
        let Some(map) = &self.map else { return };
        let Some(start) = self.data_start.checked_add(entry.begin).and_then(|s| s.checked_add(offset)) else { return };
        if offset.checked_add(len).is_none_or(|end| end > entry.n_bytes()) {
            return;
        }
        // SAFETY: the map is a read-only view of a file retort does not write; dropping its
        // pages only means they are paged in again from the file on the next access.
        let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, len) };
    }
}

/// Runs the checks of [`SafetensorsFile::open`] on bytes in memory; returns the tensor
/// count. Used by the fuzz target.
pub fn validate_bytes(bytes: &[u8]) -> std::result::Result<usize, String> {
    parse_header(bytes).map(|header| header.tensors.len())
}

// ---- header ---------------------------------------------------------------------------

struct Header {
    /// Sorted by data offset.
    tensors: Vec<TensorEntry>,
    metadata: BTreeMap<String, String>,
    /// Where the data section starts in the file.
    data_start: usize,
}

/// Header length, JSON, tensor entries and their data ranges, all checked against `bytes`.
fn parse_header(bytes: &[u8]) -> std::result::Result<Header, String> {
    let json = header_json(bytes)?;
    let data_start = HEADER_LENGTH_BYTES + json.len();
    let data_len = bytes.len() - data_start;
    let raw = parse_header_json(json)?;
    let mut tensors = raw.tensors.into_iter().map(|(name, info)| check_tensor(name, info, data_len)).collect::<std::result::Result<Vec<_>, _>>()?;
    tensors.sort_by(|a, b| (a.begin, a.end, &a.name).cmp(&(b.begin, b.end, &b.name)));
    check_no_overlaps(&tensors)?;
    Ok(Header { tensors, metadata: raw.metadata, data_start })
}

/// The header's JSON text: the length prefix checked against the cap and the file.
fn header_json(bytes: &[u8]) -> std::result::Result<&str, String> {
    let Some(prefix) = bytes.get(..HEADER_LENGTH_BYTES) else {
        return Err(format!("the file is {} bytes, too short for the 8-byte header length", bytes.len()));
    };
    let n = u64::from_le_bytes(prefix.try_into().expect("8 bytes"));
    if n > MAX_HEADER_BYTES {
        return Err(format!("header length {n} exceeds the cap of {MAX_HEADER_BYTES} bytes"));
    }
    // n <= 100 MB fits any usize we build for, and 8 + n cannot overflow.
    let end = HEADER_LENGTH_BYTES + n as usize;
    let Some(json) = bytes.get(HEADER_LENGTH_BYTES..end) else {
        return Err(format!("header length {n} runs past the end of the file ({} bytes): the file is truncated or corrupt", bytes.len()));
    };
    std::str::from_utf8(json).map_err(|e| format!("header is not UTF-8: {e}"))
}

/// The header as written, before the checks of [`check_tensor`].
#[derive(Default)]
struct RawHeader {
    tensors: Vec<(String, RawTensorInfo)>,
    metadata: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct RawTensorInfo {
    dtype: String,
    shape: Shape,
    data_offsets: (u64, u64),
}

fn parse_header_json(json: &str) -> std::result::Result<RawHeader, String> {
    let mut deserializer = serde_json::Deserializer::from_str(json);
    let raw = deserializer.deserialize_map(HeaderVisitor).map_err(|e| format!("header JSON: {e}"))?;
    // Trailing spaces are allowed (writers pad the header to align the data); anything else
    // after the object is not.
    deserializer.end().map_err(|e| format!("header JSON: {e}"))?;
    Ok(raw)
}

/// Reads the header object entry by entry, so that a name given twice is an error rather
/// than one definition silently replacing the other.
struct HeaderVisitor;

impl<'de> Visitor<'de> for HeaderVisitor {
    type Value = RawHeader;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object of tensors")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<RawHeader, A::Error> {
        let mut header = RawHeader::default();
        let mut seen = HashSet::new();
        while let Some(name) = map.next_key::<String>()? {
            if name.len() > MAX_TENSOR_NAME_BYTES {
                return Err(de::Error::custom(format!("a tensor name of {} bytes exceeds the cap of {MAX_TENSOR_NAME_BYTES}", name.len())));
            }
            if !seen.insert(name.clone()) {
                return Err(de::Error::custom(format!("'{name}' appears twice")));
            }
            if name == METADATA_KEY {
                let metadata: Option<UniqueKeys<String>> = map.next_value_seed(Named { name: &name, value: PhantomData })?;
                header.metadata = metadata.map(|m| m.0).unwrap_or_default();
            } else {
                let info = map.next_value_seed(Named { name: &name, value: PhantomData })?;
                header.tensors.push((name, info));
            }
        }
        Ok(header)
    }
}

/// Deserializes a `T` and prefixes any error with the key it belongs to, so that a bad
/// entry is reported by name (serde_json adds the line and column).
struct Named<'a, T> {
    name: &'a str,
    value: PhantomData<T>,
}

impl<'de, T: Deserialize<'de>> DeserializeSeed<'de> for Named<'_, T> {
    type Value = T;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> std::result::Result<T, D::Error> {
        T::deserialize(deserializer).map_err(|e| de::Error::custom(format!("'{}': {e}", self.name)))
    }
}

/// A tensor shape, refused past [`MAX_RANK`] dimensions while it is read.
struct Shape(Vec<usize>);

impl<'de> Deserialize<'de> for Shape {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Shape, D::Error> {
        deserializer.deserialize_seq(ShapeVisitor)
    }
}

struct ShapeVisitor;

impl<'de> Visitor<'de> for ShapeVisitor {
    type Value = Shape;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a shape: an array of at most {MAX_RANK} non-negative integers")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Shape, A::Error> {
        let mut dims = Vec::new();
        while let Some(dim) = seq.next_element::<u64>()? {
            if dims.len() == MAX_RANK {
                return Err(de::Error::custom(format!("shape has more than {MAX_RANK} dimensions")));
            }
            dims.push(usize::try_from(dim).map_err(|_| de::Error::custom(format!("dimension {dim} does not fit in memory")))?);
        }
        Ok(Shape(dims))
    }
}

/// A JSON object read into a sorted map, refusing a key given twice. (serde_json, like
/// Python's json, would keep the last one.) Also used for the shard index's weight map.
pub(crate) struct UniqueKeys<V>(pub(crate) BTreeMap<String, V>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for UniqueKeys<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        deserializer.deserialize_map(UniqueKeysVisitor(PhantomData))
    }
}

struct UniqueKeysVisitor<V>(PhantomData<V>);

impl<'de, V: Deserialize<'de>> Visitor<'de> for UniqueKeysVisitor<V> {
    type Value = UniqueKeys<V>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<UniqueKeys<V>, A::Error> {
        let mut out = BTreeMap::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(format!("key '{key}' appears twice")));
            }
            let value = map.next_value_seed(Named { name: &key, value: PhantomData })?;
            out.insert(key, value);
        }
        Ok(UniqueKeys(out))
    }
}

/// Checks one header entry against the data section of `data_len` bytes: a known dtype, a
/// shape whose byte size matches its offsets exactly, and offsets in order and in bounds.
fn check_tensor(name: String, info: RawTensorInfo, data_len: usize) -> std::result::Result<TensorEntry, String> {
    let Some(dtype) = StDType::from_name(&info.dtype) else {
        return Err(format!("tensor '{name}' has unknown dtype '{}'", shorten(&info.dtype)));
    };
    let shape = info.shape.0;
    let n_bytes = shape
        .iter()
        .try_fold(dtype.size_bytes(), |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format!("tensor '{name}' shape {shape:?} of {dtype} overflows"))?;
    let (begin, end) = info.data_offsets;
    if begin > end {
        return Err(format!("tensor '{name}' data_offsets [{begin}, {end}] are reversed"));
    }
    if end - begin != n_bytes as u64 {
        return Err(format!(
            "tensor '{name}' is {dtype} {shape:?} ({n_bytes} bytes) but its data_offsets [{begin}, {end}] hold {} bytes",
            end - begin
        ));
    }
    if end > data_len as u64 {
        return Err(format!(
            "tensor '{name}' data_offsets [{begin}, {end}] run past the end of the data ({data_len} bytes): the file is truncated or corrupt"
        ));
    }
    // end <= data_len, so both fit in usize.
    Ok(TensorEntry { name, dtype, shape, begin: begin as usize, end: end as usize })
}

/// No two tensors share a byte. `tensors` is sorted by (begin, end); empty tensors overlap
/// nothing.
fn check_no_overlaps(tensors: &[TensorEntry]) -> std::result::Result<(), String> {
    let mut furthest: Option<&TensorEntry> = None;
    for t in tensors.iter().filter(|t| t.begin < t.end) {
        if let Some(prev) = furthest {
            if t.begin < prev.end {
                return Err(format!(
                    "tensors '{}' [{}, {}) and '{}' [{}, {}) overlap",
                    prev.name, prev.begin, prev.end, t.name, t.begin, t.end
                ));
            }
        }
        furthest = Some(t);
    }
    Ok(())
}

/// At most 64 characters of an untrusted string, for error messages.
fn shorten(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((cut, _)) => format!("{}...", &s[..cut]),
        None => s.to_owned(),
    }
}

// ---- decoding to f32 --------------------------------------------------------------------

/// Elements decoded per rayon task: big enough to amortize the task, small enough to spread
/// one large weight over every core.
const DECODE_CHUNK: usize = 1 << 16;

/// Decodes a float tensor (F32, F16, BF16, F8_E4M3, F8_E5M2, F64) to f32, exactly except
/// F64 (rounded to nearest). `bytes` is the tensor's data ([`SafetensorsFile::data`]).
///
/// `scale_inv` is DeepSeek-V3-style block dequantization of a 2-D weight of `rows x cols`:
/// `(scales, block_rows, block_cols)` with one f32 per block, row-major
/// `[ceil(rows / block_rows), ceil(cols / block_cols)]` (the `weight_scale_inv` tensor; the
/// last block row and column may be partial); element (r, c) becomes
/// `value * scales[r / block_rows][c / block_cols]`, multiplied in f32 as DeepSeek's
/// reference dequantization does.
pub fn to_f32(entry: &TensorEntry, bytes: &[u8], scale_inv: Option<(&[f32], usize, usize)>) -> Result<Vec<f32>> {
    if bytes.len() != entry.n_bytes() {
        return Err(decode_error(entry, format!("{} bytes given, {} expected", bytes.len(), entry.n_bytes())));
    }
    let decode: fn(&[u8]) -> f32 = match entry.dtype {
        StDType::F32 => |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        StDType::F16 => |b| half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32(),
        StDType::BF16 => |b| bf16_to_f32(u16::from_le_bytes([b[0], b[1]])),
        StDType::F8E4M3 => |b| f8_e4m3fn_to_f32(b[0]),
        StDType::F8E5M2 => |b| f8_e5m2_to_f32(b[0]),
        StDType::F64 => |b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32,
        other => return Err(decode_error(entry, format!("cannot decode {other} to f32"))),
    };
    let mut out = vec![0f32; entry.n_elements()];
    let size = entry.dtype.size_bytes();
    out.par_chunks_mut(DECODE_CHUNK).zip(bytes.par_chunks(DECODE_CHUNK * size)).for_each(|(out, bytes)| {
        for (o, b) in out.iter_mut().zip(bytes.chunks_exact(size)) {
            *o = decode(b);
        }
    });
    if let Some((scales, block_rows, block_cols)) = scale_inv {
        apply_block_scales(entry, &mut out, scales, block_rows, block_cols)?;
    }
    Ok(out)
}

fn decode_error(entry: &TensorEntry, message: String) -> Error {
    Error::Checkpoint(format!("tensor '{}' ({} {:?}): {message}", entry.name, entry.dtype, entry.shape))
}

/// Multiplies each element of the 2-D `values` by the scale of its block (see [`to_f32`]).
fn apply_block_scales(entry: &TensorEntry, values: &mut [f32], scales: &[f32], block_rows: usize, block_cols: usize) -> Result<()> {
    let &[rows, cols] = entry.shape.as_slice() else {
        return Err(decode_error(entry, "block scales apply to 2-D weights only".into()));
    };
    if block_rows == 0 || block_cols == 0 {
        return Err(decode_error(entry, format!("block size {block_rows}x{block_cols} is empty")));
    }
    let (scale_rows, scale_cols) = (rows.div_ceil(block_rows), cols.div_ceil(block_cols));
    // Cannot overflow: scale_rows * scale_cols <= rows * cols, the checked element count.
    if scales.len() != scale_rows * scale_cols {
        return Err(decode_error(
            entry,
            format!(
                "{} block scales given, {scale_rows}x{scale_cols} expected for blocks of {block_rows}x{block_cols}",
                scales.len()
            ),
        ));
    }
    if values.is_empty() {
        return Ok(());
    }
    values.par_chunks_mut(cols).enumerate().for_each(|(r, row)| {
        let row_scales = &scales[(r / block_rows) * scale_cols..][..scale_cols];
        for (block, scale) in row.chunks_mut(block_cols).zip(row_scales) {
            block.iter_mut().for_each(|v| *v *= scale);
        }
    });
    Ok(())
}

/// bfloat16 is the top half of an f32: exact.
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// F8_E5M2 is the top byte of an IEEE half (1 sign, 5 exponent, 2 mantissa bits, with
/// infinities and NaNs): exact.
pub fn f8_e5m2_to_f32(bits: u8) -> f32 {
    half::f16::from_bits((bits as u16) << 8).to_f32()
}

/// OCP F8 E4M3 "fn" (torch.float8_e4m3fn): exact.
pub fn f8_e4m3fn_to_f32(bits: u8) -> f32 {
    f32::from_bits(F8_E4M3FN_TO_F32_BITS[bits as usize])
}

/// f32 bits of every e4m3fn byte, computed at compile time.
const F8_E4M3FN_TO_F32_BITS: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = f8_e4m3fn_to_f32_bits(i as u8);
        i += 1;
    }
    table
};

/// e4m3fn: 1 sign bit, 4 exponent bits with bias 7, 3 mantissa bits; subnormals below
/// exponent 1; no infinities: S.1111.111 is NaN, so the largest finite value is
/// S.1111.110 = 448. The NaN is the f32 torch produces (0x7FF00000 with the sign), so that
/// decoded tensors match torch bit for bit.
const fn f8_e4m3fn_to_f32_bits(bits: u8) -> u32 {
    const BIAS_F8: u32 = 7;
    const BIAS_F32: u32 = 127;
    let sign = ((bits & 0x80) as u32) << 24;
    let exponent = ((bits >> 3) & 0xF) as u32;
    let mantissa = (bits & 0x7) as u32;
    if exponent == 0xF && mantissa == 0x7 {
        return sign | 0x7FF0_0000;
    }
    if exponent == 0 {
        if mantissa == 0 {
            return sign;
        }
        // mantissa * 2^(1 - 7 - 3) = mantissa * 2^-9: normalize around its leading 1 bit.
        let lead = 31 - mantissa.leading_zeros();
        let f32_exponent = BIAS_F32 + lead - 9;
        return sign | (f32_exponent << 23) | ((mantissa ^ (1 << lead)) << (23 - lead));
    }
    sign | ((exponent + BIAS_F32 - BIAS_F8) << 23) | (mantissa << 20)
}
