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


def resolve_model(name: str) -> Path:
    """'default' / 'gemma3-270m' -> the converted model; anything else must be a local folder."""
    if name == "default":
        return ensure_default_model()
    if name == gemma3_gguf.NAME:
        return gemma3_gguf.ensure_gemma3()
    path = Path(name).expanduser()
    if not (path / "config.json").exists():
        raise InvalidRequestError(f"model {name!r}: not 'default', not {gemma3_gguf.NAME!r} and not a folder with config.json (no model hub is used)")
    return path
