"""The C decode kernels (kernels/cpu_native_*.c) against float64 references on fresh
random inputs: the int8 product with each prologue and epilogue, and the one-token
attention (rotation, GQA, softmax, the cache write) at sizes that take both the
vector and the scalar-tail code. Skipped where no C compiler builds them."""

from __future__ import annotations

import threading

import pytest
import torch

from swiftinfer_core.kernels import cpu_native

KERNELS = cpu_native.load()
pytestmark = pytest.mark.skipif(KERNELS is None, reason="no C compiler: the kernels cannot be built here")


def _int8(n: int, k: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    q = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
    return q, torch.rand(n, generator=g) * 0.01 + 1e-4


@pytest.mark.parametrize("m,n,k", [(1, 960, 576), (3, 37, 45), (8, 64, 1536), (5, 50, 77), (2, 16, 5000)])
@pytest.mark.parametrize("prologue", ["none", "rmsnorm", "silu_mul"])
def test_gemv_matches_float64(m, n, k, prologue):
    """Within what rounding each input row to 16-bit fixed point allows (at most half
    a step, max|row| / 32767 / 2, per input) plus float32 sums; an outlier per row
    makes the step coarse, as real activations do."""
    g = torch.Generator().manual_seed(m * 1000 + n + k)
    q, scale = _int8(n, k, g)
    x = torch.randn(m, 2 * k if prologue == "silu_mul" else k, generator=g) * 3
    x[:, k // 3] *= 20
    norm_w = torch.rand(k, generator=g) + 0.5 if prologue == "rmsnorm" else None
    bias, res = torch.randn(n, generator=g), torch.randn(m, n, generator=g)
    xd = x.double()
    if prologue == "rmsnorm":
        xd = xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + 1e-5) * norm_w.double()
    elif prologue == "silu_mul":
        xd = torch.nn.functional.silu(xd[:, :k]) * xd[:, k:]
    w = q.double() * scale.double()[:, None]  # [n, k]
    want = xd @ w.t() + bias.double() + res.double()
    got = KERNELS.gemv_i8(x, q, scale, bias, prologue, norm_w, 1e-5, residual=res.clone())
    assert got.dtype == torch.float32 and got.shape == (m, n)
    step = xd.abs().amax(dim=1, keepdim=True) / 32767  # [m, 1]
    bound = (step / 2 + 1e-6 * xd.abs()) @ w.abs().t() + 1e-6 * (xd.abs() @ w.abs().t() + res.double().abs())
    assert bool(((got.double() - want).abs() <= bound).all()), float(((got.double() - want).abs() / bound).max())
    # and the bound is not vacuous: the error is far below the product's own size
    assert float((got.double() - want).abs().max()) < 1e-3 * float(want.abs().max())


def test_gemv_updates_the_residual_in_place():
    g = torch.Generator().manual_seed(7)
    q, scale = _int8(48, 32, g)
    x, h = torch.randn(2, 32, generator=g), torch.randn(2, 48, generator=g)
    want = h.double() + x.double() @ (q.double() * scale.double()[:, None]).t()
    out = KERNELS.gemv_i8(x, q, scale, residual=h, out=h)
    assert out is h
    torch.testing.assert_close(h.double(), want, rtol=0, atol=1e-4 * float(want.abs().max()))  # 16-bit inputs


def test_gemv_refuses_what_it_cannot_read():
    q, scale = _int8(16, 32, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError):
        KERNELS.gemv_i8(torch.randn(1, 33), q, scale)  # wrong K
    with pytest.raises(ValueError):
        KERNELS.gemv_i8(torch.randn(32, 2).t(), q, scale)  # not contiguous
    with pytest.raises(ValueError):
        KERNELS.gemv_i8(torch.randn(1, 32, dtype=torch.float64), q, scale)
    with pytest.raises(ValueError):
        KERNELS.gemv_i8(torch.randn(1, 32), q, scale, prologue="rmsnorm")  # no norm weight


def _rot64(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """rotate-half RoPE in float64: x [..., D], cos (c, c) and sin (-s, s) [..., D]."""
    h = x.shape[-1] // 2
    return x * cos + torch.roll(x, h, dims=-1) * sin


@pytest.mark.parametrize("hq,hkv,d,fill,cap", [(9, 3, 64, 70, 128), (9, 3, 64, 2048, 2048), (4, 4, 16, 13, 20), (6, 2, 10, 5, 9)])
def test_attention_matches_float64(hq, hkv, d, fill, cap):
    g = torch.Generator().manual_seed(hq + d + fill)
    kc, vc = torch.randn(hkv, cap, d, generator=g), torch.randn(hkv, cap, d, generator=g)
    q, kn, vn = torch.randn(hq, d, generator=g) * 2, torch.randn(hkv, d, generator=g), torch.randn(hkv, d, generator=g)
    ang = torch.rand(fill, d // 2, generator=g, dtype=torch.float64) * 100  # any angles: the kernel takes cos/sin as given
    cos = torch.cat([ang.cos(), ang.cos()], -1).float()
    sin = torch.cat([-ang.sin(), ang.sin()], -1).float()
    row = fill - 1 if fill < cap else 3  # once full, the new token overwrites some row below fill
    qa = torch.rand(d // 2, generator=g, dtype=torch.float64) * 100
    q_cos, q_sin = torch.cat([qa.cos(), qa.cos()]).float(), torch.cat([-qa.sin(), qa.sin()]).float()
    want_k, want_v = kc.clone(), vc.clone()
    want_k[:, row], want_v[:, row] = kn, vn
    k64 = _rot64(want_k[:, :fill].double(), cos.double(), sin.double())  # [Hkv, F, D]
    q64 = _rot64(q.double(), q_cos.double(), q_sin.double()).view(hkv, hq // hkv, d)
    p = torch.softmax(q64 @ k64.transpose(1, 2) * d**-0.5, dim=-1)
    want = (p @ want_v[:, :fill].double()).reshape(hq, d)
    out = torch.empty(hq, d)
    KERNELS.attn_decode(q, kn, vn, kc, vc, row, fill, cos, sin, q_cos, q_sin, d**-0.5, out)
    assert torch.equal(kc, want_k) and torch.equal(vc, want_v)
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=2e-5)


def test_attention_softmax_survives_large_scores():
    """Scores far apart (one key dominating by e^80, others under e^-87): the shifted exp
    must neither overflow nor turn the sum into 0."""
    d, fill = 8, 24
    kc, vc = torch.zeros(1, fill, d), torch.randn(1, fill, d)
    kc[0, :, 0] = torch.linspace(-40, 40, fill)
    q = torch.zeros(1, d)
    q[0, 0] = 10.0
    cos, sin = torch.ones(fill, d), torch.zeros(fill, d)
    out = torch.empty(1, d)
    KERNELS.attn_decode(q, kc[:, 0].clone(), vc[:, 0].clone(), kc, vc, 0, fill, cos, sin, torch.ones(d), torch.zeros(d), 1.0, out)
    p = torch.softmax(q.double() @ kc[0].double().t(), -1)
    torch.testing.assert_close(out.double(), p @ vc[0].double(), rtol=1e-5, atol=1e-6)


def test_build_is_cached_per_source_and_cpu(tmp_path):
    """A second build in the same cache directory finds the library instead of compiling."""
    first = cpu_native.build(tmp_path)
    mtime = first.stat().st_mtime_ns
    assert cpu_native.build(tmp_path) == first and first.stat().st_mtime_ns == mtime
    assert list(tmp_path.iterdir()) == [first]  # no temporary file left behind


def test_gemv_sums_do_not_overflow_at_the_extremes():
    """Every product at its largest (|xq| = 32767, |q| = 127) over a long row: the
    int32 sums are cut into chunks that cannot overflow."""
    k = 4096 + 96
    q = torch.full((3, k), 127, dtype=torch.int8)
    q[1] = -127
    q[2, ::2] = -127
    x = torch.ones(2, k)
    x[1] = -1.0
    scale = torch.ones(3)
    want = x.double() @ q.double().t()
    torch.testing.assert_close(KERNELS.gemv_i8(x, q, scale).double(), want, rtol=1e-6, atol=0)


def test_no_working_compiler_means_no_kernels_not_an_error(tmp_path, monkeypatch):
    """A machine whose compiler fails (here `false`) or is missing gets None from load():
    the engine keeps the torch ops (runner/build.py native_kernels)."""
    monkeypatch.setenv("CC", "false")
    with pytest.raises(RuntimeError, match="false failed"):
        cpu_native.build(tmp_path)
    assert cpu_native.load.__wrapped__(tmp_path) is None
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    assert cpu_native.load.__wrapped__(tmp_path) is None
    assert not list(tmp_path.glob("*.so"))


def _at_threads(n: int, fn):
    """fn() with the kernels' thread count (torch's, of the calling thread) at n."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("m,n,k", [(1, 960, 576), (1, 4099, 576), (5, 333, 1536)])
def test_gemv_is_the_same_on_any_number_of_threads(m, n, k):
    """The worker pool (cpu_native_pool.c) splits the weight rows into items claimed
    by whichever thread is free: every output must still be computed, once, exactly
    as one thread computes it (bit for bit), and within the float64 bound of
    test_gemv_matches_float64; also from two Python threads at once (the second
    finds the pool busy and runs its items itself)."""
    g = torch.Generator().manual_seed(n + k)
    q, scale = _int8(n, k, g)
    x, res = torch.randn(m, k, generator=g) * 3, torch.randn(m, n, generator=g)
    norm_w = torch.rand(k, generator=g) + 0.5
    call = lambda: KERNELS.gemv_i8(x, q, scale, None, "rmsnorm", norm_w, 1e-5, residual=res)
    one = _at_threads(1, call)
    xd = x.double() * torch.rsqrt(x.double().pow(2).mean(-1, keepdim=True) + 1e-5) * norm_w.double()
    w = q.double() * scale.double()[:, None]
    want = xd @ w.t() + res.double()
    bound = (xd.abs().amax(dim=1, keepdim=True) / 32767 / 2 + 1e-6 * xd.abs()) @ w.abs().t() + 1e-6 * (xd.abs() @ w.abs().t() + res.double().abs())
    assert bool(((one.double() - want).abs() <= bound).all())
    for t in (2, 3, 4):
        for _ in range(20):  # items land on different threads from call to call
            assert torch.equal(_at_threads(t, call), one), t
    outs: list[torch.Tensor] = []
    workers = [threading.Thread(target=lambda: outs.extend(_at_threads(2, call) for _ in range(50))) for _ in range(2)]
    for th in workers:
        th.start()
    for th in workers:
        th.join()
    assert len(outs) == 100 and all(torch.equal(o, one) for o in outs)


def test_attention_is_the_same_on_any_number_of_threads():
    """The kv heads spread over the pool's threads: the same output bit for bit as one
    thread, and the float64 reference's within test_attention_matches_float64's tolerance."""
    hq, hkv, d, fill, cap = 12, 4, 64, 300, 512
    g = torch.Generator().manual_seed(11)
    kc, vc = torch.randn(hkv, cap, d, generator=g), torch.randn(hkv, cap, d, generator=g)
    q, kn, vn = torch.randn(hq, d, generator=g), torch.randn(hkv, d, generator=g), torch.randn(hkv, d, generator=g)
    ang = torch.rand(fill, d // 2, generator=g, dtype=torch.float64) * 100
    cos, sin = torch.cat([ang.cos(), ang.cos()], -1).float(), torch.cat([-ang.sin(), ang.sin()], -1).float()
    ones, zeros = torch.ones(d), torch.zeros(d)

    def call():
        out = torch.empty(hq, d)
        KERNELS.attn_decode(q, kn, vn, kc, vc, fill - 1, fill, cos, sin, ones, zeros, d**-0.5, out)
        return out

    one = _at_threads(1, call)
    k64 = _rot64(kc[:, :fill].double(), cos.double(), sin.double())
    p = torch.softmax(q.double().view(hkv, hq // hkv, d) @ k64.transpose(1, 2) * d**-0.5, dim=-1)
    torch.testing.assert_close(one.double(), (p @ vc[:, :fill].double()).reshape(hq, d), rtol=1e-5, atol=2e-5)
    for t in (2, 3, 4):
        for _ in range(20):
            assert torch.equal(_at_threads(t, call), one), t


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q4_1"])
def test_gguf_product_is_the_same_on_any_number_of_threads(qtype):
    """The GGUF block product (cpu_native_gguf.c) on the worker pool: bit for bit one
    thread's output at 2-4 threads, and the float64 product of the dequantised blocks."""
    n, k, m = 1003, 576, 3
    g = torch.Generator().manual_seed(len(qtype) + n)
    if qtype == "Q8_0":
        qs = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
        codes = qs.double()
    else:
        qs = torch.randint(0, 256, (n, k // 2), generator=g, dtype=torch.uint8)
        lo, hi = (qs & 0x0F).double(), (qs >> 4).double()  # per 32-group: 16 low nibbles, then 16 high
        codes = torch.cat([lo.view(n, -1, 16), hi.view(n, -1, 16)], -1).view(n, k)
    d = (torch.rand(n, k // 32, generator=g) * 0.02 + 1e-3).half()
    mins = (torch.randn(n, k // 32, generator=g) * 0.05).half() if qtype == "Q4_1" else None
    x = torch.randn(m, k, generator=g)
    call = lambda: KERNELS.gemv_gguf(x, qtype, qs, d, mins)
    one = _at_threads(1, call)
    scale = d.double().repeat_interleave(32, dim=1)
    offset = {"Q8_0": 0.0, "Q4_0": -8.0 * scale, "Q4_1": mins.double().repeat_interleave(32, dim=1) if mins is not None else 0.0}[qtype]
    w = codes * scale + offset
    torch.testing.assert_close(one.double(), x.double() @ w.t(), rtol=1e-4, atol=1e-4)
    for t in (2, 3, 4):
        for _ in range(10):
            assert torch.equal(_at_threads(t, call), one), t
