"""What a measurement ran on: the software versions, the device by name, and when.

Training, evaluation and `bench` all write these beside their numbers, so a summary read later, or an
archived copy of it (`compare --archive`), names its card and date without anyone's notes; `compare
--report` warns when the runs of one table ran on different devices.
"""

from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from typing import Any


def versions() -> dict[str, str]:
    """The versions that change numerics or behaviour: python, torch, transformers, step_jepa."""
    import torch
    import transformers

    from step_jepa import __version__

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "step_jepa": __version__,
    }


def device_name(device: Any) -> str:
    """The card's name for a CUDA device (e.g. "NVIDIA H100 80GB HBM3"), else the CPU's kind and cores:
    "cuda:0" alone does not say which GPU a time or a result came from."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def utc_timestamp() -> str:
    """Now, in UTC, to the second (e.g. "2026-12-06T21:36:10Z")."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
