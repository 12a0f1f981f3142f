"""Reframing: identity at r = 0, true rotations shared by a sample's sensors, monotone in r."""

import math

import pytest
import torch

from fedmosaic.data.modality import ModalityKind, ModalitySpec
from fedmosaic.privacy.anonymizer import reframe as reframing
from fedmosaic.privacy.anonymizer.knobs import AnonymizerKnobs
from fedmosaic.privacy.anonymizer.reframe import random_rotations, reframe

SPECS = (ModalitySpec("accelerometer", ModalityKind.SENSOR, (3, 20)),
         ModalitySpec("gyroscope", ModalityKind.SENSOR, (3, 20)),
         ModalitySpec("pressure", ModalityKind.SENSOR, (2, 20)),
         ModalitySpec("two-imus", ModalityKind.SENSOR, (6, 20)),
         ModalitySpec("camera", ModalityKind.IMAGE, (1, 4, 4)),
         ModalitySpec("logs", ModalityKind.TOKENS, (5,), vocab_size=9))


def batch(size=16, seed=0):
    draws = torch.Generator().manual_seed(seed)
    inputs = {s.name: torch.randn(size, *s.shape, generator=draws) for s in SPECS
              if s.kind != ModalityKind.TOKENS}
    inputs["logs"] = torch.randint(1, 9, (size, 5), generator=draws)
    return inputs


def seeded(seed=1):
    return torch.Generator().manual_seed(seed)


def present(size=16):
    return torch.ones(size, len(SPECS), dtype=torch.bool)


def no_gain_or_offset(monkeypatch):
    monkeypatch.setattr(reframing, "GAIN_STD", 0.0)
    monkeypatch.setattr(reframing, "OFFSET_STD", 0.0)


def test_strength_zero_is_the_identity():
    inputs = batch()

    out = reframe(inputs, present(), SPECS, torch.zeros(16), seeded())

    for name, value in inputs.items():
        assert torch.equal(out[name], value), name


def test_rotations_are_proper_and_turn_by_the_drawn_angle():
    angles = torch.linspace(-math.pi / 4, math.pi / 4, 9)

    rotations = random_rotations(angles, seeded())

    eye = torch.eye(3).expand(9, 3, 3)
    torch.testing.assert_close(rotations @ rotations.transpose(1, 2), eye, atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.linalg.det(rotations), torch.ones(9), atol=1e-6, rtol=0)
    turned = torch.arccos(((rotations.diagonal(dim1=1, dim2=2).sum(1) - 1) / 2).clamp(-1, 1))
    torch.testing.assert_close(turned, angles.abs(), atol=1e-3, rtol=0)


def test_one_rotation_per_sample_for_every_sensor_and_only_gains_elsewhere(monkeypatch):
    no_gain_or_offset(monkeypatch)
    inputs = batch()
    inputs["gyroscope"] = inputs["accelerometer"].clone()
    inputs["two-imus"] = torch.cat([inputs["accelerometer"], 2 * inputs["accelerometer"]], 1)

    out = reframe(inputs, present(), SPECS, torch.ones(16), seeded())

    # a rotation keeps each time step's length and moves both sensors alike
    torch.testing.assert_close(out["accelerometer"].norm(dim=1),
                               inputs["accelerometer"].norm(dim=1), atol=1e-5, rtol=0)
    torch.testing.assert_close(out["gyroscope"], out["accelerometer"])
    # six channels are two three-axis groups, each turned by the sample's one rotation
    torch.testing.assert_close(out["two-imus"], torch.cat(
        [out["accelerometer"], 2 * out["accelerometer"]], 1), atol=1e-5, rtol=0)
    assert not torch.allclose(out["accelerometer"], inputs["accelerometer"], atol=1e-3)
    # two channels: no rotation, and here no gain or offset either
    torch.testing.assert_close(out["pressure"], inputs["pressure"])
    assert out["camera"] is inputs["camera"] and out["logs"] is inputs["logs"]


def test_gain_and_offset_are_per_sample_and_channel(monkeypatch):
    monkeypatch.setattr(reframing, "MAX_ANGLE", 0.0)
    inputs = batch()

    out = reframe(inputs, present(), SPECS, torch.ones(16), seeded())["pressure"]

    # x' = g x + b per (sample, channel): the fit through two time steps holds at every step
    x = inputs["pressure"]
    gain = (out[..., 1] - out[..., 0]) / (x[..., 1] - x[..., 0])
    offset = out[..., 0] - gain * x[..., 0]
    torch.testing.assert_close(out, gain[..., None] * x + offset[..., None], atol=1e-4, rtol=0)
    assert (gain > 0).all() and gain.std() > 0.05 and offset.abs().max() > 0.05


@pytest.mark.parametrize("rotation_only", [False, True])
def test_the_change_grows_with_the_strength(monkeypatch, rotation_only):
    if rotation_only:
        no_gain_or_offset(monkeypatch)
    inputs = batch(64)

    changes = [float(sum((reframe(inputs, present(64), SPECS, torch.full((64,), r), seeded())[
        s.name] - inputs[s.name]).square().mean() for s in SPECS[:4]))
               for r in (0.0, 0.25, 0.5, 0.75, 1.0)]

    assert all(a < b for a, b in zip(changes, changes[1:], strict=False)), changes


def test_a_missing_modality_stays_zero():
    inputs = batch()
    mask = present()
    mask[::2, 1] = False
    inputs["gyroscope"][::2] = 0

    out = reframe(inputs, mask, SPECS, torch.ones(16), seeded())

    assert not out["gyroscope"][::2].any() and out["gyroscope"][1::2].abs().min() > 0


def test_the_draws_repeat_with_the_seed_and_differ_without():
    inputs = batch()

    first, again = (reframe(inputs, present(), SPECS, torch.ones(16), seeded(5))
                    for _ in range(2))
    other = reframe(inputs, present(), SPECS, torch.ones(16), seeded(6))

    assert torch.equal(first["gyroscope"], again["gyroscope"])
    assert not torch.allclose(first["gyroscope"], other["gyroscope"])


@pytest.mark.parametrize("bad", [{"reframe": 1.5}, {"reframe": -0.1}])
def test_the_knob_rejects_values_outside_zero_to_one(bad):
    with pytest.raises(ValueError, match="reframe must lie in \\[0, 1\\], got"):
        AnonymizerKnobs(**bad)
