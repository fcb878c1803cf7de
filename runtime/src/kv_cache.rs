//! The key/value cache: per layer, one f32 row of keys and one of values per position.
//! Rows are contiguous by position, so attention streams through them.

use retort_models::graph::KvShape;

pub struct KvCache {
    shape: KvShape,
    n_ctx: usize,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    /// Positions filled.
    len: usize,
}

impl KvCache {
    pub fn new(shape: KvShape, n_ctx: usize) -> KvCache {
        KvCache {
            k: (0..shape.n_layer).map(|_| vec![0f32; n_ctx * shape.k_width]).collect(),
            v: (0..shape.n_layer).map(|_| vec![0f32; n_ctx * shape.v_width]).collect(),
            shape,
            n_ctx,
            len: 0,
        }
    }

    pub fn n_ctx(&self) -> usize {
        self.n_ctx
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
        self.shape.n_layer * self.n_ctx * (self.shape.k_width + self.shape.v_width) * 4
    }

    /// Writes rows of keys and values for positions pos0.. of `layer`.
    pub fn store(&mut self, layer: usize, pos0: usize, k: &[f32], v: &[f32]) {
        let (kw, vw) = (self.shape.k_width, self.shape.v_width);
        self.k[layer][pos0 * kw..pos0 * kw + k.len()].copy_from_slice(k);
        self.v[layer][pos0 * vw..pos0 * vw + v.len()].copy_from_slice(v);
    }

    pub fn layer(&self, layer: usize) -> (&[f32], &[f32]) {
        (&self.k[layer], &self.v[layer])
    }
}
