#!/usr/bin/env python3
"""Expected chat-template renderings, made with transformers' own machinery.

Reads tokenizer.chat_template and the BOS/EOS token strings from the GGUFs (parsing the GGUF
key/value section directly, so the truncated R1 download works), renders a set of conversations
with `transformers.utils.chat_template_utils.render_jinja_template` - the function that
`PreTrainedTokenizerBase.apply_chat_template(..., tokenize=False)` calls, with the tokenizer's
special tokens map passed as template variables - and writes
    tests/fixtures/chat_templates/smollm2.json
    tests/fixtures/chat_templates/r1_distill_qwen.json
for runtime/tests/chat_template_parity.rs.

Run:  /work/venv-ref/bin/python scripts/reference/chat_template_cases.py
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models-cache"
OUT = ROOT / "tests" / "fixtures" / "chat_templates"

SOURCES = {
    "smollm2": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "r1_distill_qwen": "r1-distill-qwen-7b.part0000.gguf",
}

# GGUF value types
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


def read_gguf_kv(path: Path, skip_arrays_of=("tokenizer.ggml.merges", "tokenizer.ggml.token_type")) -> dict:
    """The key/value section of a GGUF v2/v3 file (the tensor data may be truncated)."""
    with open(path, "rb") as f:
        data = f.read(64 << 20)  # metadata is at the front; 64 MiB is far more than any header
    pos = 0

    def take(n):
        nonlocal pos
        if pos + n > len(data):
            raise ValueError(f"{path.name}: metadata runs past the first {len(data)} bytes")
        b = data[pos:pos + n]
        pos += n
        return b

    def scalar(fmt):
        return struct.unpack(fmt, take(struct.calcsize(fmt)))[0]

    def string():
        n = scalar("<Q")
        return take(n).decode("utf-8")

    def value(t):
        if t in _SCALARS:
            return scalar(_SCALARS[t])
        if t == _STRING:
            return string()
        if t == _ARRAY:
            et = scalar("<I")
            n = scalar("<Q")
            return [value(et) for _ in range(n)]
        raise ValueError(f"unknown GGUF value type {t}")

    if take(4) != b"GGUF":
        raise ValueError(f"{path}: not a GGUF file")
    version = scalar("<I")
    if version not in (2, 3):
        raise ValueError(f"{path}: GGUF version {version}")
    _tensor_count = scalar("<Q")
    kv_count = scalar("<Q")
    kv = {}
    for _ in range(kv_count):
        key = string()
        t = scalar("<I")
        kv[key] = value(t)
    return kv


def token_strings(kv: dict) -> tuple[str | None, str | None]:
    tokens = kv["tokenizer.ggml.tokens"]
    bos = kv.get("tokenizer.ggml.bos_token_id")
    eos = kv.get("tokenizer.ggml.eos_token_id")
    return (tokens[bos] if bos is not None else None, tokens[eos] if eos is not None else None)


def m(role, content):
    return {"role": role, "content": content}


THINK_1 = "<think>\nThe user wants 2+2. That is 4.\n</think>\n\nThe answer is 4."
THINK_2 = "<think>Paris is the capital.</think>Paris."

CASES = [
    ("single_user", [m("user", "Hello!")]),
    ("with_system", [m("system", "You are a terse assistant."), m("user", "What is 2+2?")]),
    ("multi_turn", [m("user", "Hi"), m("assistant", "Hello! How can I help?"),
                    m("user", "Tell me a joke.")]),
    ("system_multi_turn", [m("system", "Be brief."), m("user", "Capital of France?"),
                           m("assistant", "Paris."), m("user", "And of Italy?")]),
    ("assistant_think_earlier_turn", [m("user", "What is 2+2?"), m("assistant", THINK_1),
                                      m("user", "And 3+3?")]),
    ("assistant_think_last_turn", [m("user", "Capital of France?"), m("assistant", THINK_2)]),
    ("two_think_turns", [m("system", "Think step by step."), m("user", "Q1"), m("assistant", THINK_1),
                         m("user", "Q2"), m("assistant", THINK_2), m("user", "Q3")]),
    ("unicode", [m("user", "Grüße aus Köln! 日本語のテキスト 🦀🚀 — «ß» \u00a0nbsp"),
                 m("assistant", "Bonjour ! Ça va ? 😀"), m("user", "Ελληνικά ✓")]),
    ("jinja_looking_content", [m("user", "Render {{ x }} and {% if y %}z{% endif %} {# c #} literally."),
                               m("assistant", "{{ '}}' }} is not code here"), m("user", "{%- raw -%}")]),
    ("whitespace_content", [m("system", "  padded system  \n"), m("user", "\n\n  spaced out \t\n"),
                            m("assistant", "   <think> \n spaces \n</think>   answer with spaces  \n")]),
    ("empty_content", [m("user", "")]),
    ("assistant_first", [m("assistant", "I start."), m("user", "ok")]),
    ("multiple_think_closers", [m("user", "a"), m("assistant", "<think>x</think>y</think>z"), m("user", "b")]),
]


# A synthetic template exercising what real templates use: namespace, loop controls and loop
# variables, Python string/dict methods, negative indexing, tojson (with options), filters,
# printing of None/True/lists, lstrip_blocks/trim_blocks on indented tags, raise_exception.
FEATURES_TEMPLATE = """\
{%- set ns = namespace(sys='', n=0) -%}
{%- if messages[0].role == 'system' -%}
    {%- set ns.sys = messages[0].content.strip() -%}
{%- endif -%}
{{ bos_token }}[SYS:{{ ns.sys }}]
{% for message in messages %}
    {% if message.role == 'system' %}{% continue %}{% endif %}
    {% if message.role == 'tool' %}
        {{ raise_exception('tool messages are not supported: ' ~ message.content) }}
    {% endif %}
    {% set ns.n = ns.n + 1 %}
    {% set content = message['content'] %}
    {% if message.role == 'assistant' and '</think>' in content %}
        {% set content = content.split('</think>')[-1].lstrip() %}
    {% endif %}
{{ loop.index }}/{{ loop.length }} {{ message.role.upper() }}{% if loop.first %} (first){% endif %}{% if loop.last %} (last){% endif %}: {{ content }}
    {% if content.startswith('Q') %}
  starts with Q
    {% endif %}
  len={{ content|length }} q={{ content.endswith('?') }} get={{ message.get('name', 'anon') }} title={{ content.title() }}
    {% if ns.n >= 6 %}{% break %}{% endif %}
{% endfor %}
roles={{ messages|map(attribute='role')|join(',') }} users={{ messages|selectattr('role', 'equalto', 'user')|list|length }}
json={{ messages[-1]|tojson }}
json_indent={{ messages[0]|tojson(indent=2) }}
json_ascii={{ messages[-1].content|tojson(ensure_ascii=True) }}
json_misc={{ [1, 2.5, none, true, [], {}, 'a<b>&\\'c']|tojson }} {{ {'k': [1, 2]}|tojson(separators=(',', ':')) }}
words={{ messages[-1].content.split() }} rev={{ messages|map(attribute='role')|list|reverse|list }}
{{ none }} {{ true }} {{ 3 / 2 }} {{ 7 // 2 }} {{ 2 ** 10 }} {{ [1, 'a', none] }} {{ 'x' ~ 1 }} {{ undefined_var }}|{{ tools is none }}
{% for k, v in messages[0].items() %}{{ k }}={{ v|trim }};{% endfor %}

{% if add_generation_prompt %}
    <assistant>{{ eos_token if false else '' }}
{% endif %}
"""


def main() -> int:
    import transformers
    from transformers.utils.chat_template_utils import render_jinja_template

    OUT.mkdir(parents=True, exist_ok=True)
    for name, file in list(SOURCES.items()) + [("features", None)]:
        if file is None:
            kv, template, bos, eos = {}, FEATURES_TEMPLATE, "<s>", "</s>"
        else:
            kv = read_gguf_kv(MODELS / file)
            template = kv["tokenizer.chat_template"]
            bos, eos = token_strings(kv)
        cases = []
        for case_name, messages in CASES:
            for agp in (False, True):
                # apply_chat_template(tokenize=False) renders with {**special_tokens_map, **kwargs};
                # the named special tokens of these models are bos_token and eos_token.
                special = {k: v for k, v in (("bos_token", bos), ("eos_token", eos)) if v is not None}
                rendered, _ = render_jinja_template(
                    conversations=[messages], tools=None, documents=None, chat_template=template,
                    add_generation_prompt=agp, **special)
                cases.append({"name": f"{case_name}{'_agp' if agp else ''}", "messages": messages,
                              "add_generation_prompt": agp, "expected": rendered[0]})
        doc = {
            "model_file": file,
            "generator": "scripts/reference/chat_template_cases.py",
            "transformers": transformers.__version__,
            "renderer": "transformers.utils.chat_template_utils.render_jinja_template",
            "bos_token": bos,
            "eos_token": eos,
            "add_bos_token": kv.get("tokenizer.ggml.add_bos_token"),
            "template": template,
            "cases": cases,
        }
        path = OUT / f"{name}.json"
        with open(path, "w", encoding="utf-8") as f:
            json.dump(doc, f, ensure_ascii=False, indent=1)
            f.write("\n")
        print(f"wrote {path.relative_to(ROOT)}: {len(cases)} cases, bos={bos!r} eos={eos!r}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
