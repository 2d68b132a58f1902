"""Tiny random checkpoints of every supported family, built with transformers' own
config and model classes (no hub), saved as a local folder the engine loads."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

TINY = dict(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=256)
LLAMA = dict(TINY, intermediate_size=96, num_key_value_heads=2, tie_word_embeddings=False)
ROPE = {  # the rope types beside default, at sizes where every part of each formula matters
    "linear": {"rope_type": "linear", "factor": 2.0},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
}


@dataclass(frozen=True)
class Case:
    """One family's tiny checkpoint: transformers' config class name and its arguments."""

    name: str
    config: str
    kwargs: dict = field(default_factory=dict)
    prompt: int = 40  # logits over this many tokens (fits the 4 + 60 cache)
    patch: Callable | None = None  # (hf model, folder): what transformers' class lacks, added to both sides


def mpt_qk_ln(hf, folder: Path) -> None:
    """MosaicML's qk_ln (transformers' MPT ignores it): LayerNorm over all of q and
    all of k right after Wqkv. Random weights go into the checkpoint, and the same
    LayerNorms into the transformers model through a hook on Wqkv's output."""
    import torch.nn.functional as F
    from safetensors.torch import load_file, save_file

    g, H, eps = torch.Generator().manual_seed(5), hf.config.d_model, hf.config.layer_norm_epsilon
    state = load_file(str(folder / "model.safetensors"))
    for i, block in enumerate(hf.transformer.blocks):
        qw, kw = 1 + 0.3 * torch.randn(H, generator=g), 1 + 0.3 * torch.randn(H, generator=g)
        state[f"transformer.blocks.{i}.attn.q_ln.weight"], state[f"transformer.blocks.{i}.attn.k_ln.weight"] = qw, kw

        def hook(module, args, out, qw=qw, kw=kw):  # out [B, T, 3H]: q, k, v
            q, k, v = out.split(H, -1)
            return torch.cat([F.layer_norm(q, (H,), qw, None, eps), F.layer_norm(k, (H,), kw, None, eps), v], -1)

        block.attn.Wqkv.register_forward_hook(hook)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _phi3_rope(head_dim: int) -> dict:
    g = torch.Generator().manual_seed(1)
    factors = lambda: [round(1.0 + 3 * x, 3) for x in torch.rand(head_dim // 2, generator=g).tolist()]  # noqa: E731
    return {"rope_type": "longrope", "short_factor": factors(), "long_factor": factors(), "original_max_position_embeddings": 32}


CASES = [
    Case("llama", "LlamaConfig", LLAMA),
    *[Case(f"llama-rope-{k}", "LlamaConfig", dict(LLAMA, rope_parameters={**v, "rope_theta": 10000.0}, **(
        {"max_position_embeddings": 32} if k == "dynamic" else {})), prompt=64) for k, v in ROPE.items()],
    Case("qwen3", "Qwen3Config", dict(LLAMA, head_dim=32)),
    Case("gpt-neox", "GPTNeoXConfig", dict(TINY, intermediate_size=96, tie_word_embeddings=False,
                                           rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25})),
    Case("gpt-neox-sequential", "GPTNeoXConfig", dict(TINY, intermediate_size=96, tie_word_embeddings=False, use_parallel_residual=False,
                                                      rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5})),
    Case("gemma2", "Gemma2Config", dict(LLAMA, head_dim=16, query_pre_attn_scalar=24, sliding_window=6, pad_token_id=0,
                                        layer_types=["sliding_attention", "full_attention"], tie_word_embeddings=True,
                                        attn_logit_softcapping=0.05, final_logit_softcapping=0.2)),  # small: the tiny scores reach them
    Case("gemma3", "Gemma3TextConfig", dict(LLAMA, head_dim=16, query_pre_attn_scalar=24, sliding_window=6, pad_token_id=0,
                                            layer_types=["sliding_attention", "full_attention"], tie_word_embeddings=True,
                                            rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
                                                             "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6}})),
    Case("falcon-old-mqa", "FalconConfig", dict(TINY, multi_query=True, parallel_attn=True, bias=True, tie_word_embeddings=True)),
    Case("falcon-old-sequential", "FalconConfig", dict(TINY, multi_query=False, parallel_attn=False, bias=False, tie_word_embeddings=False)),
    Case("falcon-new-gqa", "FalconConfig", dict(TINY, new_decoder_architecture=True, num_kv_heads=2, bias=False, tie_word_embeddings=False)),
    Case("falcon-new-one-norm", "FalconConfig", dict(TINY, new_decoder_architecture=True, num_kv_heads=2, num_ln_in_parallel_attn=1,
                                                     bias=True)),
    Case("mpt", "MptConfig", dict(d_model=64, n_heads=4, n_layers=2, vocab_size=256, max_seq_len=256, pad_token_id=0,
                                  attn_config={"alibi": True, "alibi_bias_max": 8, "clip_qkv": 0.1})),
    Case("mpt-qk-ln", "MptConfig", dict(d_model=64, n_heads=4, n_layers=2, vocab_size=256, max_seq_len=256, pad_token_id=0,
                                        attn_config={"alibi": True, "qk_ln": True}), patch=mpt_qk_ln),  # transformers ignores alibi_bias_max: 8
    Case("phi3", "Phi3Config", dict(LLAMA, max_position_embeddings=128, original_max_position_embeddings=32, pad_token_id=0, bos_token_id=1, eos_token_id=2, rope_parameters={**_phi3_rope(16), "rope_theta": 10000.0}), prompt=64),
]


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Norm weights and biases away from their init values, so each one matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln" in name.split(".")[-2] or name.endswith("bias"):
                p.copy_(p + 0.3 * torch.randn(p.shape, generator=g))


def save_tokenizer(folder: Path, vocab: int = 256) -> None:
    """A word-level tokenizer of ``vocab`` tokens "t0" .. : all the engine needs to load the folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="t0", bos_token="t1", eos_token="t2").save_pretrained(folder)


def build(case: Case, folder: Path):
    """Save the tiny checkpoint and a tokenizer; return the HF model (float32, eval)."""
    import transformers
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = getattr(transformers, case.config)(**case.kwargs)
    # eager attention: the reference computes what the config says. transformers 5.17 ran Gemma 2 through
    # SDPA, which drops attn_logit_softcapping (4e-3 off in logits on the GPU machine; 5.24 refuses SDPA for it)
    hf = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="eager").eval()
    randomize(hf)
    hf.save_pretrained(folder)
    if case.patch is not None:
        case.patch(hf, folder)
    save_tokenizer(folder)
    return hf
