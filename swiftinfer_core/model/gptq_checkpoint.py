"""Checkpoints quantized already by GPTQ (AutoGPTQ, GPTQModel, optimum: ``quant_method:
gptq``) or AWQ (AutoAWQ: ``quant_method: awq``), read into the engine's int4 zero-point
format (model/quant.py: a float16 scale and min per group, w = nibble * scale + min).

Both store per linear layer ``qweight`` (int32, 8 four-bit codes each), ``qzeros`` (int32,
8 zero points each), ``scales`` float16 [K / group, N], and w = (q - z) * scale:

- GPTQ: ``qweight`` [K / 8, N], code of input k at bits 4 (k % 8) of row k // 8;
  ``qzeros`` [K / group, N / 8], zero of output n at bits 4 (n % 8) of column n // 8.
  ``checkpoint_format: gptq`` (v1, what AutoGPTQ and most published checkpoints store)
  keeps z - 1, so z = nibble + 1 (1..16: a zero of 0 cannot be stored, and its 15 reads
  as 16, as AutoGPTQ's and vLLM's kernels read it); ``gptq_v2`` keeps z. ``g_idx`` [K]
  names each input's group: k // group, or, in act-order checkpoints (``desc_act: true``),
  groups of scattered inputs. Those are stored with each group's inputs gathered
  (columns sorted by group, stably) and the layer's ``in_perm`` that gathers x the same
  way before the product (QuantLinear: one index_select per layer per step). Every
  group must hold ``group`` inputs (the last fewer); fused projections must share
  their order (q/k/v and gate/up see the same input, so GPTQ orders them alike).
- AWQ ``version: gemm``: ``qweight`` [K, N / 8] and ``qzeros`` [K / group, N / 8], the
  8 outputs of a word interleaved: nibble i holds output 8 c + (0, 2, 4, 6, 1, 3, 5, 7)[i].

The min is -z * scale rounded to float16: exact when the checkpoint is symmetric (z = 8,
a power of two times the scale), otherwise within 2^-11 of |z * scale| (z has up to 4
significant bits beyond the scale's 11), far below one code step. Refused with the
reason: other bit widths, per-channel groups (``group_size: -1``) or groups the kernels
cannot tile, other AWQ versions (gemv, marlin), GPTQ's other formats (marlin, bitblas)
and per-module overrides (``dynamic``), scales not in float16, act-order
groups of other sizes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import torch

from swiftinfer_core.errors import InvalidRequestError
from swiftinfer_core.model.quant import INT4_OFFSET, QuantFormat, QuantizedWeight, check_group, pack_int4

AWQ_REVERSE = (0, 4, 1, 5, 2, 6, 3, 7)  # output j of a word sits at nibble AWQ_REVERSE[j]
PACKED = (".qweight", ".qzeros", ".scales", ".g_idx")  # a layer's tensors (base + suffix)


class Layout(str, Enum):
    """How a pre-quantized checkpoint stores its codes."""

    COMPRESSED_TENSORS = "compressed-tensors"  # model/ct_checkpoint.py
    GPTQ = "gptq"  # v1: zeros stored minus one
    GPTQ_V2 = "gptq_v2"
    AWQ = "awq"


@dataclass(frozen=True)
class PackedConfig:
    layout: Layout
    group: int


def read_packed_config(qc: dict, refuse: Callable[[str], Exception]) -> PackedConfig:
    """``quantization_config`` of a gptq / awq checkpoint -> its layout and group size;
    ``refuse(why)`` builds the error for what cannot be served exactly."""
    method = qc.get("quant_method")
    if qc.get("bits") != 4:
        raise refuse(f"{method} with {qc.get('bits')} bits; 4-bit is read")
    group = int(qc.get("group_size") or 0)
    if group == -1:
        raise refuse(f"{method} group_size -1 (one scale per output row); groups of 32..1024 are read")
    try:
        check_group(group)
    except ValueError as exc:
        raise refuse(str(exc)) from None
    if method == "awq":
        version = str(qc.get("version", "gemm")).lower()
        if version != "gemm" or qc.get("zero_point") is False:
            raise refuse(f"awq version '{version}', zero_point {qc.get('zero_point')}; version 'gemm' with zero points is read")
        return PackedConfig(Layout.AWQ, group)
    fmt = str(qc.get("format") or qc.get("checkpoint_format") or "gptq").lower()  # GPTQModel's precedence
    if fmt not in ("gptq", "gptq_v2"):
        raise refuse(f"gptq checkpoint_format '{fmt}'; 'gptq' (v1) and 'gptq_v2' are read")
    if qc.get("dynamic"):
        raise refuse("gptq per-module overrides ('dynamic') are not read")
    return PackedConfig(Layout(fmt), group)


def _nibbles(words: torch.Tensor) -> torch.Tensor:
    """int32 [R, C] -> [R, C, 8] in 0..15, nibble i = bits 4i."""
    shifts = torch.arange(0, 32, 4, dtype=torch.int32)
    return (words.to(torch.int32)[..., None] >> shifts) & 0xF


def read_packed_layer(state: dict[str, torch.Tensor], base: str, cfg: PackedConfig) -> QuantizedWeight | None:
    """``base`` (e.g. model.layers.0.mlp.down_proj) as an int4 zero-point weight; None if stored float."""
    qweight = state.get(base + ".qweight")
    if qweight is None:
        return None
    scales, g = state[base + ".scales"], cfg.group
    if scales.dtype != torch.float16:
        raise InvalidRequestError(f"{base}.scales is {scales.dtype}; float16 scales are read exactly")
    groups, n = scales.shape
    words, perm = _nibbles(state[base + ".qzeros"]), None  # [G, N / 8, 8]
    if cfg.layout is Layout.AWQ:
        k = qweight.shape[0]
        codes = _nibbles(qweight)[..., AWQ_REVERSE].reshape(k, n)  # [K, N]
        zeros = words[..., AWQ_REVERSE].reshape(groups, n)
    else:
        k = qweight.shape[0] * 8
        codes = _nibbles(qweight).permute(0, 2, 1).reshape(k, n)  # row r, nibble i -> input 8r + i
        zeros = words.reshape(groups, n) + (1 if cfg.layout is Layout.GPTQ else 0)
        perm = _act_order(state.get(base + ".g_idx"), k, g, base)
        if perm is not None:
            codes = codes[perm]  # each group's inputs gathered
    if groups != -(-k // g) or zeros.shape != (groups, n):
        raise InvalidRequestError(f"{base}: {groups} groups of scales for {k} inputs in groups of {g}")
    kp = groups * g
    q = torch.nn.functional.pad(codes.t().to(torch.int8) - INT4_OFFSET, (0, kp - k))  # [N, Kp] in -8..7
    scale = scales.t().contiguous()  # [N, G] float16
    mins = (-(zeros.t().double()) * scale.double()).to(torch.float16)  # w = (q - z) s = nibble s + (-z s)
    return QuantizedWeight(QuantFormat.INT4, pack_int4(q), scale, n, k, g, mins=mins, in_perm=perm)


def _act_order(g_idx: torch.Tensor | None, k: int, g: int, base: str) -> torch.Tensor | None:
    """None when ``g_idx`` is absent or k // g; else the input order that makes each group
    contiguous (stable sort by group), checked to give groups of ``g`` inputs in order."""
    contiguous = torch.arange(k) // g
    if g_idx is None or torch.equal(g_idx.long(), contiguous):
        return None
    perm = torch.argsort(g_idx.long(), stable=True)
    if g_idx.numel() != k or not torch.equal(g_idx.long()[perm], contiguous):
        raise InvalidRequestError(f"{base}.g_idx does not put {g} inputs in each group; act-order groups of the group size are read")
    return perm
