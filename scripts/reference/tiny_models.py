#!/usr/bin/env python3
"""Tiny random-weight models of every architecture variant retort builds, with transformers'
float32 logits as the reference (tests/tiny_architectures.rs checks retort against them).

For each variant below, a transformers model is made from a config with seeded random weights
(float32, eager attention) and run on a fixed token sequence; then

    tests/fixtures/tiny/<variant>.gguf          the same weights, all F32, written with gguf-py's
                                                GGUFWriter the way llama.cpp's
                                                convert_hf_to_gguf.py writes them
    tests/fixtures/tiny/<variant>.logits.npy    transformers' logits, float32 [T, V]
    tests/fixtures/tiny/manifest.json           per variant: files, tokens, shapes, max|logit|,
                                                argmax and smallest top-2 margin

Conventions copied from convert_hf_to_gguf.py (LlamaModel, Qwen2Model, Qwen3Model):
  * llama's q_proj/k_proj rows are permuted, LlamaModel.permute:
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    with n_head for Q and n_head_kv for K, so that RoPE pairs neighbouring rows (llama.cpp's
    "normal" rope); Qwen weights are written as Hugging Face has them (NEOX rope, pairs half
    a head apart).
  * llama3 rope scaling becomes a `rope_freqs.weight` F32 tensor of head_dim/2 factors,
    computed by LlamaModel.generate_extra_tensors (copied below, float32 torch as there);
    llama.cpp divides each frequency by its factor. No rope.scaling.* keys are written for
    llama3. Note the converter reads `original_max_position_embeddings` from the top level of
    config.json (default 8192), not from rope_scaling: our config sets it in both places.
  * tied embeddings: no output.weight (the converter writes only the tensors that exist).
  * `{arch}.attention.key_length`/`value_length` where head_dim != hidden / heads.
  * gguf-py takes arrays in PyTorch order (out, in) and writes the dims reversed (ggml order
    ne0 = in), which is what llama.cpp's converter relies on too.

The vocabulary is a minimal GPT-2 byte-level BPE: the 256 byte-alphabet characters, merged
tokens ("a b" -> "ab") up to V - 1, and a control end-of-text token at V - 1 (BOS = EOS).
The model's input ids are arbitrary ids below V.

Run:  /work/venv-ref/bin/python scripts/reference/tiny_models.py
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import gguf
import numpy as np
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "tiny"
N_TOKENS = 24
CONTEXT_LENGTH = 1024

# name -> (arch, config class, model class, config kwargs, seed)
VARIANTS: dict[str, dict] = {
    # GQA 4/2, head_dim 16, untied output, llama3 rope scaling with a small original context
    # so that the factors are 1 on two frequencies, 8 on five, and smoothed on one.
    "llama": dict(
        arch="llama",
        config=LlamaConfig,
        model=LlamaForCausalLM,
        seed=1,
        kwargs=dict(
            vocab_size=320,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 10000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 128,
            },
            # Where convert_hf_to_gguf.py looks for it (see the module docstring).
            original_max_position_embeddings=128,
        ),
    ),
    # Tied embeddings, head_dim 32 != 64 / 4 (q is 128 wide), one KV head (MQA), plain rope.
    "llama_tied_hd32": dict(
        arch="llama",
        config=LlamaConfig,
        model=LlamaForCausalLM,
        seed=2,
        kwargs=dict(
            vocab_size=384,
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=32,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
        ),
    ),
    # q/k/v biases, GQA 4/2, tied embeddings, NEOX rope.
    "qwen2": dict(
        arch="qwen2",
        config=Qwen2Config,
        model=Qwen2ForCausalLM,
        seed=3,
        kwargs=dict(
            vocab_size=352,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        ),
    ),
    # Per-head RMS norm of q and k, head_dim 32 != 64 / 4, GQA 4/2, untied output.
    "qwen3": dict(
        arch="qwen3",
        config=Qwen3Config,
        model=Qwen3ForCausalLM,
        seed=4,
        kwargs=dict(
            vocab_size=416,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=32,
            rms_norm_eps=1e-6,
            tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        ),
    ),
}


# --------------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------------

def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def vocabulary(n_vocab: int) -> tuple[list[str], list[str], list[int]]:
    """256 byte tokens, merged tokens up to n_vocab - 1, one control end-of-text token."""
    byte_chars = bytes_to_unicode()
    tokens = [byte_chars[b] for b in range(256)]
    merges: list[str] = []
    have = set(tokens)
    # Merges over a fixed word list: every merge joins two existing tokens into a new one.
    words = ["Ġthe", "Ġand", "ing", "Ġof", "Ġto", "tion", "Ġin", "Ġis", "Ġthat", "Ġfor", "Ġwith", "Ġas",
             "Ġon", "Ġbe", "er", "ed", "es", "Ġre", "Ġit", "Ġhe", "Ġwas", "Ġare", "Ġnot", "Ġor", "Ġby",
             "Ġthis", "Ġfrom", "Ġat", "ly", "Ġwhich", "Ġhave", "ment", "Ġan", "Ġall", "Ġtheir", "Ġone",
             "Ġwere", "Ġthere", "Ġbut", "Ġwhen", "Ġmodel", "Ġtoken", "Ġlayer", "Ġhead", "Ġrope",
             "Ġquery", "Ġkey", "Ġvalue", "Ġnorm", "Ġweight", "Ġbias", "Ġcache", "Ġbatch"]
    n_normal = n_vocab - 1
    for w in words:
        # left-to-right: w[:2], w[:3], ... each built from the previous prefix and one character
        for end in range(2, len(w) + 1):
            if len(tokens) >= n_normal:
                break
            left, right, whole = w[: end - 1], w[end - 1], w[:end]
            if whole in have:
                continue
            assert left in have and right in have
            merges.append(f"{left} {right}")
            tokens.append(whole)
            have.add(whole)
    i = 0
    while len(tokens) < n_normal:  # more words than needed in practice; pad with digit pairs
        whole = f"{i % 10}{i // 10 % 10}"
        if whole not in have:
            merges.append(f"{whole[0]} {whole[1]}")
            tokens.append(whole)
            have.add(whole)
        i += 1
    tokens.append("<|endoftext|>")
    types = [gguf.TokenType.NORMAL] * n_normal + [gguf.TokenType.CONTROL]
    assert len(tokens) == n_vocab and len(set(tokens)) == n_vocab
    return tokens, merges, [int(t) for t in types]


# --------------------------------------------------------------------------------------------
# convert_hf_to_gguf.py, the parts that matter here
# --------------------------------------------------------------------------------------------

def permute(weights: torch.Tensor, n_head: int, n_head_kv: int | None) -> torch.Tensor:
    """LlamaModel.permute."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2)
            .reshape(weights.shape))


