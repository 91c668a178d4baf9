"""Float32 products on oneDNN where torch's default kernels are the slow ones.

torch sends a float32 ``F.linear`` or matmul on the CPU to MKL. On an AMD CPU with AVX-512 (this project's
EPYC, Zen 5) MKL runs about half as fast as oneDNN, which torch also carries: a BERT-base-size forward
pass 0.90 against 0.52 s for 32 sentences of 16 tokens on one thread, MiniLM's 0.115 against 0.065 s
(``bench/bench_linear_kernels.py``; bench/RESULTS.md, S26). Same float32 arithmetic, summed in another
order: the last hidden states differed by at most 5e-6.

``fast_linear()`` routes each float32 CPU ``F.linear`` made without autograd inside it to oneDNN (the
model's own modules and hooks are untouched: only their product changes kernel); ``products_with`` in the
corpus builder uses the same rule for its index products. The rule (``onednn_preferred``): oneDNN is in
this torch, no reduced-precision setting would let it round to bfloat16 or TF32, and the CPU is AMD's
(on an Intel Xeon with AVX-512 and AMX the two ran at the same speed, BERT-base size 0.62 against
0.64 s, MiniLM 0.085 against 0.089 s, RESULTS S28: left alone there). ``EXBERT_HUB_ONEDNN_LINEAR=0``
turns it off.
"""

from __future__ import annotations

import contextlib
import os
import platform
from typing import Iterator

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_AMD_X86 = None


def onednn_exact() -> bool:
    """oneDNN is in this torch and would run float32 products in float32 (no reduced-precision setting)."""
    return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
            and torch.get_float32_matmul_precision() == "highest"
            and getattr(torch.backends.mkldnn.matmul, "fp32_precision", "none") in ("none", "ieee"))


def _amd_x86() -> bool:
    global _AMD_X86
    if _AMD_X86 is None:
        from .analyses.lens_kernel import cpu_flags

        _AMD_X86 = (platform.machine().lower() in ("x86_64", "amd64") and "AMD" in cpu_flags()[1].upper())
    return _AMD_X86


def onednn_preferred() -> bool:
    """Whether float32 products should go to oneDNN here (the module docstring's rule)."""
    return os.environ.get("EXBERT_HUB_ONEDNN_LINEAR", "1") != "0" and _amd_x86() and onednn_exact()


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` by oneDNN (float32 CPU tensors, any leading shape)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def _eligible(x, weight, bias) -> bool:
    return (isinstance(x, torch.Tensor) and isinstance(weight, torch.Tensor) and not torch.is_grad_enabled()
            and x.dtype == torch.float32 and weight.dtype == torch.float32 and weight.dim() == 2
            and x.dim() >= 1 and x.device.type == "cpu" and weight.device.type == "cpu"
            and x.layout == torch.strided and weight.layout == torch.strided
            and (bias is None or (isinstance(bias, torch.Tensor) and bias.dtype == torch.float32
                                  and bias.device.type == "cpu" and bias.layout == torch.strided)))


class _OneDnnLinearMode(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            x = args[0] if args else kwargs.get("input")
            weight = args[1] if len(args) > 1 else kwargs.get("weight")
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            if _eligible(x, weight, bias):
                try:
                    return onednn_linear(x, weight, bias)
                except RuntimeError:  # a shape or layout oneDNN refuses: torch's own kernel
                    pass
        return func(*args, **kwargs)


@contextlib.contextmanager
def fast_linear() -> Iterator[None]:
    """Inside: float32 CPU ``F.linear`` calls without autograd on oneDNN, where ``onednn_preferred`` (this
    thread only: torch's function modes are per thread)."""
    if not onednn_preferred():
        yield
        return
    with _OneDnnLinearMode():
        yield
