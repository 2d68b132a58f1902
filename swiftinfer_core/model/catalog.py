"""The model names the engine knows: ``EngineConfig.model`` -> a local checkpoint folder.

'default' is SmolLM2-135M-Instruct (model/fetch.py), 'gemma3-270m' Gemma 3 270M
(model/gemma3_gguf.py), each fetched and converted once; any other name must be
a local folder with a config.json (no model hub is used).
"""

from __future__ import annotations

from pathlib import Path

from swiftinfer_core.errors import InvalidRequestError
from swiftinfer_core.model import gemma3_gguf
from swiftinfer_core.model.fetch import ensure_default_model

FETCHED = {"default": ensure_default_model, gemma3_gguf.NAME: gemma3_gguf.ensure_gemma3}  # name -> fetch-and-convert


def resolve_model(name: str, gguf: Path | None = None, tokenizer: Path | None = None) -> Path:
    """'default' / 'gemma3-270m' -> the converted model (from ``gguf``, a pinned file given by
    hand, and ``tokenizer``, one converted elsewhere, when the model is not there yet);
    anything else must be a local folder."""
    if name in FETCHED:
        return FETCHED[name](gguf=gguf, tokenizer=tokenizer)
    path = Path(name).expanduser()
    if not (path / "config.json").exists():
        raise InvalidRequestError(f"model {name!r}: not 'default', not {gemma3_gguf.NAME!r} and not a folder with config.json (no model hub is used)")
    return path
