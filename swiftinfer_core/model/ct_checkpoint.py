"""Checkpoints already quantized in the compressed-tensors format (what llm-compressor
writes and vLLM reads, e.g. RedHatAI's Llama-3.1-8B-Instruct-quantized.w4a16 and
-FP8-dynamic): served in their own codes and scales, not rounded again.

config.json's ``quantization_config`` (``quant_method: compressed-tensors``), one config
group over the Linear layers, the LM head left out or not:

- ``pack-quantized``, weights int 4-bit, symmetric, strategy ``group`` -> int4
  (model/quant.py). Each int32 of ``weight_packed`` [N, K / 8] holds 8 codes, code i at
  bits 4i as q + 8 (q in -8..7, w = q * scale); ``weight_scale`` [N, K / group]. bfloat16
  scales are the symmetric format as is (its kernels decode -8 too); float16 scales go
  to the zero-point format with min = -8 * scale, exact in float16, so the layer
  multiplies by exactly the checkpoint's weights either way.
- ``float-quantized`` / ``naive-quantized``, weights float 8-bit (e4m3), strategy
  ``channel`` or ``tensor`` -> fp8 (model/fp8.py), one float32 scale per row (a tensor
  scale repeated). Activations: the batched path quantizes them to e4m3 per row on the
  fly, which is the ``dynamic`` per-token scheme of "FP8-dynamic" checkpoints; a static
  ``input_scale`` is not used (per-row dynamic scales instead).

GPTQ and AWQ checkpoints (``quant_method`` gptq / awq) are read by
model/gptq_checkpoint.py into the int4 zero-point format; this module dispatches to it.

Refused, with the reason: other methods (bitsandbytes, fp8 of other tools), asymmetric or 8-bit int weights, act-order groups (``actorder: group``, a
``weight_g_idx``), quantized activations other than dynamic e4m3 per token, several
config groups, sparsity and transforms. A KV cache scheme is not used: the cache is
``kv_cache_dtype``'s (its fp8 takes a scale per token as it writes). Llama family only (as every
weight format here); one device.

``PrequantizedCheckpoint`` is the mapping ``Llama.load_hf_state`` reads: a quantized
layer's ``*.weight`` comes back dequantized (float32), so the float model is filled as
from any checkpoint; ``quantized_weights`` then gives the codes per fused layer
(wqkv, wo, w13, w2) for quantize_linears / quantize_fp8_linears.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from swiftinfer_core.errors import InvalidRequestError
from swiftinfer_core.model.args import ModelArgs
from swiftinfer_core.model.fp8 import FP8_DTYPE
from swiftinfer_core.model.gptq_checkpoint import PACKED, Layout, PackedConfig, read_packed_config, read_packed_layer
from swiftinfer_core.model.layers import permute_heads, rotary_perm
from swiftinfer_core.model.quant import INT4_OFFSET, QuantFormat, QuantizedWeight, check_group, dequantize, pack_int4

log = logging.getLogger(__name__)

# our fused layer -> the HF projections it stacks by rows (split names, or Phi-3's fused one)
_FUSED = {"wqkv": (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("self_attn.qkv_proj",)),
          "wo": (("self_attn.o_proj",),), "w13": (("mlp.gate_proj", "mlp.up_proj"), ("mlp.gate_up_proj",)),
          "w2": (("mlp.down_proj",),)}
_FORMATS = {"pack-quantized": QuantFormat.INT4, "float-quantized": QuantFormat.FP8, "naive-quantized": QuantFormat.FP8}


@dataclass(frozen=True)
class Prequantized:
    """A pre-quantized checkpoint's weight format, as the engine's int4 / fp8."""

    fmt: QuantFormat
    group: int  # int4 group size (fp8: 0)
    zero_point: bool  # int4 scales in float16: the zero-point format (module doc)
    layout: Layout = Layout.COMPRESSED_TENSORS  # how the codes are stored


def _refuse(folder: Path, why: str) -> InvalidRequestError:
    return InvalidRequestError(f"{folder.name}: quantized checkpoint not served: {why}")


def _scale_dtype(folder: Path) -> torch.dtype:
    """The dtype of the first decoder ``weight_scale`` in the safetensors headers."""
    from safetensors import safe_open

    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as h:
            for name in h.keys():
                if name.endswith("_proj.weight_scale"):
                    return h.get_tensor(name).dtype
    raise _refuse(folder, "no *_proj.weight_scale tensor found")


def read_prequantized(folder: Path | None) -> Prequantized | None:
    """The checkpoint's own quantization, or None for a float checkpoint (or no folder,
    or one without config.json: nothing says it is quantized); whatever this engine
    cannot serve exactly is refused here, before any weight is read."""
    config = None if folder is None else folder / "config.json"
    if config is None or not config.is_file():
        return None
    qc = json.loads(config.read_text()).get("quantization_config")
    if not qc:
        return None
    method = qc.get("quant_method")
    if method in ("gptq", "awq"):  # always the zero-point format: float16 scales and a zero per group
        packed = read_packed_config(qc, lambda why: _refuse(folder, why))
        return Prequantized(QuantFormat.INT4, packed.group, True, packed.layout)
    if method != "compressed-tensors":
        raise _refuse(folder, f"quant_method '{method}'; compressed-tensors (llm-compressor's), gptq and awq are read")
    groups = qc.get("config_groups") or {}
    if len(groups) != 1:
        raise _refuse(folder, f"{len(groups)} config groups; one over the Linear layers is read")
    if qc.get("sparsity_config") or qc.get("transform_config"):
        raise _refuse(folder, "sparsity and transforms are not read")
    if qc.get("kv_cache_scheme"):  # the cache is kv_cache_dtype's, whose fp8 scales are taken per token as written
        log.info("%s: its kv_cache_scheme is not used (kv_cache_dtype sets the cache)", folder.name)
    (group,) = groups.values()
    fmt_name = group.get("format") or qc.get("format")
    w, act = group.get("weights") or {}, group.get("input_activations")
    if fmt_name not in _FORMATS or group.get("targets") != ["Linear"]:
        raise _refuse(folder, f"format '{fmt_name}' over {group.get('targets')}; pack-quantized int4 or float-quantized "
                              "fp8 over ['Linear'] are read")
    if _FORMATS[fmt_name] is QuantFormat.INT4:
        if (w.get("type"), w.get("num_bits"), w.get("symmetric"), w.get("strategy")) != ("int", 4, True, "group"):
            raise _refuse(folder, f"int weights {w}; symmetric 4-bit with group scales are read")
        if w.get("actorder") == "group":
            raise _refuse(folder, "actorder 'group' (a g_idx column order) is not read; 'weight' or none are")
        if act is not None:
            raise _refuse(folder, f"quantized activations {act} with int4 weights (w4a16 only)")
        try:
            check_group(int(w.get("group_size") or 0))
        except ValueError as exc:
            raise _refuse(folder, str(exc)) from None
        dt = _scale_dtype(folder)
        if dt not in (torch.bfloat16, torch.float16):
            raise _refuse(folder, f"int4 scales in {dt}; bfloat16 or float16 are read exactly")
        return Prequantized(QuantFormat.INT4, int(w["group_size"]), dt == torch.float16)
    if (w.get("type"), w.get("num_bits"), w.get("strategy")) not in (("float", 8, "channel"), ("float", 8, "tensor")):
        raise _refuse(folder, f"float weights {w}; e4m3 with channel or tensor scales are read")
    e4m3_act = act is not None and (act.get("type"), act.get("num_bits")) == ("float", 8)
    if act is not None and not (e4m3_act and (act.get("dynamic") is True or act.get("strategy") == "tensor")):
        raise _refuse(folder, f"activations {act}; dynamic e4m3 per token (or a static tensor scale, not used) are read")
    return Prequantized(QuantFormat.FP8, 0, False)


def _unpack_int32(packed: torch.Tensor, k: int) -> torch.Tensor:
    """[N, ceil(K / 8)] int32, code i at bits 4i as q + 8 -> q int8 [N, K]."""
    shifts = torch.arange(0, 32, 4, dtype=torch.int32)
    nib = (packed.to(torch.int32)[..., None] >> shifts) & 0xF  # [N, K/8, 8]
    return (nib.reshape(packed.shape[0], -1)[:, :k] - INT4_OFFSET).to(torch.int8)


class PrequantizedCheckpoint(Mapping):
    """HF name -> tensor of a pre-quantized checkpoint's state dict, quantized
    ``*.weight`` dequantized to float32 (what Llama.load_hf_state reads)."""

    def __init__(self, state: dict[str, torch.Tensor], pre: Prequantized):
        self.state, self.pre = state, pre
        self._layers: dict[str, QuantizedWeight | None] = {}  # read once: for the float fill, then for the codes
        self._packed = None if pre.layout is Layout.COMPRESSED_TENSORS else PackedConfig(pre.layout, pre.group)
        if self._packed is None:
            self.names = {n.removesuffix("_packed") for n in state if not n.endswith(("_scale", "_shape", "_zero_point", "_g_idx"))}
        else:  # base.qweight -> base.weight; qzeros, scales, g_idx hidden
            self.names = {n.removesuffix(".qweight") + ".weight" if n.endswith(".qweight") else n
                          for n in state if not n.endswith(PACKED[1:])}

    def layer(self, base: str) -> QuantizedWeight | None:
        """``base`` (e.g. model.layers.0.self_attn.q_proj) in the engine's format; None if stored float."""
        if base not in self._layers:
            self._layers[base] = self._read(base)
        return self._layers[base]

    def _read(self, base: str) -> QuantizedWeight | None:
        if self._packed is not None:
            return read_packed_layer(self.state, base, self._packed)
        s = self.state.get(base + ".weight_scale")
        if s is None:
            return None
        if base + ".weight_g_idx" in self.state:
            raise InvalidRequestError(f"{base}: a g_idx column order is not read")
        if self.pre.fmt is QuantFormat.FP8:
            q = self.state[base + ".weight"]
            if q.dtype != FP8_DTYPE:
                raise InvalidRequestError(f"{base}.weight is {q.dtype}, not float8_e4m3fn")
            n, k = q.shape
            scale = s.float().reshape(-1).expand(n).contiguous()  # [N]: a tensor scale repeated
            return QuantizedWeight(QuantFormat.FP8, q, scale, n, k, k)
        n, k = (int(v) for v in self.state[base + ".weight_shape"])
        g = self.pre.group
        codes = _unpack_int32(self.state[base + ".weight_packed"], k)
        kp = -(-k // g) * g
        packed = pack_int4(torch.nn.functional.pad(codes, (0, kp - k)))
        if s.shape != (n, kp // g):
            raise InvalidRequestError(f"{base}.weight_scale is {tuple(s.shape)}, not [{n}, {kp // g}]")
        if self.pre.zero_point:  # float16 scales: w = nibble * scale + min with min = -8 * scale (exact)
            scale = s.to(torch.float16)
            return QuantizedWeight(QuantFormat.INT4, packed, scale, n, k, g, mins=scale * -INT4_OFFSET)
        return QuantizedWeight(QuantFormat.INT4, packed, s.to(torch.bfloat16), n, k, g)

    def __getitem__(self, name: str) -> torch.Tensor:
        base = name.removesuffix(".weight")
        if name.endswith(".weight") and (name + "_scale" in self.state or base + ".qweight" in self.state):
            return dequantize(self.layer(base))  # quantized: int4 packed, or e4m3 in place
        return self.state[name]

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def quantized_weights(self, args: ModelArgs) -> dict[str, QuantizedWeight]:
        """Qualified name (layers.{i}.wqkv, ...) -> the stacked QuantizedWeight of every
        decoder linear the checkpoint stores quantized (one device: all heads and rows)."""
        perm = rotary_perm(args.head_dim, args.rotary)
        out = {}
        for i in range(args.num_layers):
            for ours, options in _FUSED.items():
                bases = next((o for o in options if f"model.layers.{i}.{o[0]}.weight" in self), None)
                if bases is None:
                    continue
                parts = [self.layer(f"model.layers.{i}.{b}") for b in bases]
                if any(p is None for p in parts):
                    continue  # stored float (in the checkpoint's ignore list): rounded at load like any float layer
                if ours == "wqkv" and len(parts) == 3:  # partial rotary: q and k rows reordered as load_hf_state does
                    parts[:2] = [_permute_rows(p, args.head_dim, perm) for p in parts[:2]]
                out[f"layers.{i}.{ours}"] = _stack(parts)
        return out


def _permute_rows(qw: QuantizedWeight, d: int, perm: torch.Tensor) -> QuantizedWeight:
    if torch.equal(perm, torch.arange(d)):
        return qw
    pr = lambda t: None if t is None else permute_heads(t, d, perm)  # noqa: E731
    return QuantizedWeight(qw.fmt, pr(qw.qweight), pr(qw.scales), qw.out_features, qw.in_features, qw.group, pr(qw.mins),
                           qw.in_perm)


def _stack(parts: list[QuantizedWeight]) -> QuantizedWeight:
    """Row blocks of one input width -> one weight (rows are independent in both formats)."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    perms = [p.in_perm for p in parts]
    if any(p is not None for p in perms) and not all(p is not None and torch.equal(p, perms[0]) for p in perms):
        raise InvalidRequestError("projections fused into one layer (q/k/v, gate/up) have different act-order column orders")
    cat = lambda ts: None if ts[0] is None else torch.cat(ts)  # noqa: E731
    return QuantizedWeight(first.fmt, cat([p.qweight for p in parts]), cat([p.scales for p in parts]),
                           sum(p.out_features for p in parts), first.in_features, first.group, cat([p.mins for p in parts]),
                           first.in_perm)
