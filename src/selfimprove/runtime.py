"""Run-time compute policy: thread count and dtype, decided in one place.

Machines differ: on CPUs with AVX512-BF16 or AMX, bf16 autocast was ~1.4-3x faster than fp32
(generation and LoRA steps); on AVX2-only CPUs it was 4-5x *slower* (README, "Notes and
known limits"). So the policy ``auto`` picks bf16 autocast only when the CPU advertises
native bf16 support, and every run records the choice in its provenance. Weights stay fp32
(fp16 does not work on CPU); bf16 applies through ``torch.autocast``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

log = logging.getLogger(__name__)

DtypePolicy = Literal["auto", "fp32", "bf16"]


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """CPU feature flags from /proc/cpuinfo (empty on platforms without it)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_native_bf16() -> bool:
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


@dataclass(frozen=True)
class Runtime:
    """Resolved compute settings; pass one to the engine and trainer."""

    threads: int
    dtype: Literal["fp32", "bf16"]
    device: str = "cpu"

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        """Autocast context for forward passes under this policy."""
        import torch

        if self.dtype == "bf16":
            return torch.autocast(self.device, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def describe(self) -> dict[str, object]:
        return {
            "threads": self.threads,
            "dtype": self.dtype,
            "device": self.device,
            "cpu_native_bf16": cpu_has_native_bf16(),
        }


def resolve_runtime(threads: int | None = None, dtype: DtypePolicy = "auto") -> Runtime:
    """Choose threads and dtype, and apply the thread count to torch.

    Args:
        threads: torch intra-op threads; default = number of CPUs this process may use.
            Set explicitly: thread oversubscription slowed generation 10-50x on a busy box.
        dtype: ``auto`` (bf16 autocast iff the CPU has native bf16), ``fp32`` or ``bf16``.
    """
    import torch

    if threads:
        n = max(1, int(threads))
    elif hasattr(os, "sched_getaffinity"):
        n = len(os.sched_getaffinity(0))
    else:
        n = os.cpu_count() or 1
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    auto: Literal["fp32", "bf16"] = "bf16" if cpu_has_native_bf16() else "fp32"
    resolved: Literal["fp32", "bf16"] = auto if dtype == "auto" else dtype
    log.debug("runtime: threads=%d dtype=%s", n, resolved)
    return Runtime(threads=n, dtype=resolved)


@contextlib.contextmanager
def no_grad_eval(model: object) -> Iterator[None]:
    """``torch.inference_mode`` with the model in eval mode; restores the training flag."""
    import torch

    was_training = bool(getattr(model, "training", False))
    model.eval()  # type: ignore[attr-defined]
    try:
        with torch.inference_mode():
            yield
    finally:
        if was_training:
            model.train()  # type: ignore[attr-defined]
