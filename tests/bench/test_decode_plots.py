"""bench/quant_decode.py plot(): the tokens/s plot quant_decode (a line per
format, with rooflines) and fp8_decode (a line per path, none) both draw, from
synthetic rows on the CPU."""

import pytest

from bench import quant_decode as qd


def rows(key: str, values: list[str], roofline_ms: float | None) -> list[dict]:
    return [{"shape": shape, key: v, "batch": b, "tokens_per_s": 100.0 * b * (i + 1),
             "roofline_ms": None if roofline_ms is None else roofline_ms * (i + 1)}
            for shape in ("llama2-7b", "smollm2-135m") for i, v in enumerate(values) for b in (1, 8, 32)]


@pytest.fixture
def figures(monkeypatch):
    """The figures plot() saves, to read their legends back."""
    saved = []
    save = qd.common.save_plot

    def record(name, fig, out_dir=None):
        saved.append(fig)
        return save(name, fig, out_dir)

    monkeypatch.setattr(qd.common, "save_plot", record)
    yield saved
    import matplotlib.pyplot as plt

    for fig in saved:
        plt.close(fig)


def legends(fig) -> list[list[str]]:
    return [[t.get_text() for t in ax.get_legend().get_texts()] for ax in fig.axes]


def test_format_series_with_rooflines(tmp_path, figures):
    path = qd.plot("quant_decode", rows("format", ["bf16", "int8", "int4"], 2.0), str(tmp_path), "format",
                   ["bf16", "int8", "int4"], roofline=True)
    assert path == tmp_path / "quant_decode.png" and path.stat().st_size > 0
    want = ["bf16", "bf16 roofline", "int8", "int8 roofline", "int4", "int4 roofline"]
    assert legends(figures[0]) == [want, want]  # one panel per shape


def test_path_series_skips_missing_and_draws_no_rooflines(tmp_path, figures):
    rs = [r for r in rows("path", ["bf16", "fp8", "fp8 no-split"], 2.0) if not (r["path"] == "fp8 no-split" and r["shape"] == "llama2-7b")]
    path = qd.plot("fp8_decode", rs, str(tmp_path), "path", ["bf16", "int8", "fp8", "fp8 no-split"], roofline=False)
    assert path.stat().st_size > 0
    assert legends(figures[0]) == [["bf16", "fp8"], ["bf16", "fp8", "fp8 no-split"]]


def test_rows_without_a_roofline_draw_none(tmp_path, figures):
    qd.plot("quant_decode_smoke", rows("format", ["bf16", "int8"], None), str(tmp_path), "format", ["bf16", "int8", "int4"],
            roofline=True)
    assert legends(figures[0]) == [["bf16", "int8"]] * 2
