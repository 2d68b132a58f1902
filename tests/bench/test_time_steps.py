"""bench/models.py time_steps: what batched_decode and fp8_kv_decode report per
batch (capture first, warm-up steps untimed, ITL p50/p99 and tokens/s over the
timed steps), on a stand-in decoder whose steps take known times."""

import random

import pytest

from bench import models


class FakeDecoder:
    """capture()/step() as OurDecoder's; each step advances ``clock`` by its next duration."""

    def __init__(self, durations: list[float]):
        self.durations, self.clock, self.calls = list(durations), [0.0], []

    def capture(self):
        self.calls.append("capture")

    def step(self):
        assert self.calls[:1] == ["capture"], "stepped before capture"
        self.calls.append("step")
        self.clock[0] += self.durations.pop(0)


def test_warmup_untimed_and_percentiles(monkeypatch):
    timed = [i / 1e3 for i in range(1, 101)]  # 1..100 ms
    random.Random(0).shuffle(timed)
    dec = FakeDecoder([50.0] * 3 + timed)  # warm-up steps 50 s: any of them in the stats shows
    monkeypatch.setattr(models.time, "perf_counter", lambda: dec.clock[0])
    r = models.time_steps(dec, steps=100, batch=32)
    assert dec.calls == ["capture"] + ["step"] * 103 and not dec.durations
    assert r["itl_p50_ms"] == pytest.approx(50.5)
    assert r["itl_p99_ms"] == pytest.approx(99.0)  # sorted[round(0.99 * 99)]
    assert r["tok_s"] == pytest.approx(32 / 0.0505)
    assert set(r) == {"itl_p50_ms", "itl_p99_ms", "tok_s"}
