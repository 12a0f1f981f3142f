import numpy as np
import pytest
import torch

from fedmosaic.data.modality import ModalityKind, ModalitySpec, MultimodalArrays
from fedmosaic.models.multimodal import MultimodalClassifier
from fedmosaic.privacy.attacks.attribute import link_releases, reidentify, shared_embeddings


def test_reidentify_separable_subjects_perfectly_and_reports_chance():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    subjects = np.repeat([0, 1, 2], 30)
    reference = centres[subjects] + rng.normal(size=(90, 2))
    target_subjects = np.array([0, 0, 1, 2])
    targets = centres[target_subjects] + rng.normal(size=(4, 2))

    result = reidentify(reference, subjects, targets, target_subjects)

    assert result.accuracy == 1.0
    assert result.chance == 0.5  # all reference subjects tie; subject 0 is 2 of 4 targets
    assert result.targets == 4


def test_reidentify_from_uninformative_features_is_near_chance():
    rng = np.random.default_rng(1)
    subjects = rng.integers(0, 10, 2000)

    result = reidentify(rng.normal(size=(2000, 5)), subjects, rng.normal(size=(2000, 5)),
                        rng.integers(0, 10, 2000))

    assert result.accuracy == pytest.approx(0.1, abs=0.03)


def test_link_releases_hand_example():
    earlier = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    # device 0 and 1 moved a little; device 2 now looks like device 0
    later = np.array([[0.5, 0.0], [9.0, 1.0], [0.0, 1.0]])

    result = link_releases(earlier, later)

    assert result.accuracy == pytest.approx(2 / 3)
    assert result.chance == pytest.approx(1 / 3)


def test_shared_embeddings_concatenate_the_modality_means():
    specs = (ModalitySpec("a", ModalityKind.SENSOR, (1, 8)),
             ModalitySpec("b", ModalityKind.SENSOR, (2, 8)))
    torch.manual_seed(0)
    model = MultimodalClassifier(specs, num_classes=2, embed_dim=4, num_experts=1)
    arrays = MultimodalArrays(inputs={"a": np.ones((3, 1, 8), np.float32),
                                      "b": np.ones((3, 2, 8), np.float32)},
                              mask=np.array([[True, True], [True, False], [True, True]]),
                              labels=np.zeros(3, dtype=np.int64))

    features = shared_embeddings(model, arrays, specs)

    assert features.shape == (3, 8)
    assert np.all(features[1, 4:] == 0.0)  # a missing modality's embedding is zero
    np.testing.assert_allclose(features[0], features[2])


@pytest.mark.parametrize("args, message", [
    ((np.zeros((4, 2)), np.array([0, 1, 0, 1]), np.zeros((2, 3)), np.array([0, 1])),
     "same F"),
    ((np.zeros((4, 2)), np.array([0, 1]), np.zeros((2, 2)), np.array([0, 1])),
     "one subject per row"),
    ((np.zeros((4, 2)), np.array([0, 0, 0, 0]), np.zeros((2, 2)), np.array([0, 1])),
     ">= 2 subjects"),
])
def test_reidentify_rejects_bad_inputs(args, message):
    with pytest.raises(ValueError, match=message):
        reidentify(*args)


def test_link_releases_rejects_mismatched_releases():
    with pytest.raises(ValueError, match=r"\(devices >= 2, fields\)"):
        link_releases(np.zeros((3, 2)), np.zeros((2, 2)))
