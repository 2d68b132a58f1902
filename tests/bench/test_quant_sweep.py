"""bench/quant_sweep.py: the GEMM buckets' candidates (the dequantise-then-cuBLAS path from 64
rows only), their variant labels, and one sweep point that checks two dequant candidates
against the float32 product and times them (Triton's interpreter without a GPU)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))  # the bench scripts import their siblings

import quant_sweep  # noqa: E402
import torch  # noqa: E402

from swiftinfer_core.kernels import quant_configs as qc  # noqa: E402


def test_dequant_candidates_from_64_rows():
    for fmt in ("int4", "int8"):
        assert not any(qc.dequant_mib(c) for c in quant_sweep.candidates(fmt, 32))
        at128 = [c for c in quant_sweep.candidates(fmt, 128) if qc.dequant_mib(c)]
        assert sorted(c["dequant_mib"] for c in at128) == sorted(qc.DEQUANT_MIB)
        assert {quant_sweep.variant(c) for c in quant_sweep.candidates(fmt, 128)} == {"gemm", "dequant"}


def test_dequant_only_keeps_the_table_config_and_the_dequant_ones():
    for fmt in ("int4", "int8"):
        only = quant_sweep.candidates(fmt, 128, dequant_only=True)
        assert only[0] == qc.DEFAULTS[fmt][128] and not qc.dequant_mib(only[0])
        assert sorted(c["dequant_mib"] for c in only[1:]) == sorted(qc.DEQUANT_MIB)
        assert quant_sweep.candidates(fmt, 32, dequant_only=True) == quant_sweep.candidates(fmt, 32)


def test_a_sweep_point_checks_and_times_the_dequant_candidates():
    cands = [c for c in quant_sweep.candidates("int4", 64) if qc.dequant_mib(c)][:2]
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # CPU: the interpreter (tests/conftest.py)
    p = quant_sweep.sweep_point("int4", 64, 96, 256, 128, dev, smoke=True, cands=cands)
    assert not p["rejected"] and len(p["rows"]) == 2  # each within 2e-2 of the float32 product
    assert {quant_sweep.variant(r["cfg"]) for r in p["rows"]} == {"dequant"}
