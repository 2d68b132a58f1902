"""Penalties, logit bias and min_tokens against a float64 reference on fresh random
logits; the visible-token counts against a recount of the cache; logprobs
against log_softmax of the adjusted logits."""

import math
import random
from collections import Counter, deque

import torch

from swiftinfer_core.config import SamplingParams
from swiftinfer_core.engine.penalties import RowAdjust, VisibleTokens, adjust
from swiftinfer_core.engine.sampler import sample, sample_step


def reference(logits: list[float], counts: Counter, p: SamplingParams, ban: list[int]) -> list[float]:
    """The documented formulas, one token at a time, in float64."""
    out = []
    for t, x in enumerate(logits):
        c = counts.get(t, 0)
        if c > 0:
            x = x / p.repetition_penalty if x > 0 else x * p.repetition_penalty
        x = x - p.frequency_penalty * c - p.presence_penalty * (1.0 if c > 0 else 0.0)
        x = x + p.logit_bias.get(t, 0.0)
        out.append(-math.inf if t in ban else x)
    return out


def test_each_adjustment_matches_the_float64_reference():
    V, R = 300, 7
    logits = torch.randn(R, V) * 3  # fresh each run
    rng = random.Random()
    cases = [
        SamplingParams(presence_penalty=rng.uniform(-2, 2)),
        SamplingParams(frequency_penalty=rng.uniform(-2, 2)),
        SamplingParams(repetition_penalty=rng.uniform(1.01, 3.0)),
        SamplingParams(repetition_penalty=rng.uniform(0.3, 0.99)),
        SamplingParams(logit_bias={rng.randrange(V): rng.uniform(-100, 100) for _ in range(5)}),
        SamplingParams(min_tokens=3),
        SamplingParams(presence_penalty=0.5, frequency_penalty=-0.7, repetition_penalty=1.3, logit_bias={3: 2.5, 9: -1.0}),
    ]
    rows, refs = [], []
    for i, p in enumerate(cases):
        counts = Counter(rng.randrange(V) for _ in range(rng.randrange(1, 120)))
        ban = [0, 5] if p.min_tokens else []
        rows.append(RowAdjust(counts=counts, ban=ban))
        refs.append(reference(logits[i].double().tolist(), counts, p, ban))
    got = adjust(logits, cases, rows)
    assert got is not logits
    for i in range(R):
        want = torch.tensor(refs[i], dtype=torch.float64)
        finite = torch.isfinite(want)
        assert torch.equal(finite, torch.isfinite(got[i])), i
        torch.testing.assert_close(got[i].double()[finite], want[finite], rtol=1e-6, atol=1e-4)
        assert (got[i] != logits[i]).any(), i  # every case changed its row


def test_a_step_without_adjustments_returns_the_logits_untouched():
    logits = torch.randn(4, 50)
    params = [SamplingParams(), SamplingParams(temperature=1.0)] * 2
    assert adjust(logits, params, [None, RowAdjust(), None, RowAdjust()]) is logits


def test_seeded_draws_are_unchanged_when_penalties_are_off():
    V = 80
    logits = torch.randn(6, V)
    params = [SamplingParams(temperature=1.0), SamplingParams(temperature=0.7, top_p=0.9), SamplingParams(),
              SamplingParams(temperature=1.2, top_k=10), SamplingParams(temperature=1.0, presence_penalty=0.0), SamplingParams()]

    def gens():
        return [torch.Generator().manual_seed(7 + i) for i in range(6)]

    plain = sample(logits, params, gens())
    assert sample(logits, params, gens(), [None] * 6) == plain
    assert sample(logits, params, gens(), [RowAdjust()] * 6) == plain
    # a penalised neighbour does not change the other rows' draws
    mixed = list(params)
    mixed[2] = SamplingParams(frequency_penalty=2.0)
    rows = [None, None, RowAdjust(counts=Counter({int(logits[2].argmax()): 50})), None, None, None]
    got = sample(logits, mixed, gens(), rows)
    assert [got[i] for i in (0, 1, 3, 4, 5)] == [plain[i] for i in (0, 1, 3, 4, 5)]
    assert got[2] != plain[2]  # the greedy row's argmax was penalised away


