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


@pytest.fixture(autouse=True, scope="session")
def _allocator_as_gradlab_leaves_it():
    """Every benchmark runs with glibc keeping freed memory (gradlab.memory.keep_freed_memory, which its ensembles turn
    on for the process): the state a whole test session is in once an ensemble test has run, so a benchmark measures the
    same alone and after the suite (without it, torch.nn's fused LSTM re-faults its workspace at every call: 35 against
    23 ms a train step, and the LSTM's scratch/fused ratio read 1.7 alone and 2.3 in the suite)."""
    from gradlab.memory import keep_freed_memory

    keep_freed_memory()


@pytest.fixture(autouse=True)
def others_meter():
    """What other processes use of the machine while a benchmark runs (test_speed.gate reads it)."""
    from busy import OthersMeter

    import test_speed

    test_speed.METER = OthersMeter()
    yield test_speed.METER
