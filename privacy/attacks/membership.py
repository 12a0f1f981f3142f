r"""Membership inference: was this sample in the model's training data?

Two attacks, both scored by the ROC of member versus non-member scores (AUC, and the true
positive rate at a low false positive rate, which is what matters for a confident attacker;
Carlini et al. 2022):

* **Loss threshold** (Yeom, Giacomelli, Fredrikson, Jha 2018, "Privacy Risk in Machine
  Learning: Analyzing the Connection to Overfitting", CSF): score :math:`s(x, y) =
  -\ell(f(x), y)`; members tend to have lower loss.
* **LiRA, offline variant** (Carlini, Chien, Nasr, Song, Terzis, Tramèr 2022, "Membership
  Inference Attacks From First Principles", IEEE S&P, arXiv:2112.03570): shadow models are
  trained on data disjoint from the candidates, so every shadow model is an *out* model. For
  each candidate the logit-scaled confidence :math:`\phi = \log\frac{p_y}{1 - p_y}` is
  computed under every shadow model, a Gaussian :math:`\mathcal{N}(\mu_{\mathrm{out}},
  \sigma^2_{\mathrm{out}})` is fitted per candidate, and the score is the standardised
  :math:`(\phi_{\mathrm{target}} - \mu_{\mathrm{out}}) / \sigma_{\mathrm{out}}` (a one-sided
  likelihood-ratio test against the *out* hypothesis).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score, roc_curve

from fedmosaic.data.modality import ModalitySpec, MultimodalArrays
from fedmosaic.models.multimodal import MultimodalClassifier
from fedmosaic.models.training import LossWeights, make_loader, split_batch, train

MIN_SHADOW_MODELS = 2
"""A per-candidate variance needs at least two shadow models."""
STD_FLOOR = 1e-3
"""Smallest per-candidate standard deviation (avoids division by ~0 for saturated samples)."""
CONFIDENCE_CLAMP = 1e-7
"""Probabilities are clamped to ``[c, 1 - c]`` before the logit."""


@dataclass(frozen=True)
class MembershipResult:
    """How well scores separate members from non-members.

    Attributes:
        auc: Area under the ROC curve (0.5: no better than chance).
        tpr_at_1pct_fpr: Highest true positive rate at a false positive rate <= 1 %.
        tpr_at_01pct_fpr: Highest true positive rate at a false positive rate <= 0.1 %.
        members: Number of member samples scored.
        non_members: Number of non-member samples scored.

    """

    auc: float
    tpr_at_1pct_fpr: float
    tpr_at_01pct_fpr: float
    members: int
    non_members: int


def membership_metrics(member_scores: np.ndarray, non_member_scores: np.ndarray
                       ) -> MembershipResult:
    """ROC summary of an attack whose higher scores mean "member".

    Args:
        member_scores: Scores of samples that were in the training data.
        non_member_scores: Scores of samples that were not.

    Returns:
        The :class:`MembershipResult` (``sklearn.metrics.roc_curve``).

    Raises:
        ValueError: If either set is empty or a score is not finite.

    """
    members = np.asarray(member_scores, dtype=float).ravel()
    others = np.asarray(non_member_scores, dtype=float).ravel()
    if members.size == 0 or others.size == 0:
        raise ValueError(f"need member and non-member scores, got {members.size} and "
                         f"{others.size}")
    if not (np.all(np.isfinite(members)) and np.all(np.isfinite(others))):
        raise ValueError("membership scores must be finite")
    labels = np.concatenate([np.ones(members.size), np.zeros(others.size)])
    scores = np.concatenate([members, others])
    fpr, tpr, _ = roc_curve(labels, scores)
    return MembershipResult(
        auc=float(roc_auc_score(labels, scores)),
        tpr_at_1pct_fpr=float(tpr[fpr <= 0.01].max()),
        tpr_at_01pct_fpr=float(tpr[fpr <= 0.001].max()),
        members=int(members.size),
        non_members=int(others.size),
    )


@torch.no_grad()
def _per_sample(model: MultimodalClassifier, arrays: MultimodalArrays,
                specs: tuple[ModalitySpec, ...],
                value: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> np.ndarray:
    model.eval()
    loader = make_loader(arrays, specs, 256, shuffle=False, seed=0)
    out = []
    for batch in loader:
        inputs, mask, labels = split_batch(batch, specs)
        out.append(value(model(inputs, mask).logits, labels))
    return torch.cat(out).numpy() if out else np.empty(0)


def sample_losses(model: MultimodalClassifier, arrays: MultimodalArrays,
                  specs: tuple[ModalitySpec, ...]) -> np.ndarray:
    """Cross-entropy of every sample under ``model`` (eval mode, ``z = mu``)."""
    return _per_sample(model, arrays, specs,
                       lambda logits, labels: F.cross_entropy(logits, labels, reduction="none"))


def logit_confidences(model: MultimodalClassifier, arrays: MultimodalArrays,
                      specs: tuple[ModalitySpec, ...]) -> np.ndarray:
    r"""LiRA's :math:`\phi = \log p_y - \log(1 - p_y)` of every sample under ``model``."""

    def phi(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        p = logits.double().softmax(dim=-1).gather(1, labels[:, None]).squeeze(1)
        p = p.clamp(CONFIDENCE_CLAMP, 1.0 - CONFIDENCE_CLAMP)
        return (p.log() - (-p).log1p()).float()

    return _per_sample(model, arrays, specs, phi)


def loss_threshold_attack(model: MultimodalClassifier, members: MultimodalArrays,
                          non_members: MultimodalArrays, specs: tuple[ModalitySpec, ...]
                          ) -> MembershipResult:
    """Yeom et al.'s attack: score ``-loss``; evaluated on known members and non-members."""
    return membership_metrics(-sample_losses(model, members, specs),
                              -sample_losses(model, non_members, specs))


def train_shadow_models(
    make_model: Callable[[], MultimodalClassifier],
    shadow_pool: MultimodalArrays,
    specs: tuple[ModalitySpec, ...],
    count: int,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    weights: LossWeights,
    seed: int,
) -> list[MultimodalClassifier]:
    """Train ``count`` shadow models, each on a random half of ``shadow_pool``.

    ``shadow_pool`` must be disjoint from the attack's candidates (offline LiRA).

    Raises:
        ValueError: If ``count < 2`` or the pool has fewer than 2 samples.

    """
    if count < MIN_SHADOW_MODELS:
        raise ValueError(f"count must be >= {MIN_SHADOW_MODELS}, got {count}")
    if len(shadow_pool) < 2:
        raise ValueError(f"shadow_pool needs >= 2 samples, got {len(shadow_pool)}")
    rng = np.random.default_rng(seed)
    models = []
    for index in range(count):
        half = rng.permutation(len(shadow_pool))[: len(shadow_pool) // 2]
        model = make_model()
        loader = make_loader(shadow_pool.subset(np.sort(half)), specs, batch_size,
                             shuffle=True, seed=seed + index)
        train(model, loader, specs, epochs=epochs, learning_rate=learning_rate, weights=weights)
        models.append(model)
    return models


def lira_offline_scores(target: MultimodalClassifier, shadow_models: Sequence[MultimodalClassifier],
                        candidates: MultimodalArrays, specs: tuple[ModalitySpec, ...]
                        ) -> np.ndarray:
    r"""Offline LiRA scores :math:`(\phi - \mu_{\mathrm{out}}) / \sigma_{\mathrm{out}}`.

    Raises:
        ValueError: If fewer than two shadow models are given.

    """
    if len(shadow_models) < MIN_SHADOW_MODELS:
        raise ValueError(f"need >= {MIN_SHADOW_MODELS} shadow models, got {len(shadow_models)}")
    out = np.stack([logit_confidences(m, candidates, specs) for m in shadow_models])
    mean, std = out.mean(axis=0), np.maximum(out.std(axis=0, ddof=1), STD_FLOOR)
    return (logit_confidences(target, candidates, specs) - mean) / std


def lira_attack(target: MultimodalClassifier, shadow_models: Sequence[MultimodalClassifier],
                members: MultimodalArrays, non_members: MultimodalArrays,
                specs: tuple[ModalitySpec, ...]) -> MembershipResult:
    """Offline LiRA evaluated on known members and non-members of ``target``."""
    return membership_metrics(lira_offline_scores(target, shadow_models, members, specs),
                              lira_offline_scores(target, shadow_models, non_members, specs))
