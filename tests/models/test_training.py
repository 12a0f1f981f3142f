import numpy as np
import pytest
import torch

from fedmosaic.data.modality import ModalityKind, ModalitySpec, MultimodalArrays
from fedmosaic.models.multimodal import MultimodalClassifier
from fedmosaic.models.training import (
    LossWeights,
    evaluate,
    make_loader,
    split_batch,
    train,
)

SPECS = (
    ModalitySpec("acc", ModalityKind.SENSOR, (2, 16)),
    ModalitySpec("log", ModalityKind.TOKENS, (5,), vocab_size=8),
)
WEIGHTS = LossWeights(kl=0.001, consistency=0.05)


def _separable(n: int = 64, seed: int = 0) -> MultimodalArrays:
    """Class 0: sensor around +1 and tokens 1..3; class 1: sensor around -1 and tokens 4..7."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    sign = np.where(labels == 0, 1.0, -1.0)[:, None, None]
    sensor = (sign + 0.3 * rng.standard_normal((n, 2, 16))).astype(np.float32)
    low, high = np.where(labels == 0, 1, 4), np.where(labels == 0, 4, 8)
    tokens = rng.integers(low[:, None], high[:, None], (n, 5))
    mask = rng.random((n, 2)) < 0.7
    mask[~mask.any(axis=1), 0] = True
    sensor[~mask[:, 0]] = 0.0
    tokens[~mask[:, 1]] = 0
    return MultimodalArrays({"acc": sensor, "log": tokens}, mask, labels)


def _model() -> MultimodalClassifier:
    torch.manual_seed(0)
    return MultimodalClassifier(SPECS, num_classes=2, embed_dim=8, num_experts=2, hidden_dim=16)


def _empty() -> MultimodalArrays:
    return _separable().subset(np.zeros(0, dtype=np.int64))


def test_make_loader_yields_typed_batches_in_spec_order():
    loader = make_loader(_separable(10), SPECS, batch_size=4, shuffle=True, seed=0)

    inputs, mask, labels = split_batch(next(iter(loader)), SPECS)

    assert list(inputs) == ["acc", "log"]
    assert inputs["acc"].dtype == torch.float32 and inputs["acc"].shape == (4, 2, 16)
    assert inputs["log"].dtype == torch.int64 and inputs["log"].shape == (4, 5)
    assert mask.dtype == torch.bool and mask.shape == (4, 2)
    assert labels.dtype == torch.int64 and labels.shape == (4,)


def test_make_loader_shuffles_reproducibly_by_seed():
    arrays = _separable(20)

    def order(seed):
        return torch.cat([b[-1] for b in make_loader(arrays, SPECS, 5, True, seed)])

    torch.testing.assert_close(order(3), order(3))


def test_make_loader_rejects_bad_batch_size_and_missing_modality():
    arrays = _separable(4)

    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        make_loader(arrays, SPECS, batch_size=0, shuffle=False, seed=0)
    with pytest.raises(ValueError, match="lacks modalities"):
        make_loader(arrays, (*SPECS, ModalitySpec("mic", ModalityKind.AUDIO, (1, 8))), 2, False, 0)


def test_split_batch_rejects_wrong_length():
    with pytest.raises(ValueError, match="len\\(specs\\) \\+ 2"):
        split_batch([torch.zeros(1)], SPECS)


@pytest.mark.parametrize(("kl", "consistency"), [(-0.1, 0.0), (0.0, -1.0), (float("nan"), 0.0)])
def test_loss_weights_reject_negative_values(kl, consistency):
    with pytest.raises(ValueError, match="must be >= 0"):
        LossWeights(kl=kl, consistency=consistency)


def test_train_learns_a_separable_task():
    arrays = _separable()
    model = _model()
    eval_loader = make_loader(arrays, SPECS, batch_size=32, shuffle=False, seed=0)
    before = evaluate(model, eval_loader, SPECS)

    result = train(
        model,
        make_loader(arrays, SPECS, batch_size=16, shuffle=True, seed=0),
        SPECS,
        epochs=5,
        learning_rate=0.02,
        weights=WEIGHTS,
    )
    after = evaluate(model, eval_loader, SPECS)

    assert result.num_examples == 64
    assert result.steps == 5 * 4
    assert np.isfinite(result.loss)
    assert result.mean_embedding_variance > 0
    assert after.loss < before.loss
    assert after.accuracy >= 0.95
    assert after.num_examples == 64


def test_train_feeds_the_model_what_augment_makes_of_every_batch():
    arrays = _separable()
    seen = []

    def flip(inputs, mask):  # labels stay: the sensor's sign now says the other class
        seen.append(mask.clone())
        return {**inputs, "acc": -inputs["acc"]}

    model = _model()
    train(model, make_loader(arrays, SPECS, batch_size=16, shuffle=True, seed=0), SPECS,
          epochs=5, learning_rate=0.02, weights=WEIGHTS, augment=flip)
    flipped = MultimodalArrays({**arrays.inputs, "acc": -arrays.inputs["acc"]}, arrays.mask,
                               arrays.labels)
    sensor_only = flipped.subset(np.flatnonzero(~arrays.mask[:, 1]))  # no log token to read

    assert len(seen) == 5 * 4 and all(m.shape == (16, 2) for m in seen)
    loader = make_loader(sensor_only, SPECS, batch_size=32, shuffle=False, seed=0)
    assert evaluate(model, loader, SPECS).accuracy >= 0.9  # it learned the flipped sensor


def test_evaluate_is_deterministic():
    model = _model()
    loader = make_loader(_separable(16), SPECS, batch_size=8, shuffle=False, seed=0)

    assert evaluate(model, loader, SPECS) == evaluate(model, loader, SPECS)


def _distance_to_start(proximal_mu: float) -> float:
    model = _model()
    start = [p.detach().clone() for p in model.parameters()]
    loader = make_loader(_separable(), SPECS, batch_size=16, shuffle=True, seed=0)
    train(model, loader, SPECS, 2, 0.01, WEIGHTS, proximal_mu=proximal_mu, reference_params=start)
    return sum(
        float((p.detach() - s).pow(2).sum()) for p, s in zip(model.parameters(), start, strict=True)
    )


def test_proximal_term_pulls_weights_toward_the_reference():
    assert _distance_to_start(proximal_mu=10.0) < 0.5 * _distance_to_start(proximal_mu=0.0)


def test_train_requires_reference_params_for_a_proximal_term():
    loader = make_loader(_separable(8), SPECS, batch_size=4, shuffle=False, seed=0)

    with pytest.raises(ValueError, match="reference_params is required"):
        train(_model(), loader, SPECS, 1, 0.01, WEIGHTS, proximal_mu=0.1)


def test_train_rejects_mismatched_reference_params():
    loader = make_loader(_separable(8), SPECS, batch_size=4, shuffle=False, seed=0)

    with pytest.raises(ValueError, match="must match model.parameters"):
        train(_model(), loader, SPECS, 1, 0.01, WEIGHTS, 0.1, reference_params=[torch.zeros(1)])


@pytest.mark.parametrize(
    ("epochs", "learning_rate", "proximal_mu", "message"),
    [(0, 0.01, 0.0, "epochs"), (1, 0.0, 0.0, "learning_rate"), (1, 0.01, -1.0, "proximal_mu")],
)
def test_train_rejects_out_of_range_arguments(epochs, learning_rate, proximal_mu, message):
    loader = make_loader(_separable(8), SPECS, batch_size=4, shuffle=False, seed=0)

    with pytest.raises(ValueError, match=message):
        train(_model(), loader, SPECS, epochs, learning_rate, WEIGHTS, proximal_mu)


def test_empty_loader_evaluates_to_zeros_and_cannot_be_trained_on():
    loader = make_loader(_empty(), SPECS, batch_size=4, shuffle=True, seed=0)

    result = evaluate(_model(), loader, SPECS)

    assert (result.loss, result.accuracy, result.num_examples) == (0.0, 0.0, 0)
    with pytest.raises(ValueError, match="no data"):
        train(_model(), loader, SPECS, 1, 0.01, WEIGHTS)
