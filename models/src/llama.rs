//! The llama family of decoders: llama (incl. llama3 rope scaling, R1-Distill-Llama),
//! qwen2 (q/k/v biases: R1-Distill-Qwen, s1) and qwen3 (per-head RMS norm of q and k).
//! One block, read top to bottom; the differences between the three are the marked lines.

use crate::error::Result;
use crate::gguf::GgufFile;
use crate::graph::{Graph, GraphBuilder, KvShape, Rope, RopeStyle};
use crate::hparams::{Arch, HParams};

pub fn build(file: &GgufFile, hp: &HParams) -> Result<Graph> {
    let mut g = GraphBuilder::new(file);
    let d = hp.n_embd;
    let (hd, vd) = (hp.head_dim, hp.v_head_dim);
    let (q_width, k_width, v_width) = (hp.n_head * hd, hp.n_head_kv * hd, hp.n_head_kv * vd);
    let n_vocab = vocab_size(file)?;
    let eps = hp.rms_eps;

    let rope = Rope {
        // llama.cpp's converter permutes llama's q/k rows so that RoPE pairs neighbours;
        // Qwen weights are stored as Hugging Face has them (pairs half a head apart).
        style: if hp.arch == Arch::Llama { RopeStyle::Interleaved } else { RopeStyle::Halves },
        head_dim: hd,
        n_rot: hp.n_rot,
        freq_base: hp.rope_freq_base,
        freq_scale: hp.rope_freq_scale,
        freq_factors: g.optional_weight("rope_freqs.weight", &[hp.n_rot / 2])?,
    };

    let token_embd = g.weight("token_embd.weight", &[d, n_vocab])?;
    let mut x = g.embed(token_embd);
    for l in 0..hp.n_layer {
        let name = |s: &str| format!("blk.{l}.{s}");

        // Attention: x += Wo · attention(rope(Wq·norm(x)), rope(Wk·norm(x)), Wv·norm(x))
        let attn_norm = g.weight(&name("attn_norm.weight"), &[d])?;
        let h = g.rms_norm(x, attn_norm, eps);
        let (wq, bq) = (g.weight(&name("attn_q.weight"), &[d, q_width])?, g.optional_weight(&name("attn_q.bias"), &[q_width])?);
        let (wk, bk) = (g.weight(&name("attn_k.weight"), &[d, k_width])?, g.optional_weight(&name("attn_k.bias"), &[k_width])?);
        let (wv, bv) = (g.weight(&name("attn_v.weight"), &[d, v_width])?, g.optional_weight(&name("attn_v.bias"), &[v_width])?);
        // The last layer's outputs matter only at the rows that get logits (the last, when
        // generating): its queries, and all that follows them, are computed for those rows
        // alone, while its keys and values still go into the cache for every row.
        let last_layer = l + 1 == hp.n_layer;
        let h_q = if last_layer { g.last_row(h) } else { h };
        let mut q = g.matmul(h_q, wq, bq);
        let mut k = g.matmul(h, wk, bk);
        let v = g.matmul(h, wv, bv);
        if hp.arch == Arch::Qwen3 {
            // Qwen3: each head of q and k is RMS-normalized before RoPE.
            let (q_norm, k_norm) = (g.weight(&name("attn_q_norm.weight"), &[hd])?, g.weight(&name("attn_k_norm.weight"), &[hd])?);
            q = g.rms_norm(q, q_norm, eps);
            k = g.rms_norm(k, k_norm, eps);
        }
        g.rope(q, &rope);
        g.rope(k, &rope);
        g.store_kv(l, k, v);
        let attn = g.attention(l, q, hp.n_head, hp.n_head_kv, hd, vd);
        let wo = g.weight(&name("attn_output.weight"), &[q_width / hd * vd, d])?;
        let attn_out = g.matmul(attn, wo, None);
        x = if last_layer { g.last_row(x) } else { x };
        x = g.add(x, attn_out);

        // Feed-forward: x += W_down · (silu(W_gate·norm(x)) * W_up·norm(x))
        let ffn_norm = g.weight(&name("ffn_norm.weight"), &[d])?;
        let h = g.rms_norm(x, ffn_norm, eps);
        let w_gate = g.weight(&name("ffn_gate.weight"), &[d, hp.n_ff])?;
        let w_up = g.weight(&name("ffn_up.weight"), &[d, hp.n_ff])?;
        let w_down = g.weight(&name("ffn_down.weight"), &[hp.n_ff, d])?;
        let gate = g.matmul(h, w_gate, None);
        let up = g.matmul(h, w_up, None);
        let act = g.swiglu(gate, up);
        let ffn_out = g.matmul(act, w_down, None);
        x = g.add(x, ffn_out);
    }

    let output_norm = g.weight("output_norm.weight", &[d])?;
    let x = g.rms_norm(x, output_norm, eps);
    // Tied embeddings: without output.weight the token embedding is the output projection.
    let output = g.optional_weight("output.weight", &[d, n_vocab])?.unwrap_or(token_embd);
    let logits = g.matmul(x, output, None);
    Ok(g.finish(logits, KvShape { n_layer: hp.n_layer, n_head_kv: hp.n_head_kv, k_width, v_width }))
}

/// Rows of the token embedding: the vocabulary the model computes logits for.
fn vocab_size(file: &GgufFile) -> Result<usize> {
    let t = file
        .tensor("token_embd.weight")
        .ok_or_else(|| crate::Error::Model(format!("tensor 'token_embd.weight' is missing from {}", file.path().display())))?;
    if t.dims.len() != 2 {
        return Err(crate::Error::Model(format!("tensor 'token_embd.weight' has shape {:?}, expected 2 dimensions", t.dims)));
    }
    Ok(t.dims[1] as usize)
}
