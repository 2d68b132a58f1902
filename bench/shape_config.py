"""Model folders without weights, for benches that load a shape with
``load_format='random'``: an HF-style config.json beside a copy of a real
tokenizer and chat template.

    python -m bench.shape_config --shape llama3.1-8b --tokenizer-from .carry/r7b --dst .carry/r8b

writes bench/models.py's shape (here Llama-3.1-8B: GQA, llama3 RoPE scaling)
over the source folder's config.json, keeping the source's tokenizer ids
(bos/eos/pad). The shape's vocabulary must cover the tokenizer's, or the
engine would embed ids past the table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_config_dir(src: Path, dst: Path, **overrides) -> Path:
    """A copy of a model folder's config.json, tokenizer and chat template with
    ``overrides`` applied to the config (another shape, e.g. fewer layers: same
    attention and cache shapes per layer, a fraction of the weights). Weights are
    not copied: load it with load_format='random'."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.suffix in (".json", ".jinja"):
            (dst / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(overrides)
    (dst / "config.json").write_text(json.dumps(cfg, indent=1))
    return dst


def hf_config(shape: str) -> dict:
    """config.json fields of bench/models.py's ``shape`` (what model/loader.py read_args reads)."""
    from bench.models import model_args, rope_parameters

    a = model_args(shape)
    return {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "_name_or_path": shape, "dtype": "bfloat16",
        "vocab_size": a.vocab_size, "hidden_size": a.hidden_size, "intermediate_size": a.intermediate_size,
        "num_hidden_layers": a.num_layers, "num_attention_heads": a.num_heads, "num_key_value_heads": a.num_kv_heads,
        "head_dim": a.head_dim, "rms_norm_eps": a.rms_eps, "max_position_embeddings": a.max_position,
        "tie_word_embeddings": a.tie_embeddings, "attention_bias": a.qkv_bias, "mlp_bias": False, "hidden_act": "silu",
        # both spellings: transformers >= 5 reads rope_parameters, older releases rope_scaling
        "rope_theta": a.rope_theta, "rope_parameters": rope_parameters(a),
        "rope_scaling": dict(a.rope_scaling) if a.rope_scaling else None,
    }


def tokenizer_vocab(folder: Path) -> int:
    """Ids a folder's tokenizer.json can produce: 1 + its largest id (model vocabulary or added token)."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no tokenizer.json")
    tok = json.loads(path.read_text())
    vocab = tok.get("model", {}).get("vocab") or {}
    ids = list(vocab.values()) if isinstance(vocab, dict) else list(range(len(vocab)))  # BPE/WordPiece dict, Unigram list
    ids += [t["id"] for t in tok.get("added_tokens") or []]
    return max(ids, default=-1) + 1


def write_shape_config(shape: str, dst: Path, tokenizer_from: Path) -> Path:
    """``dst`` = ``tokenizer_from``'s tokenizer files + config.json of ``shape``."""
    cfg = hf_config(shape)
    need = tokenizer_vocab(tokenizer_from)
    if cfg["vocab_size"] < need:
        raise ValueError(f"shape {shape}: vocab_size {cfg['vocab_size']} < the {need} ids of {tokenizer_from}'s tokenizer")
    if dst.resolve() == tokenizer_from.resolve():
        raise ValueError(f"--dst {dst} is the tokenizer's own folder: it would overwrite its config.json")
    return make_config_dir(tokenizer_from, dst, **cfg)


def main(argv: list[str] | None = None) -> int:
    from bench.models import SHAPES

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", required=True, choices=sorted(SHAPES))
    p.add_argument("--dst", required=True, type=Path)
    p.add_argument("--tokenizer-from", required=True, type=Path, help="a model folder: its *.json and *.jinja files are copied")
    a = p.parse_args(argv)
    try:
        out = write_shape_config(a.shape, a.dst, a.tokenizer_from)
    except (ValueError, FileNotFoundError) as exc:
        p.error(str(exc))
    print(f"wrote {out / 'config.json'} ({a.shape}, tokenizer from {a.tokenizer_from})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
