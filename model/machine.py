"""Which CPU this process computes on: what, besides the thread count (``model.threads``), sets
the bits of a CPU computation (bf16 matmuls round differently with AMX, AVX-512 or AVX2)."""

from __future__ import annotations

import functools
import platform

import torch

ISA = ("amx_bf16", "avx512_bf16", "avx512f", "avx2")  # what sets CPU bf16 speed and rounding
BF16_NATIVE = ("amx_bf16", "avx512_bf16")  # bf16 dot products in hardware


@functools.lru_cache(maxsize=1)
def cpu_identity() -> dict:
    """``{"cpu": model name (family, model), "cpu_isa": [the ISA extensions above it has]}``,
    read once from ``/proc/cpuinfo`` (elsewhere: ``platform``'s names, no ISA)."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                name, _, value = line.partition(":")
                info.setdefault(name.strip(), value.strip())
    except OSError:
        pass
    cpu = info.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in info:
        cpu += f" (family {info['cpu family']}, model {info.get('model', '?')})"
    flags = set(info.get("flags", "").split())
    return {"cpu": cpu, "cpu_isa": [f for f in ISA if f in flags]}


def bf16_native(device: torch.device | str) -> bool:
    """Whether ``device`` multiplies bf16 in hardware: CUDA, or a CPU with AMX or avx512_bf16.

    There bf16 autocast trained the ``cpu`` preset 1.6-2x faster than float32 (BENCHMARKS.md).
    A CPU without them (AVX2 only: a Zen 1 EPYC, most laptops) emulates bf16 matmuls: a training
    step took 5x float32's time on the 2-core Zen 1 (BENCHMARKS.md), so "auto" means float32 there.
    """
    return torch.device(device).type == "cuda" or any(f in cpu_identity()["cpu_isa"] for f in BF16_NATIVE)