def llama3_rope_factors(hparams: dict) -> torch.Tensor | None:
    """LlamaModel.generate_extra_tensors: the `rope_freqs.weight` tensor for llama3 scaling."""
    rope_params = hparams.get("rope_parameters") or {}
    if rope_params.get("rope_type", "").lower() != "llama3":
        return None
    base = rope_params.get("rope_theta", 10000.0)
    if (dim := hparams.get("head_dim")) is None:
        dim = hparams["hidden_size"] // hparams["num_attention_heads"]
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))

    factor = rope_params.get("factor", 8.0)
    low_freq_factor = rope_params.get("low_freq_factor", 1.0)
    high_freq_factor = rope_params.get("high_freq_factor", 4.0)
    old_context_len = hparams.get("original_max_position_embeddings", 8192)

    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    assert low_freq_wavelen != high_freq_wavelen

    rope_factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_freq_wavelen:
            rope_factors.append(1)
        elif wavelen > low_freq_wavelen:
            rope_factors.append(factor)
        else:
            smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            rope_factors.append(1 / ((1 - smooth) / factor + smooth))
    return torch.tensor(rope_factors, dtype=torch.float32)


HF_TO_GGUF = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
HF_LAYER_TO_GGUF = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_name(hf_name: str) -> str:
    if hf_name in HF_TO_GGUF:
        return HF_TO_GGUF[hf_name]
    parts = hf_name.split(".")
    assert parts[0] == "model" and parts[1] == "layers", hf_name
    return f"blk.{int(parts[2])}.{HF_LAYER_TO_GGUF['.'.join(parts[3:])]}"


