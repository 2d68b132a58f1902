"""bench/gemv_floor.py's fit: time = fixed + MB / rate recovered exactly from points on a line,
and by least squares from noisy ones."""

import pytest

from bench.gemv_floor import fit


def test_fit_recovers_fixed_cost_and_rate():
    mb = [6.0, 12.0, 25.0, 50.0, 100.0]
    f = fit(mb, [5.0 + x * 1e3 / 1900.0 for x in mb])  # 5 us + 1.9 TB/s
    assert f["fixed_us"] == pytest.approx(5.0) and f["GBps"] == pytest.approx(1900.0)
    noisy = fit(mb, [5.0 + x * 1e3 / 1900.0 + e for x, e in zip(mb, (0.3, -0.3, 0.2, -0.2, 0.0))])
    assert 4.5 < noisy["fixed_us"] < 5.5 and 1850 < noisy["GBps"] < 1950
