"""Batched sampler against a plain float64 reference of the target distribution."""

import math

import torch

from swiftinfer_core.config import SamplingParams
from swiftinfer_core.engine.sampler import candidates, draw, sample


def reference_dist(logits: list[float], temperature: float, top_k: int, top_p: float) -> list[float]:
    """Softmax(l/T); keep the top_k; renormalise; keep the smallest prefix reaching top_p; renormalise."""
    m = max(logits)
    w = [math.exp((x - m) / temperature) for x in logits]
    z = sum(w)
    order = sorted(range(len(w)), key=lambda i: -w[i])
    if top_k:
        order = order[:top_k]
    mass = sum(w[i] for i in order) / z
    keep, before = [], 0.0
    for i in order:
        if keep and before >= top_p:
            break
        keep.append(i)
        before += w[i] / z / mass
    kz = sum(w[i] for i in keep)
    return [w[i] / kz if i in keep else 0.0 for i in range(len(w))]


def test_draws_follow_the_reference_distribution():
    V, N = 12, 20000
    row = torch.randn(V) * 2  # fresh each run
    for temperature, top_k, top_p in [(1.0, 0, 1.0), (0.7, 5, 1.0), (1.3, 0, 0.8), (0.9, 6, 0.7)]:
        p = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)
        gens = [torch.Generator().manual_seed(s) for s in range(N)]
        picks = sample(row.expand(N, V).contiguous(), [p] * N, gens)
        want = reference_dist(row.double().tolist(), temperature, top_k, top_p)
        for tok in range(V):
            got = picks.count(tok) / N
            sigma = math.sqrt(max(want[tok] * (1 - want[tok]), 1e-12) / N)
            assert abs(got - want[tok]) <= 5 * sigma + 1e-9, (temperature, top_k, top_p, tok, got, want[tok])
            if want[tok] == 0.0:
                assert got == 0.0


def test_a_turns_draw_depends_only_on_its_seed_and_logits():
    V = 50
    logits = torch.randn(8, V)
    params = [SamplingParams(temperature=1.0, top_p=0.95), SamplingParams(), SamplingParams(temperature=0.8, top_k=10),
              SamplingParams(temperature=1.0)] * 2  # every way of drawing in one step

    def gens():
        return [torch.Generator().manual_seed(100 + i) for i in range(8)]

    together = sample(logits, params, gens())
    alone = [sample(logits[i : i + 1], [params[i]], [gens()[i]])[0] for i in range(8)]
    assert together == alone == sample(logits, params, gens())
    greedy = logits.argmax(-1).tolist()
    assert together[1] == greedy[1] and together[5] == greedy[5]  # greedy rows are the argmax


def test_inverse_cdf_order_and_truncation():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0]])
    one = torch.ones(1, dtype=torch.float64)
    fallback = torch.tensor([1])

    def pick(u: float, top_k: int = 0, top_p: float = 1.0) -> int:
        count = candidates(SamplingParams(temperature=1.0, top_k=top_k, top_p=top_p), logits.shape[-1])
        return int(draw(logits, one, torch.tensor([top_p], dtype=torch.float64), torch.tensor([u], dtype=torch.float64),
                        count, fallback)[0])

    assert [pick(0.0), pick(0.999999)] == [0, 3]  # nothing truncated: vocabulary order, no sort
    assert [pick(0.0, top_p=0.99), pick(0.999999, top_p=0.9999)] == [1, 0]  # truncating: most likely first
    assert pick(0.999999, top_k=2) == 3  # only tokens 1 and 3 kept
    assert pick(0.999999, top_p=0.5) == 1  # token 1 alone holds 64% of the mass
    # top-p applies to what top-k kept, renormalised: weights 7, 3, 6, 4; top-2 keeps
    # tokens 0 (7/13 = 54%) and 2; top_p 0.5 then keeps token 0 alone (of all four
    # it holds only 35%, which would have kept token 2 too)
    logits = torch.tensor([[7.0, 3.0, 6.0, 4.0]]).log()
    assert pick(0.999999, top_k=2) == 2 and pick(0.999999, top_k=2, top_p=0.5) == 0


def test_degenerate_temperatures_fall_back_to_the_argmax():
    logits = torch.randn(3, 100)
    params = [SamplingParams(temperature=t) for t in (1.8e-53, 1e-300, 5.0)]
    picks = sample(logits, params, [torch.Generator().manual_seed(i) for i in range(3)])
    assert picks[:2] == logits.argmax(-1).tolist()[:2]
    assert 0 <= picks[2] < 100


def test_uniforms_in_blocks_are_the_generators_one_by_one_draws():
    """Turns draw their uniforms 64 at a time (sampler.Uniforms): the same numbers in the
    same order as one torch.rand call per draw, across block boundaries."""
    from swiftinfer_core.engine.sampler import Uniforms, _uniform

    seed = torch.seed()
    one_by_one = torch.Generator().manual_seed(seed)
    want = [float(torch.rand((), dtype=torch.float64, generator=one_by_one)) for _ in range(3 * Uniforms.BLOCK + 5)]
    blocks = Uniforms(torch.Generator().manual_seed(seed))
    assert [_uniform(blocks) for _ in want] == want, f"seed {seed}"
