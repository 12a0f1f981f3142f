import dataclasses

import pytest
import torch

from fedmosaic.config import RunConfig
from fedmosaic.models.training import make_loader
from fedmosaic.privacy.dp_sgd import train_private
from fedmosaic.task import build_model, cached_dataset, loss_weights

CONFIG = RunConfig.from_mapping({"local-epochs": 1})


def setup(partition=0):
    dataset = cached_dataset(CONFIG)
    arrays, _ = dataset.partition(partition)
    model = build_model(CONFIG, dataset)
    loader = make_loader(arrays, dataset.specs, CONFIG.batch_size, shuffle=True, seed=0)
    return model, loader, dataset.specs


def run(noise_multiplier=1.0, max_grad_norm=1.0, mode="hooks", proximal_mu=0.0,
        reference="global", weights=None):
    model, loader, specs = setup()
    if reference == "global":
        reference = [p.detach().clone() for p in model.parameters()]
    result = train_private(model, loader, specs, epochs=1, learning_rate=0.003,
                           weights=weights or loss_weights(CONFIG),
                           noise_multiplier=noise_multiplier,
                           max_grad_norm=max_grad_norm, grad_sample_mode=mode,
                           proximal_mu=proximal_mu, reference_params=reference)
    return model, result


def distance_from_start(model):
    start = setup()[0].state_dict()
    return sum(float((v - start[k]).pow(2).sum()) for k, v in model.state_dict().items())


@pytest.mark.parametrize("mode", ["hooks", "functorch"])
def test_trains_in_place_and_keeps_the_state_dict_keys(mode):
    initial = setup()[0].state_dict()

    model, result = run(mode=mode)

    state = model.state_dict()
    assert state.keys() == initial.keys()  # no Opacus "_module." prefix
    assert any(not torch.equal(state[k], initial[k]) for k in state)
    assert result.num_examples == len(setup()[1].dataset) and result.steps >= 1


@pytest.mark.parametrize("mode", ["hooks", "functorch"])
def test_the_unimodal_views_train_under_dp_sgd(mode):
    """Per-sample gradients through layers the views run several times (exactness: models/)."""
    weights = dataclasses.replace(loss_weights(CONFIG), unimodal=1.0)

    model, result = run(mode=mode, weights=weights)

    assert all(torch.isfinite(v).all() for v in model.state_dict().values())
    assert distance_from_start(model) > 0 and result.steps >= 1


def test_the_noise_makes_two_identical_runs_differ():
    first, _ = run(noise_multiplier=5.0)
    second, _ = run(noise_multiplier=5.0)

    assert any(not torch.equal(a, b) for a, b in zip(first.state_dict().values(),
                                                     second.state_dict().values(), strict=True))


def test_the_proximal_term_still_pulls_towards_the_global_model():
    free, _ = run(noise_multiplier=0.5)
    held, _ = run(noise_multiplier=0.5, proximal_mu=50.0)

    assert distance_from_start(held) < 0.5 * distance_from_start(free)


@pytest.mark.parametrize("kwargs, message", [
    ({"proximal_mu": 1.0, "reference": None}, "reference_params"),
    ({"noise_multiplier": 0.0}, "noise_multiplier"),
    ({"max_grad_norm": float("inf")}, "max_grad_norm"),
    ({"mode": "ew"}, "grad_sample_mode"),
])
def test_bad_arguments_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        run(**kwargs)
