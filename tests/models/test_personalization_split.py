"""Which parameters each personalization keeps; training only those; the concat baseline."""

import numpy as np
import pytest
import torch
from torch import nn

from fedmosaic.data.modality import ModalityKind, ModalitySpec, MultimodalArrays
from fedmosaic.models.missing_modality import (
    ModalityRemoval,
    mean_over_devices,
    removal_metrics,
    removals_from_metrics,
    remove_each_modality,
    worst_drop_points,
)
from fedmosaic.models.multimodal import MultimodalClassifier
from fedmosaic.models.personalization import personal_keys, training_only
from fedmosaic.models.training import evaluate, make_loader

SPECS = (ModalitySpec("imu", ModalityKind.SENSOR, (2, 16)),
         ModalitySpec("cam", ModalityKind.IMAGE, (1, 8, 8)),
         ModalitySpec("log", ModalityKind.TOKENS, (6,), vocab_size=10))


def model(fusion="moe"):
    torch.manual_seed(0)
    return MultimodalClassifier(SPECS, 3, embed_dim=8, hidden_dim=16, fusion=fusion)


def arrays(n=40, seed=0):
    rng = np.random.default_rng(seed)
    mask = rng.random((n, 3)) < 0.7
    mask[~mask.any(axis=1), 0] = True
    return MultimodalArrays(
        inputs={"imu": rng.standard_normal((n, 2, 16)).astype(np.float32),
                "cam": rng.standard_normal((n, 1, 8, 8)).astype(np.float32),
                "log": rng.integers(0, 10, (n, 6))},
        mask=mask, labels=rng.integers(0, 3, n))


def test_fedbn_keeps_exactly_the_normalisation_layers():
    classifier = model()
    norms = {f"{name}.{key}" for name, module in classifier.named_modules()
             if isinstance(module, nn.GroupNorm) for key in ("weight", "bias")}
    assert personal_keys(classifier, "fedbn") == norms and norms


def test_fedrep_keeps_the_head_and_local_gate_the_routing():
    classifier = model()
    assert personal_keys(classifier, "fedrep") == {
        "classifier.0.weight", "classifier.0.bias", "classifier.2.weight", "classifier.2.bias"}
    gates = personal_keys(classifier, "local-gate")
    assert {k for k in gates if k.startswith("fusion.level2_gate.")} == {
        f"fusion.level2_gate.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")}
    assert {k for k in gates if k.startswith("fusion.level1.")} == {
        f"fusion.level1.{m}.gate.{p}" for m in range(3) for p in ("weight", "bias")}
    assert not any(".experts." in k for k in gates)  # the experts stay shared
    assert personal_keys(classifier, "none") == personal_keys(classifier, "ditto") == frozenset()


def test_local_gate_needs_a_mixture_and_unknown_names_are_refused():
    with pytest.raises(ValueError, match="fusion=concat has none"):
        personal_keys(model("concat"), "local-gate")
    with pytest.raises(ValueError, match="personalization must be one of"):
        personal_keys(model(), "fedper")


def test_training_only_freezes_the_rest_and_restores_it_even_on_error():
    classifier = model()
    keys = personal_keys(classifier, "fedrep")
    with pytest.raises(RuntimeError), training_only(classifier, keys):
        trainable = {n for n, p in classifier.named_parameters() if p.requires_grad}
        assert trainable == keys
        raise RuntimeError("inside")
    assert all(p.requires_grad for p in classifier.parameters())


def test_concat_zero_fills_a_missing_modality_and_moe_ignores_it():
    batch = arrays(8)
    inputs = {name: torch.as_tensor(values) for name, values in batch.inputs.items()}
    mask = torch.ones(8, 3, dtype=torch.bool)
    mask[:, 1] = False
    changed = dict(inputs, cam=inputs["cam"] + 5.0)
    zeros = dict(inputs, cam=torch.zeros_like(inputs["cam"]))
    for fusion in ("moe", "concat"):
        classifier = model(fusion).eval()
        with torch.no_grad():
            base = classifier(inputs, mask).logits
            assert torch.equal(classifier(changed, mask).logits, base)
    concat = model("concat").eval()
    with torch.no_grad():  # concat sees the zeros it filled in: as if the camera sent zeros
        assert torch.allclose(concat(inputs, mask).logits,
                              concat(zeros, torch.ones(8, 3, dtype=torch.bool)).logits)
    assert not any(k.startswith("fusion.level1") for k in concat.state_dict())


def test_modality_dropout_hides_only_present_modalities_and_keeps_one():
    batch = arrays(2000)
    dropped = batch.drop_modalities(0.5, np.random.default_rng(0))
    assert not (dropped.mask & ~batch.mask).any()
    assert dropped.mask.any(axis=1).all()
    hidden = (batch.mask & ~dropped.mask).sum() / batch.mask.sum()
    assert 0.3 < hidden < 0.5  # 0.5 less the modalities kept so no row is empty
    assert dropped.inputs is batch.inputs and np.array_equal(dropped.labels, batch.labels)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        batch.drop_modalities(1.0, np.random.default_rng(0))


def test_removing_a_modality_compares_the_same_samples_with_and_without_it():
    classifier, batch = model().eval(), arrays(60)
    removals = remove_each_modality(classifier, batch, SPECS)

    for column, spec in enumerate(SPECS):
        others = np.delete(batch.mask, column, axis=1).any(axis=1)
        losable = batch.subset(batch.mask[:, column] & others)
        removal = removals[spec.name]
        assert removal.samples == len(losable)
        loader = make_loader(losable, SPECS, 256, shuffle=False, seed=0)
        assert removal.accuracy_with == evaluate(classifier, loader, SPECS).accuracy
        cleared = losable.mask.copy()
        cleared[:, column] = False
        loader = make_loader(losable.with_mask(cleared), SPECS, 256, shuffle=False, seed=0)
        assert removal.accuracy_without == evaluate(classifier, loader, SPECS).accuracy
    assert worst_drop_points(removals) == max(r.drop_points for r in removals.values())


def test_a_modality_no_sample_can_lose_is_left_out():
    batch = arrays(10)
    batch = batch.with_mask(np.tile([True, False, False], (10, 1)))
    assert remove_each_modality(model().eval(), batch, SPECS) == {}
    assert worst_drop_points({}) is None


def test_devices_removals_average_with_each_device_counting_once():
    first = {"a": ModalityRemoval(10, 1.0, 0.5), "b": ModalityRemoval(4, 0.5, 0.5)}
    second = {"a": ModalityRemoval(1000, 0.6, 0.3)}  # it holds no b it could lose

    means = mean_over_devices([first, second, {}])

    assert means["a"] == ModalityRemoval(1010, pytest.approx(0.8), pytest.approx(0.4))
    assert means["b"] == first["b"]
    assert mean_over_devices([]) == {}


def test_an_evaluation_replys_removal_metrics_name_every_modality_and_read_back():
    removals = {"a": ModalityRemoval(10, 0.9, 0.4)}

    metrics = removal_metrics(removals, ["a", "b"])

    assert metrics == {"eval-without-a-samples": 10, "eval-without-a-accuracy-with": 0.9,
                       "eval-without-a-accuracy": 0.4, "eval-without-b-samples": 0,
                       "eval-without-b-accuracy-with": 0.0, "eval-without-b-accuracy": 0.0}
    assert removals_from_metrics(metrics, ["a", "b"]) == removals
