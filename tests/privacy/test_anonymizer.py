"""The GAN anonymizer: shapes and masks, λ = 0 is the identity, monotone knobs, training."""

import itertools

import numpy as np
import pytest
import torch

from fedmosaic.data.modality import ModalityKind, MultimodalArrays
from fedmosaic.data.synthetic import SYNTHETIC_SPECS, SyntheticConfig, generate_device
from fedmosaic.models.training import make_loader
from fedmosaic.privacy.anonymizer import training
from fedmosaic.privacy.anonymizer.generator import MultimodalAnonymizer
from fedmosaic.privacy.anonymizer.knobs import AnonymizerKnobs
from fedmosaic.privacy.anonymizer.training import (
    AnonymizerModels,
    AnonymizerTraining,
    TrainedAnonymizer,
    adversarial_step,
    anonymize,
    attribute_carrier,
    generator_from_state,
    load_anonymizer,
    local_anonymizer_update,
    save_anonymizer,
    train_anonymizer,
)

SPECS = SYNTHETIC_SPECS
MASKS = [np.array(m, dtype=bool) for m in itertools.product([False, True], repeat=len(SPECS))
         if any(m)]


def samples(count=12, seed=0):
    rng = np.random.default_rng(seed)
    inputs = {s.name: (rng.integers(1, s.vocab_size, (count, *s.shape)).astype(np.int64)
                       if s.kind == ModalityKind.TOKENS
                       else rng.normal(size=(count, *s.shape)).astype(np.float32))
              for s in SPECS}
    mask = np.stack([MASKS[i % len(MASKS)] for i in range(count)])
    for j, spec in enumerate(SPECS):
        inputs[spec.name][~mask[:, j]] = 0
    return MultimodalArrays(inputs=inputs, mask=mask, labels=rng.integers(0, 8, count))


def trained_generator():
    torch.manual_seed(0)
    arrays = samples(64)
    sites = np.arange(64) % 4
    return train_anonymizer(arrays, sites, SPECS, 8,
                            AnonymizerTraining(epochs=2, batch_size=16, token_dim=16)).generator


@pytest.fixture(scope="module")
def generator():
    return trained_generator()


@pytest.mark.parametrize("mask", MASKS, ids=lambda m: "+".join(
    s.name for s, held in zip(SPECS, m, strict=True) if held))
def test_every_modality_combination_keeps_shapes_types_and_absent_modalities(generator, mask):
    arrays = samples(4)
    arrays = MultimodalArrays(
        inputs={s.name: v * (mask[j] if s.kind != ModalityKind.TOKENS else int(mask[j]))
                for j, (s, v) in enumerate(zip(SPECS, arrays.inputs.values(), strict=True))},
        mask=np.tile(mask, (4, 1)), labels=arrays.labels)

    out = anonymize(generator, arrays, AnonymizerKnobs(strength=1.0, noise=0.5, discard=0.2,
                                                       reframe=1.0), seed=0)

    for j, spec in enumerate(SPECS):
        assert out.inputs[spec.name].shape == arrays.inputs[spec.name].shape
        assert out.inputs[spec.name].dtype == spec.dtype
        if not mask[j]:
            assert not out.inputs[spec.name].any()
        if spec.kind == ModalityKind.TOKENS:  # a token is kept or dropped, never invented
            kept = out.inputs[spec.name] != 0
            assert (out.inputs[spec.name][kept] == arrays.inputs[spec.name][kept]).all()
    np.testing.assert_array_equal(out.mask, arrays.mask)
    np.testing.assert_array_equal(out.labels, arrays.labels)


def test_zero_strength_is_the_identity(generator):
    arrays = samples()

    out = anonymize(generator, arrays, AnonymizerKnobs(strength=0.0), seed=0)

    for spec in SPECS:
        np.testing.assert_array_equal(out.inputs[spec.name], arrays.inputs[spec.name])


def test_ragged_series_are_refused_with_a_clear_error(generator):
    arrays = samples()
    arrays.inputs["vibration"][0, :, -3:] = np.nan

    with pytest.raises(ValueError, match="ragged .NaN-padded. series.*'vibration'"):
        anonymize(generator, arrays, AnonymizerKnobs(strength=0.5))
    with pytest.raises(ValueError, match="ragged"):
        train_anonymizer(arrays, np.arange(len(arrays)) % 4, SPECS, 8,
                         AnonymizerTraining(epochs=1))


def test_an_absent_modality_comes_out_zero_even_if_its_input_is_not(generator):
    arrays = samples(8)
    arrays.mask[:] = True
    arrays.mask[:, -1] = False  # logs absent, though the input holds tokens

    out = anonymize(generator, arrays, AnonymizerKnobs(strength=0.3), seed=0)

    assert not out.inputs["logs"].any() and arrays.inputs["logs"].any()


def distortion(generator, knobs, arrays):
    out = anonymize(generator, arrays, knobs, seed=3)
    return sum(float(np.mean((out.inputs[s.name] - arrays.inputs[s.name]) ** 2))
               for s in SPECS if s.kind != ModalityKind.TOKENS)


@pytest.mark.parametrize("knob", ["strength", "noise", "discard", "reframe"])
def test_each_knob_increases_the_distortion_monotonically(generator, knob):
    arrays = samples(32)
    levels = {"strength": [0.0, 0.25, 0.5, 0.75, 1.0], "noise": [0.0, 0.5, 1.0, 2.0],
              "discard": [0.0, 0.2, 0.5, 0.9], "reframe": [0.0, 0.25, 0.5, 1.0]}[knob]
    base = {"strength": 0.5, "noise": 0.0, "discard": 0.0, "reframe": 0.0}

    values = [distortion(generator, AnonymizerKnobs(**{**base, knob: level}), arrays)
              for level in levels]

    assert all(a < b for a, b in itertools.pairwise(values)), values


