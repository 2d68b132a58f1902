"""The Llama-3.1-8B bench shape: llama3 RoPE scaling in model_args, in the HF
baseline, and in a config folder written for the engine."""

import json
import math

import pytest
import torch

from bench.models import model_args
from bench.shape_config import hf_config, tokenizer_vocab, write_shape_config
from swiftinfer_core.kernels.rope import inv_freq
from swiftinfer_core.model.loader import read_args


def llama3_reference(head_dim: int, theta: float, factor: float, low: float, high: float, old_ctx: int) -> list[float]:
    """float64, frequency by frequency, as Llama 3.1's reference code scales them:
    wavelengths under old_ctx/high keep their frequency, those over old_ctx/low are
    divided by factor, those between blend the two linearly in old_ctx/wavelength."""
    out = []
    for i in range(0, head_dim, 2):
        f = 1.0 / theta ** (i / head_dim)
        wavelen = 2 * math.pi / f
        if wavelen < old_ctx / high:
            out.append(f)
        elif wavelen > old_ctx / low:
            out.append(f / factor)
        else:
            s = (old_ctx / wavelen - low) / (high - low)
            out.append((1 - s) * f / factor + s * f)
    return out


def test_model_args_carry_llama3_scaling():
    a = model_args("llama3.1-8b")
    assert (a.vocab_size, a.hidden_size, a.num_layers, a.num_heads, a.num_kv_heads, a.head_dim, a.intermediate_size) == \
        (128256, 4096, 32, 32, 8, 128, 14336)
    assert a.rope_theta == 500000.0 and not a.tie_embeddings
    assert a.rope_scaling == {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                              "original_max_position_embeddings": 8192}
    assert model_args("llama2-7b").rope_scaling is None
    a.rope_scaling["factor"] = 1.0  # each call its own dict: the table is not shared
    assert model_args("llama3.1-8b").rope_scaling["factor"] == 8.0


def test_llama3_inv_freq_divides_low_frequencies_and_keeps_high_ones():
    a = model_args("llama3.1-8b")
    s = a.rope_scaling
    got = inv_freq(a.head_dim, a.rope_theta, s).double()
    plain = inv_freq(a.head_dim, a.rope_theta).double()
    want = torch.tensor(llama3_reference(a.head_dim, a.rope_theta, s["factor"], s["low_freq_factor"], s["high_freq_factor"],
                                         s["original_max_position_embeddings"]), dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)  # float32 rounding of the float64 formula
    wavelen = 2 * math.pi / plain
    high = wavelen < 8192 / 4  # short wavelengths: unchanged
    low = wavelen > 8192 / 1  # long wavelengths: divided by the factor
    mid = ~high & ~low
    assert high.sum() > 0 and low.sum() > 0 and mid.sum() > 0  # all three regimes occur at head_dim 128
    torch.testing.assert_close(got[high], plain[high], rtol=1e-6, atol=0)
    torch.testing.assert_close(got[low], plain[low] / 8, rtol=1e-6, atol=0)
    assert bool(((got[mid] < plain[mid]) & (got[mid] > plain[mid] / 8)).all())


def test_hf_baseline_rotates_like_our_kernels():
    from dataclasses import replace

    from bench.models import hf_model

    a = model_args("llama3.1-8b")
    tiny = replace(a, num_layers=1, hidden_size=256, num_heads=2, num_kv_heads=1, intermediate_size=64, vocab_size=64)
    hf = hf_model(tiny, "cpu", torch.float32)
    torch.testing.assert_close(hf.model.rotary_emb.inv_freq.float().cpu(), inv_freq(a.head_dim, a.rope_theta, a.rope_scaling))


def _tokenizer_folder(path, ids: int):
    path.mkdir()
    (path / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {f"t{i}": i for i in range(ids - 2)}},
                                                     "added_tokens": [{"id": ids - 2}, {"id": ids - 1}]}))
    (path / "config.json").write_text(json.dumps({"model_type": "llama", "bos_token_id": 1, "eos_token_id": 2,
                                                  "rope_theta": 10000.0, "vocab_size": ids}))
    (path / "chat_template.jinja").write_text("{{ messages }}")
    return path


def test_config_folder_loads_as_the_8b_shape(tmp_path):
    src = _tokenizer_folder(tmp_path / "tok", 49152)
    assert tokenizer_vocab(src) == 49152
    dst = write_shape_config("llama3.1-8b", tmp_path / "r8b", src)
    assert (dst / "tokenizer.json").read_bytes() == (src / "tokenizer.json").read_bytes()
    assert (dst / "chat_template.jinja").is_file()
    got = read_args(dst)  # the engine's loader
    want = model_args("llama3.1-8b")
    for f in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim", "intermediate_size",
              "rope_theta", "tie_embeddings", "qkv_bias", "max_position"):
        assert getattr(got, f) == getattr(want, f), f
    assert got.rope_scaling["rope_type"] == "llama3" and got.eos_token_ids == (2,)  # the tokenizer's ids kept
    assert torch.equal(inv_freq(got.head_dim, got.rope_theta, got.rope_scaling), inv_freq(want.head_dim, want.rope_theta, want.rope_scaling))
    # an older transformers reads rope_scaling only
    cfg = json.loads((dst / "config.json").read_text())
    assert cfg["rope_scaling"] == want.rope_scaling and cfg == {**cfg, **hf_config("llama3.1-8b")}


def test_config_folder_refuses_a_vocabulary_smaller_than_the_tokenizer(tmp_path):
    src = _tokenizer_folder(tmp_path / "tok", 60000)
    with pytest.raises(ValueError, match="vocab_size 49152 < the 60000 ids"):
        write_shape_config("smollm2-135m", tmp_path / "out", src)
    with pytest.raises(ValueError, match="overwrite"):
        write_shape_config("llama3.1-8b", src, src)
    with pytest.raises(FileNotFoundError):
        write_shape_config("llama3.1-8b", tmp_path / "out", tmp_path)
