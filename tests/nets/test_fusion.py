"""BatchNorm folded into convolutions (dicomnode.nets.fusion): same outputs, fewer layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dicomnode.nets import build_network
from dicomnode.nets.fusion import fold_batchnorm


def _trained_dncnn() -> nn.Module:
    """A DnCNN whose BatchNorm statistics and affine parameters are not the identity."""
    torch.manual_seed(0)
    network = build_network("dncnn", {"depth": 5, "num_features": 8})
    with torch.no_grad():
        for _ in range(3):
            network(torch.rand(4, 1, 24, 24) * 3.0 + 1.0)  # train mode: running stats move
        for module in network.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 2.0)
                module.bias.uniform_(-0.5, 0.5)
    return network.eval()


def test_folded_dncnn_gives_the_same_output_without_batchnorm() -> None:
    network = _trained_dncnn()
    image = torch.rand(2, 1, 32, 40) * 3.0 + 1.0
    with torch.no_grad():
        before = network(image)
    assert fold_batchnorm(network) == 3  # depth 5: three conv + BatchNorm pairs
    assert not any(isinstance(m, nn.BatchNorm2d) for m in network.modules())
    with torch.no_grad():
        after = network(image)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    assert fold_batchnorm(network) == 0  # nothing left to fold


def test_a_network_without_batchnorm_is_left_as_it_is() -> None:
    network = build_network("rlfn", {"scale": 2, "num_features": 8, "num_blocks": 1,
                                     "esa_channels": 4}).eval()
    state = {k: v.clone() for k, v in network.state_dict().items()}
    assert fold_batchnorm(network) == 0
    assert all(torch.equal(state[k], v) for k, v in network.state_dict().items())


def test_a_network_in_training_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(build_network("dncnn", {"depth": 3, "num_features": 8}))
