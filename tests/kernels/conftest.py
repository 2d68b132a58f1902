"""Kernel tests run the Triton kernels through Triton's CPU interpreter when there
is no GPU (CI), and natively on CUDA when there is one.

TRITON_INTERPRET is read when ``@triton.jit`` decorates, so it must be set before
our kernel modules are imported; if a test elsewhere imported them first, they
are re-imported here.
"""

from __future__ import annotations

import importlib
import os
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
    for _name in ("rope_tl", "kv_fp8_tl", "decode_attention", "prefill_attention", "write_cache", "fused", "attention", "quant_common", "quant_gemv_h2", "quant_gemv_xres", "quant_gemv", "quant_dequant", "quant_gemm", "gptq_block"):
        _mod = sys.modules.get(f"swiftinfer_core.kernels.{_name}")
        if _mod is not None:
            importlib.reload(_mod)


@pytest.fixture
def dev() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
