"""Which CPU this process computes on: what, besides the thread count (``model.threads``), sets
the bits of a CPU computation (bf16 matmuls round differently with AMX, AVX-512 or AVX2)."""

from __future__ import annotations

import functools
import platform

ISA = ("amx_bf16", "avx512_bf16", "avx512f", "avx2")  # what sets CPU bf16 speed and rounding


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
