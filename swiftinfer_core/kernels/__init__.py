"""Attention kernels: leaves that take tensors and return tensors.

``reference.py`` is the plain PyTorch semantics (and the CPU engine's path);
Triton kernels beside it must match it."""
