//! The one executor: runs a model's [`Graph`] for a batch of tokens at positions
//! p..p+n on the CPU kernels. It knows ops, not architectures.

use retort_kernels::cpu::{self, interleave, simd, AttentionShape, Layout, Matrix, RopeParams, ThreadPool};
use memmap2::MmapMut;
use retort_kernels::DType;
use retort_models::gguf::GgufFile;
use retort_models::graph::{ActId, Graph, Op, WeightId};

use crate::error::{Error, Result};
use crate::kv_cache::KvCache;
use crate::plan::{plan, ArenaPlan};

/// A weight as the kernels consume it. Every matmul weight is repacked at load into one
/// anonymous region ([`Repacked`]): interleaved where this CPU's decode kernel for its type
/// takes 8 rows at once (`cpu::interleave`), copied as it is otherwise; the map's pages are
/// then given back, and only an embedding table tied to the output reads its few rows from
/// the map again. Other 2-D weights (embedding tables) are views into the map. 1-D weights
/// (norm scales, biases, rope factors) are dequantized to f32 once at load.
enum WeightData<'m> {
    Matrix { mapped: &'m [u8], repacked: Option<(std::ops::Range<usize>, Layout)>, dtype: DType, row_len: usize, rows: usize },
    Vector(Vec<f32>),
}

pub struct Executor<'m> {
    graph: Graph,
    weights: Vec<WeightData<'m>>,
    repacked: Repacked,
    plan: ArenaPlan,
    arena: Vec<f32>,
    /// Rows each activation holds in the current call.
    rows: Vec<usize>,
    max_batch: usize,
    pub kv: KvCache,
    pool: ThreadPool,
    /// One token's activations quantized for the integer matvecs (see [`Executor::set_exact`]).
    quantized: QuantizedInput,
    exact: bool,
    quantized_batches: bool,
    rope_angles: RopeAngles,
}

/// One token's activation quantized to each 8-bit type its matvecs take: q, k and v (gate
/// and up) read the same normalized input, quantized once per type (a group may mix types:
/// Q4_K_M files give some layers' v Q6_K next to Q4_K, or Q5_0 next to Q8_0).
#[derive(Default)]
struct QuantizedInput {
    /// The activation the buffers hold.
    from: Option<ActId>,
    /// Per activation type: its bytes, and whether they hold `from` yet.
    by_type: Vec<(DType, Vec<u8>, bool)>,
}

impl QuantizedInput {
    /// Forgets what the buffers hold (the activation changed in place, or a new step began).
    fn forget(&mut self) {
        self.from = None;
    }

    /// Makes sure `x` (activation `id`) is held quantized to `act_type`.
    fn prepare(&mut self, id: ActId, x: &[f32], act_type: DType) {
        if self.from != Some(id) {
            self.from = Some(id);
            self.by_type.iter_mut().for_each(|(_, _, ready)| *ready = false);
        }
        let at = self.by_type.iter().position(|(t, _, _)| *t == act_type).unwrap_or_else(|| {
            self.by_type.push((act_type, Vec::new(), false));
            self.by_type.len() - 1
        });
        let (_, bytes, ready) = &mut self.by_type[at];
        if !*ready {
            // Shorter or longer than the last activation; the capacity stays, so steady
            // decode allocates nothing.
            bytes.resize(act_type.row_bytes(x.len()).expect("checked at load"), 0);
            cpu::quantize_activations(x, act_type, bytes);
            *ready = true;
        }
    }

    /// The bytes [`prepare`](Self::prepare) left for `act_type`.
    fn bytes(&self, act_type: DType) -> &[u8] {
        let (_, bytes, _) = self.by_type.iter().find(|(t, _, ready)| *t == act_type && *ready).expect("prepared before use");
        bytes
    }
}

