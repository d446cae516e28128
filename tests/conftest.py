"""Suite-wide settings: one PyTorch thread (tiny tensors run fastest so, and the suite stays < 15 min on 2 cores)."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Set before any fixture of narrower scope (modules that train a network once) runs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def back_to_one_thread():
    """A test that sets another count (e.g. `train --threads 2`) does not leak it into the next one."""
    yield
    torch.set_num_threads(1)
