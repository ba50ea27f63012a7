"""Learned models (dicomnode.engine.learned): safetensors into the registry's network with
every refusal, normalisation and guards around the network."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from dicomnode.engine import load as load_model
from dicomnode.engine.degradations import block_mean, kspace_truncate
from dicomnode.engine.learned import NetworkEnhancer
from dicomnode.errors import DeviceError, ModelError
from dicomnode.nets import build_network
from tests.model_factory import TINY_DNCNN, TINY_RLFN, replace_weights, write_model

SR_PARAMS = {**TINY_RLFN, "scale": 2}



def test_a_learned_model_loads_as_an_enhancer(tmp_path: Path) -> None:
    write_model(tmp_path, "tiny-sr", "rlfn", SR_PARAMS, inference={"precisions": ["fp32"]})
    enhancer = load_model("tiny-sr", tmp_path, device="cpu")
    assert isinstance(enhancer, NetworkEnhancer)
    assert enhancer.card.name == "tiny-sr" and enhancer.card.learned
    assert (enhancer.device, enhancer.precision, enhancer.context) == (
        torch.device("cpu"), "fp32", 0)
    assert enhancer.guards == ("consistency",)
    assert not enhancer.network.training
    stack = np.random.default_rng(0).random((3, 20, 30)).astype(np.float32) * 800
    out = enhancer(stack)
    assert out.shape == (3, 40, 60)
    np.testing.assert_allclose(kspace_truncate(out, 2), stack, atol=1e-3)


def test_loaded_weights_are_the_file_s(tmp_path: Path) -> None:
    write_model(tmp_path, "tiny-sr", "rlfn", SR_PARAMS, seed=3)
    torch.manual_seed(3)
    reference = build_network("rlfn", SR_PARAMS)
    loaded = load_model("tiny-sr", tmp_path, device="cpu").network
    for (name, a), (_, b) in zip(reference.state_dict().items(), loaded.state_dict().items(),
                                 strict=True):
        assert torch.equal(a, b), name


def test_a_shape_mismatch_names_the_tensor_and_both_shapes(tmp_path: Path) -> None:
    write_model(tmp_path, "tiny-sr", "rlfn", SR_PARAMS, card_params={**SR_PARAMS,
                                                                       "num_features": 6})
    with pytest.raises(ModelError) as info:
        load_model("tiny-sr", tmp_path, device="cpu")
    message = str(info.value)
    assert "conv_first.weight: file [8, 1, 3, 3], architecture [6, 1, 3, 3]" in message
    assert "[architecture] parameters do not match the weights" in message


def test_weights_of_another_architecture_are_refused(tmp_path: Path) -> None:
    folder = write_model(tmp_path, "tiny-sr", "rlfn", SR_PARAMS)
    replace_weights(folder, build_network("dncnn", TINY_DNCNN).state_dict())
    with pytest.raises(ModelError, match=r"lacks \d+ tensor\(s\) the architecture needs "
                                         r"\(conv_first.weight"):
        load_model("tiny-sr", tmp_path, device="cpu")


def test_a_pickle_is_never_unpickled(tmp_path: Path) -> None:
    folder = write_model(tmp_path, "tiny-sr", "rlfn", SR_PARAMS)
    weights = folder / "weights.safetensors"
    weights.write_bytes(pickle.dumps({"conv_first.weight": [1.0]}))
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    card = folder / "model.toml"
    text = card.read_text(encoding="utf-8")
    old = text.split('sha256 = "')[1].split('"')[0]
    card.write_text(text.replace(old, digest), encoding="utf-8")
    with pytest.raises(ModelError, match="is not a readable safetensors file"):
        load_model("tiny-sr", tmp_path, device="cpu")


def test_an_unknown_family_is_refused_with_a_suggestion(tmp_path: Path) -> None:
    folder = write_model(tmp_path, "tiny-sr", "rlfn", SR_PARAMS)
    card = folder / "model.toml"
    card.write_text(card.read_text(encoding="utf-8").replace('name = "rlfn"', 'name = "rlfm"'),
                    encoding="utf-8")
    with pytest.raises(ModelError, match="'tiny-sr': unknown architecture 'rlfm'; did you mean "
                                         "'rlfn'"):
        load_model("tiny-sr", tmp_path, device="cpu")


def test_card_scale_must_match_the_network(tmp_path: Path) -> None:
    write_model(tmp_path, "tiny-sr", "rlfn", TINY_RLFN)  # the family's default scale is 4
    with pytest.raises(ModelError, match=r"card says scale 2 but .* scale 4; set "
                                         r"\[architecture\] scale = 2"):
        load_model("tiny-sr", tmp_path, device="cpu")


def test_an_absent_device_is_refused_at_load(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    write_model(tmp_path, "m", "rlfn", SR_PARAMS)
    with pytest.raises(DeviceError, match="CUDA is not available"):
        load_model("m", tmp_path, device="cuda:0")


def test_series_statistics_come_from_the_sample(tmp_path: Path) -> None:
    write_model(tmp_path, "dn", "dncnn", {**TINY_DNCNN, "in_channels": 3}, task="denoise",
                scale=1, normalisation={"method": "percentile", "low": 0.0, "high": 100.0})
    enhancer = load_model("dn", tmp_path, device="cpu")
    assert enhancer.context == 1 and enhancer.guards == ("intensity",)
    sample = [np.full((8, 8), 100.0), np.full((8, 8), 500.0)]
    bound = enhancer.for_series(sample)
    assert (bound.normaliser.low, bound.normaliser.high) == (100.0, 500.0)
    assert bound.card is enhancer.card and bound.context == 1
    stack = np.random.default_rng(2).random((5, 24, 16)).astype(np.float32) * 300 + 150
    assert bound(stack).shape == (3, 24, 16)


def test_hu_window_and_block_mean_guard_for_ct(tmp_path: Path) -> None:
    write_model(tmp_path, "ct", "rlfn", SR_PARAMS, modalities=("CT",),
                normalisation={"method": "hu", "low": -1024, "high": 3071},
                degradation={"name": "block_mean"})
    enhancer = load_model("ct", tmp_path, device="cpu")
    bound = enhancer.for_series([])
    assert (bound.normaliser.low, bound.normaliser.high) == (-1024.0, 3071.0)
    stack = np.random.default_rng(3).normal(40, 300, (2, 16, 24)).astype(np.float32)
    np.testing.assert_allclose(block_mean(bound(stack), 2), stack, atol=1e-3)


def test_an_exported_card_names_its_degradation_kind(tmp_path: Path) -> None:
    """dicomnode-train export writes ``[degradation] kind``; the consistency guard reads it."""
    write_model(tmp_path, "mr", "rlfn", SR_PARAMS, degradation={"kind": "kspace"})
    enhancer = load_model("mr", tmp_path, device="cpu")
    bound = enhancer.for_series([])
    stack = np.random.default_rng(4).random((2, 16, 16)).astype(np.float32) * 300 + 150
    np.testing.assert_allclose(kspace_truncate(bound(stack), 2), stack, atol=1e-2)


def test_a_loaded_model_has_its_batchnorm_folded_and_the_file_s_outputs(tmp_path: Path
                                                                         ) -> None:
    write_model(tmp_path, "tiny-dn", "dncnn", TINY_DNCNN, task="denoise", scale=1, seed=5)
    torch.manual_seed(5)
    reference = build_network("dncnn", TINY_DNCNN).eval()  # the file's weights, unfolded
    loaded = load_model("tiny-dn", tmp_path, device="cpu").network
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in reference.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in loaded.modules())
    image = torch.rand(1, 1, 24, 24)
    with torch.no_grad():
        torch.testing.assert_close(loaded(image), reference(image), rtol=1e-5, atol=1e-5)
