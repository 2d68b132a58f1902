"""Where a quantizer may swap a model's nn.Linear layers for its own: one list,
shared by every weight format (cpu_weights, quant_linear, fp8_linear) and the
calibration that feeds them (calibrate.py)."""

from __future__ import annotations

from typing import NamedTuple

from torch import nn


class LinearSlot(NamedTuple):
    parent: nn.Module  # setattr(parent, name, replacement) swaps the layer
    qualified: str  # its name in model.named_modules() ("layers.0.attn.wqkv")
    name: str  # its attribute on parent
    linear: nn.Linear


def linear_slots(model: nn.Module, head: bool) -> list[LinearSlot]:
    """Every decoder nn.Linear of ``model``, and the one named ``lm_head`` when ``head``."""
    return [LinearSlot(parent, f"{pname}.{name}" if pname else name, name, child)
            for pname, parent in model.named_modules() for name, child in parent.named_children()
            if isinstance(child, nn.Linear) and (head or name != "lm_head")]