/// The (cos, sin) of every rotated pair at each position of the current batch: computed at
/// the first Rope op of a step and shared by q and k of every layer (the f64 sines and
/// powers, per op, were 3% of a SmolLM2 prefill and 1.5% of a decode step).
#[derive(Default)]
struct RopeAngles {
    /// The positions (pos0, rows) and the rotation `table` holds.
    computed_for: Option<(usize, usize, retort_models::graph::Rope)>,
    table: Vec<(f32, f32)>,
}

impl<'m> Executor<'m> {
    /// `n_ctx`: KV cache length. `max_batch`: most tokens per [`Executor::forward`].
    /// `max_logit_rows`: 1 when only the last position's logits are wanted (generation),
    /// `max_batch` to allow logits at every position (eval, perplexity).
    pub fn new(file: &'m GgufFile, graph: Graph, n_ctx: usize, max_batch: usize, max_logit_rows: usize, threads: usize) -> Result<Executor<'m>> {
        let pool = ThreadPool::new(threads).map_err(|e| Error::Usage(format!("cannot start {threads} threads: {e}")))?;
        // Only matmul weights are repacked: an embedding table that is not also the output
        // matrix is read a row per token, from the map.
        let matmul_weights: Vec<WeightId> = graph
            .ops
            .iter()
            .filter_map(|op| match op {
                Op::MatMul { weight, .. } => Some(*weight),
                _ => None,
            })
            .collect();
        let mut repacked_bytes = 0usize;
        let weights = graph
            .weights
            .iter()
            .enumerate()
            .map(|(id, w)| {
                let info = file.tensor(&w.name).expect("graph weights come from this file");
                let bytes = file.tensor_data(info)?;
                let (row_len, rows) = w.matrix_shape();
                Ok(if w.dims.len() == 1 {
                    let mut v = vec![0f32; row_len];
                    (w.dtype.traits().to_f32)(bytes, &mut v);
                    WeightData::Vector(v)
                } else if matmul_weights.contains(&WeightId(id)) {
                    let interleavable = rows % interleave::GROUP == 0 && simd::vec_dot(w.dtype).is_some_and(|kernel| kernel.group.is_some());
                    let layout = if interleavable { Layout::Interleaved8 } else { Layout::Rows };
                    let start = repacked_bytes.next_multiple_of(Repacked::ALIGN);
                    repacked_bytes = start + bytes.len();
                    WeightData::Matrix { mapped: bytes, repacked: Some((start..repacked_bytes, layout)), dtype: w.dtype, row_len, rows }
                } else {
                    WeightData::Matrix { mapped: bytes, repacked: None, dtype: w.dtype, row_len, rows }
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut repacked = Repacked::new(repacked_bytes)?;
        // Progress every tenth of the weights, for files big enough to take seconds.
        let (mut done, tenth) = (0usize, repacked_bytes / 10);
        for (w, data) in graph.weights.iter().zip(&weights) {
            if let WeightData::Matrix { mapped, repacked: Some((range, layout)), dtype, row_len, .. } = data {
                repacked.fill(&pool, range.clone(), *layout, *dtype, *row_len, mapped);
                let info = file.tensor(&w.name).expect("graph weights come from this file");
                file.release_tensor(info, 0, mapped.len());
                if repacked_bytes >= 1 << 30 && (done + mapped.len()) / tenth.max(1) > done / tenth.max(1) {
                    log::info!("repacking weights: {} of {} MiB", (done + mapped.len()) >> 20, repacked_bytes >> 20);
                }
                done += mapped.len();
            }
        }
        let plan = plan(&graph, max_batch, max_logit_rows);
        log::debug!("scratch arena: {:.1} MiB for {} activations", plan.total as f64 * 4.0 / (1 << 20) as f64, plan.sizes.len());
        Ok(Executor {
            kv: KvCache::new(graph.kv, n_ctx, DType::F32)?,
            arena: vec![0f32; plan.total],
            rows: vec![0; graph.act_widths.len()],
            weights,
            repacked,
            plan,
            graph,
            max_batch,
            pool,
            quantized: QuantizedInput::default(),
            exact: false,
            quantized_batches: false,
            rope_angles: RopeAngles::default(),
        })
    }

    /// Exact mode keeps every activation in f32: the logits are those of the reference
    /// (transformers on the dequantized weights) to f32 rounding. By default one-token steps
    /// quantize the matmul inputs to 8 bits (the weight type's `vec_dot_type`, as llama.cpp
    /// does) where this CPU has an integer kernel for the type: decode is then bound by memory
    /// bandwidth. Batches (prefill, eval) are exact either way.
    pub fn set_exact(&mut self, exact: bool) {
        self.exact = exact;
    }

    /// Batches (prompt processing) quantize their matmul inputs to 8 bits too, for the weight
    /// types with integer levels (`cpu::matmul_8bit`): the accuracy of the one-token steps,
    /// at up to 1.4x the multiply rate of f32. Off by default, so eval and perplexity measure
    /// the weights alone; `run` and `bench` turn it on unless asked to be exact.
    pub fn set_quantized_batches(&mut self, on: bool) {
        self.quantized_batches = on;
    }

    /// Stores keys and values as `dtype` (F32, the default, or F16). Empties the cache.
    pub fn set_kv_type(&mut self, dtype: DType) -> Result<()> {
        if dtype != self.kv.dtype() {
            self.kv = KvCache::new(self.graph.kv, self.kv.n_ctx(), dtype)?;
        }
        Ok(())
    }

    pub fn vocab_size(&self) -> usize {
        self.graph.vocab_size()
    }

    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Runs `tokens` at positions pos0.. and returns the logits: one row per token when
    /// `all_logits`, else the last token's row. Keys and values land in the cache.
    pub fn forward(&mut self, tokens: &[u32], pos0: usize, all_logits: bool) -> Result<&[f32]> {
        let n = tokens.len();
        if n == 0 || n > self.max_batch {
            return Err(Error::Usage(format!("batch of {n} tokens (1 to {} allowed)", self.max_batch)));
        }
        if all_logits && self.plan.max_rows[self.graph.logits.0] < n {
            return Err(Error::Usage("this executor was planned for last-token logits only".into()));
        }
        let end = pos0.checked_add(n).unwrap_or(usize::MAX);
        if end > self.kv.n_ctx() {
            return Err(Error::ContextFull { needed: end, n_ctx: self.kv.n_ctx() });
        }
        let vocab = self.embedding_rows();
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::Usage(format!("token id {bad} is out of range (vocabulary of {vocab})")));
        }
        self.quantized.forget();
        let mut i = 0;
        while i < self.graph.ops.len() {
            i = self.run_ops(i, tokens, pos0, all_logits);
        }
        self.kv.set_len(end);
        let logits = self.graph.logits;
        let len = self.rows[logits.0] * self.graph.act_widths[logits.0];
        Ok(&self.arena[self.plan.offsets[logits.0]..][..len])
    }

    fn embedding_rows(&self) -> usize {
        match self.graph.ops.iter().find_map(|op| match op {
            Op::Embed { table, .. } => Some(*table),
            _ => None,
        }) {
            Some(t) => match &self.weights[t.0] {
                WeightData::Matrix { rows, .. } => *rows,
                WeightData::Vector(_) => 0,
            },
            None => 0,
        }
    }

    /// Runs op i, or ops i.. together where they share work (the matmuls of one input: its
    /// preparation, and one meeting of the threads); returns the next op to run.
    fn run_ops(&mut self, i: usize, tokens: &[u32], pos0: usize, all_logits: bool) -> usize {
        let Op::MatMul { x, .. } = self.graph.ops[i] else {
            self.run_op(i, tokens, pos0, all_logits);
            return i + 1;
        };
        let same_input = self.graph.ops[i..].iter().take_while(|op| matches!(op, Op::MatMul { x: y, .. } if *y == x)).count();
        let ops = i..i + same_input.min(cpu::MAX_GROUPED_MATVECS);
        if self.rows[x.0] > 1 {
            self.matmuls(ops.clone());
        } else {
            self.matvecs(ops.clone());
        }
        ops.end
    }

    /// The integer kernel MatMul op i takes for one token: its weight type's, where this CPU
    /// has one and the executor is not exact ([`Executor::set_exact`]).
    fn matvec_kernel(&self, i: usize) -> Option<simd::VecDot> {
        let Op::MatMul { weight, .. } = self.graph.ops[i] else { unreachable!() };
        if self.exact {
            return None;
        }
        simd::vec_dot(matrix(&self.weights, &self.repacked, weight).dtype)
    }

    /// The ranges of the input and of each output of MatMul ops `ops` (consecutive, of one
    /// input, at most MAX_GROUPED_MATVECS), their outputs given the input's rows; asserts
    /// they are pairwise disjoint. A fixed array: decode allocates nothing.
    fn matmul_ranges(&mut self, ops: std::ops::Range<usize>) -> (std::ops::Range<usize>, [std::ops::Range<usize>; cpu::MAX_GROUPED_MATVECS]) {
        let Op::MatMul { x, .. } = self.graph.ops[ops.start] else { unreachable!() };
        let n = self.rows[x.0];
        let input = self.act_range(x);
        let mut outputs = [const { 0..0 }; cpu::MAX_GROUPED_MATVECS];
        for (j, op) in self.graph.ops[ops].iter().enumerate() {
            let Op::MatMul { out, .. } = *op else { unreachable!() };
            self.rows[out.0] = n;
            let output = self.act_range(out);
            assert!(disjoint(&input, &output) && outputs[..j].iter().all(|o| disjoint(o, &output)), "planner placed live activations on top of each other");
            outputs[j] = output;
        }
        (input, outputs)
    }

    /// The MatMul ops `ops`, consecutive and of one input, for one token: the input is
    /// quantized once per activation type (for the matrices with an integer kernel; the rest
    /// read it in f32) and the threads meet once (see [`cpu::matvecs`]).
    fn matvecs(&mut self, ops: std::ops::Range<usize>) {
        let Op::MatMul { x, .. } = self.graph.ops[ops.start] else { unreachable!() };
        let (input, outputs) = self.matmul_ranges(ops.clone());
        for i in ops.clone() {
            if let Some(kernel) = self.matvec_kernel(i) {
                self.quantized.prepare(x, &self.arena[input.clone()], kernel.act_type);
            }
        }
        let base = self.arena.as_mut_ptr();
        // SAFETY: the input and every output lie inside the arena and are pairwise disjoint
        // (see `matmul_ranges`), so one shared and several mutable views do not overlap; the
        // quantized input is not in the arena.
        let x_f32 = unsafe { std::slice::from_raw_parts(base.add(input.start), input.len()) };
        let this = &*self;
        let products = ops.zip(&outputs).map(|(i, output)| {
            let Op::MatMul { weight, bias, .. } = this.graph.ops[i] else { unreachable!() };
            let x = match this.matvec_kernel(i) {
                Some(kernel) => cpu::TokenInput::Quantized { xq: this.quantized.bytes(kernel.act_type), kernel },
                None => cpu::TokenInput::Exact(x_f32),
            };
            // SAFETY: as for `x_f32`.
            let out = unsafe { std::slice::from_raw_parts_mut(base.add(output.start), output.len()) };
            cpu::Matvec { x, w: matrix(&this.weights, &this.repacked, weight), bias: bias.map(|b| vector(&this.weights, b)), out }
        });
        cpu::matvecs(&self.pool, products);
    }

    /// The MatMul ops `ops`, consecutive and of one input, over several tokens: one call, so
    /// the input is prepared once and the threads meet once (see [`cpu::matmuls`]).
    fn matmuls(&mut self, ops: std::ops::Range<usize>) {
        let Op::MatMul { x, .. } = self.graph.ops[ops.start] else { unreachable!() };
        let n = self.rows[x.0];
        let (input, outputs) = self.matmul_ranges(ops.clone());
        let base = self.arena.as_mut_ptr();
        // SAFETY: the input and every output lie inside the arena and are pairwise disjoint
        // (asserted above), so one shared and several mutable views do not overlap.
        let src = unsafe { std::slice::from_raw_parts(base.add(input.start), input.len()) };
        let mut products: Vec<cpu::Product> = self.graph.ops[ops]
            .iter()
            .zip(&outputs)
            .map(|(op, output)| {
                let Op::MatMul { weight, bias, .. } = *op else { unreachable!() };
                let out = unsafe { std::slice::from_raw_parts_mut(base.add(output.start), output.len()) };
                cpu::Product { w: matrix(&self.weights, &self.repacked, weight), bias: bias.map(|b| vector(&self.weights, b)), out }
            })
            .collect();
        cpu::matmuls(&self.pool, src, n, &mut products, self.quantized_batches);
    }

    fn run_op(&mut self, i: usize, tokens: &[u32], pos0: usize, all_logits: bool) {
        let op = self.graph.ops[i].clone();
        match op {
            Op::Embed { table, out } => {
                let WeightData::Matrix { mapped: bytes, dtype, row_len, .. } = self.weights[table.0] else { unreachable!() };
                let row_bytes = dtype.row_bytes(row_len).expect("checked at load");
                self.rows[out.0] = tokens.len();
                let dst = self.act_mut(out);
                for (t, d) in tokens.iter().zip(dst.chunks_exact_mut(row_len)) {
                    let t = *t as usize;
                    (dtype.traits().to_f32)(&bytes[t * row_bytes..(t + 1) * row_bytes], d);
                }
            }
            Op::RmsNorm { x, weight, eps, out } => {
                self.rows[out.0] = self.rows[x.0];
                let width = self.graph.act_widths[x.0];
                let (rx, ro) = (self.act_range(x), self.act_range(out));
                let (src, dst) = split_disjoint(&mut self.arena, rx, ro);
                let weight = vector(&self.weights, weight);
                self.pool.for_row_chunks(dst, width, |t0, rows| cpu::rms_norm(&src[t0 * width..][..rows.len()], weight, eps, rows));
            }
            Op::MatMul { .. } => unreachable!("run_ops takes the matmuls"),
            Op::Rope { x, rope } => {
                if self.quantized.from == Some(x) {
                    self.quantized.forget(); // rotated in place below
                }
                let half = rope.n_rot / 2;
                let (width, n, n_step) = (self.graph.act_widths[x.0], self.rows[x.0], tokens.len());
                // Rows past a LastRow are the step's last positions.
                let first = n_step - n;
                let computed_for = Some((pos0, n_step, rope.clone()));
                if self.rope_angles.computed_for != computed_for {
                    let params = RopeParams {
                        style: rope.style,
                        head_dim: rope.head_dim,
                        n_rot: rope.n_rot,
                        freq_base: rope.freq_base,
                        freq_scale: rope.freq_scale,
                        freq_factors: rope.freq_factors.map(|f| vector(&self.weights, f)),
                    };
                    let table = &mut self.rope_angles.table;
                    table.resize(n_step * half, (0.0, 0.0));
                    for (t, angles) in table.chunks_exact_mut(half.max(1)).enumerate() {
                        cpu::rope::angles(pos0 + t, &params, angles);
                    }
                    self.rope_angles.computed_for = computed_for;
                }
                let table = &self.rope_angles.table;
                let offset = self.plan.offsets[x.0];
                self.pool.for_row_chunks(&mut self.arena[offset..offset + n * width], width, |t0, rows| {
                    for (t, row) in rows.chunks_exact_mut(width).enumerate() {
                        cpu::rope::rotate(row, &table[(first + t0 + t) * half..][..half], rope.style, rope.head_dim);
                    }
                });
            }
            Op::StoreKv { layer, k, v } => {
                let n = self.rows[k.0];
                let (k_off, v_off) = (self.plan.offsets[k.0], self.plan.offsets[v.0]);
                let (kw, vw) = (self.graph.act_widths[k.0], self.graph.act_widths[v.0]);
                self.kv.store(layer, pos0, &self.arena[k_off..k_off + n * kw], &self.arena[v_off..v_off + n * vw]);
            }
            Op::Attention { layer, q, n_head, n_head_kv, head_dim, scale, out } => {
                self.rows[out.0] = self.rows[q.0];
                let v_head_dim = self.graph.kv.v_width / n_head_kv;
                let shape = AttentionShape { n_head, n_head_kv, head_dim, v_head_dim, scale };
                let (q_off, q_len) = (self.plan.offsets[q.0], self.rows[q.0] * self.graph.act_widths[q.0]);
                let (o_off, o_len) = (self.plan.offsets[out.0], self.rows[out.0] * self.graph.act_widths[out.0]);
                let (keys, values) = self.kv.layer(layer);
                let (q_slice, out_slice) = split_disjoint(&mut self.arena, q_off..q_off + q_len, o_off..o_off + o_len);
                // Queries past a LastRow are the step's last positions.
                let first_query = pos0 + tokens.len() - self.rows[q.0];
                cpu::attention(&self.pool, q_slice, keys, values, self.kv.n_ctx(), first_query, &shape, out_slice);
            }
            Op::Add { a, b, out } => {
                self.rows[out.0] = self.rows[a.0];
                self.elementwise(a, b, out, cpu::add);
            }
            Op::SwiGlu { gate, up, out } => {
                self.rows[out.0] = self.rows[gate.0];
                self.elementwise(gate, up, out, cpu::silu_mul);
            }
            Op::LastRow { x, out } => {
                let n = self.rows[x.0];
                let kept = if all_logits { n } else { 1 };
                self.rows[out.0] = kept;
                let width = self.graph.act_widths[x.0];
                let (src, dst) = self.in_out(x, out);
                dst.copy_from_slice(&src[(n - kept) * width..]);
            }
        }
    }

    /// out = f(a, b) row by row across the pool, for ops whose output row t depends on row t
    /// of the inputs alone.
    fn elementwise(&mut self, a: ActId, b: ActId, out: ActId, f: fn(&[f32], &[f32], &mut [f32])) {
        let width = self.graph.act_widths[out.0];
        let (ra, rb, ro) = (self.act_range(a), self.act_range(b), self.act_range(out));
        assert!(disjoint(&ra, &ro) && disjoint(&rb, &ro), "planner placed live activations on top of each other");
        let base = self.arena.as_mut_ptr();
        // SAFETY: `out` is disjoint from both inputs (asserted); the inputs may alias each
        // other, which is fine for shared borrows. All ranges lie inside the arena.
        let (a, b, dst) = unsafe {
            (
                std::slice::from_raw_parts(base.add(ra.start), ra.len()),
                std::slice::from_raw_parts(base.add(rb.start), rb.len()),
                std::slice::from_raw_parts_mut(base.add(ro.start), ro.len()),
            )
        };
        self.pool.for_row_chunks(dst, width, |t0, rows| {
            let at = t0 * width..t0 * width + rows.len();
            f(&a[at.clone()], &b[at], rows)
        });
    }

    fn act_range(&self, a: ActId) -> std::ops::Range<usize> {
        let off = self.plan.offsets[a.0];
        off..off + self.rows[a.0] * self.graph.act_widths[a.0]
    }

    fn act_mut(&mut self, a: ActId) -> &mut [f32] {
        let r = self.act_range(a);
        &mut self.arena[r]
    }

    fn in_out(&mut self, x: ActId, out: ActId) -> (&[f32], &mut [f32]) {
        let (rx, ro) = (self.act_range(x), self.act_range(out));
        split_disjoint(&mut self.arena, rx, ro)
    }
}

/// The matmul weights, repacked at load into anonymous memory. Anonymous pages stream
/// faster than the file's page-cache pages: the same F16 rows decoded SmolLM2 7-10% faster
/// from a copy than from the map on this machine (docs/PERFORMANCE.md), and the types
/// without an interleaved layout are copied for that alone. One region, asked to be 2 MiB
/// pages: filling 4 KiB pages cost a fault and a clear each, which made repacking a 1.5 GB
/// file take seconds.
struct Repacked {
    map: Option<MmapMut>,
    /// Where the region starts in `map`: the first 2 MiB boundary, where huge pages can be.
    start: usize,
    len: usize,
}

impl Repacked {
    /// Each weight starts on a cache line.
    const ALIGN: usize = 64;
    const HUGE_PAGE: usize = 2 << 20;

    fn new(len: usize) -> Result<Repacked> {
        if len == 0 {
            return Ok(Repacked { map: None, start: 0, len });
        }
        let mapped_len = len.checked_add(Self::HUGE_PAGE).ok_or_else(|| Error::Usage(format!("{len} bytes of repacked weights")))?;
        let map = MmapMut::map_anon(mapped_len).map_err(|e| Error::Io(format!("{len} bytes for repacked weights"), e))?;
        #[cfg(target_os = "linux")]
        let _ = map.advise(memmap2::Advice::HugePage);
        let start = map.as_ptr().align_offset(Self::HUGE_PAGE).min(Self::HUGE_PAGE);
        Ok(Repacked { map: Some(map), start, len })
    }

    fn bytes(&self) -> &[u8] {
        self.map.as_ref().map_or(&[], |map| &map[self.start..][..self.len])
    }

    /// Writes the weight `source` (rows of `row_len` values of `dtype`) at `range`, in `layout`,
    /// with the work split across the pool.
    fn fill(&mut self, pool: &ThreadPool, range: std::ops::Range<usize>, layout: Layout, dtype: DType, row_len: usize, source: &[u8]) {
        let map = self.map.as_mut().expect("a region for every repacked weight");
        let out = &mut map[self.start..][range];
        interleave::repack_in_parallel(pool, layout, dtype, dtype.row_bytes(row_len).expect("checked at load"), source, out);
    }
}

/// A weight matrix as the kernels read it: repacked at load, or the mapped file's rows.
fn matrix<'a>(weights: &'a [WeightData], repacked: &'a Repacked, weight: WeightId) -> Matrix<'a> {
    let WeightData::Matrix { mapped, repacked: ref place, dtype, row_len, rows } = weights[weight.0] else { unreachable!() };
    match place {
        Some((range, layout)) => Matrix { bytes: &repacked.bytes()[range.clone()], dtype, k: row_len, rows, layout: *layout },
        None => Matrix { bytes: mapped, dtype, k: row_len, rows, layout: Layout::Rows },
    }
}

fn vector<'a>(weights: &'a [WeightData], w: WeightId) -> &'a [f32] {
    match &weights[w.0] {
        WeightData::Vector(v) => v,
        WeightData::Matrix { .. } => panic!("graph uses a 2-D weight as a vector"),
    }
}

fn disjoint(a: &std::ops::Range<usize>, b: &std::ops::Range<usize>) -> bool {
    a.end <= b.start || b.end <= a.start
}

/// A shared view of `input` and a mutable view of `output`, two disjoint ranges of one buffer.
fn split_disjoint(buf: &mut [f32], input: std::ops::Range<usize>, output: std::ops::Range<usize>) -> (&[f32], &mut [f32]) {
    assert!(disjoint(&input, &output), "planner placed live activations on top of each other");
    if input.start < output.start {
        let (lo, hi) = buf.split_at_mut(output.start);
        (&lo[input], &mut hi[..output.len()])
    } else {
        let (lo, hi) = buf.split_at_mut(input.start);
        (&hi[..input.len()], &mut lo[output])
    }
}
