"""Piecewise CUDA graphs for steps that are not pure decode (mixed and prefill steps).

An eager 7B/8B forward launches about a thousand kernels; on an H200 a prefill
chunk of up to 256 tokens took a flat ~14 ms, 4-5x one read of the weights
(bench/results/prefill_speed.json), and a step that admits a turn beside 128
decode rows cost a third more than a decode graph replay. The launch shape of
everything but attention depends only on the step's token count T, so per
token-count bucket the step is recorded as L + 1 graphs (vLLM's piecewise
graphs):

    piece 0:      x = embed(ids); qkv = layer[0].pre(x)
    piece i:      x = layer[i-1].post(x, o); qkv = layer[i].pre(x)      (0 < i < L)
    piece L:      x = layer[L-1].post(x, o)

and attention, whose grid follows the batch (slots, chunk lengths), runs
eagerly between pieces on the first T real rows of ``qkv``, writing ``o``.
The LM head runs eagerly on the rows to sample. Rows past T are padding
(token 0): every piece is row-wise, so they never touch a real row, and
attention never sees them.

A mixed step (n decode rows first, then prefill chunks) would issue, per
layer, the decode kernel's launches for rows :n beside the prefill kernel's:
on an 8B model at 128 decode rows the host took 11-13 ms to issue such a step
against ~5 ms for a chunk alone (bench/results/mixed_step_8b_r4.json). So the
decode rows' attention is recorded too, once per layer and per size m of the
decode graphs' ladder (m >= n, rows n..m-1 marked slot -1, which the kernel
skips and zero-fills): it reads ``qkv[:m]`` and writes ``o[:m]``, and the
prefill kernel then overwrites ``o[n:T]``. That works for every bucket
because every bucket's buffers are prefixes of the largest one's.

All pieces of all buckets write into those shared static buffers (``x``,
``qkv``, ``o``) and share one graph memory pool; a step replays one bucket's
pieces in order. Single device only (a tensor-parallel rank's all-reduce is
not captured here). ``EagerCapture`` runs the same buffers and order on a CPU
so tests check them against the plain forward.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from swiftinfer_core.cache.pool import KVPool
from swiftinfer_core.kernels.attention import Attention
from swiftinfer_core.kernels.batch import AttnBatch
from swiftinfer_core.model.llama import Llama, in_dtype
from swiftinfer_core.runner.cuda_graph import PAD_SLOT, Capture, CudaCapture, DecodeGraphs, DecodeInputs, ladder, padded_size

log = logging.getLogger(__name__)
BUCKETS = (16, 32, 48, 64, 96, 128, 160, 192, 256, 320, 384, 448, 512)


def supports(model: object) -> bool:
    """Piecewise graphs need a single-device model whose blocks split into
    pre/attend/post: the Llama family (Llama, Mistral, Qwen2/3, Phi-3)."""
    return isinstance(model, Llama) and model.shard.all_reduce is None


class StaticTokens:
    """One bucket's buffers: ids [T], residual x [T, hidden] float32, qkv [T, (hq + 2 hkv) d]
    and attention output o [T, hq, d] in the weights' dtype; ``prefix``: the first T rows of a
    larger bucket's (steps never overlap, so all buckets share one set)."""

    def __init__(self, size: int, model: Llama, device: torch.device):
        block = model.layers[0]
        dt = in_dtype(block.wqkv)  # quantized layers (model/quant_linear.py) have no .weight
        self.size = size
        self.ids = torch.zeros(size, dtype=torch.long, device=device)
        self.x = torch.zeros(size, model.args.hidden_size, dtype=torch.float32, device=device)
        self.qkv = torch.zeros(size, block.wqkv.out_features, dtype=dt, device=device)
        self.o = torch.zeros(size, block.hq, block.head_dim, dtype=dt, device=device)

    def prefix(self, size: int) -> "StaticTokens":
        view = object.__new__(StaticTokens)
        view.size, view.ids, view.x, view.qkv, view.o = size, self.ids[:size], self.x[:size], self.qkv[:size], self.o[:size]
        return view


