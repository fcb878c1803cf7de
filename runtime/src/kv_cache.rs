//! The key/value cache: per layer, keys and values for every position, head-major (each
//! KV head's positions one contiguous stream, which is how attention reads them), in f32
//! (exact) or f16 (half the memory and the bandwidth per attended position, as llama.cpp's
//! default cache).

use half::f16;
use retort_kernels::cpu::KvRows;
use retort_kernels::DType;
use retort_models::graph::KvShape;

use crate::error::{Error, Result};

enum Rows {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

impl Rows {
    fn new(dtype: DType, len: usize) -> Rows {
        match dtype {
            DType::F16 => Rows::F16(vec![f16::ZERO; len]),
            _ => Rows::F32(vec![0f32; len]),
        }
    }

    fn view(&self) -> KvRows<'_> {
        match self {
            Rows::F32(r) => KvRows::F32(r),
            Rows::F16(r) => KvRows::F16(r),
        }
    }

    fn write(&mut self, at: usize, src: &[f32]) {
        match self {
            Rows::F32(r) => r[at..at + src.len()].copy_from_slice(src),
            Rows::F16(r) => r[at..at + src.len()].iter_mut().zip(src).for_each(|(d, &s)| *d = f16::from_f32(s)),
        }
    }
}

pub struct KvCache {
    shape: KvShape,
    n_ctx: usize,
    dtype: DType,
    k: Vec<Rows>,
    v: Vec<Rows>,
    /// Positions filled.
    len: usize,
}

impl KvCache {
    /// `dtype`: F32 or F16.
    pub fn new(shape: KvShape, n_ctx: usize, dtype: DType) -> Result<KvCache> {
        if !matches!(dtype, DType::F32 | DType::F16) {
            return Err(Error::Usage(format!("KV cache type {dtype} is not supported (f32, f16)")));
        }
        Ok(KvCache {
            k: (0..shape.n_layer).map(|_| Rows::new(dtype, n_ctx * shape.k_width)).collect(),
            v: (0..shape.n_layer).map(|_| Rows::new(dtype, n_ctx * shape.v_width)).collect(),
            shape,
            n_ctx,
            dtype,
            len: 0,
        })
    }

    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Positions holding keys and values.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets positions from `len` on (a new prompt that shares a prefix keeps it).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    pub(crate) fn set_len(&mut self, len: usize) {
        self.len = len;
    }

    pub fn bytes(&self) -> usize {
        self.shape.n_layer * self.n_ctx * (self.shape.k_width + self.shape.v_width) * self.dtype.type_size()
    }

    /// Writes token rows of keys and values (n × k_width, n × v_width: all heads side by
    /// side, as the projections produce them) for positions pos0.. of `layer`.
    pub fn store(&mut self, layer: usize, pos0: usize, k: &[f32], v: &[f32]) {
        let heads = self.shape.n_head_kv;
        let (kd, vd) = (self.shape.k_width / heads, self.shape.v_width / heads);
        for (t, (k_row, v_row)) in k.chunks_exact(self.shape.k_width).zip(v.chunks_exact(self.shape.v_width)).enumerate() {
            for h in 0..heads {
                let slot = h * self.n_ctx + pos0 + t;
                self.k[layer].write(slot * kd, &k_row[h * kd..(h + 1) * kd]);
                self.v[layer].write(slot * vd, &v_row[h * vd..(h + 1) * vd]);
            }
        }
    }

    /// Keys and values of `layer`, head-major with `n_ctx` positions per head.
    pub fn layer(&self, layer: usize) -> (KvRows<'_>, KvRows<'_>) {
        (self.k[layer].view(), self.v[layer].view())
    }
}
