#!/usr/bin/env python3
"""Tiny Hugging Face checkpoint folders, as transformers 5 saves them, with transformers'
float32 logits as the reference: tests/convert_hf.rs converts each folder with
`retort_convert::from_hf::convert_checkpoint`, runs the GGUF in retort and compares.

Every folder is what `save_pretrained` writes (config.json with `rope_parameters`,
generation_config.json, model.safetensors or shards + model.safetensors.index.json) plus a
small trained byte-level BPE tokenizer (tokenizer.json, tokenizer_config.json, a chat
template). Weights are seeded random and big-ish (as scripts/reference/tiny_models.py makes
them) so that a wrong permutation, transposition, bias, norm or rope shows in the logits.

  llama       LlamaForCausalLM: GQA 4/2 (head_dim 16), llama3 rope scaling (original
              context 128, given only inside rope_parameters, as transformers 5 reads it),
              untied lm_head, intermediate 256 (ffn_down rows are whole 256-blocks: q4_k_m
              gives it Q4_K in layer 0, Q6_K in layer 1); saved in 3 shards (index.json).
              Tokenizer: SmolLM2's pipeline (Digits + ByteLevel(use_regex)), specials at ids
              0..2, "a b" merges, chat template inline in tokenizer_config.json.
              Also `llama_tf4`: the same folder with `llama_tf4.config.json` (the transformers 4
              spelling: top-level rope_theta + rope_scaling) put in place of config.json; the
              generator checks transformers loads it to the same logits.
  llama_tied  LlamaForCausalLM: tied embeddings, head_dim 64 != 64 / 4 (q is 256 wide, so
              attn_output rows are a whole 256-block), one KV head (MQA), plain rope with
              theta 500000, intermediate 128. Tokenizer: Llama 3's pipeline (Split + ByteLevel,
              ignore_merges, TemplateProcessing adding <|begin_of_text|>).
  qwen2       Qwen2ForCausalLM: q/k/v biases, tied embeddings, GQA 4/2; the embedding has more
              rows (416) than the tokenizer has tokens (393): GGUF [PAD{i}] rows. Tokenizer:
              Qwen2's pipeline (NFC, Split + ByteLevel), added tokens after the vocabulary,
              chat_template.jinja.
  qwen3       Qwen3ForCausalLM: q/k RMS norm, head_dim 32 != 64 / 4, GQA 4/2, untied; saved in
              bfloat16 (`model.to(torch.bfloat16)` before saving): the reference is the bf16
              weights upcast to float32. Tokenizer: Qwen2's pipeline, saved by transformers 5's
              PreTrainedTokenizerFast.save_pretrained (tokenizer_class TokenizersBackend,
              chat_template.jinja).

For each variant the reference is computed from the folder as saved (reloaded with
from_pretrained, float32, eager attention) on ~20 token ids, chosen among seeded candidates
for a clear top-2 margin at every position (so that the arg-max checks of f16/bf16/q8_0
files test the conversion, not ties). Also recorded: the HF tokenizer's ids of a few strings
(add_special_tokens false and true) and the chat template transformers sees.

Writes tests/fixtures/hf/<variant>/..., tests/fixtures/hf/<variant>.logits.npy and
tests/fixtures/hf/manifest.json.

Run:  /work/venv-ref/bin/python scripts/reference/hf_fixtures.py

Second mode (not part of the committed test): llama.cpp on retort's converted files.
    RETORT_CONVERT_HF_KEEP=/tmp/k cargo test --release --test convert_hf
keeps every converted GGUF (<variant>.<type>.gguf) and retort's logits on it
(<variant>.<type>.retort.npy); then
    /work/venv-ref/bin/python scripts/reference/hf_fixtures.py --check-llama-cpp /tmp/k
runs each through llama.cpp's Python binding (LLAMA_PY from /work/llama-peer.env) and prints,
per file: arg-max agreement of llama.cpp with retort and with transformers, max|llama.cpp -
transformers| / max|ref|, and the mean KL(transformers ‖ llama.cpp) and KL(transformers ‖ retort).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, pre_tokenizers

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "hf"
sys.path.insert(0, str(Path(__file__).resolve().parent))
import hf_tokenizer_fixtures as htf  # noqa: E402  (trainer, corpus, pipelines, templates)

N_TOKENS = 20
CONTEXT_LENGTH = 1024
# Candidate sequences are tried until every position's top-2 margin is at least this
# fraction of max|logit| (bf16/f16/q8_0 weights move the logits by well under 1%).
MIN_MARGIN = 0.02

TEXTS = [
    "Hello, world! The model is 12345 tokens long.",
    "def f(x):\n    return x ** 2  # square\n",
    "Привет, мир! 你好，世界",
    "<|im_start|>user\nhi<|im_end|>\n",
    "  spaces   and\ttabs\n\n",
    "<|begin_of_text|>text",
]


# ---------------------------------------------------------------------------------------------
# tokenizers


def tok_smollm2(n_vocab: int):
    """SmolLM2's pipeline and files: specials at 0..2, "a b" merges, inline ChatML template."""
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tj = htf.train(None, pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), htf.byte_level(True)]),
                   n_vocab, special)
    tj["post_processor"] = dict(htf.BYTE_LEVEL_PP, trim_offsets=True)
    tj["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in tj["model"]["merges"]]
    files = {
        "tokenizer.json": tj,
        "tokenizer_config.json": {
            "add_prefix_space": False, "added_tokens_decoder": htf.added_tokens_decoder(tj),
            "additional_special_tokens": ["<|im_start|>", "<|im_end|>"], "bos_token": "<|im_start|>",
            "chat_template": htf.CHATML, "clean_up_tokenization_spaces": False, "eos_token": "<|im_end|>",
            "model_max_length": 2048, "pad_token": "<|im_end|>", "tokenizer_class": "GPT2Tokenizer",
            "unk_token": "<|endoftext|>", "vocab_size": n_vocab,
        },
    }
    ids = {"bos": htf.id_of(tj, "<|im_start|>"), "eos": htf.id_of(tj, "<|im_end|>")}
    return files, n_tokens(tj), ids, htf.CHATML


def tok_llama3(n_vocab: int):
    """Llama 3's pipeline: Split(llama3 regex) + ByteLevel, ignore_merges, BOS added by the
    post-processor, added tokens after the vocabulary, template inline."""
    added = [("<|begin_of_text|>", True), ("<|end_of_text|>", True), ("<|start_header_id|>", True),
             ("<|end_header_id|>", True), ("<|eot_id|>", True)]
    tj = htf.train(None, pre_tokenizers.Sequence([htf.split(htf.LLAMA3_REGEX), htf.byte_level(False)]),
                   n_vocab - len(added), [])
    tj["model"]["ignore_merges"] = True
    htf.append_added(tj, added)
    bos = "<|begin_of_text|>"
    tj["post_processor"] = {"type": "Sequence", "processors": [
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        htf.template_bos(bos, htf.id_of(tj, bos))]}
    files = {
        "tokenizer.json": tj,
        "tokenizer_config.json": {
            "added_tokens_decoder": htf.added_tokens_decoder(tj), "bos_token": bos,
            "chat_template": htf.LLAMA3_TEMPLATE, "clean_up_tokenization_spaces": True, "eos_token": "<|eot_id|>",
            "model_input_names": ["input_ids", "attention_mask"], "model_max_length": 131072,
            "tokenizer_class": "PreTrainedTokenizerFast",
        },
    }
    ids = {"bos": htf.id_of(tj, bos), "eos": htf.id_of(tj, "<|eot_id|>")}
    return files, n_tokens(tj), ids, htf.LLAMA3_TEMPLATE


QWEN_ADDED = [("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True), ("<|object_ref_start|>", True),
              ("<|vision_pad|>", True), ("<tool_call>", False), ("</tool_call>", False), ("<|fim_prefix|>", False),
              ("<|fim_pad|>", False), ("<|repo_name|>", False), ("<|file_sep|>", False), ("<think>", False),
              ("</think>", False)]


def tok_qwen2(n_vocab: int):
    """Qwen2.5's files: NFC + Split + ByteLevel, added tokens after the vocabulary, no BOS,
    the template in chat_template.jinja."""
    tj = htf.train(*htf.qwen_pipeline(), n_vocab - len(QWEN_ADDED), [])
    htf.append_added(tj, QWEN_ADDED)
    tj["post_processor"] = htf.BYTE_LEVEL_PP
    files = {
        "tokenizer.json": tj,
        "tokenizer_config.json": {
            "add_bos_token": False, "add_prefix_space": False, "added_tokens_decoder": htf.added_tokens_decoder(tj),
            "additional_special_tokens": ["<|im_start|>", "<|im_end|>"], "bos_token": None,
            "clean_up_tokenization_spaces": False, "eos_token": "<|im_end|>", "errors": "replace",
            "model_max_length": 131072, "pad_token": "<|endoftext|>", "split_special_tokens": False,
            "tokenizer_class": "Qwen2Tokenizer", "unk_token": None,
        },
        "chat_template.jinja": htf.QWEN_TEMPLATE,
    }
    ids = {"bos": htf.id_of(tj, "<|endoftext|>"), "eos": htf.id_of(tj, "<|im_end|>")}
    return files, n_tokens(tj), ids, htf.QWEN_TEMPLATE


def tok_qwen3_saved(n_vocab: int):
    """Qwen2's pipeline, the files written by transformers 5's save_pretrained."""
    added = [("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True), ("<think>", False), ("</think>", False)]
    tj = htf.train(*htf.qwen_pipeline(), n_vocab - len(added), [])
    htf.append_added(tj, added)
    tj["post_processor"] = htf.BYTE_LEVEL_PP
    ids = {"bos": htf.id_of(tj, "<|endoftext|>"), "eos": htf.id_of(tj, "<|im_end|>")}
    return {"save_pretrained": tj}, n_tokens(tj), ids, htf.QWEN_TEMPLATE


def n_tokens(tj: dict) -> int:
    return max([*tj["model"]["vocab"].values(), *(t["id"] for t in tj["added_tokens"])]) + 1


def write_tokenizer(folder: Path, files: dict, template: str) -> None:
    if "save_pretrained" in files:
        from transformers import PreTrainedTokenizerFast

        tok = Tokenizer.from_str(json.dumps(files["save_pretrained"]))
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=None, eos_token="<|im_end|>",
                                       pad_token="<|endoftext|>")
        fast.chat_template = template
        fast.save_pretrained(str(folder))
        return
    for name, content in files.items():
        if isinstance(content, str):
            (folder / name).write_text(content, encoding="utf-8")
        else:
            (folder / name).write_text(json.dumps(content, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# models

from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

VARIANTS: dict[str, dict] = {
    "llama": dict(
        arch="LlamaForCausalLM", config=LlamaConfig, model=LlamaForCausalLM, seed=11, tokenizer=tok_smollm2, n_tokens=320,
        dtype=torch.float32, shard="300KB",
        kwargs=dict(
            vocab_size=320, hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, rms_norm_eps=1e-5, tie_word_embeddings=False,
            rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 128},
        ),
        # The transformers 4 spelling of the same config (Llama 3.1's config.json style).
        tf4=lambda c: tf4_config(c),
    ),
    "llama_tied": dict(
        arch="LlamaForCausalLM", config=LlamaConfig, model=LlamaForCausalLM, seed=12, tokenizer=tok_llama3, n_tokens=384,
        dtype=torch.float32,
        kwargs=dict(
            vocab_size=384, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=1, head_dim=64, rms_norm_eps=1e-6, tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
        ),
    ),
    "qwen2": dict(
        arch="Qwen2ForCausalLM", config=Qwen2Config, model=Qwen2ForCausalLM, seed=13, tokenizer=tok_qwen2, n_tokens=393,
        dtype=torch.float32,
        kwargs=dict(
            vocab_size=416, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, rms_norm_eps=1e-6, tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        ),
    ),
    "qwen3": dict(
        arch="Qwen3ForCausalLM", config=Qwen3Config, model=Qwen3ForCausalLM, seed=14, tokenizer=tok_qwen3_saved,
        n_tokens=400, dtype=torch.bfloat16,
        kwargs=dict(
            vocab_size=400, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=32, rms_norm_eps=1e-6, tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        ),
    ),
}


def tf4_config(config: dict) -> dict:
    """config.json as transformers 4 wrote it: rope_theta at the top, the scaling (with
    rope_type and the legacy type) in rope_scaling, no rope_parameters."""
    c = {k: v for k, v in config.items() if k != "rope_parameters"}
    params = dict(config["rope_parameters"])
    c["rope_theta"] = params.pop("rope_theta")
    c["rope_scaling"] = params if params.get("rope_type", "default") != "default" else None
    c["torch_dtype"] = c.pop("dtype", "float32")
    c["transformers_version"] = "4.46.0"
    return dict(sorted(c.items()))


def randomize(model: torch.nn.Module, seed: int) -> None:
    """As tiny_models.py: matrices N(0, 1/in) (q and k N(0, 0.3²)), embeddings N(0, 1)
    (N(0, 0.25²) when tied), biases N(0, 0.5²), norm scales U(0.5, 1.5)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # tied parameters appear once
            if name.endswith("norm.weight"):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            elif name.endswith(".bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            elif "embed_tokens" in name:
                std = 0.25 if model.config.tie_word_embeddings else 1.0
                p.copy_(torch.randn(p.shape, generator=g) * std)
            elif name.endswith(("q_proj.weight", "k_proj.weight")):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))


def load_reference(folder: Path) -> torch.nn.Module:
    """The saved folder, as transformers loads it, upcast to float32, eager attention."""
    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, attn_implementation="eager").eval()


def logits_of(model: torch.nn.Module, tokens: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([tokens]), use_cache=False).logits[0].to(torch.float32).numpy()


def margins(logits: np.ndarray) -> np.ndarray:
    top2 = np.sort(logits, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def pick_tokens(model: torch.nn.Module, n_tokens: int, seed: int) -> tuple[list[int], np.ndarray, int]:
    """The first seeded candidate whose every position has a clear top-2 margin."""
    best = None
    for attempt in range(400):
        g = torch.Generator().manual_seed(1000 * seed + attempt)
        tokens = [int(t) for t in torch.randint(0, n_tokens, (N_TOKENS,), generator=g)]
        logits = logits_of(model, tokens)
        rel = float(margins(logits).min() / np.abs(logits).max())
        if best is None or rel > best[0]:
            best = (rel, tokens, logits, attempt)
        if rel >= MIN_MARGIN:
            return tokens, logits, attempt
    raise SystemExit(f"no candidate sequence with a top-2 margin >= {MIN_MARGIN} of max|logit| (best {best[0]:.4f})")


def make(name: str, spec: dict) -> dict:
    folder = OUT / name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)

    files, n_tok, special_ids, template = spec["tokenizer"](spec["n_tokens"])
    assert n_tok == spec["n_tokens"], (name, n_tok)
    write_tokenizer(folder, files, template)

    kwargs = dict(spec["kwargs"], max_position_embeddings=CONTEXT_LENGTH, bos_token_id=special_ids["bos"],
                  eos_token_id=special_ids["eos"])
    config = spec["config"](**kwargs)
    torch.manual_seed(spec["seed"])
    model = spec["model"]._from_config(config, dtype=torch.float32, attn_implementation="eager").eval()
    randomize(model, spec["seed"])
    if spec["arch"] == "Qwen2ForCausalLM":
        a = model.model.layers[0].self_attn
        assert a.q_proj.bias is not None and a.k_proj.bias is not None and a.v_proj.bias is not None and a.o_proj.bias is None
    if config.tie_word_embeddings:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    model = model.to(spec["dtype"])
    save_kwargs = {"max_shard_size": spec["shard"]} if "shard" in spec else {}
    model.save_pretrained(str(folder), **save_kwargs)
    saved_config = json.loads((folder / "config.json").read_text())
    assert "rope_parameters" in saved_config and "rope_scaling" not in saved_config, saved_config
    assert (folder / "model.safetensors.index.json").exists() == ("shard" in spec)

    reference = load_reference(folder)
    tokens, logits, attempt = pick_tokens(reference, n_tok, spec["seed"])
    assert logits.shape == (N_TOKENS, spec["kwargs"]["vocab_size"])
    np.save(OUT / f"{name}.logits.npy", logits.astype(np.float32))

    entry_extra = []
    if "tf4" in spec:
        # The same weights under a transformers-4 config.json: transformers must read it to the
        # same model (the test converts it and compares with the same reference).
        alt = spec["tf4"](saved_config)
        alt_name = f"{name}_tf4.config.json"
        (OUT / alt_name).write_text(json.dumps(alt, indent=2) + "\n")
        tmp = OUT / f".{name}_tf4_check"
        shutil.copytree(folder, tmp)
        try:
            (tmp / "config.json").write_text(json.dumps(alt, indent=2) + "\n")
            alt_logits = logits_of(load_reference(tmp), tokens)
        finally:
            shutil.rmtree(tmp)
        diff = float(np.abs(alt_logits - logits).max())
        assert diff == 0.0, f"{name}: transformers reads the transformers 4 config differently ({diff})"
        entry_extra.append({"name": f"{name}_tf4", "config_override": alt_name})

    # The HF tokenizer's ids (tokenizers on tokenizer.json), checked against AutoTokenizer.
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    auto = AutoTokenizer.from_pretrained(str(folder))
    cases = []
    for text in TEXTS:
        ids = tok.encode(text, add_special_tokens=False).ids
        ids_special = tok.encode(text, add_special_tokens=True).ids
        assert auto.encode(text, add_special_tokens=True) == ids_special, (name, text)
        cases.append({"text": text, "ids": ids, "ids_special": ids_special})
    auto_template = auto.chat_template
    assert auto_template == template, (name, auto_template)

    max_abs = float(np.abs(logits).max())
    margin = float(margins(logits).min())
    size = sum(p.stat().st_size for p in folder.iterdir())
    cfg = saved_config
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    print(f"{name}: {spec['arch']}, {spec['dtype']}, tokens {n_tok}/{cfg['vocab_size']} rows, hidden {cfg['hidden_size']}, "
          f"heads {cfg['num_attention_heads']}/{cfg['num_key_value_heads']}, head_dim {head_dim}, ff {cfg['intermediate_size']}, "
          f"tied {cfg['tie_word_embeddings']}, files {sorted(p.name for p in folder.iterdir())}, {size} bytes; "
          f"max|logit| {max_abs:.3f}, min top-2 margin {margin:.3f} ({margin / max_abs:.3f}; candidate {attempt})")
    entry = {
        "name": name,
        "dir": name,
        "architecture": spec["arch"],
        "dtype": str(spec["dtype"]).removeprefix("torch."),
        "logits": f"{name}.logits.npy",
        "tokens": tokens,
        "n_vocab": cfg["vocab_size"],
        "n_tokenizer_tokens": n_tok,
        "hidden_size": cfg["hidden_size"],
        "n_layer": cfg["num_hidden_layers"],
        "n_head": cfg["num_attention_heads"],
        "n_head_kv": cfg["num_key_value_heads"],
        "head_dim": head_dim,
        "n_ff": cfg["intermediate_size"],
        "tied_embeddings": cfg["tie_word_embeddings"],
        "rope_type": cfg["rope_parameters"].get("rope_type", "default"),
        "sharded": "shard" in spec,
        "bos": special_ids["bos"],
        "eos": special_ids["eos"],
        "chat_template": template,
        "max_abs_logit": max_abs,
        "min_top2_margin": margin,
        "argmax": [int(i) for i in logits.argmax(axis=1)],
        "tokenizer_cases": cases,
    }
    return [entry] + [dict(entry, **e) for e in entry_extra]


def main_generate() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    torch.set_grad_enabled(False)
    import tokenizers
    import transformers

    manifest = {
        "generator": "scripts/reference/hf_fixtures.py",
        "reference": f"transformers {transformers.__version__}, tokenizers {tokenizers.__version__}, torch {torch.__version__}",
        "variants": [],
    }
    for name, spec in VARIANTS.items():
        manifest["variants"].extend(make(name, spec))
    text = json.dumps(manifest, ensure_ascii=False, indent=1)
    # lists of numbers on one line
    text = re.sub(r"\[\s*(-?[0-9][0-9.e+-]*(?:,\s*-?[0-9][0-9.e+-]*)*)\s*\]",
                  lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text)
    (OUT / "manifest.json").write_text(text + "\n", encoding="utf-8")
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"tests/fixtures/hf: {total} bytes")


# ---------------------------------------------------------------------------------------------
# llama.cpp on retort's converted files


def llama_env() -> dict | None:
    env_file = Path("/work/llama-peer.env")
    if not env_file.exists():
        return None
    env = {}
    for line in env_file.read_text().splitlines():
        line = line.strip().removeprefix("export ").strip()
        if "=" in line and not line.startswith("#"):
            key, val = line.split("=", 1)
            env[key.strip()] = val.strip().strip('"')
    return env if env.get("LLAMA_PY") else None


LLAMA_CODE = """
import json, sys, numpy as np, llama_cpp
path, out, tokens = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
m = llama_cpp.Llama(model_path=path, logits_all=True, n_ctx=64, n_threads=2, verbose=False)
m.eval(tokens)
np.save(out, np.array(m.scores[:len(tokens)], dtype=np.float32))
"""


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def mean_kl(ref: np.ndarray, ours: np.ndarray) -> float:
    lp, lq = log_softmax(ref), log_softmax(ours)
    return float((np.exp(lp) * (lp - lq)).sum(axis=1).mean())


def check_llama_cpp(keep: Path) -> int:
    env = llama_env()
    if env is None:
        print("LLAMA_PY not available (/work/llama-peer.env)", file=sys.stderr)
        return 2
    manifest = json.loads((OUT / "manifest.json").read_text(encoding="utf-8"))
    failures = 0
    print(f"{'file':28} {'argmax=retort':>14} {'argmax=ref':>11} {'rel err':>9} {'KL llama.cpp':>13} {'KL retort':>10}")
    for v in manifest["variants"]:
        ref = np.load(OUT / v["logits"])
        for ty in ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_k_m"]:
            path = keep / f"{v['name']}.{ty}.gguf"
            ours_path = keep / f"{v['name']}.{ty}.retort.npy"
            if not path.exists():
                print(f"{path.name:28} missing")
                failures += 1
                continue
            out = keep / f"{v['name']}.{ty}.llama.npy"
            r = subprocess.run([env["LLAMA_PY"], "-c", LLAMA_CODE, str(path), str(out), json.dumps(v["tokens"])],
                               capture_output=True, text=True, env={**os.environ, **env})
            if r.returncode != 0:
                print(f"{path.name:28} llama.cpp failed: {r.stderr.strip()[-1500:]}")
                failures += 1
                continue
            lc = np.load(out)
            ours = np.load(ours_path) if ours_path.exists() else None
            same_retort = int((lc.argmax(1) == ours.argmax(1)).sum()) if ours is not None else -1
            same_ref = int((lc.argmax(1) == ref.argmax(1)).sum())
            rel = float(np.abs(lc - ref).max() / np.abs(ref).max())
            kl_lc = mean_kl(ref, lc)
            kl_ours = mean_kl(ref, ours) if ours is not None else float("nan")
            n = len(v["tokens"])
            print(f"{path.name:28} {same_retort:>8}/{n:<5} {same_ref:>5}/{n:<5} {rel:9.2e} {kl_lc:13.3e} {kl_ours:10.3e}")
            if ty in ("f32", "q8_0") and same_retort != n:
                failures += 1
    return 1 if failures else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check-llama-cpp", type=Path, metavar="KEEP_DIR",
                    help="run llama.cpp on the files tests/convert_hf.rs kept (see the module docs)")
    args = ap.parse_args()
    if args.check_llama_cpp:
        sys.exit(check_llama_cpp(args.check_llama_cpp))
    main_generate()


if __name__ == "__main__":
    main()
