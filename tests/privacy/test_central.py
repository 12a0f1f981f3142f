import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
)

from fedmosaic.privacy.accounting import Segment, epsilon_spent
from fedmosaic.privacy.central import (
    central_epsilon,
    clip_model_update,
    round_noise_multiplier,
    wrap_central_dp,
)


def test_equal_weights_keep_the_noise_multiplier():
    assert round_noise_multiplier(1.2, 4, [10, 10, 10, 10]) == pytest.approx(1.2)


def test_unequal_weights_shrink_the_effective_noise_multiplier():
    # largest share 20/40 = 1/2; z_eff = 1.2 / (4 * 1/2) = 0.6
    assert round_noise_multiplier(1.2, 4, [20, 10, 5, 5]) == pytest.approx(0.6)


def test_central_epsilon_is_the_unsampled_gaussian_composition():
    expected = epsilon_spent([Segment(1.0, 1.0, 1)] * 3, 1e-5)

    assert central_epsilon([1.0, 1.0, 1.0], 1e-5) == pytest.approx(expected)


@pytest.mark.parametrize("mode, wrapper", [
    ("server", DifferentialPrivacyServerSideFixedClipping),
    ("client", DifferentialPrivacyClientSideFixedClipping),
])
def test_modes_select_flowers_wrappers(mode, wrapper):
    inner = FedAvg()

    wrapped = wrap_central_dp(inner, mode, 1.0, 0.5, 3)

    assert isinstance(wrapped, wrapper) and wrapped.strategy is inner
    assert wrap_central_dp(inner, "none", 1.0, 0.5, 3) is inner


def test_client_side_clipping_scales_the_update_to_the_norm():
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[3.0, 4.0]]))  # update (3, 4), norm 5
    global_arrays = ArrayRecord([np.zeros((1, 2), dtype=np.float32)])

    clip_model_update(model, global_arrays, {"clipping_norm": 1.0})

    assert torch.allclose(model.weight, torch.tensor([[0.6, 0.8]]))


@pytest.mark.parametrize("call, message", [
    (lambda: round_noise_multiplier(0.0, 2, [1, 1]), "noise_multiplier"),
    (lambda: round_noise_multiplier(1.0, 0, [1, 1]), "num_sampled_clients"),
    (lambda: round_noise_multiplier(1.0, 2, []), "weights"),
    (lambda: wrap_central_dp(FedAvg(), "local", 1.0, 1.0, 2), "central-dp"),
    (lambda: clip_model_update(torch.nn.Linear(1, 1), ArrayRecord(), {}), "clipping_norm"),
])
def test_bad_inputs_are_rejected(call, message):
    with pytest.raises(ValueError, match=message):
        call()
