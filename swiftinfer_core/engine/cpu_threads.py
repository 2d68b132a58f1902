"""Thread counts of a CPU engine's steps, set on the step thread before each step.

A decode step's heavy work is the C kernels (kernels/cpu_native*.c), which run on
their own spinning worker pool; its torch ops (embedding, sampler) are small. If
those ops ran on torch's OpenMP team of the same size, libgomp's worker would spin
after each of them (GOMP_SPINCOUNT, ~300k pauses) on the core the C pool's worker
needs. So decode steps run torch on one thread and the C kernels on ``count``;
prefill and mixed steps, whose work is torch's GEMMs, run both on ``count``.
Measured on the project's 2-core box (default model, int8, 2 threads, 74-token
prompt, 200 tokens): ~100 tok/s with torch on 2 threads in every step, ~134 with
this split, first token ~122 ms either way.
"""

from __future__ import annotations

import torch

from swiftinfer_core.kernels.cpu_native import NativeKernels


class StepThreads:
    def __init__(self, kernels: NativeKernels):
        self.kernels = kernels
        self.count = torch.get_num_threads()  # the step thread's count at build: EngineConfig / cpu_threads

    def set(self, count: int) -> None:
        """Threads for later steps (call on the step thread, between steps)."""
        if count < 1:
            raise ValueError(f"thread count must be >= 1, got {count}")
        self.count = count

    def before_step(self, decode_only: bool) -> None:
        self.kernels.threads = self.count
        torch.set_num_threads(1 if decode_only else self.count)
