"""``selfimprove doctor``: check the setup and say what to fix (the users' verify_setup.py).

Checks Python, torch and its threads, the CPU's bf16 support and the chosen dtype policy
(with a short matmul calibration: bf16 vs fp32 speed on this CPU), that the model loads,
and a 3-item smoke evaluation through the real engine. Returns typed results; the CLI
renders them.
"""

from __future__ import annotations

import platform
import sys
import time
from dataclasses import dataclass
from typing import Literal

Status = Literal["ok", "warn", "fail"]


@dataclass
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""


def calibrate_bf16(size: int = 512, reps: int = 5) -> dict[str, float]:
    """Time fp32 vs bf16 matmuls (min of ``reps``): GFLOP/s for each and the speed ratio."""
    import torch

    out: dict[str, float] = {}
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(size, size, dtype=dt)
        b = torch.randn(size, size, dtype=dt)
        a @ b  # warm-up
        best = float("inf")
        for _ in range(reps):
            t = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t)
        out[f"{name}_gflops"] = 2 * size**3 / best / 1e9
    out["bf16_speedup"] = out["bf16_gflops"] / out["fp32_gflops"]
    return out


def run_doctor(
    model: str = "embedded", *, smoke: bool = True, threads: int | None = None
) -> list[Check]:
    """Run every check; never raises for a failed check (it is reported instead)."""
    checks: list[Check] = []
    py = sys.version_info
    checks.append(
        Check(
            "python",
            "ok" if py >= (3, 11) else "fail",
            platform.python_version(),
            "" if py >= (3, 11) else "Use Python 3.11 or newer.",
        )
    )
    try:
        import torch
        import transformers
    except ImportError as e:
        checks.append(
            Check(
                "torch/transformers",
                "fail",
                str(e),
                "pip install torch==2.13.0 'transformers>=5.23,<6'",
            )
        )
        return checks
    from selfimprove.runtime import cpu_has_native_bf16, resolve_runtime

    rt = resolve_runtime(threads, "auto")
    checks.append(
        Check("torch", "ok", f"torch {torch.__version__}, transformers {transformers.__version__}")
    )
    cuda = "CUDA available" if torch.cuda.is_available() else "CPU only"
    checks.append(Check("threads", "ok", f"{rt.threads} torch threads ({cuda})"))
    cal = calibrate_bf16()
    native = cpu_has_native_bf16()
    detail = (
        f"native bf16: {'yes' if native else 'no'}; matmul fp32 {cal['fp32_gflops']:.0f} GFLOP/s, "
        f"bf16 {cal['bf16_gflops']:.0f} GFLOP/s ({cal['bf16_speedup']:.2f}x); policy auto -> {rt.dtype}"
    )
    mismatch = (rt.dtype == "bf16") != (cal["bf16_speedup"] > 1.0)
    checks.append(
        Check(
            "dtype",
            "warn" if mismatch else "ok",
            detail,
            "Set runtime.dtype explicitly (fp32 or bf16) to the faster one." if mismatch else "",
        )
    )
    from selfimprove.errors import SelfImproveError
    from selfimprove.models import load_model

    try:
        t = time.time()
        loaded = load_model(model)
        checks.append(
            Check(
                "model",
                "ok",
                f"{loaded.name}: {loaded.n_params / 1e6:.0f}M params, loaded in {time.time() - t:.1f}s",
            )
        )
    except SelfImproveError as e:
        lines = str(e).splitlines()
        fix = " ".join(x.removeprefix("Fix:").strip() for x in lines[1:])
        checks.append(Check("model", "fail", lines[0], fix))
        return checks
    if smoke:
        from selfimprove.engine import Engine
        from selfimprove.evaluate import evaluate_task
        from selfimprove.tasks.suites import get_suite

        task = get_suite("arithmetic").tasks[0]
        samples = task.samples(3, seed=0)
        t = time.time()
        recs = evaluate_task(
            Engine(loaded, runtime=rt), "arithmetic", task, samples, max_new_tokens=48
        )
        ok = all(r.output is not None and r.ref_nll is not None for r in recs)
        k = sum(bool(r.correct) for r in recs)
        checks.append(
            Check(
                "smoke eval",
                "ok" if ok else "fail",
                f"3 items of {task.name}: {k}/3 correct, {time.time() - t:.1f}s; first reply: {recs[0].output!r:.80}",
            )
        )
    return checks
