import numpy as np
import pytest
import torch

from fedmosaic.data.modality import ModalityKind, ModalitySpec, MultimodalArrays
from fedmosaic.models.multimodal import MultimodalClassifier
from fedmosaic.models.training import LossWeights, make_loader, train
from fedmosaic.privacy.attacks.membership import (
    lira_attack,
    lira_offline_scores,
    logit_confidences,
    loss_threshold_attack,
    membership_metrics,
    train_shadow_models,
)

SPECS = (ModalitySpec("vib", ModalityKind.SENSOR, (1, 16)),)
WEIGHTS = LossWeights(kl=0.0, consistency=0.0)
MEMORISING_LR = 0.003
"""At 0.01 the 250-epoch fit can stall with dead units (member losses of 1.4 on some CPUs);
at 0.003 it memorises every member."""


def random_label_arrays(n, seed):
    """Noise inputs with random labels (10 classes): only memorisation can fit them."""
    rng = np.random.default_rng(seed)
    return MultimodalArrays(inputs={"vib": rng.normal(size=(n, 1, 16)).astype(np.float32)},
                            mask=np.ones((n, 1), dtype=bool),
                            labels=rng.integers(0, 10, n))


def make_model(seed=0):
    torch.manual_seed(seed)
    return MultimodalClassifier(SPECS, num_classes=10, embed_dim=8, num_experts=1, hidden_dim=32)


def fit(model, arrays, epochs):
    train(model, make_loader(arrays, SPECS, 16, shuffle=True, seed=0), SPECS, epochs=epochs,
          learning_rate=MEMORISING_LR, weights=WEIGHTS)
    return model


def test_metrics_of_hand_computed_scores():
    # pairs (member > non-member): 1>2 no, 1>0 yes, 3>2 yes, 3>0 yes -> AUC 3/4; the threshold
    # 3 admits one of two members and no non-member -> TPR 0.5 at FPR 0
    result = membership_metrics(np.array([1.0, 3.0]), np.array([2.0, 0.0]))

    assert result.auc == pytest.approx(0.75)
    assert result.tpr_at_1pct_fpr == pytest.approx(0.5)
    assert result.tpr_at_01pct_fpr == pytest.approx(0.5)
    assert (result.members, result.non_members) == (2, 2)


def test_scores_from_one_distribution_give_chance_auc():
    rng = np.random.default_rng(0)

    result = membership_metrics(rng.normal(size=5000), rng.normal(size=5000))

    assert result.auc == pytest.approx(0.5, abs=0.02)
    assert result.tpr_at_1pct_fpr == pytest.approx(0.01, abs=0.01)


@pytest.mark.parametrize("members, others, message", [
    (np.array([]), np.array([1.0]), "need member and non-member scores"),
    (np.array([1.0]), np.array([]), "need member and non-member scores"),
    (np.array([np.nan]), np.array([1.0]), "finite"),
])
def test_bad_scores_are_rejected(members, others, message):
    with pytest.raises(ValueError, match=message):
        membership_metrics(members, others)


@pytest.fixture(scope="module")
def memorised():
    members, non_members = random_label_arrays(32, 1), random_label_arrays(32, 2)
    target = fit(make_model(), members, epochs=250)
    return target, members, non_members


def test_loss_threshold_detects_members_of_a_memorising_model(memorised):
    target, members, non_members = memorised

    result = loss_threshold_attack(target, members, non_members, SPECS)

    assert result.auc > 0.9


def test_loss_threshold_is_at_chance_for_an_untrained_model():
    members, non_members = random_label_arrays(400, 1), random_label_arrays(400, 2)

    result = loss_threshold_attack(make_model(), members, non_members, SPECS)

    assert result.auc == pytest.approx(0.5, abs=0.06)


def test_lira_with_disjoint_shadow_models_detects_members(memorised):
    target, members, non_members = memorised
    shadows = train_shadow_models(lambda: make_model(7), random_label_arrays(64, 3), SPECS,
                                  count=4, epochs=250, batch_size=16,
                                  learning_rate=MEMORISING_LR,
                                  weights=WEIGHTS, seed=0)

    result = lira_attack(target, shadows, members, non_members, SPECS)

    assert result.auc > 0.9


def test_lira_score_is_the_standardised_logit_confidence():
    arrays = random_label_arrays(5, 4)
    target, shadows = make_model(1), [make_model(2), make_model(3), make_model(4)]
    out = np.stack([logit_confidences(m, arrays, SPECS) for m in shadows])

    scores = lira_offline_scores(target, shadows, arrays, SPECS)

    expected = (logit_confidences(target, arrays, SPECS) - out.mean(0)) / out.std(0, ddof=1)
    np.testing.assert_allclose(scores, expected, rtol=1e-5)


def test_lira_needs_two_shadow_models():
    with pytest.raises(ValueError, match="need >= 2 shadow models, got 1"):
        lira_offline_scores(make_model(), [make_model(1)], random_label_arrays(3, 0), SPECS)
    with pytest.raises(ValueError, match="count must be >= 2"):
        train_shadow_models(make_model, random_label_arrays(8, 0), SPECS, count=1, epochs=1,
                            batch_size=4, learning_rate=0.01, weights=WEIGHTS, seed=0)
