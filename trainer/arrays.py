"""The array-module switch: numpy on the CPU, CuPy on a CUDA GPU, same training code.

`auto` picks the device that is faster for the run's settings. Measured (H200, plain CuPy
port of a minibatch epoch of 60000x784): 1.18 s at batch 32, 0.29 s at 128, 0.09 s at 512,
0.012 s at 4096 -- launch-bound, so slower than numpy on 2 CPU cores (~0.035-0.05 s) until the
batch is large. The per-example `stencil` mode is batch 1: never the GPU.
"""

from __future__ import annotations

import numpy as np

from trainer.errors import TrainerError

DEVICES = ("auto", "cpu", "gpu")
GPU_MIN_BATCH = 2048  # below this the GPU epoch is launch-bound and loses to 2 CPU cores


def cupy_module():
    """The cupy module if it imports and sees a CUDA device, else None."""
    try:
        import cupy
    except Exception:
        return None
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
    except Exception:
        return None
    return cupy


def choose(requested: str, mode: str, batch_size: int, cupy=None) -> tuple[str, str]:
    """(device, reason). `cupy` is injectable for tests; by default it is probed."""
    if requested not in DEVICES:
        raise TrainerError(f"--device {requested!r}: valid: {', '.join(DEVICES)}")
    if mode == "stencil":
        if requested == "gpu":
            raise TrainerError("--device gpu: stencil mode is per-example (batch size 1) and runs on "
                               "the CPU; use --mode minibatch for the GPU")
        return "cpu", "stencil is per-example (batch size 1): CPU"
    if requested == "cpu":
        return "cpu", "asked for"
    cp = cupy if cupy is not None else cupy_module()
    if requested == "gpu":
        if cp is None:
            raise TrainerError("--device gpu: no CuPy with a CUDA device here; valid here: auto, cpu")
        return "gpu", "asked for"
    if cp is None:
        return "cpu", "auto: CuPy or a CUDA device not available"
    if batch_size < GPU_MIN_BATCH:
        return "cpu", f"auto: batch {batch_size} < {GPU_MIN_BATCH}, the GPU would be launch-bound"
    return "gpu", f"auto: batch {batch_size} >= {GPU_MIN_BATCH}"


def module(device: str):
    if device == "gpu":
        cp = cupy_module()
        if cp is None:
            raise TrainerError("--device gpu: no CuPy with a CUDA device here; valid here: auto, cpu")
        return cp
    return np


def to_numpy(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


def gpu_name(xp) -> str | None:
    if xp is np:
        return None
    props = xp.cuda.runtime.getDeviceProperties(xp.cuda.Device().id)
    name = props["name"]
    return name.decode() if isinstance(name, bytes) else str(name)
