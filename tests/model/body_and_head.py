"""A two-linear module shaped like a model's body and LM head, for the quantizers'
``head=False`` tests (the head must stay a plain nn.Linear)."""

from __future__ import annotations

from torch import nn


class BodyAndHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(64, 32)
        self.lm_head = nn.Linear(64, 16)