class PiecewiseGraphs:
    """``decode``: the decode graphs, whose per-size inputs and split-K plans the decode rows of
    mixed steps reuse (None: those rows' attention runs eagerly, as the chunks' does)."""

    def __init__(self, model: Llama, pool: KVPool, attn: Attention, device: torch.device, max_tokens: int,
                 capture: Capture | None = None, decode: DecodeGraphs | None = None):
        if model.shard.all_reduce is not None:
            raise ValueError("piecewise graphs run on one device; a tensor-parallel rank's all-reduce is not captured")
        if not isinstance(model, Llama):
            raise ValueError(f"piecewise graphs need blocks split into pre/attend/post (the Llama family); {type(model).__name__} is not")
        self.model, self.pool, self.attn, self.device = model, pool, attn, device
        self.sizes = ladder(max_tokens, BUCKETS)
        self._capture = capture
        self.decode = decode
        self.static: dict[int, StaticTokens] = {}
        self._pieces: dict[int, list[Callable[[], torch.Tensor]]] = {}
        self._rows: dict[int, list[Callable[[], torch.Tensor]]] = {}  # decode size m -> per layer: attention of rows :m
        self._row_sizes: list[int] = []  # those sizes m, ascending
        self.rows_in_graphs = True  # False: mixed steps' decode rows attend eagerly (bench/mixed_step.py's A/B)

    def _steps(self, st: StaticTokens) -> list[Callable[[], torch.Tensor]]:
        layers = self.model.layers

        def first() -> torch.Tensor:
            st.x.copy_(self.model.embed(st.ids))
            st.qkv.copy_(layers[0].pre(st.x))
            return st.qkv

        def middle(i: int) -> Callable[[], torch.Tensor]:
            def step() -> torch.Tensor:
                st.x.copy_(layers[i - 1].post(st.x, st.o))
                st.qkv.copy_(layers[i].pre(st.x))
                return st.qkv
            return step

        def last() -> torch.Tensor:
            st.x.copy_(layers[-1].post(st.x, st.o))
            return st.x

        return [first] + [middle(i) for i in range(1, len(layers))] + [last]

    def _row_steps(self, m: int) -> list[Callable[[], torch.Tensor]]:
        """Per layer: the decode kernel over rows :m of the shared qkv into o[:m], on the
        decode graph of size m's slots, starts and split-K plan."""
        st, dst = self.static[self.sizes[-1]], self.decode.static[m]

        def step(i: int) -> Callable[[], torch.Tensor]:
            layer, k, v = self.model.layers[i], self.pool.k[i], self.pool.v[i]
            return lambda: st.o[:m].copy_(layer.attend(st.qkv[:m], self.attn, dst.plan, k, v, i))

        return [step(i) for i in range(len(self.model.layers))]

    @torch.inference_mode()
    def capture(self) -> None:
        cap = self._capture or CudaCapture(self.device)
        whole = StaticTokens(self.sizes[-1], self.model, self.device)
        for size in reversed(self.sizes):  # largest first: smaller ones reuse the pool's blocks
            st = whole.prefix(size)
            self._pieces[size] = [cap.capture(step)[1] for step in self._steps(st)]
            self.static[size] = st
        self._row_sizes = [] if self.decode is None else [m for m in self.decode.sizes if m <= whole.size]
        for m in self._row_sizes:
            self.decode.static[m].slots.fill_(PAD_SLOT)  # warm-up and capture write no cache row
            self._rows[m] = [cap.capture(step)[1] for step in self._row_steps(m)]
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        log.info("captured piecewise graphs for %d token counts up to %d, decode rows' attention for %d sizes",
                 len(self.sizes), self.sizes[-1], len(self._rows))

    def fits(self, tokens: int) -> bool:
        return bool(self.static) and tokens <= self.sizes[-1]

    @torch.inference_mode()
    def forward(self, ids: list[int], batch: AttnBatch, rows: torch.Tensor | None) -> torch.Tensor:
        """Logits [R, vocab] float32 of ``rows`` of the packed step ``ids`` (the same as Llama.forward)."""
        T = len(ids)
        st = self.static[padded_size(self.sizes, T)]
        pin = self.device.type == "cuda"
        st.ids[:T].copy_(torch.tensor(ids, dtype=torch.long, pin_memory=pin), non_blocking=pin)
        st.ids[T:].zero_()
        plan = self.attn.prepare(batch)
        pieces, rows_attn, n = self._pieces[st.size], None, 0
        n_dec, rest = self.attn.mixed_split(plan)
        if self.rows_in_graphs and self._row_sizes and 0 < n_dec <= self._row_sizes[-1]:
            n, m = n_dec, padded_size(self._row_sizes, n_dec)
            rows_attn, plan = self._rows[m], rest
            self.decode.static[m].copy_in(DecodeInputs.pad([0] * n, batch.slots_list[:n], batch.starts_list[:n], m))
        for i, layer in enumerate(self.model.layers):
            pieces[i]()
            if rows_attn is not None:
                rows_attn[i]()  # o[:m]; rows n..m-1 are the chunks', written next
            st.o[n:T].copy_(layer.attend(st.qkv[n:T], self.attn, plan, self.pool.k[i], self.pool.v[i], i))
        pieces[-1]()
        return self.model.head(st.x[:T], rows)
