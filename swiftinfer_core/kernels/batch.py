"""The attention step's metadata: which slots, where each sequence starts in its stream."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AttnBatch:
    """Packed variable-length step. Sequence ``i`` owns query rows
    ``cu_seqlens[i]:cu_seqlens[i+1]`` and stream indices ``starts[i] ..
    starts[i]+q_lens[i]-1`` of the conversation in cache slot ``slots[i]``.

    Tensors live on the model's device (int32); the lists mirror them on the
    host so the reference path never synchronises to read them.
    """

    slots: torch.Tensor  # [B] int32
    starts: torch.Tensor  # [B] int64, tokens already in the stream before this step
    q_lens: torch.Tensor  # [B] int32
    cu_seqlens: torch.Tensor  # [B+1] int32
    slots_list: list[int]
    starts_list: list[int]
    q_lens_list: list[int]

    @classmethod
    def build(cls, slots: list[int], starts: list[int], q_lens: list[int], device) -> "AttnBatch":
        cu = [0]
        for n in q_lens:
            cu.append(cu[-1] + n)
        return cls(
            slots=torch.tensor(slots, dtype=torch.int32, device=device),
            starts=torch.tensor(starts, dtype=torch.int64, device=device),
            q_lens=torch.tensor(q_lens, dtype=torch.int32, device=device),
            cu_seqlens=torch.tensor(cu, dtype=torch.int32, device=device),
            slots_list=list(slots),
            starts_list=list(starts),
            q_lens_list=list(q_lens),
        )

    @property
    def num_seqs(self) -> int:
        return len(self.slots_list)

    @property
    def num_tokens(self) -> int:
        return sum(self.q_lens_list)

    @property
    def is_decode(self) -> bool:
        return all(n == 1 for n in self.q_lens_list)

    def leading_single_rows(self) -> int:
        """How many sequences at the front feed one token each (a mixed step's decode rows)."""
        n = 0
        for q in self.q_lens_list:
            if q != 1:
                break
            n += 1
        return n

    def tail(self, n: int) -> "AttnBatch":
        """Sequences ``n:`` as a batch of their own; the first ``n`` must feed one token each.
        Its tensors are copies, not views: Triton specialises a kernel on each pointer's
        16-byte alignment, and a view ``slots[n:]`` would compile new variants (seconds
        each, mid-serving) for every n % 4."""
        if any(q != 1 for q in self.q_lens_list[:n]):
            raise ValueError(f"tail({n}): the first {n} sequences must feed one token each")
        return AttnBatch(
            slots=self.slots[n:].clone(), starts=self.starts[n:].clone(), q_lens=self.q_lens[n:].clone(),
            cu_seqlens=self.cu_seqlens[n:] - n,
            slots_list=self.slots_list[n:], starts_list=self.starts_list[n:], q_lens_list=self.q_lens_list[n:],
        )
