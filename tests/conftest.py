"""Suite-wide settings: one PyTorch thread (tiny tensors run fastest so, and the suite stays < 15 min on 2 cores)."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
