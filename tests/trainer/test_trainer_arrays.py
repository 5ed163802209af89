import numpy as np
import pytest

from trainer import arrays
from trainer.errors import TrainerError

FAKE_CUPY = object()  # stands in for a cupy module that sees a GPU


def test_auto_is_cpu_without_cupy():
    if arrays.cupy_module() is not None:
        pytest.skip("CuPy with a GPU is present here")
    assert arrays.choose("auto", "minibatch", 4096)[0] == "cpu"
    assert arrays.module("cpu") is np


def test_auto_never_picks_the_gpu_for_batch_one():
    assert arrays.choose("auto", "stencil", 1, cupy=FAKE_CUPY)[0] == "cpu"
    assert arrays.choose("auto", "minibatch", 1, cupy=FAKE_CUPY)[0] == "cpu"


def test_auto_picks_the_gpu_only_for_large_batches():
    assert arrays.choose("auto", "minibatch", 512, cupy=FAKE_CUPY)[0] == "cpu"
    assert arrays.choose("auto", "minibatch", arrays.GPU_MIN_BATCH, cupy=FAKE_CUPY)[0] == "gpu"
    assert arrays.choose("cpu", "minibatch", 8192, cupy=FAKE_CUPY)[0] == "cpu"


def test_gpu_requests_that_cannot_be_met_are_errors():
    with pytest.raises(TrainerError, match="stencil"):
        arrays.choose("gpu", "stencil", 1, cupy=FAKE_CUPY)
    if arrays.cupy_module() is None:
        with pytest.raises(TrainerError, match="no CuPy"):
            arrays.choose("gpu", "minibatch", 4096)
    with pytest.raises(TrainerError, match="valid: auto, cpu, gpu"):
        arrays.choose("tpu", "minibatch", 1)
