//! Scratch memory plan: every activation of the graph gets a fixed region of one arena,
//! reused by activations whose lifetimes do not overlap. Planned once per model; running
//! the graph then allocates nothing.
//!
//! Greedy by size (as TensorFlow Lite's arena planner): place the largest activations
//! first, each at the lowest offset that does not collide with an already placed one that
//! is alive at the same time.

use retort_models::graph::{ActId, Graph, Op};

pub struct ArenaPlan {
    /// Offset (in f32) of each activation's region.
    pub offsets: Vec<usize>,
    /// Region size (in f32) of each activation: its max rows × width.
    pub sizes: Vec<usize>,
    /// Max rows of each activation.
    pub max_rows: Vec<usize>,
    pub total: usize,
}

/// Inputs and outputs of an op, for lifetime analysis.
pub fn op_acts(op: &Op) -> (Vec<ActId>, Option<ActId>) {
    match *op {
        Op::Embed { out, .. } => (vec![], Some(out)),
        Op::RmsNorm { x, out, .. } => (vec![x], Some(out)),
        Op::MatMul { x, out, .. } => (vec![x], Some(out)),
        Op::Rope { x, .. } => (vec![x], None),
        Op::StoreKv { k, v, .. } => (vec![k, v], None),
        Op::Attention { q, out, .. } => (vec![q], Some(out)),
        Op::Add { a, b, out } => (vec![a, b], Some(out)),
        Op::SwiGlu { gate, up, out } => (vec![gate, up], Some(out)),
        Op::LastRow { x, out } => (vec![x], Some(out)),
    }
}

/// `max_batch`: most tokens per forward call; `max_logit_rows`: most rows kept by
/// [`Op::LastRow`] (1 for generation, `max_batch` when logits at every position are wanted).
pub fn plan(graph: &Graph, max_batch: usize, max_logit_rows: usize) -> ArenaPlan {
    let n = graph.act_widths.len();
    let mut first = vec![usize::MAX; n];
    let mut last = vec![0usize; n];
    let mut max_rows = vec![max_batch; n];
    for (i, op) in graph.ops.iter().enumerate() {
        let (ins, out) = op_acts(op);
        for a in ins {
            last[a.0] = last[a.0].max(i);
        }
        if let Some(o) = out {
            first[o.0] = first[o.0].min(i);
            last[o.0] = last[o.0].max(i);
            // Rows shrink after LastRow and stay shrunk downstream.
            max_rows[o.0] = match op {
                Op::LastRow { .. } => max_logit_rows.min(max_batch),
                _ => ins_max_rows(op, &max_rows, max_batch),
            };
        }
    }
    last[graph.logits.0] = graph.ops.len();

    let sizes: Vec<usize> = (0..n).map(|a| max_rows[a] * graph.act_widths[a]).collect();
    let mut order: Vec<usize> = (0..n).filter(|&a| first[a] != usize::MAX).collect();
    order.sort_by_key(|&a| std::cmp::Reverse(sizes[a]));
    let mut offsets = vec![0usize; n];
    let mut placed: Vec<usize> = Vec::with_capacity(n);
    let mut total = 0;
    for a in order {
        let overlaps_in_time = |b: usize| first[a] <= last[b] && first[b] <= last[a];
        let mut busy: Vec<(usize, usize)> =
            placed.iter().filter(|&&b| overlaps_in_time(b)).map(|&b| (offsets[b], offsets[b] + sizes[b])).collect();
        busy.sort();
        let mut offset = 0;
        for (start, end) in busy {
            if offset + sizes[a] <= start {
                break;
            }
            offset = offset.max(end);
        }
        offsets[a] = offset;
        total = total.max(offset + sizes[a]);
        placed.push(a);
    }
    ArenaPlan { offsets, sizes, max_rows, total }
}

fn ins_max_rows(op: &Op, max_rows: &[usize], max_batch: usize) -> usize {
    let (ins, _) = op_acts(op);
    ins.iter().map(|a| max_rows[a.0]).max().unwrap_or(max_batch)
}