def write_gguf(path: Path, arch: str, name: str, hparams: dict, state: dict[str, torch.Tensor]) -> list[tuple[str, tuple]]:
    n_head, n_head_kv = hparams["num_attention_heads"], hparams["num_key_value_heads"]
    head_dim = hparams.get("head_dim") or hparams["hidden_size"] // n_head
    w = gguf.GGUFWriter(path, arch)
    w.add_name(name)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_context_length(hparams["max_position_embeddings"])
    w.add_embedding_length(hparams["hidden_size"])
    w.add_block_count(hparams["num_hidden_layers"])
    w.add_feed_forward_length(hparams["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(hparams["rms_norm_eps"])
    w.add_rope_freq_base(hparams["rope_parameters"]["rope_theta"])
    w.add_rope_dimension_count(head_dim)
    if head_dim != hparams["hidden_size"] // n_head:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    if arch == "llama":
        w.add_vocab_size(hparams["vocab_size"])

    tokens, merges, types = vocabulary(hparams["vocab_size"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(len(tokens) - 1)
    w.add_eos_token_id(len(tokens) - 1)

    written = []
    tied = hparams["tie_word_embeddings"]
    for hf_name, t in state.items():
        if tied and hf_name == "lm_head.weight":
            continue  # the same tensor as the embedding: not in the checkpoint, not in the GGUF
        t = t.detach().to(torch.float32)
        if arch == "llama":
            if hf_name.endswith(("q_proj.weight", "q_proj.bias")):
                t = permute(t, n_head, n_head)
            if hf_name.endswith(("k_proj.weight", "k_proj.bias")):
                t = permute(t, n_head, n_head_kv)
        name_out = gguf_name(hf_name)
        arr = np.ascontiguousarray(t.numpy(), dtype=np.float32)
        w.add_tensor(name_out, arr)
        written.append((name_out, tuple(arr.shape)))
    if (factors := llama3_rope_factors(hparams)) is not None:
        arr = factors.numpy().astype(np.float32)
        w.add_tensor("rope_freqs.weight", arr)
        written.append(("rope_freqs.weight", tuple(arr.shape)))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return written


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------

def randomize(model: torch.nn.Module, seed: int) -> None:
    """Weights large enough that attention is far from uniform and RoPE matters: matrices
    N(0, 1/in) (q and k N(0, 0.3²)), embeddings N(0, 1) (N(0, 0.25²) when tied), biases N(0, 0.5²), norm scales
    U(0.5, 1.5)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # tied parameters appear once
            if name.endswith("norm.weight"):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            elif name.endswith(".bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            elif "embed_tokens" in name:
                # Tied, the embedding is also the output projection: keep the logits O(1).
                std = 0.25 if model.config.tie_word_embeddings else 1.0
                p.copy_(torch.randn(p.shape, generator=g) * std)
            elif name.endswith(("q_proj.weight", "k_proj.weight")):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    torch.set_grad_enabled(False)
    manifest = {"generator": "scripts/reference/tiny_models.py", "variants": []}
    for name, spec in VARIANTS.items():
        kwargs = dict(spec["kwargs"], max_position_embeddings=CONTEXT_LENGTH, bos_token_id=spec["kwargs"]["vocab_size"] - 1,
                      eos_token_id=spec["kwargs"]["vocab_size"] - 1)
        config = spec["config"](**kwargs)
        config._attn_implementation = "eager"
        torch.manual_seed(spec["seed"])
        model = spec["model"]._from_config(config, dtype=torch.float32, attn_implementation="eager").eval()
        randomize(model, spec["seed"])
        hparams = config.to_dict()
        if spec["arch"] == "qwen2":
            q = model.model.layers[0].self_attn
            assert q.q_proj.bias is not None and q.k_proj.bias is not None and q.v_proj.bias is not None and q.o_proj.bias is None
        if hparams["tie_word_embeddings"]:
            assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()

        vocab = hparams["vocab_size"]
        g = torch.Generator().manual_seed(100 + spec["seed"])
        tokens = torch.randint(0, vocab, (N_TOKENS,), generator=g)
        logits = model(tokens[None, :], use_cache=False).logits[0].to(torch.float32).numpy()
        assert logits.shape == (N_TOKENS, vocab)

        gguf_path = OUT / f"{name}.gguf"
        written = write_gguf(gguf_path, spec["arch"], f"tiny-{name}", hparams, model.state_dict())
        np.save(OUT / f"{name}.logits.npy", logits.astype(np.float32))

        max_abs = float(np.abs(logits).max())
        top2 = np.sort(logits, axis=1)[:, -2:]
        margin = float((top2[:, 1] - top2[:, 0]).min())
        # The test allows |ours - ref| <= 1e-4 max|ref|: a margin above twice that makes equal arg-maxes follow.
        assert margin > 3e-4 * max_abs, f"{name}: top-2 margin {margin} too small for an arg-max check"
        head_dim = hparams.get("head_dim") or hparams["hidden_size"] // hparams["num_attention_heads"]
        factors = llama3_rope_factors(hparams)
        print(f"{name}: arch {spec['arch']}, vocab {vocab}, hidden {hparams['hidden_size']}, "
              f"heads {hparams['num_attention_heads']}/{hparams['num_key_value_heads']}, head_dim {head_dim}, "
              f"ff {hparams['intermediate_size']}, tied {hparams['tie_word_embeddings']}, "
              f"{gguf_path.stat().st_size} bytes; max|logit| {max_abs:.4f}, min top-2 margin {margin:.4f}"
              + (f"; rope factors {[round(float(f), 4) for f in factors]}" if factors is not None else ""))
        manifest["variants"].append({
            "name": name,
            "arch": spec["arch"],
            "gguf": f"{name}.gguf",
            "logits": f"{name}.logits.npy",
            "tokens": [int(t) for t in tokens],
            "vocab_size": vocab,
            "hidden_size": hparams["hidden_size"],
            "n_layer": hparams["num_hidden_layers"],
            "n_head": hparams["num_attention_heads"],
            "n_head_kv": hparams["num_key_value_heads"],
            "head_dim": head_dim,
            "n_ff": hparams["intermediate_size"],
            "tied_embeddings": hparams["tie_word_embeddings"],
            "rope": hparams["rope_parameters"],
            "max_abs_logit": max_abs,
            "min_top2_margin": margin,
            "argmax": [int(i) for i in logits.argmax(axis=1)],
            "tensors": {n: list(s) for n, s in written},
        })
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    main()