def test_the_generator_trains_on_reframed_windows_and_the_utility_head_on_raw_ones(
        monkeypatch):
    drawn = []

    def marked(inputs, mask, specs, strength, generator=None):  # "reframed" = raw + 100
        drawn.append(strength)
        return {name: value + 100.0 if value.is_floating_point() else value
                for name, value in inputs.items()}

    monkeypatch.setattr(training, "reframe", marked)
    settings = AnonymizerTraining(token_dim=16)
    models = AnonymizerModels(SPECS, 4, 8, settings)
    read = {"generator": [], "utility": [], "realism": []}
    models.generator.register_forward_pre_hook(lambda _, args: read["generator"].append(args[0]))
    models.critics.utility.register_forward_pre_hook(
        lambda _, args: read["utility"].append(args[0]))
    models.critics.realism["vibration"].register_forward_pre_hook(
        lambda _, args: read["realism"].append(args[0]))
    arrays = samples(16)
    arrays.mask[:] = True
    batch = next(iter(make_loader(attribute_carrier(arrays, np.arange(16) % 4, 4), SPECS, 16,
                                  shuffle=False, seed=0)))

    adversarial_step(models, models.optimizers(1e-3), list(batch), settings)

    assert len(drawn) == 1 and drawn[0].shape == (16,) and 0 <= drawn[0].min() <= 1
    assert read["generator"][0]["vibration"].min() > 50  # the generator reads reframed windows
    assert read["realism"][0].min() > 50  # the discriminator's "real" is reframed too
    assert read["utility"][0].abs().max() < 50  # the utility head learns on raw windows


def test_a_larger_discard_drops_a_superset_of_tokens(generator):
    arrays = samples(32)
    logs = SPECS[-1].name

    kept = [anonymize(generator, arrays, AnonymizerKnobs(strength=0.0, discard=p), seed=7)
            .inputs[logs] != 0 for p in (0.1, 0.4, 0.8)]

    assert (kept[1] <= kept[0]).all() and (kept[2] <= kept[1]).all()
    assert kept[0].sum() > kept[1].sum() > kept[2].sum()


def test_knobs_reject_values_outside_their_ranges():
    for bad in ({"strength": 1.5}, {"noise": -1.0}, {"discard": 1.0}, {"noise": float("inf")}):
        with pytest.raises(ValueError, match="anonymizer"):
            AnonymizerKnobs(**bad)
    with pytest.raises(ValueError, match="must be a number, got 'high'"):
        AnonymizerKnobs.from_mapping({"strength": "high"})
    assert AnonymizerKnobs.from_mapping({"anonymizer-noise": 0.5, "strength": 0.2,
                                         "anonymizer-reframe": 0.3}) == \
        AnonymizerKnobs(strength=0.2, noise=0.5, reframe=0.3)


def test_the_generator_is_well_under_a_million_parameters():
    models = AnonymizerModels(SPECS, 4, 8, AnonymizerTraining())

    assert sum(p.numel() for p in models.parameters()) < 1_000_000
    assert sum(p.numel() for p in models.generator.parameters()) < 200_000


def test_a_local_update_trains_from_the_sent_weights_on_one_attribute_value():
    config = SyntheticConfig(num_devices=4, samples_per_device=40, seed=1)
    device = generate_device(config, 2)
    models = AnonymizerModels(SPECS, config.num_sites, 8, AnonymizerTraining(token_dim=16))
    before = {k: v.clone() for k, v in models.state_dict().items()}

    metrics = local_anonymizer_update(models, device.train, np.full(len(device.train),
                                                                    device.site),
                                      AnonymizerTraining(batch_size=8, token_dim=16), steps=3,
                                      seed=0)

    assert metrics["num-examples"] == 24
    assert 0.0 <= metrics["adversary-accuracy"] <= 1.0
    assert any(not torch.equal(before[k], v) for k, v in models.state_dict().items())


def test_attributes_must_match_the_samples():
    arrays = samples(8)
    with pytest.raises(ValueError, match="at least 2 attribute values"):
        train_anonymizer(arrays, np.zeros(8, int), SPECS, 8, AnonymizerTraining(epochs=1))
    with pytest.raises(ValueError, match=r"attributes must have shape \(8,\)"):
        train_anonymizer(arrays, np.arange(5), SPECS, 8, AnonymizerTraining(epochs=1))


def test_save_and_load_round_trip_and_refuse_other_modalities(tmp_path):
    path = tmp_path / "anonymizer.pt"
    torch.manual_seed(3)
    generator = MultimodalAnonymizer(SPECS, token_dim=16, code_dim=8, code_noise=0.3).eval()
    save_anonymizer(TrainedAnonymizer(generator, 4, AnonymizerTraining(token_dim=16), []), path)

    loaded = load_anonymizer(path, SPECS)

    assert float(loaded.code_noise) == pytest.approx(0.3)
    arrays = samples()
    knobs = AnonymizerKnobs(strength=0.7)
    for spec in SPECS:
        np.testing.assert_array_equal(anonymize(loaded, arrays, knobs, seed=1).inputs[spec.name],
                                      anonymize(generator, arrays, knobs, seed=1).inputs[spec.name])
    with pytest.raises(ValueError, match="was trained for the modalities"):
        load_anonymizer(path, SPECS[:2])
    with pytest.raises(ValueError, match="does not exist"):
        load_anonymizer(tmp_path / "missing.pt", SPECS)
    with pytest.raises(ValueError, match="expected a generator for 2 modalities"):
        generator_from_state(generator.state_dict(), SPECS[:2])


def test_a_generator_needs_modalities():
    with pytest.raises(ValueError, match="at least one modality"):
        MultimodalAnonymizer(())
