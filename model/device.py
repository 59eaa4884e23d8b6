"""The torch device a model runs on, for the server and the trainer alike."""
from __future__ import annotations

import torch


def pick_device(requested: str, option: str = "--device") -> torch.device:
    """`auto` (CUDA when there is one, else the CPU), `cpu`, `cuda` or `cuda:N`; ValueError naming `option`
    when that is no device or no CUDA device is there."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ValueError(f"{option} {requested!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{option} {requested!r} was asked for but no CUDA device is available; use auto or cpu")
    return device
