"""What a run's float results depend on besides its config and seed: the CPU, its vector kernels, torch.

Two runs of one command and seed agree to the bit only on the same kind of machine (README, "Which
numbers vary across machines"), so run records carry this, and a later rerun can tell a machine change
from a bug.
"""
from __future__ import annotations

import hashlib
import os
import platform
from typing import Any


def _cpuinfo() -> tuple[str, str]:
    """(model name, flags) of the first CPU in /proc/cpuinfo; platform's words elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return platform.processor() or platform.machine(), ""
    fields = dict(line.split(":", 1) for line in text.split("\n\n", 1)[0].splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    return fields.get("model name", platform.machine()), fields.get("flags", fields.get("Features", ""))


def machine_info() -> dict[str, Any]:
    """CPU model, a hash of its feature flags, torch's CPU kernel level, core count and library versions."""
    import torch

    model, flags = _cpuinfo()
    return {
        "cpu": model,
        "cpu_flags_sha256": hashlib.sha256(" ".join(sorted(flags.split())).encode()).hexdigest()[:16],
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # which vector kernels torch runs
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
