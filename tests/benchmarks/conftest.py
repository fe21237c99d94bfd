"""The benchmark run's machine info names the torch, CUDA and cuDNN that were timed."""

from __future__ import annotations


def pytest_benchmark_update_machine_info(config, machine_info):
    import torch

    machine_info["torch"] = torch.__version__
    machine_info["cuda"] = torch.version.cuda
    machine_info["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    machine_info["torch_threads"] = torch.get_num_threads()
    machine_info["cuda_device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def others_meter():
    """What other processes use of the machine while a benchmark runs (test_speed.gate reads it)."""
    from busy import OthersMeter

    import test_speed

    test_speed.METER = OthersMeter()
    yield test_speed.METER
