"""tools.machine: the record that tells a machine change from a bug when a rerun's numbers differ."""
from __future__ import annotations

import torch

from tools.machine import machine_info


def test_machine_info_names_the_cpu_its_kernels_and_torch():
    info = machine_info()
    assert info["cpu"] and len(info["cpu_flags_sha256"]) == 16
    assert info["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and info["torch"] == torch.__version__
    assert info == machine_info()  # stable within a machine
