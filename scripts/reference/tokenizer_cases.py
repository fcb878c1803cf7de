#!/usr/bin/env python3
"""Expected token ids for runtime/tests/tokenizer_parity.rs, made with Hugging Face `tokenizers`.

For each GGUF vocabulary it reads tokenizer.ggml.{tokens,token_type,merges,...} (parsing the GGUF
key/value section directly, so the truncated R1 download works) and builds a
`tokenizers.Tokenizer` from that vocabulary and merges plus the model's UPSTREAM normalizer,
pre-tokenizer, decoder and added tokens, as written in its tokenizer.json on the Hub:

  SmolLM2-135M-Instruct (pre "smollm"):
    normalizer none; pre_tokenizer Sequence[Digits(individual_digits=true),
    ByteLevel(add_prefix_space=false, trim_offsets=true, use_regex=true)]; decoder ByteLevel;
    added tokens ids 0..16 (<|endoftext|>, <|im_start|>, <|im_end|>, <repo_name>, ...), all
    special, normalized=false, lstrip/rstrip/single_word=false.
  DeepSeek-R1-Distill-Qwen (pre "deepseek-r1-qwen"):
    normalizer NFC; pre_tokenizer Sequence[Split(Qwen2 regex, Isolated),
    ByteLevel(add_prefix_space=false, trim_offsets=false, use_regex=false)]; decoder ByteLevel;
    post_processor TemplateProcessing "<｜begin▁of▁sentence｜> $A"; added tokens 151643..151664
    (special: end/begin of sentence, quad/vision/pad ones; not special: <｜User｜>,
    <｜Assistant｜>, <|EOT|>, <think>, </think>, <tool_call>, </tool_call>, <|fim_*|>,
    <|repo_name|>, <|file_sep|>), all normalized=false, lstrip/rstrip/single_word=false.
    (The Qwen2 Split, not DeepSeek-V3's three Splits: the distills keep Qwen2.5's tokenizer.json
    with new added tokens and a BOS post-processor.)

It deliberately does not use transformers' GGUF tokenizer conversion.

It also writes cross-checks of the other pre-tokenizers the Rust tokenizer knows (gpt-2,
llama-bpe, deepseek-v3, qwen2) run over the SmolLM2 vocabulary, to test their regexes and
BPE options (Llama 3's ignore_merges) on real merges.

If /work/llama-peer.env sets LLAMA_PY (a Python with llama_cpp), the same texts are also
tokenized by llama.cpp (vocab_only) and the disagreements with HF are written to
tests/fixtures/tokenizer/llama_cpp_disagreements.json; HF stays the truth.

Writes tests/fixtures/tokenizer/*.json = {"cases": [{"text", "ids", "ids_special", ...}]}.

Run:  /work/venv-ref/bin/python scripts/reference/tokenizer_cases.py
A bigger random set for local checking (not committed):
      /work/venv-ref/bin/python scripts/reference/tokenizer_cases.py --out /tmp/tok --random 20000 --no-llama-cpp
      RETORT_TOKENIZER_FIXTURES=/tmp/tok cargo test -p retort-runtime --test tokenizer_parity
"""

from __future__ import annotations

import argparse
import json
import os
import random
import struct
import subprocess
import sys
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

ROOT = Path(__file__).resolve().parents[2]
MODELS = Path(os.environ.get("RETORT_MODELS_DIR", ROOT / "models-cache"))
OUT = ROOT / "tests" / "fixtures" / "tokenizer"

SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"
R1 = "r1-distill-qwen-7b.part0000.gguf"

GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
QWEN2_REGEX = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
LLAMA3_REGEX = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
DSV3_REGEXES = [
    r"\p{N}{1,3}",
    r"[一-龥぀-ゟ゠-ヿ]+",
    r"""[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
]

# Upstream added tokens of DeepSeek-R1-Distill-Qwen: id -> special flag.
R1_ADDED_SPECIAL = {
    151643: True, 151644: False, 151645: False, 151646: True, 151647: False, 151648: False,
    151649: False, 151650: True, 151651: True, 151652: True, 151653: True, 151654: True,
    151655: True, 151656: True, 151657: False, 151658: False, 151659: False, 151660: False,
    151661: False, 151662: False, 151663: False, 151664: False,
}


# ---------------------------------------------------------------------------------------------
# GGUF metadata


def read_gguf_kv(path: Path) -> dict:
    """The key/value section of a GGUF v2/v3 file (tensor data may be missing)."""
    with open(path, "rb") as f:
        data = f.read(256 * 1024 * 1024)
    off = 0

    def take(fmt: str):
        nonlocal off
        v = struct.unpack_from("<" + fmt, data, off)[0]
        off += struct.calcsize("<" + fmt)
        return v

    def string() -> str:
        nonlocal off
        n = take("Q")
        s = data[off : off + n].decode("utf-8")
        off += n
        return s

    scalar = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}

    def value(t: int):
        if t in scalar:
            return take(scalar[t])
        if t == 8:
            return string()
        if t == 9:
            at, n = take("I"), take("Q")
            return [value(at) for _ in range(n)]
        raise ValueError(f"GGUF value type {t}")

    if data[:4] != b"GGUF":
        raise ValueError(f"{path}: not a GGUF file")
    off = 4
    version = take("I")
    if version not in (2, 3):
        raise ValueError(f"{path}: GGUF version {version}")
    take("Q")  # tensor count
    kv = {}
    for _ in range(take("Q")):
        key = string()
        kv[key] = value(take("I"))
    return kv


def vocabulary(path: Path) -> dict:
    kv = read_gguf_kv(path)
    return {
        "model": kv["tokenizer.ggml.model"],
        "pre": kv.get("tokenizer.ggml.pre"),
        "tokens": kv["tokenizer.ggml.tokens"],
        "types": kv.get("tokenizer.ggml.token_type") or [1] * len(kv["tokenizer.ggml.tokens"]),
        "merges": kv["tokenizer.ggml.merges"],
        "bos": kv.get("tokenizer.ggml.bos_token_id"),
        "eos": kv.get("tokenizer.ggml.eos_token_id"),
        "add_bos": kv.get("tokenizer.ggml.add_bos_token", False),
        "kv": kv,
    }


# ---------------------------------------------------------------------------------------------
# HF reference tokenizers


def split(regex: str):
    return pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False)


def hf_tokenizer(v: dict, pipeline: str, added: dict[int, bool]) -> Tokenizer:
    """`added`: id -> special, the upstream added tokens."""
    tokens = v["tokens"]
    assert len(set(tokens)) == len(tokens), "duplicate tokens"
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = [tuple(m.split(" ", 1)) for m in v["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=(pipeline == "llama-bpe")))
    if pipeline == "smollm":
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True),
             pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])
    elif pipeline == "gpt-2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    elif pipeline in ("qwen2", "deepseek-r1-qwen"):
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [split(QWEN2_REGEX), pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    elif pipeline == "llama-bpe":
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [split(LLAMA3_REGEX), pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    elif pipeline == "deepseek-v3":
        tok.normalizer = normalizers.Sequence([])
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [split(r) for r in DSV3_REGEXES]
            + [pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    else:
        raise ValueError(pipeline)
    tok.decoder = decoders.ByteLevel()
    for i, special in sorted(added.items()):
        at = AddedToken(tokens[i], special=special, normalized=False, lstrip=False, rstrip=False, single_word=False)
        n = tok.add_special_tokens([at]) if special else tok.add_tokens([at])
        assert tok.token_to_id(tokens[i]) == i, (i, tokens[i], n)
    if v["add_bos"] and v["bos"] is not None:
        bos = tokens[v["bos"]]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, v["bos"])])
    return tok


# ---------------------------------------------------------------------------------------------
# Texts

CHAT_SMOLLM2 = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nWhat's 17 * 23? Answer briefly.<|im_end|>\n"
    "<|im_start|>assistant\n17 * 23 = 391.<|im_end|>\n"
    "<|im_start|>user\nПереведи на русский: \"good morning\"<|im_end|>\n"
    "<|im_start|>assistant\n"
)
CHAT_R1 = (
    "<｜begin▁of▁sentence｜>You are a careful assistant.<｜User｜>What is 17 * 23?<｜Assistant｜><think>\n"
    "Okay, the user wants 17 × 23. 17 * 20 = 340, 17 * 3 = 51, so 391.\n</think>\n\n"
    "**391**<｜end▁of▁sentence｜><｜User｜>А по-українськи? Їжак, ґанок, єнот.<｜Assistant｜><think>\n\n</think>\n\n"
    "Триста дев'яносто один.<｜end▁of▁sentence｜>"
)

CURATED = [
    # empty and whitespace
    "", " ", "  ", "\n", "\n\n\n", "\t", " \n", "\r\n", "a\r\nb\r\n\r\nc", "   leading", "trailing   ",
    "between   words  here", "space before newline   \nnext", "tabs\tand\t\ttabs", " \t \n \t\n",
    "\u00a0nbsp\u00a0\u00a0x", "ideographic\u3000\u3000space", "line\u2028sep\u2029para", "\u0085nel\u000bvt\u000cff",
    # English, contractions
    "Hello, world!", "The quick brown fox jumps over the lazy dog.",
    "It's, they'LL, we'Re, I'M, you'VE, he'D, don't, 'tis", "IT'S SHE'S O'Neill's rock'n'roll",
    "ʼs ’s ‘quoted’ “double” 'single' ''", "'S 'ſ 's's's",
    # digits
    "1234567", "3.14159", "1,000,000", "-42 +7 1e-9 0x1F 0b1010", "2024-11-25T06:25:11Z", "١٢٣٤ ४५६ ½ Ⅻ ①②",
    "007 0.5 .5 5.", "v1.2.3-rc4", "9999999999999999999999",
    # code
    "def f(x):\n    return x ** 2  # square\n",
    "fn main() {\n\tlet v: Vec<u32> = vec![1, 2, 3];\n\tprintln!(\"{v:?}\");\n}\n",
    "if (a && b) {\n  \t  mixed();\n\t    indent();\n}",
    "    \n\t\n        deep\n",
    "<div class=\"x\">&amp;&lt;</div>", "SELECT * FROM t WHERE id=1;", "a+=b; c->d; e::f; g=>h; i!==j",
    "https://example.com/path?q=1&r=2#frag", "~/.config/retort/config.toml", "C:\\Users\\name\\file.txt",
    "@user #hashtag $100 50% ^_^ (*_*) ¯\\_(ツ)_/¯",
    # Cyrillic
    "Привет, мир! Как дела?", "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "Україна: їжак, ґанок, єнот, і Її. Ґ Є Ї І", "Българският език използва кирилица: щ, ъ, ь, ю, я.",
    "Ћирилица: ђ, ј, љ, њ, ћ, џ", "ПРОПИСНЫЕ И строчные", "й (и + U+0306: \u0438\u0306), ё (\u0435\u0308)",
    # CJK, Japanese, Korean
    "你好，世界！这是一个测试。", "中文混合English和数字123的句子", "日本語のテキストとカタカナ、ひらがな。ー",
    "東京タワーは333メートルです。", "한국어 텍스트입니다. 안녕하세요!", "龍龜齒 𠀀𠀁 (CJK Ext B)", "豈更車 (compat ideographs)",
    "Apples are りんご 林檎 and ＡＢＣ１２３ full-width", "「括弧」『二重』【隅付き】〜～",
    # other scripts
    "مرحبا بالعالم! كيف حالك؟", "שלום עולם", "नमस्ते दुनिया, क़ ख़ ग़ (nukta)", "สวัสดีชาวโลก",
    "Ελληνικά: αβγ ΆΈΉ", "Tiếng Việt có dấu: Trường, Nguyễn, ở đâu", "ქართული ენა", "Հայերեն",
    "Zażółć gęślą jaźń", "Ångström Å Å, Ω Ω, ﬁ ﬂ ligatures",
    # emoji
    "😀👍🏽🇺🇸 and ❤️", "👨‍👩‍👧‍👦 family, 🧑🏿‍🚀 astronaut, 🏳️‍🌈 flag", "👋🏻👋🏼👋🏽👋🏾👋🏿", "emoji😀in😀words",
    "keycap 1️⃣ #️⃣ ©️ ®️ ™️", "🫠🫨🪿 newer emoji",
    # combining marks, odd characters
    "e\u0301 a\u0300 o\u0308 n\u0303 (decomposed)", "\u0301\u0301 lone combining marks", "\u0301", "x\u20dd\u20e3",
    "\ufffd replacement \ufffd\ufffd", "nul\u0000char", "\u0000", "\u0001\u0002\u001b[31mred\u001b[0m",
    "zero\u200bwidth\u200cnon\u200djoiner\ufeffbom", "\u202eright-to-left override",
    "Z̤͔ͧ̑̓ä͖̭̈̇lͮ̒ͫǧ̗͚̚o̙̔ͮ̇͐̇", "\U0001d400\U0001d401 math bold 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    # normalization (NFC for the Qwen family): Hangul jamo, nukta letters NFC decomposes,
    # singletons (compat ideographs, Ohm/Angstrom/Kelvin signs, Greek ano teleia and question
    # mark), canonical reordering, and marks newer than Unicode 9.0 that HF's NFC does not know
    "\u1100\u1161\u11a8 \u1112\u1161\u11ab\u1100\u1173\u11af", "\u0958\u0959 \u095a", "\uf900\uf901 \u212b \u2126 \u212a",
    "\u0387 \u037e ; \u1fef", "a\u0316\u0301 a\u0301\u0316 q\u0307\u0323", "Vie\u0302\u0323t Nam, Nguye\u0302\u0303n",
    "e\u1ac1\u0301 e\u0301\u1ac1 x\u0c3c\u0301", "\U00011935\U00011930 \U00011938", "а\u0301 е\u0301 (Cyrillic stress marks)",
    # long words
    "a" * 300, "Donaudampfschifffahrtsgesellschaftskapitänswitwe" * 4, "ab" * 200 + " " + "9" * 100,
    " " * 50 + "x", "\n" * 20,
    # special tokens, their look-alikes
    "<|im_start|>", "<|im_start|>user\nhi<|im_end|>", "<|im_start", "|im_start|>", "< |im_start|>",
    "<|im_start|><|im_start|><|im_end|>", "x<|endoftext|>y", "<|endoftext", "<think>", "</think>",
    "<think>reasoning</think>answer", "< think>", "<think >", "<thinking>", "<<think>>", "</think",
    "<｜begin▁of▁sentence｜>", "<｜User｜>hi<｜Assistant｜>", "<｜User｜", "<|User|>", "<｜end▁of▁sentence｜>",
    "<|EOT|>", "<tool_call>{\"name\": \"f\"}</tool_call>", "<|fim_prefix|>a<|fim_suffix|>b<|fim_middle|>",
    "<repo_name>x<file_sep>y<filename>z", "<jupyter_code>print(1)<jupyter_output>1<empty_output>",
    "[PAD151665]", "<|vision_start|><|image_pad|><|vision_end|>",
    # conversations
    CHAT_SMOLLM2, CHAT_R1,
]


def random_codepoint_texts(n: int, seed: int) -> list[str]:
    """Texts of arbitrary code points (all planes; runs from one block), mixed with a few
    common pieces: what the curated texts do not think of, including characters newer than
    the Unicode versions of some of the tables involved."""
    rng = random.Random(seed)

    def cp(lo: int, hi: int) -> str:
        c = rng.randint(lo, hi)
        return "x" if 0xD800 <= c <= 0xDFFF else chr(c)

    texts = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 8)):
            k = rng.random()
            if k < 0.35:
                hi = rng.choice([0x3000, 0x30000, 0x10FFFF])
                parts.append("".join(cp(0, hi) for _ in range(rng.randint(1, 5))))
            elif k < 0.55:
                parts.append(rng.choice([" ", "  ", "\n", "\t", " \n ", "'s", "'S", "1", "22", "4444", "the", " word",
                                         "<|im_start|>", "<think>", "<｜User｜>", "e\u0301"]))
            else:
                base = rng.randint(0, 0x2FFFF)
                parts.append("".join(cp(base, min(base + 40, 0x10FFFF)) for _ in range(rng.randint(1, 6))))
        texts.append("".join(parts))
    return texts


def random_texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    pools = [
        "abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "0123456789", "0123456789",
        "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~", " ", "    ", "\t\n\r", "\n\n", " \n",
        "абвгдеёжзийклмнопрстуфхцчшщъыьэюя", "АБВГДЕЁЖЗИЙКЛМНОПРСТУФХЦЧШЩЪЫЬЭЮЯ", "іїєґІЇЄҐ", "ђјљњћџ",
        "的一是不了人我在有他这为之大来以个中上们", "ひらがなカタカナー", "한국어텍스트", "αβγδεζηθ", "مرحبابالعالم",
        "नमस्तेदुनियाक़ख़", "สวัสดี", "éèêëàâäôöûüçñßøå", "ÆŒÞðſ", "😀👍🏽🇺🇸❤️‍🔥👨‍👩‍👧", "\u200d\ufe0f\u20e3",
        "\u0301\u0308\u0306\u0327", "\u00a0\u3000\u2009\u202f", "，。！？、；：「」（）", "ＡＢＣ１２３", "²³¹¼½¾①Ⅻ",
        "'s 'S 'll 'LL 're 'RE 've 'm 'd 't", "ʼ’‘“”«»„", "豈更車Å\u212bΩ", "\x00\x01\x1f\x7f", "\ufffd",
        "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<｜User｜>", "<｜Assistant｜>", "<｜", "|>", "<|",
        "1,000", "3.14", "e\u0301", "\u0438\u0306",
    ]
    texts = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 12)):
            pool = rng.choice(pools)
            if pool.startswith("<") and len(pool) > 2 or pool in ("1,000", "3.14", "e\u0301", "\u0438\u0306"):
                parts.append(pool)
            else:
                parts.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 6))))
        texts.append("".join(parts))
    return texts


# ---------------------------------------------------------------------------------------------
# llama.cpp (optional second reference)


def llama_cpp_ids(model_path: Path, texts: list[str]) -> list[list[int]] | None:
    env_file = Path("/work/llama-peer.env")
    if not env_file.exists():
        return None
    env = {}
    for line in env_file.read_text().splitlines():
        line = line.strip().removeprefix("export ").strip()
        if "=" in line and not line.startswith("#"):
            key, val = line.split("=", 1)
            env[key.strip()] = val.strip().strip('"')
    py = env.get("LLAMA_PY", "")
    if not py:
        return None
    code = (
        "import json, sys, llama_cpp\n"
        "m = llama_cpp.Llama(model_path=sys.argv[1], vocab_only=True, verbose=False)\n"
        "texts = json.load(sys.stdin)\n"
        "print(json.dumps([m.tokenize(t.encode('utf-8'), add_bos=False, special=True) for t in texts]))\n"
    )
    try:
        r = subprocess.run([py, "-c", code, str(model_path)], input=json.dumps(texts), capture_output=True,
                           text=True, timeout=600, check=True, env={**os.environ, **env})
    except (subprocess.SubprocessError, OSError) as e:
        detail = getattr(e, "stderr", "") or ""
        print(f"[tokenizer_cases] llama.cpp not usable: {e}\n{detail[-2000:]}", file=sys.stderr)
        return None
    return json.loads(r.stdout.strip().splitlines()[-1])


def header_only_gguf(src: Path, dst: Path) -> Path:
    """A GGUF with src's metadata and no tensors, for llama.cpp's vocab_only load."""
    import gguf

    kv = read_gguf_kv(src)
    arch = kv["general.architecture"]
    w = gguf.GGUFWriter(str(dst), arch)
    for key, val in kv.items():
        if key in ("general.architecture", "GGUF.version", "GGUF.tensor_count", "GGUF.kv_count"):
            continue
        if key == "tokenizer.ggml.token_type":
            w.add_array(key, [int(x) for x in val])
        elif isinstance(val, bool):
            w.add_bool(key, val)
        elif isinstance(val, int):
            w.add_uint32(key, val) if 0 <= val < 2**32 else w.add_int64(key, val)
        elif isinstance(val, float):
            w.add_float32(key, val)
        elif isinstance(val, str):
            w.add_string(key, val)
        elif isinstance(val, list):
            w.add_array(key, val)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


# ---------------------------------------------------------------------------------------------


def cases_for(tok: Tokenizer, texts: list[str]) -> list[dict]:
    out = []
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False).ids
        ids_special = tok.encode(text, add_special_tokens=True).ids
        decoded = tok.decode(ids, skip_special_tokens=False)
        case = {"text": text, "ids": ids}
        if ids_special != ids:
            case["ids_special"] = ids_special
        if decoded != text:
            case["hf_decoded"] = decoded
        out.append(case)
    return out


def write(name: str, payload: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.json"
    path.write_text(json.dumps(payload, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    print(f"[tokenizer_cases] {path}: {len(payload['cases'])} cases", file=sys.stderr)


def main() -> None:
    global OUT
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=OUT, help="fixture directory (default: %(default)s)")
    ap.add_argument("--random", type=int, default=200, help="random texts besides the curated ones")
    ap.add_argument("--seed", type=int, default=20261125)
    ap.add_argument("--random-codepoints", type=int, default=100, help="random texts of arbitrary code points")
    ap.add_argument("--no-llama-cpp", action="store_true", help="skip the llama.cpp comparison")
    args = ap.parse_args()
    OUT = args.out
    texts = CURATED + random_texts(args.random, seed=args.seed) + random_codepoint_texts(args.random_codepoints, args.seed + 1)
    disagreements = {}

    smol = vocabulary(MODELS / SMOLLM2)
    assert smol["pre"] == "smollm", smol["pre"]
    smol_added = {i: True for i, t in enumerate(smol["types"]) if t == 3}
    assert sorted(smol_added) == list(range(17)), smol_added
    r1 = vocabulary(MODELS / R1)
    assert r1["pre"] == "deepseek-r1-qwen", r1["pre"]
    r1_added_gguf = {i for i, t in enumerate(r1["types"]) if t in (3, 4)}
    assert r1_added_gguf == set(R1_ADDED_SPECIAL), sorted(r1_added_gguf ^ set(R1_ADDED_SPECIAL))

    for name, v, added, pipeline, path in [
        ("smollm2", smol, smol_added, "smollm", MODELS / SMOLLM2),
        ("r1_distill_qwen", r1, R1_ADDED_SPECIAL, "deepseek-r1-qwen", MODELS / R1),
    ]:
        tok = hf_tokenizer(v, pipeline, added)
        cases = cases_for(tok, texts)
        write(name, {
            "vocabulary": path.name, "pre": v["pre"],
            "reference": f"tokenizers {__import__('tokenizers').__version__}, upstream {pipeline} pipeline",
            "cases": cases,
        })
        model_path = path
        if name == "r1_distill_qwen":
            model_path = MODELS / "r1-distill-qwen-7b.vocab-only.gguf"
            if not model_path.exists() and Path("/work/llama-peer.env").exists():
                try:
                    header_only_gguf(path, model_path)
                except Exception as e:  # noqa: BLE001 - optional second reference
                    print(f"[tokenizer_cases] cannot write {model_path.name}: {e}", file=sys.stderr)
        if model_path.exists() and not args.no_llama_cpp:
            lc = llama_cpp_ids(model_path, texts)
            if lc is not None:
                diff = [{"text": c["text"], "hf": c["ids"], "llama_cpp": l} for c, l in zip(cases, lc) if c["ids"] != l]
                disagreements[name] = diff
                print(f"[tokenizer_cases] llama.cpp disagrees with HF on {len(diff)}/{len(cases)} {name} texts",
                      file=sys.stderr)

    # The other pre-tokenizers, over SmolLM2's vocabulary and merges.
    for pipeline in ["gpt-2", "llama-bpe", "deepseek-v3", "qwen2"]:
        tok = hf_tokenizer(smol, pipeline, smol_added)
        write(f"smollm2_as_{pipeline.replace('-', '_')}", {
            "vocabulary": SMOLLM2, "pre": pipeline,
            "reference": f"tokenizers {__import__('tokenizers').__version__}, upstream {pipeline} pipeline",
            "cases": cases_for(tok, texts),
        })

    if disagreements:
        write("llama_cpp_disagreements", {"cases": [dict(d, vocabulary=k) for k, v in disagreements.items() for d in v]})


if __name__ == "__main__":
    main()
