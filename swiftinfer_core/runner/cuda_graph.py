"""Decode steps replayed from CUDA graphs, one graph per batch size of a ladder.

A decode step is static-shaped: B token ids, B slots, B stream starts in, B
rows of logits out. A step of n sequences runs the smallest captured size
>= n; its inputs are padded (``DecodeInputs.pad``: token 0, slot -1, start 0;
the decode kernel skips slot -1 rows and writes zeros for them).

A graph replays raw device pointers and holds no Python reference, so
everything its kernels read or write must live exactly as long as the graph:
``StaticDecode`` owns the input buffers, the attention plan (with the split-K
workspace that the first layer allocates during warm-up) and the output.
Before, the plan was a local of the capture loop: its workspace went back to
the caching allocator while the graphs still wrote their split partials into
it, so any later allocation that reused those bytes (sampler indices, prefill
activations) was overwritten on every replay, which ended in an illegal memory
access once 49+ sequences decoded together (issue 11).

The capture primitive is injected: ``CudaCapture`` on a GPU, ``EagerCapture``
on a CPU, where it runs the same padding, ladder and buffer logic eagerly so
tests can check them without a GPU. Graphs share one memory pool; larger sizes
are captured first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from swiftinfer_core.cache.pool import KVPool
from swiftinfer_core.kernels.attention import Attention
from swiftinfer_core.kernels.batch import AttnBatch
from swiftinfer_core.model.llama import Llama

log = logging.getLogger(__name__)
LADDER = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
PAD_ID, PAD_SLOT, PAD_START = 0, -1, 0


def ladder(max_batch: int, rungs: tuple[int, ...] = LADDER) -> list[int]:
    """Captured sizes: ``rungs`` up to ``max_batch``, which is always the last."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    sizes = [s for s in rungs if s < max_batch]
    return sizes + [max_batch]


def padded_size(sizes: list[int], n: int) -> int:
    """The smallest captured size that holds n sequences."""
    for s in sizes:
        if s >= n:
            return s
    raise ValueError(f"{n} sequences exceed the largest captured batch ({sizes[-1]})")


@dataclass(frozen=True)
class DecodeInputs:
    """One decode step's host inputs, padded to a captured size."""

    ids: list[int]
    slots: list[int]
    starts: list[int]
    n: int  # real rows; rows n.. are padding

    @classmethod
    def pad(cls, ids: list[int], slots: list[int], starts: list[int], size: int) -> "DecodeInputs":
        n = len(ids)
        if not (len(slots) == len(starts) == n <= size):
            raise ValueError(f"decode inputs of {n}/{len(slots)}/{len(starts)} rows do not fit a batch of {size}")
        pad = size - n
        return cls(ids + [PAD_ID] * pad, slots + [PAD_SLOT] * pad, starts + [PAD_START] * pad, n)


class StaticDecode:
    """Everything one captured size's graph touches, owned for the graph's lifetime."""

    def __init__(self, size: int, attn: Attention, device: torch.device):
        self.size = size
        self.ids = torch.full((size,), PAD_ID, dtype=torch.long, device=device)
        self.slots = torch.full((size,), PAD_SLOT, dtype=torch.int32, device=device)
        self.starts = torch.full((size,), PAD_START, dtype=torch.int64, device=device)
        ones = torch.ones(size, dtype=torch.int32, device=device)
        self.batch = AttnBatch(
            slots=self.slots, starts=self.starts, q_lens=ones,
            cu_seqlens=torch.arange(size + 1, dtype=torch.int32, device=device),
            slots_list=[PAD_SLOT] * size, starts_list=[PAD_START] * size, q_lens_list=[1] * size,
        )
        self.plan = attn.prepare(self.batch)  # holds the split-K workspace once the warm-up made it
        self.logits: torch.Tensor | None = None

    def copy_in(self, inputs: DecodeInputs) -> None:
        """The step's padded inputs into the graph's static buffers (one host-to-device copy)."""
        if len(inputs.ids) != self.size:
            raise ValueError(f"inputs padded to {len(inputs.ids)} rows, graph holds {self.size}")
        pin = self.ids.device.type == "cuda"
        host = torch.tensor([inputs.ids, inputs.slots, inputs.starts], dtype=torch.int64, pin_memory=pin)
        host = host.to(self.ids.device, non_blocking=True)
        self.ids.copy_(host[0])
        self.slots.copy_(host[1])
        self.starts.copy_(host[2])

    def check_owned(self) -> None:
        """After warm-up, a Triton decode plan must own a workspace sized for this batch."""
        if hasattr(self.plan, "workspace"):  # DecodePlan (duck-typed: tests reload the kernels' modules)
            ws = self.plan.workspace
            if ws is None or ws[0].shape[0] != self.size:
                raise RuntimeError(f"decode graph {self.size}: split-K workspace missing or sized {None if ws is None else ws[0].shape[0]}")


class Capture(Protocol):
    def capture(self, step: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, Callable[[], torch.Tensor]]:
        """Warm ``step`` up, record it; returns (static output, replay)."""


class CudaCapture:
    """torch.cuda graphs sharing one memory pool; warm-up on a side stream (Triton compiles, workspaces allocate)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.pool = torch.cuda.graph_pool_handle()
        self.stream = torch.cuda.Stream(device)
        self.graphs: list[torch.cuda.CUDAGraph] = []

    def capture(self, step):
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            for _ in range(2):
                step()
        torch.cuda.current_stream(self.device).wait_stream(self.stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = step()
        self.graphs.append(graph)

        def replay() -> torch.Tensor:
            graph.replay()
            return out

        return out, replay


class EagerCapture:
    """CPU stand-in with the graph's contract: the same static buffers, re-run eagerly at each replay."""

    def capture(self, step):
        step()
        return step(), step


class DecodeGraphs:
    def __init__(self, model: Llama, pool: KVPool, attn: Attention, device: torch.device, max_batch: int,
                 capture: Capture | None = None):
        self.model, self.pool, self.attn, self.device = model, pool, attn, device
        self.sizes = ladder(max_batch)
        self._capture = capture
        self.static: dict[int, StaticDecode] = {}
        self._replay: dict[int, Callable[[], torch.Tensor]] = {}

    @torch.inference_mode()
    def capture(self) -> None:
        cap = self._capture or CudaCapture(self.device)
        for size in reversed(self.sizes):
            st = StaticDecode(size, self.attn, self.device)
            st.logits, self._replay[size] = cap.capture(lambda st=st: self.model(st.ids, self.attn, st.plan, self.pool))
            st.check_owned()
            self.static[size] = st
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        log.info("captured decode graphs for batch sizes %s", self.sizes)

    def fits(self, n: int) -> bool:
        return bool(self.static) and n <= self.sizes[-1]

    @torch.inference_mode()  # the static tensors were made under inference mode
    def run(self, ids: list[int], slots: list[int], starts: list[int]) -> torch.Tensor:
        """Logits [n, vocab] for n decoding sequences (a view of the graph's static output)."""
        size = padded_size(self.sizes, len(ids))
        self.static[size].copy_in(DecodeInputs.pad(ids, slots, starts, size))
        return self._replay[size]()[: len(ids)]
