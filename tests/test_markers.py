"""The `gpu` marker skips without CUDA instead of failing."""

import pytest


@pytest.mark.gpu
def test_gpu_marker_runs_only_with_cuda() -> None:
    import torch

    assert torch.cuda.is_available()
    x = torch.ones(4, device="cuda")
    assert x.sum().item() == 4