def test_penalties_change_the_sampled_distribution_as_specified():
    V, N = 10, 20000
    row = torch.randn(V) * 1.5
    p = SamplingParams(temperature=1.0, presence_penalty=0.8, frequency_penalty=0.3, repetition_penalty=1.5)
    counts = Counter({1: 3, 4: 1, 7: 2})
    gens = [torch.Generator().manual_seed(s) for s in range(N)]
    picks = sample(row.expand(N, V).contiguous(), [p] * N, gens, [RowAdjust(counts=counts)] * N)
    adj = reference(row.double().tolist(), counts, p, [])
    z = sum(math.exp(x) for x in adj)
    for tok in range(V):
        want = math.exp(adj[tok]) / z
        got = picks.count(tok) / N
        assert abs(got - want) <= 5 * math.sqrt(max(want * (1 - want), 1e-12) / N) + 1e-9, (tok, got, want)


def test_visible_counts_follow_sinks_and_the_rolling_window():
    """Advance step by step as the engine does (before Session.fed) and compare
    with a recount of what the cache holds after the write."""
    sinks, window = 4, 9
    sink_ids: list[int] = []
    win: deque[int] = deque(maxlen=window)
    vis = VisibleTokens(sinks)
    rng = random.Random()
    steps = [[rng.randrange(6) for _ in range(3)]] + [[rng.randrange(6)] for _ in range(40)] + [[rng.randrange(6) for _ in range(12)]]
    for ids in steps:
        vis.advance(sink_ids, win, window, ids)
        for t in ids:  # Session.fed
            (sink_ids.append(t) if len(sink_ids) < sinks else win.append(t))
        assert vis.counts == Counter(sink_ids) + Counter(win), ids


def test_logprobs_are_log_softmax_of_the_adjusted_logits():
    V = 64
    logits = torch.randn(5, V) * 2
    params = [SamplingParams(logprobs=True, top_logprobs=3), SamplingParams(),
              SamplingParams(temperature=0.8, logprobs=True, top_logprobs=0),
              SamplingParams(logprobs=True, top_logprobs=5, presence_penalty=1.5, logit_bias={2: 4.0}),
              SamplingParams(temperature=1.0, top_k=5, logprobs=True, top_logprobs=1)]
    rows = [None, None, None, RowAdjust(counts=Counter({int(logits[3].argmax()): 2})), None]
    gens = [torch.Generator().manual_seed(i) for i in range(5)]
    ids, lps = sample_step(logits, params, gens, rows)
    assert lps[1] is None
    adjusted = adjust(logits, params, rows).double()
    for i in (0, 2, 3, 4):
        ref = torch.log_softmax(adjusted[i], dim=-1)
        assert lps[i].token == ids[i]
        assert abs(lps[i].logprob - float(ref[ids[i]])) < 1e-4
        want_top = torch.topk(ref, params[i].top_logprobs)
        assert [t for t, _ in lps[i].top] == want_top.indices.tolist()
        assert all(abs(v - w) < 1e-4 for (_, v), w in zip(lps[i].top, want_top.values.tolist()))
    assert ids[0] == int(logits[0].argmax()) and lps[0].top[0][0] == ids[0]


def test_masked_tokens_have_a_finite_logprob():
    logits = torch.randn(1, 6)
    p = SamplingParams(logprobs=True, top_logprobs=6, min_tokens=2)
    _, lps = sample_step(logits, [p], [None], [RowAdjust(ban=[0, 1, 2])])
    assert sorted(v for _, v in lps[0].top)[:3] == [-9999.0] * 3 and math.isfinite(lps[0].logprob)
