#!/usr/bin/env python3
"""Reference numbers for SmolLM2-135M-Instruct (Q4_1 GGUF), produced with transformers in float32.

Writes the committed fixtures
    tests/fixtures/smollm2/gpl3_logits.json   first 256 tokens of tests/data/GPL-3: ids, argmax,
                                              logsumexp, top-2 margin, top-128 (id, log-prob)
    tests/fixtures/smollm2/greedy.json        3 raw-text prompts, 32 greedy tokens each
and the uncommitted full logits
    models-cache/reference/smollm2_gpl3_logits.npy   float32 [256, 49152]

The tokenizer is rebuilt from the GGUF's vocabulary and merges with SmolLM2's upstream
pre-tokenizer (digits split one by one, then GPT-2 byte level); transformers' own GGUF tokenizer
conversion drops the digit split, so it is not used. The model is transformers' GGUF loader
(dequantizes everything to float32); before any number is produced the script checks every
weight against gguf-py's own dequantization, with llama.cpp's Q/K permutation undone, and checks
that the output projection is tied to the embedding.

Run:  /work/venv-ref/bin/python scripts/reference/smollm2_reference.py
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = ROOT / "models-cache"
MODEL_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GPL3_SRC = Path("/usr/share/common-licenses/GPL-3")
GPL3 = ROOT / "tests" / "data" / "GPL-3"
FIXTURES = ROOT / "tests" / "fixtures" / "smollm2"
FULL_LOGITS = MODEL_DIR / "reference" / "smollm2_gpl3_logits.npy"

N_GPL3_TOKENS = 256
TOP_K = 128
N_GREEDY = 32
PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time"]


# --------------------------------------------------------------------------------------------
# GGUF metadata and tokenizer
# --------------------------------------------------------------------------------------------

def read_gguf(path: Path):
    import gguf

    reader = gguf.GGUFReader(str(path))

    def field(name, default=None):
        f = reader.fields.get(name)
        return default if f is None else f.contents()

    return reader, field


def build_tokenizer(field):
    """SmolLM2's upstream tokenizer.json, rebuilt from the GGUF's tokens and merges."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    tokens = field("tokenizer.ggml.tokens")
    merges = field("tokenizer.ggml.merges")
    types = field("tokenizer.ggml.token_type")
    vocab = {tok: i for i, tok in enumerate(tokens)}
    assert len(vocab) == len(tokens), "duplicate tokens in the GGUF vocabulary"
    merge_pairs = [tuple(m.split(" ")) for m in merges]
    assert all(len(p) == 2 for p in merge_pairs)

    model = models.BPE(vocab=vocab, merges=merge_pairs, fuse_unk=False, byte_fallback=False,
                       ignore_merges=False)
    tok = Tokenizer(model)
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    # Control tokens (token_type 3) are the special added tokens of the upstream tokenizer.
    control = [tokens[i] for i, t in enumerate(types) if t == 3]
    tok.add_special_tokens([AddedToken(c, special=True, normalized=False) for c in control])
    for c in control:
        assert tok.token_to_id(c) == vocab[c]
    # The digit split is the point of not using transformers' conversion.
    assert tok.encode("2024", add_special_tokens=False).tokens == ["2", "0", "2", "4"]
    return tok, control


# --------------------------------------------------------------------------------------------
# Model and its exactness checks
# --------------------------------------------------------------------------------------------

def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute (HF rotate-half layout -> GGUF interleaved)."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def check_model_exact(model, reader, field) -> dict:
    import gguf

    cfg = model.config
    n_head = field("llama.attention.head_count")
    n_kv = field("llama.attention.head_count_kv")
    checks = {
        "num_hidden_layers": (cfg.num_hidden_layers, field("llama.block_count")),
        "hidden_size": (cfg.hidden_size, field("llama.embedding_length")),
        "intermediate_size": (cfg.intermediate_size, field("llama.feed_forward_length")),
        "num_attention_heads": (cfg.num_attention_heads, n_head),
        "num_key_value_heads": (cfg.num_key_value_heads, n_kv),
        "vocab_size": (cfg.vocab_size, len(field("tokenizer.ggml.tokens"))),
    }
    for k, (a, b) in checks.items():
        assert a == b, f"config {k}: transformers {a} != gguf {b}"
    rope_theta = getattr(cfg, "rope_theta", None)
    if rope_theta is None:
        rope_theta = (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta")
    assert rope_theta == field("llama.rope.freq_base"), (rope_theta, field("llama.rope.freq_base"))
    assert abs(cfg.rms_norm_eps - field("llama.attention.layer_norm_rms_epsilon")) < 1e-12
    assert cfg.tie_word_embeddings, "GGUF has no output.weight: the head must be tied"
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr() or \
        torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)

    params = dict(model.named_parameters())
    suffix = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
              "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
              "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
              "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
    n_checked = 0
    for t in reader.tensors:
        name = t.name.removesuffix(".weight")
        if name == "token_embd":
            hf = "model.embed_tokens.weight"
        elif name == "output_norm":
            hf = "model.norm.weight"
        else:
            _, i, kind = name.split(".")
            hf = f"model.layers.{i}.{suffix[kind]}.weight"
        ref = gguf.dequantize(t.data, t.tensor_type).astype(np.float32)
        ref = ref.reshape(tuple(reversed([int(d) for d in t.shape])))
        ours = params[hf].detach().numpy()
        if ".attn_q" in t.name:
            ours = llama_cpp_permute(ours, n_head)
        elif ".attn_k" in t.name:
            ours = llama_cpp_permute(ours, n_kv)
        assert ours.shape == ref.shape, (t.name, ours.shape, ref.shape)
        assert np.array_equal(ours, ref), f"{t.name} differs from its GGUF dequantization"
        n_checked += 1
    assert n_checked == len(reader.tensors)
    return {"tensors_checked_bitwise": n_checked, "rope_theta": rope_theta,
            "rms_norm_eps": cfg.rms_norm_eps, "tie_word_embeddings": True}


