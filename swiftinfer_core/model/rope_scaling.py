"""RoPE frequencies of every supported ``rope_type``, as transformers defines them,
fixed for a StreamingLLM cache.

A checkpoint's ``rope_parameters`` (or the older ``rope_scaling`` with a
top-level ``rope_theta``) becomes a :class:`RopeParams`; :func:`rope_frequencies`
turns it into ``inv_freq`` [rotary_dim / 2] and transformers' ``attention_factor``
(cos and sin are multiplied by it, so q.k is by its square: callers fold that
into the softmax scale).

Types whose frequencies depend on the sequence length (``dynamic``, and
``longrope``'s short/long factor switch) are evaluated once, at the longest
position the cache can hold: in-cache positions never exceed ``capacity - 1``
(cache/layout.py), so the frequencies never change during a conversation and
equal transformers' whenever a prompt spans the whole cache (and, for a cache
no longer than the checkpoint's original context, for every prompt).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from swiftinfer_core.errors import InvalidRequestError

ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "longrope", "llama3")


@dataclass(frozen=True)
class RopeParams:
    rope_type: str = "default"
    theta: float = 10000.0
    # the type's own keys (factor, original_max_position_embeddings, beta_fast, ...)
    extra: tuple[tuple[str, object], ...] = field(default_factory=tuple)

    def get(self, key: str, default=None):
        return dict(self.extra).get(key, default)

    @classmethod
    def from_hf(cls, params: dict | None, theta: float | None = None) -> "RopeParams":
        """From one rope dict of a config (``rope_parameters`` or ``rope_scaling``).
        An unsupported type is refused here, at load time, by name."""
        params = dict(params or {})
        kind = params.pop("rope_type", None) or params.pop("type", None) or "default"
        params.pop("type", None)
        if kind not in ROPE_TYPES:
            raise InvalidRequestError(f"rope_type {kind!r} is not supported (supported: {', '.join(ROPE_TYPES)})")
        base = params.pop("rope_theta", None)
        base = theta if base is None else base
        extra = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in params.items()))
        return cls(kind, float(10000.0 if base is None else base), extra)


def _default(dim: int, theta: float) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).double() / dim))


def _llama3(freqs: torch.Tensor, p: RopeParams) -> torch.Tensor:
    factor, old_ctx = p.get("factor"), p.get("original_max_position_embeddings")
    low, high = p.get("low_freq_factor"), p.get("high_freq_factor")
    wavelen = 2 * math.pi / freqs
    smooth = (old_ctx / wavelen - low) / (high - low)
    scaled = torch.where(wavelen > old_ctx / low, freqs / factor, freqs)
    mid = (wavelen <= old_ctx / low) & (wavelen >= old_ctx / high)
    return torch.where(mid, (1 - smooth) * freqs / factor + smooth * freqs, scaled)


def _yarn(dim: int, p: RopeParams, max_position: int) -> tuple[torch.Tensor, float]:
    """YaRN: interpolate the low frequencies, keep the high ones, ramp between."""
    base, old_ctx = p.theta, p.get("original_max_position_embeddings")
    factor = p.get("factor") or max_position / old_ctx

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attn = p.get("attention_factor")
    if attn is None:
        m, m_all = p.get("mscale"), p.get("mscale_all_dim")
        attn = mscale(factor, m) / mscale(factor, m_all) if (m and m_all) else mscale(factor)

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(old_ctx / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(p.get("beta_fast") or 32), correction_dim(p.get("beta_slow") or 1)
    if p.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # transformers' guard against a zero-width ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    pos = base ** (torch.arange(0, dim, 2).float() / dim)
    keep = 1 - ramp  # 1: extrapolate (keep the frequency), 0: interpolate (divide by factor)
    return (1.0 / (factor * pos)) * (1 - keep) + (1.0 / pos) * keep, float(attn)


def _longrope(dim: int, p: RopeParams, max_position: int, capacity: int) -> tuple[torch.Tensor, float]:
    """LongRoPE / Phi-3 "su": per-frequency factors, short or long by the context."""
    old_ctx = p.get("original_max_position_embeddings") or max_position
    factor = p.get("factor") or max_position / old_ctx
    attn = p.get("attention_factor")
    if attn is None:
        attn = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(old_ctx))
    ext = torch.tensor(p.get("long_factor") if capacity > old_ctx else p.get("short_factor"), dtype=torch.float32)
    if ext.numel() != dim // 2:
        raise ValueError(f"longrope factors have {ext.numel()} entries; rotary dim {dim} needs {dim // 2}")
    shape = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
    return 1.0 / (ext * p.theta**shape), float(attn)


def rope_frequencies(p: RopeParams, rotary_dim: int, max_position: int, capacity: int) -> tuple[torch.Tensor, float]:
    """(inv_freq [rotary_dim/2] float32, attention_factor) for a cache of ``capacity`` rows."""
    if p.rope_type == "yarn":
        return _yarn(rotary_dim, p, max_position)
    if p.rope_type == "longrope":
        return _longrope(rotary_dim, p, max_position, capacity)
    freqs = _default(rotary_dim, p.theta)
    if p.rope_type == "linear":
        freqs = freqs / p.get("factor")
    elif p.rope_type == "llama3":
        freqs = _llama3(freqs, p)
    elif p.rope_type == "dynamic":
        # NTK-aware: a larger base once the context outgrows max_position_embeddings
        seq, factor = max(capacity, max_position), p.get("factor")
        base = p.theta * ((factor * seq / max_position) - (factor - 1)) ** (rotary_dim / (rotary_dim - 2))
        freqs = _default(rotary_dim, base)
    return freqs.float(), 1.0


def kernel_freqs(freqs: torch.Tensor, head_dim: int) -> torch.Tensor:
    """[head_dim/2] frequencies for the kernels' rotate-half over the whole head:
    a partial rotary's missing frequencies are 0 (cos 1, sin 0: those dims pass
    through). The q/k rows are permuted to match at load (layers.rotary_perm)."""
    out = torch.zeros(head_dim // 2, dtype=torch.float32)
    out[: freqs.numel()] = freqs
    return out
