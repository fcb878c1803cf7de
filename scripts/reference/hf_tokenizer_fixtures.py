#!/usr/bin/env python3
"""Tokenizer folders as Hugging Face ships them, for convert/tests/hf_tokenizer.rs.

Each fixture is a tiny byte-level BPE tokenizer (a few hundred tokens) trained with the
`tokenizers` trainer under one upstream pipeline, saved the way the Hub has it:

  smollm2      SmolLM2: no normalizer; Sequence[Digits(individual), ByteLevel(use_regex=true)];
               special tokens at ids 0..; merges as "a b" strings (tokenizers < 0.20);
               ByteLevel post-processor; inline chat template.
  gpt2         GPT-2: ByteLevel(use_regex=true) alone; <|endoftext|> last; no
               tokenizer_config.json bos/eos (config.json's bos_token_id/eos_token_id).
  qwen2        Qwen2.5: NFC; Sequence[Split(Qwen2 regex), ByteLevel(use_regex=false)]; merges
               as pairs; added tokens after the vocabulary; bos_token null; chat template in
               chat_template.jinja (transformers >= 4.43); an embedding larger than the
               vocabulary (n_vocab > tokens: [PAD{i}] padding).
  r1_qwen      DeepSeek-R1-Distill-Qwen: Qwen2's pipeline, R1's added tokens
               (<｜begin▁of▁sentence｜>, <｜User｜>, <think>, ...), TemplateProcessing adding BOS,
               add_bos_token true, bos/eos as {"content": ...} objects; eos from
               generation_config.json's list is not used (tokenizer_config has one).
  llama3       Llama 3: Split(Llama 3 regex) + ByteLevel(use_regex=false), ignore_merges=true
               (with a vocabulary token no merge sequence makes, so ignore_merges matters),
               Sequence[ByteLevel, TemplateProcessing(<|begin_of_text|> $A)] post-processor,
               tokenizer_class PreTrainedTokenizerFast, config.json eos_token_id a list.
  deepseek_v3  DeepSeek-V3: empty normalizer Sequence; three Splits (the third with literal
               CR/LF characters in the pattern, as upstream) + ByteLevel(use_regex=false);
               R1-style added tokens; TemplateProcessing BOS; chat template as
               a list of named templates in tokenizer_config.json.

For every fixture it records `tokenizers`' encodings (add_special_tokens false and true) of
hard strings (CJK, Cyrillic, emoji, code, digits, spaces, special tokens written in text), and
checks that transformers' AutoTokenizer loads the folder to the same encodings, BOS/EOS and
chat template. Writes convert/tests/fixtures/tokenizers/<name>/{tokenizer.json,
tokenizer_config.json, config.json, ..., expected.json}.

Run:  /work/venv-ref/bin/python scripts/reference/hf_tokenizer_fixtures.py

Second, optional mode (not part of the committed test): compare llama.cpp with the fixtures.
`RETORT_HF_TOKENIZER_GGUF_OUT=/tmp/g cargo test -p retort-convert --test hf_tokenizer` keeps
the GGUF files the test writes; then
      /work/venv-ref/bin/python scripts/reference/hf_tokenizer_fixtures.py --check-llama-cpp /tmp/g
loads each with llama.cpp's Python binding (LLAMA_PY from /work/llama-peer.env,
vocab_only=True) and compares its ids with HF's on every recorded string.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import tokenizers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "convert" / "tests" / "fixtures" / "tokenizers"

GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
QWEN2_REGEX = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
LLAMA3_REGEX = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
# As upstream DeepSeek-V3's tokenizer.json has them: the third with CR and LF as characters.
DSV3_REGEXES = [
    r"\p{N}{1,3}",
    "[一-龥぀-ゟ゠-ヿ]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
]

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
QWEN_TEMPLATE = (
    "{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}\n"
)
R1_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}"
    "{% elif message['role'] == 'assistant' %}{{ '<｜Assistant｜>' + message['content'] + '<｜end▁of▁sentence｜>' }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<｜Assistant｜><think>\\n' }}{% endif %}"
)
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
DSV3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}"
    "{% else %}{{ '<｜Assistant｜>' + message['content'] + '<｜end▁of▁sentence｜>' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<｜Assistant｜>' }}{% endif %}"
)
DSV3_TOOL_TEMPLATE = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}<｜tool▁calls▁begin｜>"

# llama.cpp's convert_hf_to_gguf.py chktxt
CHKTXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 3 33 333 "
    "3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на "
    "Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, "
    "'D you like some tea? We'Ve a'lL"
)

TEXTS = [
    "", " ", "   ", "\n", "\n\n\n", "\t", "\r\n", "a\r\nb\r\n\r\nc", " \t \n \t\n",
    "Hello, world!", "   leading spaces", "trailing spaces   ", "between   words\t\there",
    "space before newline   \nnext",
    "It's, they'LL, we'Re, I'M, DON'T, 'tis", "IT'S SHE'S O'Neill's rock'n'roll",
    "1234567890", "3.14159 1,000,000 -42 0x1F 1e-9", "v1.2.3 2024-11-25T06:25:11Z", "١٢٣٤ ४५६ ½ Ⅻ ①②",
    "def f(x):\n    return x ** 2  # square\n", "if (a && b) {\n\t\tc[i] = -1;\n}", "https://example.com/path?q=1&r=2#frag",
    "#include <stdio.h>\nint main(void) { return 0; }",
    "Привет, мир! Как дела?", "Україна: їжак, ґанок, єнот", "你好，世界！这是一个测试。", "中文混合English和数字123的句子",
    "日本語のテキストとカタカナ、ひらがな。ー", "東京タワーは333メートルです", "한국어 텍스트입니다.", "مرحبا بالعالم", "Ελληνικά αβγ ΆΈΉ",
    "😀👍🏽🇺🇸 and ❤️", "👨‍👩‍👧‍👦 family, 🏳️‍🌈 flag", "emoji😀in😀words",
    "e\u0301 a\u0300 o\u0308 (decomposed) vs é à ö", "\u1100\u1161\u11a8 \uf900 \u212b \u2126", "e\u1ac1\u0301 e\u0301\u1ac1",
    "\u00a0nbsp\u3000ideographic", "zero\u200bwidth\ufeffbom", "Ａｌｐｈａ １２３ full-width", "Z̤͔ͧ̑̓ä͖̭̈̇lͮ̒ͫǧ̗͚̚o̙̔ͮ̇͐̇",
    " unbelievable retort, unbelievably", "a" * 40 + " " + "9" * 20,
    CHKTXT,
    # special tokens written in text (each fixture knows some of them; the rest is plain text)
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", "x<|endoftext|>y", "<|im_start", "< |im_start|>",
    "<think>reasoning</think>answer", "< think>", "<｜begin▁of▁sentence｜><｜User｜>hi<｜Assistant｜><think>\n",
    "<｜end▁of▁sentence｜>", "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>",
    "<tool_call>{\"name\": \"f\"}</tool_call>",
]


# ---------------------------------------------------------------------------------------------
# training corpus


def corpus(seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    words = ("the of and to in is that it for was on are with as be this by at from have not or an they which "
             "you one had but all were when there can more has so what out if about who them would will up "
             "token tokenizer model text byte merge vocabulary sentence language number code function return "
             "value string").split()
    code = [
        "def f(x):\n    return x + 1\n", "for i in range(10):\n    print(i)\n", "if (a && b) {\n\tc = d;\n}\n",
        "fn main() {\n    let v = vec![1, 2, 3];\n}\n", "    \n\t\n        x = 0\n", "<div class=\"x\">y</div>",
        "SELECT * FROM t WHERE id = 1;", "import numpy as np\nnp.zeros((3, 4))\n", "// comment\n/* block */\n",
        "x == y != z <= w >= q", "a['b'] = c[\"d\"]; e->f; g::h",
    ]
    cjk = ["你好世界", "这是一个测试", "中文句子", "数字和文字", "東京タワー", "日本語のテキスト", "カタカナ", "ひらがな",
           "한국어", "텍스트입니다"]
    cyr = ["Привет", "мир", "Как", "дела", "русский", "язык", "Україна", "їжак", "ґанок", "Български"]
    misc = ["😀", "👍🏽", "🇺🇸", "❤️", "🚀", "🦙", "é", "à", "ö", "ß", "Ελληνικά", "مرحبا", "שלום", "नमस्ते"]
    lines = []
    for _ in range(1500):
        k = rng.random()
        if k < 0.45:
            n = rng.randint(3, 14)
            s = " ".join(rng.choice(words) for _ in range(n))
            if rng.random() < 0.3:
                s = s.capitalize() + rng.choice([".", "!", "?", ",", "'s", "'ll", " don't", " it's"])
            lines.append(s)
        elif k < 0.6:
            lines.append(rng.choice(code))
        elif k < 0.72:
            lines.append(" ".join(str(rng.randint(0, 10 ** rng.randint(1, 7))) for _ in range(rng.randint(1, 5))))
        elif k < 0.84:
            lines.append("".join(rng.choice(cjk) for _ in range(rng.randint(1, 4))) + rng.choice(["。", "，", "！", ""]))
        elif k < 0.94:
            lines.append(" ".join(rng.choice(cyr) for _ in range(rng.randint(1, 6))))
        else:
            lines.append(" ".join(rng.choice(misc) for _ in range(rng.randint(1, 4))))
        if rng.random() < 0.2:
            lines[-1] += rng.choice(["\n", "\n\n", "   ", "\t", "\r\n"])
    return lines


def split(regex: str):
    return pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False)


def byte_level(use_regex: bool, trim_offsets: bool = True):
    return pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=trim_offsets, use_regex=use_regex)


def train(normalizer, pre_tokenizer, vocab_size: int, special: list[str]) -> dict:
    tok = Tokenizer(models.BPE())
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  special_tokens=[AddedToken(s, special=True, normalized=False) for s in special],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(), trainer)
    return json.loads(tok.to_str())


def added(content: str, id_: int, special: bool) -> dict:
    return {"id": id_, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": special}


def append_added(tj: dict, tokens: list[tuple[str, bool]]) -> None:
    """Added tokens after the vocabulary, numbered as `tokenizers` numbers them when it loads the
    file (it ignores the "id" fields: new contents take the next id after the vocabulary)."""
    next_id = len(tj["model"]["vocab"])
    for content, special in tokens:
        tj["added_tokens"].append(added(content, next_id, special))
        next_id += 1


def template_bos(bos: str, bos_id: int) -> dict:
    return {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}},
    }


BYTE_LEVEL_PP = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}


def added_tokens_decoder(tj: dict) -> dict:
    return {str(t["id"]): {k: t[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
            for t in tj["added_tokens"]}


def id_of(tj: dict, content: str) -> int:
    for t in tj["added_tokens"]:
        if t["content"] == content:
            return t["id"]
    return tj["model"]["vocab"][content]


# ---------------------------------------------------------------------------------------------
# the fixtures: (tokenizer.json dict, other files, expectations)


def fixture_smollm2():
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>", "<file_sep>"]
    tj = train(None, pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level(True)]), 500, special)
    tj["post_processor"] = dict(BYTE_LEVEL_PP, trim_offsets=True)
    # tokenizers < 0.20 wrote merges as "a b" strings.
    tj["model"]["merges"] = [" ".join(m) for m in tj["model"]["merges"]]
    files = {
        "tokenizer_config.json": {
            "add_prefix_space": False, "added_tokens_decoder": added_tokens_decoder(tj),
            "additional_special_tokens": ["<|im_start|>", "<|im_end|>"], "bos_token": "<|im_start|>",
            "chat_template": CHATML, "clean_up_tokenization_spaces": False, "eos_token": "<|im_end|>",
            "model_max_length": 2048, "pad_token": "<|im_end|>", "tokenizer_class": "GPT2Tokenizer",
            "unk_token": "<|endoftext|>", "vocab_size": 500,
        },
        "config.json": {"architectures": ["LlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "vocab_size": 500},
    }
    n_vocab = 500
    expect = {"pre": "smollm", "bos": 1, "eos": 2, "pad": 2, "add_bos": False, "add_eos": False,
              "chat_template": CHATML}
    return tj, files, n_vocab, expect


def fixture_gpt2():
    tj = train(None, byte_level(True), 450, [])
    append_added(tj, [("<|endoftext|>", True)])
    tj["post_processor"] = dict(BYTE_LEVEL_PP, trim_offsets=True)
    eot = id_of(tj, "<|endoftext|>")
    files = {
        "tokenizer_config.json": {"add_prefix_space": False, "added_tokens_decoder": added_tokens_decoder(tj),
                                  "model_max_length": 1024, "tokenizer_class": "GPT2Tokenizer"},
        "config.json": {"architectures": ["GPT2LMHeadModel"], "bos_token_id": eot, "eos_token_id": eot,
                        "vocab_size": eot + 1},
    }
    expect = {"pre": "gpt-2", "bos": eot, "eos": eot, "pad": None, "add_bos": False, "add_eos": False,
              "chat_template": None}
    return tj, files, eot + 1, expect


QWEN_ADDED = [("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True), ("<|object_ref_start|>", True),
              ("<|vision_pad|>", True), ("<tool_call>", False), ("</tool_call>", False), ("<|fim_prefix|>", False),
              ("<|fim_pad|>", False), ("<|repo_name|>", False), ("<|file_sep|>", False), ("<think>", False),
              ("</think>", False)]


def qwen_pipeline():
    return normalizers.NFC(), pre_tokenizers.Sequence([split(QWEN2_REGEX), byte_level(False, trim_offsets=False)])


def fixture_qwen2():
    tj = train(*qwen_pipeline(), 520, [])
    append_added(tj, QWEN_ADDED)
    tj["post_processor"] = BYTE_LEVEL_PP
    n_tokens = max(t["id"] for t in tj["added_tokens"]) + 1
    n_vocab = n_tokens + 19  # Qwen2.5-7B: 152064 embedding rows for 151665 tokens
    files = {
        "tokenizer_config.json": {
            "add_bos_token": False, "add_prefix_space": False, "added_tokens_decoder": added_tokens_decoder(tj),
            "additional_special_tokens": ["<|im_start|>", "<|im_end|>"], "bos_token": None,
            "clean_up_tokenization_spaces": False, "eos_token": "<|im_end|>", "errors": "replace",
            "model_max_length": 131072, "pad_token": "<|endoftext|>", "split_special_tokens": False,
            "tokenizer_class": "Qwen2Tokenizer", "unk_token": None,
        },
        # transformers >= 4.43 saves the template on its own, and it wins over tokenizer_config's.
        "chat_template.jinja": QWEN_TEMPLATE,
        "config.json": {"architectures": ["Qwen2ForCausalLM"], "bos_token_id": id_of(tj, "<|endoftext|>"),
                        "eos_token_id": id_of(tj, "<|endoftext|>"), "vocab_size": n_vocab},
        "generation_config.json": {"bos_token_id": id_of(tj, "<|endoftext|>"), "pad_token_id": id_of(tj, "<|endoftext|>"),
                                   "eos_token_id": [id_of(tj, "<|im_end|>"), id_of(tj, "<|endoftext|>")]},
    }
    # a stale template in tokenizer_config.json that the .jinja file overrides
    files["tokenizer_config.json"]["chat_template"] = "{{ 'stale template, chat_template.jinja wins' }}"
    expect = {"pre": "qwen2", "bos": id_of(tj, "<|endoftext|>"), "eos": id_of(tj, "<|im_end|>"),
              "pad": id_of(tj, "<|endoftext|>"), "add_bos": False, "add_eos": False, "chat_template": QWEN_TEMPLATE}
    return tj, files, n_vocab, expect


R1_ADDED = [("<｜end▁of▁sentence｜>", True), ("<｜User｜>", False), ("<｜Assistant｜>", False),
            ("<｜begin▁of▁sentence｜>", True), ("<|EOT|>", False), ("<think>", False), ("</think>", False),
            ("<|quad_start|>", True), ("<|vision_pad|>", True), ("<tool_call>", False), ("</tool_call>", False),
            ("<|fim_prefix|>", False), ("<|repo_name|>", False), ("<|file_sep|>", False)]


def fixture_r1_qwen():
    tj = train(*qwen_pipeline(), 520, [])
    # R1 kept Qwen2.5's <|endoftext|> etc. out; its own added tokens start right after the vocabulary.
    append_added(tj, R1_ADDED)
    bos = "<｜begin▁of▁sentence｜>"
    tj["post_processor"] = template_bos(bos, id_of(tj, bos))
    n_vocab = max(t["id"] for t in tj["added_tokens"]) + 1 + 7
    obj = lambda c: {"__type": "AddedToken", "content": c, "lstrip": False, "normalized": True, "rstrip": False,
                     "single_word": False}
    files = {
        "tokenizer_config.json": {
            "add_bos_token": True, "add_eos_token": False, "added_tokens_decoder": added_tokens_decoder(tj),
            "bos_token": obj(bos), "chat_template": R1_TEMPLATE, "clean_up_tokenization_spaces": False,
            "eos_token": obj("<｜end▁of▁sentence｜>"), "legacy": True, "model_max_length": 16384,
            "pad_token": obj("<｜end▁of▁sentence｜>"), "sp_model_kwargs": {}, "unk_token": None,
            "tokenizer_class": "LlamaTokenizerFast",
        },
        "config.json": {"architectures": ["Qwen2ForCausalLM"], "bos_token_id": 0, "eos_token_id": 1, "vocab_size": n_vocab},
        "generation_config.json": {"bos_token_id": 0, "eos_token_id": [1, 2], "do_sample": True},
    }
    expect = {"pre": "deepseek-r1-qwen", "bos": id_of(tj, bos), "eos": id_of(tj, "<｜end▁of▁sentence｜>"),
              "pad": id_of(tj, "<｜end▁of▁sentence｜>"), "add_bos": True, "add_eos": False, "chat_template": R1_TEMPLATE}
    return tj, files, n_vocab, expect


LLAMA3_ADDED = [("<|begin_of_text|>", True), ("<|end_of_text|>", True), ("<|reserved_special_token_0|>", True),
                ("<|start_header_id|>", True), ("<|end_header_id|>", True), ("<|eot_id|>", True)]


def fixture_llama3():
    tj = train(None, pre_tokenizers.Sequence([split(LLAMA3_REGEX), byte_level(False)]), 540, [])
    tj["model"]["ignore_merges"] = True
    # A vocabulary token no merge sequence builds: HF's ignore_merges finds it whole.
    vocab = tj["model"]["vocab"]
    for word in ["Ġunbelievable", "Ġretort"]:
        assert word not in vocab
        vocab[word] = max(vocab.values()) + 1
    append_added(tj, LLAMA3_ADDED)
    bos = "<|begin_of_text|>"
    tj["post_processor"] = {"type": "Sequence", "processors": [
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        template_bos(bos, id_of(tj, bos))]}
    n_vocab = max(t["id"] for t in tj["added_tokens"]) + 1
    files = {
        "tokenizer_config.json": {
            "added_tokens_decoder": added_tokens_decoder(tj), "bos_token": bos, "chat_template": LLAMA3_TEMPLATE,
            "clean_up_tokenization_spaces": True, "eos_token": "<|eot_id|>",
            "model_input_names": ["input_ids", "attention_mask"], "model_max_length": 131072,
            "tokenizer_class": "PreTrainedTokenizerFast",
        },
        "config.json": {"architectures": ["LlamaForCausalLM"], "bos_token_id": id_of(tj, bos),
                        "eos_token_id": [id_of(tj, "<|end_of_text|>"), id_of(tj, "<|eot_id|>")], "vocab_size": n_vocab},
    }
    expect = {"pre": "llama-bpe", "bos": id_of(tj, bos), "eos": id_of(tj, "<|eot_id|>"), "pad": None,
              "add_bos": True, "add_eos": False, "chat_template": LLAMA3_TEMPLATE}
    return tj, files, n_vocab, expect


DSV3_ADDED = [("<｜begin▁of▁sentence｜>", True), ("<｜end▁of▁sentence｜>", True), ("<｜▁pad▁｜>", True),
              ("<｜User｜>", False), ("<｜Assistant｜>", False), ("<think>", False), ("</think>", False),
              ("<｜tool▁calls▁begin｜>", False)]


def fixture_deepseek_v3():
    tj = train(normalizers.Sequence([]),
               pre_tokenizers.Sequence([split(r) for r in DSV3_REGEXES] + [byte_level(False)]), 560, [])
    append_added(tj, DSV3_ADDED)
    bos = "<｜begin▁of▁sentence｜>"
    tj["post_processor"] = template_bos(bos, id_of(tj, bos))
    n_vocab = max(t["id"] for t in tj["added_tokens"]) + 1 + 12
    obj = lambda c: {"__type": "AddedToken", "content": c, "lstrip": False, "normalized": True, "rstrip": False,
                     "single_word": False}
    files = {
        "tokenizer_config.json": {
            "add_bos_token": True, "add_eos_token": False, "bos_token": obj(bos),
            "chat_template": [{"name": "default", "template": DSV3_TEMPLATE},
                              {"name": "tool_use", "template": DSV3_TOOL_TEMPLATE}],
            "clean_up_tokenization_spaces": False, "eos_token": obj("<｜end▁of▁sentence｜>"), "legacy": True,
            "model_max_length": 131072, "pad_token": obj("<｜end▁of▁sentence｜>"), "sp_model_kwargs": {},
            "unk_token": None, "tokenizer_class": "LlamaTokenizerFast",
        },
        "config.json": {"architectures": ["DeepseekV3ForCausalLM"], "bos_token_id": 0, "eos_token_id": 1,
                        "vocab_size": n_vocab},
    }
    expect = {"pre": "deepseek-v3", "bos": id_of(tj, bos), "eos": id_of(tj, "<｜end▁of▁sentence｜>"),
              "pad": id_of(tj, "<｜end▁of▁sentence｜>"), "add_bos": True, "add_eos": False,
              "chat_template": DSV3_TEMPLATE, "chat_templates": {"tool_use": DSV3_TOOL_TEMPLATE}}
    return tj, files, n_vocab, expect


FIXTURES = {
    "smollm2": fixture_smollm2,
    "gpt2": fixture_gpt2,
    "qwen2": fixture_qwen2,
    "r1_qwen": fixture_r1_qwen,
    "llama3": fixture_llama3,
    "deepseek_v3": fixture_deepseek_v3,
}


# ---------------------------------------------------------------------------------------------


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def make(name: str) -> None:
    tj, files, n_vocab, expect = FIXTURES[name]()
    out = OUT / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    write_json(out / "tokenizer.json", tj)
    for fname, content in files.items():
        if isinstance(content, str):
            (out / fname).write_text(content, encoding="utf-8")
        else:
            write_json(out / fname, content)

    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    for t in tj["added_tokens"]:
        assert tok.token_to_id(t["content"]) == t["id"], (name, t)
    cases = []
    for text in TEXTS:
        ids = tok.encode(text, add_special_tokens=False).ids
        ids_special = tok.encode(text, add_special_tokens=True).ids
        case = {"text": text, "ids": ids}
        if ids_special != ids:
            case["ids_special"] = ids_special
        cases.append(case)

    # transformers must load the folder to the same tokenizer, BOS/EOS and template.
    from transformers import AutoTokenizer

    at = AutoTokenizer.from_pretrained(str(out))
    mismatches = 0
    for c in cases:
        got = at.encode(c["text"], add_special_tokens=True)
        if got != c.get("ids_special", c["ids"]):
            mismatches += 1
            print(f"[{name}] transformers differs on {c['text']!r}: {got} vs {c.get('ids_special', c['ids'])}", file=sys.stderr)
    if at.bos_token_id is not None and at.bos_token_id != expect["bos"]:
        print(f"[{name}] transformers bos {at.bos_token_id} != expected {expect['bos']}", file=sys.stderr)
    if at.eos_token_id is not None and at.eos_token_id != expect["eos"]:
        print(f"[{name}] transformers eos {at.eos_token_id} != expected {expect['eos']}", file=sys.stderr)
    template = at.chat_template
    if isinstance(template, dict):
        template = template.get("default")
    if template != expect["chat_template"]:
        print(f"[{name}] transformers chat template differs: {template!r}", file=sys.stderr)
    if name == "llama3":
        whole = tok.encode(" unbelievable", add_special_tokens=False).ids
        assert whole == [tj["model"]["vocab"]["Ġunbelievable"]], whole

    expected = {
        "reference": f"tokenizers {tokenizers.__version__}, transformers {__import__('transformers').__version__}",
        "n_vocab": n_vocab,
        **expect,
        "cases": cases,
    }
    # one case a line, to keep the file short and diffs readable
    head = json.dumps({k: v for k, v in expected.items() if k != "cases"}, ensure_ascii=False, indent=2)
    lines = ",\n".join("    " + json.dumps(c, ensure_ascii=False) for c in cases)
    (out / "expected.json").write_text(head[:-2] + ',\n  "cases": [\n' + lines + "\n  ]\n}\n", encoding="utf-8")
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"[hf_tokenizer_fixtures] {out}: {len(tok.get_vocab())} tokens, {len(cases)} cases, {size} bytes, "
          f"transformers mismatches {mismatches}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# llama.cpp cross-check of the GGUF files the Rust test writes


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


def check_llama_cpp(gguf_dir: Path) -> int:
    env = llama_env()
    if env is None:
        print("LLAMA_PY not available", file=sys.stderr)
        return 2
    code = (
        "import json, sys, llama_cpp\n"
        "m = llama_cpp.Llama(model_path=sys.argv[1], vocab_only=True, verbose=False)\n"
        "texts = json.load(sys.stdin)\n"
        "out = {'plain': [m.tokenize(t.encode('utf-8'), add_bos=False, special=True) for t in texts],\n"
        "       'special': [m.tokenize(t.encode('utf-8'), add_bos=True, special=True) for t in texts],\n"
        "       'bos': m.token_bos(), 'eos': m.token_eos(), 'n_vocab': m.n_vocab()}\n"
        "print(json.dumps(out))\n"
    )
    failures = 0
    for name in FIXTURES:
        path = gguf_dir / f"{name}.gguf"
        expected = json.loads((OUT / name / "expected.json").read_text(encoding="utf-8"))
        if not path.exists():
            print(f"{name}: {path} missing", file=sys.stderr)
            failures += 1
            continue
        texts = [c["text"] for c in expected["cases"]]
        try:
            r = subprocess.run([env["LLAMA_PY"], "-c", code, str(path)], input=json.dumps(texts), capture_output=True,
                               text=True, timeout=600, check=True, env={**os.environ, **env})
        except subprocess.CalledProcessError as e:
            print(f"{name}: llama.cpp failed to load: {e.stderr[-2000:]}", file=sys.stderr)
            failures += 1
            continue
        got = json.loads(r.stdout.strip().splitlines()[-1])
        bad = [(c["text"], g, c["ids"]) for c, g in zip(expected["cases"], got["plain"]) if g != c["ids"]]
        bad_special = [(c["text"], g, c.get("ids_special", c["ids"]))
                       for c, g in zip(expected["cases"], got["special"]) if g != c.get("ids_special", c["ids"])]
        meta = (got["bos"] == (expected["bos"] if expected["bos"] is not None else -1),
                got["eos"] == (expected["eos"] if expected["eos"] is not None else -1),
                got["n_vocab"] == expected["n_vocab"])
        print(f"{name}: {len(texts) - len(bad)}/{len(texts)} equal without BOS, "
              f"{len(texts) - len(bad_special)}/{len(texts)} with special tokens added; bos/eos/n_vocab ok: {meta}")
        for text, g, want in (bad + bad_special)[:6]:
            print(f"    {text!r}: llama.cpp {g} HF {want}")
        failures += bool(bad or bad_special or not all(meta))
    return 1 if failures else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", action="append", choices=list(FIXTURES), help="make only these fixtures")
    ap.add_argument("--check-llama-cpp", type=Path, metavar="GGUF_DIR",
                    help="compare llama.cpp on the GGUF files the Rust test kept (see the module docs)")
    args = ap.parse_args()
    if args.check_llama_cpp:
        sys.exit(check_llama_cpp(args.check_llama_cpp))
    for name in args.only or FIXTURES:
        make(name)


if __name__ == "__main__":
    main()
