import numpy as np
import pytest
import torch

from fedmosaic.data.modality import ModalityKind, ModalitySpec, MultimodalArrays, pad_series
from fedmosaic.models.encoders import SensorEncoder, SensorFeatureEncoder
from fedmosaic.models.multimodal import MultimodalClassifier


def series(steps, seed=0):
    return np.random.default_rng(seed).normal(size=(3, steps)).astype(np.float32)


def test_equal_lengths_pad_to_exactly_the_stacked_array():
    windows = [series(20, seed) for seed in range(4)]

    np.testing.assert_array_equal(pad_series(windows), np.stack(windows))


def test_padding_does_not_change_what_the_encoder_makes_of_a_series():
    torch.manual_seed(0)
    encoder = SensorEncoder(3, hidden_dim=16).eval()
    for module in encoder.modules():  # the affine part of every GroupNorm counts too
        if isinstance(module, torch.nn.GroupNorm):
            torch.nn.init.normal_(module.weight)
            torch.nn.init.normal_(module.bias)
    short, full = series(23), series(64, seed=1)

    alone = encoder(torch.from_numpy(short[None]))
    padded = encoder(torch.from_numpy(pad_series([short, full])))  # one batch, two lengths

    torch.testing.assert_close(padded[0], alone[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(padded[1], encoder(torch.from_numpy(full[None]))[0],
                               rtol=1e-5, atol=1e-5)
    assert not torch.allclose(alone, encoder(torch.from_numpy(
        np.nan_to_num(pad_series([short], length=64)))))  # zero-filling would change it


def test_padding_does_not_change_the_prediction_of_a_series():
    spec = ModalitySpec("accel", ModalityKind.SENSOR, (3, 64))
    torch.manual_seed(0)
    model = MultimodalClassifier((spec,), num_classes=4, embed_dim=8, num_experts=2,
                                 hidden_dim=16).eval()
    short = series(40)
    batch = torch.from_numpy(pad_series([short, series(64, 2)], length=64))
    mask = torch.ones(2, 1, dtype=torch.bool)

    with torch.no_grad():
        logits = model({"accel": batch}, mask).logits
        unpadded = model({"accel": torch.from_numpy(short[None])}, mask[:1]).logits

    torch.testing.assert_close(logits[0], unpadded[0], rtol=1e-5, atol=1e-5)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize(("windows", "kwargs", "message"), [
    ([], {}, "at least one series"),
    ([series(5), np.zeros((2, 5), np.float32)], {}, "same C"),
    ([series(9)], {"length": 8}, "9 steps, more than length=8"),
])
def test_bad_series_are_refused(windows, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pad_series(windows, **kwargs)


def test_the_feature_encoder_refuses_ragged_windows():
    encoder = SensorFeatureEncoder(3, 16, hidden_dim=8)

    with pytest.raises(ValueError, match="needs equal-length windows"):
        encoder(torch.from_numpy(pad_series([series(10)], length=16)))


def test_ragged_samples_pass_the_arrays_check():
    windows = pad_series([series(10), series(16)])
    arrays = MultimodalArrays({"accel": windows}, np.ones((2, 1), bool), np.array([0, 1]))

    arrays.validate((ModalitySpec("accel", ModalityKind.SENSOR, (3, 16)),), 2)