@torch.no_grad()
def logits_for(model, ids: list[int]) -> torch.Tensor:
    out = model(input_ids=torch.tensor([ids], dtype=torch.long), use_cache=False)
    return out.logits[0].to(torch.float32)


# --------------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, default=MODEL_DIR)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    import transformers
    from transformers import AutoModelForCausalLM

    if not GPL3.exists():
        GPL3.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(GPL3_SRC, GPL3)
    gpl3_text = GPL3.read_text(encoding="utf-8")

    gguf_path = args.model_dir / MODEL_NAME
    reader, field = read_gguf(gguf_path)
    add_bos = bool(field("tokenizer.ggml.add_bos_token", False))
    bos_id = int(field("tokenizer.ggml.bos_token_id"))
    eos_id = int(field("tokenizer.ggml.eos_token_id"))
    tok, control = build_tokenizer(field)

    def encode(text: str) -> list[int]:
        ids = tok.encode(text, add_special_tokens=False).ids
        return ([bos_id] if add_bos else []) + ids

    model = AutoModelForCausalLM.from_pretrained(
        str(args.model_dir), gguf_file=MODEL_NAME, dtype=torch.float32,
        attn_implementation="eager")
    model.eval()
    exact = check_model_exact(model, reader, field)
    print("weights identical to gguf-py dequantization:", exact, file=sys.stderr)

    common = {
        "model": MODEL_NAME,
        "generator": "scripts/reference/smollm2_reference.py",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "dtype": "float32",
        "attn_implementation": "eager",
        "add_bos_token": add_bos,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "weights_check": exact,
        "tokenizer": "GGUF tokens+merges; pre-tokenizer Sequence[Digits(individual_digits=True), "
                     "ByteLevel(add_prefix_space=False, use_regex=True)]; ByteLevel decoder; "
                     f"{len(control)} control tokens as special added tokens",
    }

    # ---- gpl3_logits ------------------------------------------------------------------------
    all_ids = encode(gpl3_text)
    ids = all_ids[:N_GPL3_TOKENS]
    logits = logits_for(model, ids)  # [T, V]
    assert logits.shape == (N_GPL3_TOKENS, len(field("tokenizer.ggml.tokens")))
    FULL_LOGITS.parent.mkdir(parents=True, exist_ok=True)
    np.save(FULL_LOGITS, logits.numpy().astype(np.float32))

    lse = torch.logsumexp(logits.double(), dim=-1)
    logprobs = logits.double() - lse[:, None]
    top = torch.topk(logits, k=TOP_K, dim=-1)
    top2 = torch.topk(logits, k=2, dim=-1).values
    gpl3 = dict(common)
    gpl3.update({
        "text_source": "tests/data/GPL-3 (Debian /usr/share/common-licenses/GPL-3)",
        "n_tokens": len(ids),
        "text_prefix": tok.decode(ids, skip_special_tokens=False),
        "token_ids": ids,
        "argmax": logits.argmax(dim=-1).tolist(),
        "logsumexp": [round(float(x), 6) for x in lse],
        "top2_margin": [round(float(a - b), 6) for a, b in top2.tolist()],
        "top_k": TOP_K,
        "top_ids": top.indices.tolist(),
        "top_logprobs": [[round(float(logprobs[t, j]), 5) for j in row]
                         for t, row in enumerate(top.indices.tolist())],
        "full_logits_npy": str(FULL_LOGITS.relative_to(ROOT)),
    })
    assert gpl3["argmax"] == [row[0] for row in gpl3["top_ids"]]

    # ---- greedy -------------------------------------------------------------------------------
    cases = []
    for prompt in PROMPTS:
        prompt_ids = encode(prompt)
        seq = list(prompt_ids)
        gen, margins, chosen_logits = [], [], []
        for _ in range(N_GREEDY):
            last = logits_for(model, seq)[-1]  # full recompute, float32, no cache
            v, i = torch.topk(last, k=2)
            nxt = int(i[0])
            gen.append(nxt)
            margins.append(round(float(v[0] - v[1]), 6))
            chosen_logits.append(round(float(v[0]), 5))
            seq.append(nxt)
        first_eos = next((k for k, t in enumerate(gen) if t == eos_id), None)
        cases.append({
            "prompt": prompt,
            "prompt_ids": prompt_ids,
            "generated_ids": gen,
            "generated_text": tok.decode(gen, skip_special_tokens=False),
            "first_eos_index": first_eos,
            "top2_margin": margins,
            "chosen_logit": chosen_logits,
            "min_top2_margin": min(margins),
        })
        print(f"{prompt!r} -> {cases[-1]['generated_text']!r}", file=sys.stderr)
    greedy = dict(common)
    greedy.update({"n_generated": N_GREEDY, "decoding": "greedy argmax, full recompute each step, "
                   "raw text (no chat template), does not stop at EOS", "cases": cases})

    FIXTURES.mkdir(parents=True, exist_ok=True)
    for name, obj in (("gpl3_logits.json", gpl3), ("greedy.json", greedy)):
        path = FIXTURES / name
        with open(path, "w", encoding="utf-8") as f:
            json.dump(obj, f, ensure_ascii=False, separators=(",", ":"))
            f.write("\n")
        print(f"wrote {path.relative_to(ROOT)} ({os.path.getsize(path)} bytes)", file=sys.stderr)
    print(f"wrote {FULL_LOGITS} {tuple(logits.shape)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
