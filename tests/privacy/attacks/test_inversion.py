import math

import numpy as np
import pytest
import torch

from fedmosaic.data.modality import ModalityKind, ModalitySpec, MultimodalArrays
from fedmosaic.models.multimodal import MultimodalClassifier
from fedmosaic.models.training import LossWeights
from fedmosaic.privacy.attacks.inversion import (
    channel_statistics_error,
    client_update,
    invert_gradients,
    invert_sample,
    reconstruction_quality,
    sensor_target,
)

SPECS = (ModalitySpec("accel", ModalityKind.SENSOR, (2, 16)),
         ModalitySpec("log", ModalityKind.TOKENS, (4,), vocab_size=6))
WEIGHTS = LossWeights(kl=0.001, consistency=0.05, balance=0.1)


def model():
    torch.manual_seed(0)
    return MultimodalClassifier(SPECS, num_classes=3, embed_dim=8, num_experts=1, hidden_dim=16)


def arrays(n=4):
    rng = np.random.default_rng(0)
    t = np.linspace(0, 2 * np.pi, 16, dtype=np.float32)
    accel = np.stack([np.stack([np.sin(t * (i + 1)), np.cos(t * (i + 2))]) for i in range(n)])
    return MultimodalArrays(inputs={"accel": accel.astype(np.float32),
                                    "log": rng.integers(1, 6, (n, 4))},
                            mask=np.ones((n, 2), dtype=bool), labels=np.arange(n) % 3)


def test_reconstruction_quality_of_a_hand_computed_guess():
    truth = {"a": torch.tensor([[0.0, 2.0]]), "b": torch.tensor([[1.0, 1.0]])}
    guess = {"a": torch.tensor([[1.0, 2.0]]), "b": torch.tensor([[1.0, 0.0]])}

    mse, psnr = reconstruction_quality(truth, guess)

    # errors 1, 0, 0, 1 -> MSE 0.5; range 2 -> PSNR = 10 log10(4 / 0.5)
    assert mse == pytest.approx(0.5)
    assert psnr == pytest.approx(10 * math.log10(8.0))


def test_channel_statistics_error_of_a_hand_computed_guess():
    truth = {"a": torch.tensor([[[0.0, 2.0], [1.0, 1.0]]])}
    guess = {"a": torch.tensor([[[1.0, 1.0], [1.0, 1.0]]])}

    # channel 0: means 1 vs 1, stds sqrt(2) vs 0; channel 1: identical
    assert channel_statistics_error(truth, guess) == pytest.approx(math.sqrt(2) / 4)


def test_sensor_target_marks_non_sensor_modalities_missing():
    inputs, mask, labels = sensor_target(arrays(), SPECS, 2)

    assert mask.tolist() == [[True, False]]
    assert labels.tolist() == [2]
    assert inputs["accel"].shape == (1, 2, 16)


def test_dp_update_is_clipped_and_noised_at_sigma_times_c():
    net, (inputs, mask, labels) = model(), sensor_target(arrays(), SPECS, 0)
    plain = client_update(net, inputs, mask, labels, WEIGHTS)

    clipped = client_update(net, inputs, mask, labels, WEIGHTS, clip_norm=1e-3)
    noisy = client_update(net, inputs, mask, labels, WEIGHTS, clip_norm=1e-3,
                          noise_multiplier=2.0, generator=torch.Generator().manual_seed(0))

    plain_flat = torch.cat([g.reshape(-1) for g in plain])
    clipped_flat = torch.cat([g.reshape(-1) for g in clipped])
    noise = torch.cat([g.reshape(-1) for g in noisy]) - clipped_flat
    assert float(clipped_flat.norm()) == pytest.approx(1e-3, rel=1e-4)
    assert torch.allclose(clipped_flat / clipped_flat.norm(), plain_flat / plain_flat.norm())
    assert float(noise.std()) == pytest.approx(2.0 * 1e-3, rel=0.05)


def test_inverting_gradients_recovers_the_input_of_a_linear_softmax_model():
    # For logits = W x + b the update reveals x exactly (dL/dW = (p - y) x^T, dL/db = p - y),
    # so a correct attack must reach a near-perfect reconstruction.
    torch.manual_seed(0)
    layer = torch.nn.Linear(32, 3)
    truth = torch.from_numpy(arrays().inputs["accel"][1:2])
    label = torch.tensor([1])

    def loss_of(x):
        return torch.nn.functional.cross_entropy(layer(x["accel"].reshape(1, -1)), label)

    params = list(layer.parameters())
    observed = [g.detach() for g in torch.autograd.grad(loss_of({"accel": truth}), params)]

    guess, cosine = invert_gradients(loss_of, params, observed, {"accel": (1, 2, 16)},
                                     iterations=600, learning_rate=0.1, tv_weight=0.0)

    mse, psnr = reconstruction_quality({"accel": truth}, guess)
    assert cosine < 1e-4
    assert psnr > 30.0


def test_dp_noise_stops_the_attack_from_matching_the_update():
    net, data = model(), arrays()
    truth = {"accel": torch.from_numpy(data.inputs["accel"][1:2])}
    # guessing the data mean (zeros) without looking at the update
    uninformed = reconstruction_quality(truth, {"accel": torch.zeros((1, 2, 16))})[1]

    plain = invert_sample(net, data, SPECS, 1, WEIGHTS, iterations=1000)
    private = invert_sample(net, data, SPECS, 1, WEIGHTS, clip_norm=0.1, noise_multiplier=1.0,
                            iterations=1000)

    # without DP the attack's gradient comes close to the update's (cosine distance 0.17 after
    # 1000 steps on this He-initialised model); with DP it stays far from it
    assert plain.gradient_cosine_distance < 0.2
    assert private.gradient_cosine_distance > 0.5
    assert private.psnr_db < uninformed
    assert plain.channel_statistics_error < private.channel_statistics_error
    assert plain.reconstruction["accel"].shape == (2, 16)


@pytest.mark.parametrize("kwargs, message", [
    ({"clip_norm": 0.0}, "clip_norm must be > 0"),
    ({"clip_norm": 1.0, "noise_multiplier": -1.0}, "noise_multiplier must be >= 0"),
])
def test_bad_dp_parameters_are_rejected(kwargs, message):
    inputs, mask, labels = sensor_target(arrays(), SPECS, 0)
    with pytest.raises(ValueError, match=message):
        client_update(model(), inputs, mask, labels, WEIGHTS, **kwargs)


def test_bad_targets_and_updates_are_rejected():
    net = model()
    with pytest.raises(ValueError, match=r"index must lie in \[0, 4\), got 4"):
        sensor_target(arrays(), SPECS, 4)
    only_log = arrays()
    only_log.mask[:, 0] = False
    with pytest.raises(ValueError, match="no sensor modality"):
        sensor_target(only_log, SPECS, 0)
    params = list(net.parameters())
    with pytest.raises(ValueError, match="one tensor per model parameter"):
        invert_gradients(lambda x: torch.zeros(()), params, [torch.zeros(1)], {"a": (1, 2)})
    with pytest.raises(ValueError, match="iterations must be >= 1"):
        invert_gradients(lambda x: torch.zeros(()), params, [torch.zeros_like(p) for p in params],
                         {"a": (1, 2)}, iterations=0)
