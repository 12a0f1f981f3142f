r"""Adversarial training of the anonymizer, applying it to a device's data, saving and loading.

Each batch draws a strength :math:`\lambda_i \sim U(0, 1)` and a reframing strength
:math:`r_i \sim U(0, 1)` per sample, so one generator serves every λ and r the controller or
the run may later set. With the reframed sample :math:`\tilde x_i` (:mod:`~fedmosaic.privacy.
anonymizer.reframe`) and anonymized :math:`x'_i = G(\tilde x_i, \lambda_i)`:

*critic step* (on :math:`x'` detached): the adversary :math:`A` minimises the cross-entropy
of the protected attribute :math:`s_i` on anonymized samples (as the evaluation's fresh attacker
does), the utility head :math:`U` that of the label :math:`y_i` on *real* samples (so the
generator must keep the task readable by a model of real data), each realism discriminator
:math:`D_j` the binary cross-entropy of reframed real :math:`\tilde x_j` against :math:`x'_j` on
the samples that hold modality :math:`j`;

*generator step*:

.. math::
    \mathcal{L}_G = \frac{1}{B}\sum_i \Big[w_a \lambda_i\,
    \mathrm{KL}\big(A(x'_i)\,\|\,\mathcal{U}\big)
    + (1 - \lambda_i)\, \lVert x'_i - \tilde x_i \rVert^2 / d\Big]
    + w_u\, \mathrm{CE}\big(U(x'), y\big) + w_r \sum_j \mathrm{BCE}\big(D_j(x'_j), 1\big)

where :math:`\mathrm{KL}(p \| \mathcal{U}) = \log K - H(p)` pushes the adversary's posterior
over the :math:`K` attribute values to uniform (maximum entropy, as in Malekzadeh et al. 2019,
"Mobile Sensor Data Anonymization", IoTDI, arXiv:1810.11546, whose replacement autoencoder
removes the user's identity from motion data while keeping the activity), and :math:`d` is
the number of float entries; :math:`w_a`, :math:`w_u`, :math:`w_r` are ``adversary_weight``,
``utility_weight`` and ``realism_weight``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fedmosaic import records
from fedmosaic.config import RunConfig
from fedmosaic.data.modality import ModalityKind, ModalitySpec, MultimodalArrays
from fedmosaic.models.training import make_loader, split_batch
from fedmosaic.privacy.anonymizer.critics import AnonymizerCritics, modality_view, sample_view
from fedmosaic.privacy.anonymizer.generator import ATTENTION_HEADS, MultimodalAnonymizer
from fedmosaic.privacy.anonymizer.knobs import AnonymizerKnobs
from fedmosaic.privacy.anonymizer.reframe import reframe


@dataclass(frozen=True)
class AnonymizerTraining:
    """Settings of :func:`train_anonymizer`.

    Raises:
        ValueError: If a setting is out of range.
    """

    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 1e-3
    utility_weight: float = 5.0
    realism_weight: float = 0.3
    adversary_weight: float = 1.0
    token_dim: int = 32
    code_dim: int = 16
    code_noise: float = 1.0
    critic_steps: int = 1
    seed: int = 0

    @classmethod
    def from_config(cls, config: RunConfig) -> AnonymizerTraining:
        """The settings of a run: its batch size and seed, the defaults otherwise."""
        return cls(batch_size=config.batch_size, seed=config.seed)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "token_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.learning_rate < math.inf:
            raise ValueError(f"learning_rate must be finite and > 0, got {self.learning_rate}")
        if self.code_dim < 0 or self.critic_steps < 1 or self.token_dim % ATTENTION_HEADS:
            raise ValueError(f"need code_dim >= 0, critic_steps >= 1 and token_dim a multiple "
                             f"of {ATTENTION_HEADS}, got {self.code_dim}, {self.critic_steps} "
                             f"and {self.token_dim}")
        if not 0.0 <= self.code_noise < math.inf:
            raise ValueError(f"code_noise must be finite and >= 0, got {self.code_noise}")
        for name in ("utility_weight", "realism_weight", "adversary_weight"):
            if not 0.0 <= getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be finite and >= 0, got {getattr(self, name)}")


class AnonymizerModels(torch.nn.Module):
    """The generator and its critics as one module: what a federated round ships and averages.

    Args:
        specs: The modalities.
        num_attributes: Values of the protected attribute (subjects, sites).
        num_classes: Task classes.
        settings: The generator's sizes (``token_dim``, ``code_dim``, ``code_noise``).
    """

    def __init__(self, specs: tuple[ModalitySpec, ...], num_attributes: int,
                 num_classes: int, settings: AnonymizerTraining) -> None:
        super().__init__()
        if num_attributes < 2:
            raise ValueError(f"the attribute adversary needs at least 2 attribute values, "
                             f"got {num_attributes}")
        self.generator = MultimodalAnonymizer(specs, token_dim=settings.token_dim,
                                              code_dim=settings.code_dim,
                                              code_noise=settings.code_noise)
        self.critics = AnonymizerCritics(specs, num_attributes, num_classes)
        self.num_attributes = num_attributes

    def optimizers(self, learning_rate: float) -> tuple[torch.optim.Optimizer,
                                                       torch.optim.Optimizer]:
        """Adam for the generator and for the critics (Kingma & Ba 2015)."""
        return (torch.optim.Adam(self.generator.parameters(), lr=learning_rate),
                torch.optim.Adam(self.critics.parameters(), lr=learning_rate))


@dataclass
class TrainedAnonymizer:
    """A trained generator with what it was trained for.

    Attributes:
        generator: The generator (eval mode).
        num_attributes: Values of the protected attribute it was trained against.
        settings: The training settings.
        history: Per epoch (or federated round), the adversary's and the utility head's
            accuracy on the anonymized training batches (at the drawn λ).
    """

    generator: MultimodalAnonymizer
    num_attributes: int
    settings: AnonymizerTraining
    history: list[dict[str, float]]


def refuse_ragged(arrays: MultimodalArrays, specs: tuple[ModalitySpec, ...]) -> None:
    """Raise ``ValueError`` if a float modality holds NaN (the padding of ragged series).

    The generator's encoders read every step, so one NaN would spread to the whole sample.
    """
    for spec in specs:
        if spec.kind != ModalityKind.TOKENS and np.isnan(arrays.inputs[spec.name]).any():
            raise ValueError(f"the anonymizer does not support ragged (NaN-padded) series yet: "
                             f"modality {spec.name!r} holds NaN padding; pad or crop the series "
                             "to one length")


def attribute_carrier(arrays: MultimodalArrays, attributes: np.ndarray,
                      num_attributes: int) -> MultimodalArrays:
    """``arrays`` with label and attribute packed in one column, ``y K + s``.

    A shuffling loader keeps them aligned that way; :func:`adversarial_step` unpacks them.

    Raises:
        ValueError: If ``attributes`` does not match ``arrays`` or lies outside ``[0, K)``.
    """
    attributes = np.asarray(attributes)
    if attributes.shape != (len(arrays),):
        raise ValueError(f"attributes must have shape ({len(arrays)},), got {attributes.shape}")
    if len(attributes) and not (0 <= attributes.min() and attributes.max() < num_attributes):
        raise ValueError(f"attributes must lie in [0, {num_attributes}), got values from "
                         f"{attributes.min()} to {attributes.max()}")
    return MultimodalArrays(inputs=arrays.inputs, mask=arrays.mask,
                            labels=arrays.labels * num_attributes + attributes)


def adversarial_step(models: AnonymizerModels, optimizers: tuple[torch.optim.Optimizer,
                                                                 torch.optim.Optimizer],
                     batch: list[torch.Tensor], settings: AnonymizerTraining
                     ) -> tuple[int, int, int]:
    """One critic step and one generator step (module docstring) on a packed batch.

    Returns:
        ``(adversary hits, utility hits, samples)`` of the generator step's batch.
    """
    generator, critics = models.generator, models.critics
    specs, num_attributes = generator.specs, models.num_attributes
    g_opt, c_opt = optimizers
    inputs, mask, packed = split_batch(batch, specs)
    labels, secret = packed // num_attributes, packed % num_attributes
    raw = inputs  # the utility head learns the task from these
    inputs = reframe(raw, mask, specs, torch.rand(len(labels)))  # what the generator rewrites
    strength = torch.rand(len(labels))
    fake, keep = generator(inputs, mask, strength)
    detached = {k: v.detach() for k, v in keep.items()}
    fake_view = sample_view(specs, {k: v.detach() for k, v in fake.items()}, mask, detached)
    real_view = sample_view(specs, raw, mask)
    for _ in range(settings.critic_steps):
        c_loss = (F.cross_entropy(critics.adversary(fake_view), secret)
                  + F.cross_entropy(critics.utility(real_view), labels)
                  + _realism_loss(critics, specs, inputs, fake, keep, mask, detach=True))
        c_opt.zero_grad()
        c_loss.backward()
        c_opt.step()

    view = sample_view(specs, fake, mask, keep)
    adversary_logits = critics.adversary(view)
    utility_logits = critics.utility(view)
    uniform_kl = math.log(num_attributes) + (
        F.softmax(adversary_logits, -1) * F.log_softmax(adversary_logits, -1)).sum(-1)
    float_specs = [s for s in specs if s.kind != ModalityKind.TOKENS]
    float_entries = sum(math.prod(s.shape) for s in float_specs)
    distortion = sum(((fake[s.name] - inputs[s.name]) ** 2).reshape(len(labels), -1).sum(1)
                     for s in float_specs) / float_entries if float_specs else 0.0
    g_loss = ((settings.adversary_weight * strength * uniform_kl
               + (1 - strength) * distortion).mean()
              + settings.utility_weight * F.cross_entropy(utility_logits, labels)
              + settings.realism_weight * _realism_loss(critics, specs, inputs, fake, keep,
                                                        mask, detach=False))
    g_opt.zero_grad()
    g_loss.backward()
    g_opt.step()
    return (int((adversary_logits.argmax(-1) == secret).sum()),
            int((utility_logits.argmax(-1) == labels).sum()), len(labels))


def train_anonymizer(arrays: MultimodalArrays, attributes: np.ndarray,
                     specs: tuple[ModalitySpec, ...], num_classes: int,
                     settings: AnonymizerTraining = AnonymizerTraining(),
                     num_attributes: int | None = None) -> TrainedAnonymizer:
    """Train generator and critics adversarially (module docstring) on one pool of samples.

    This is the centralized variant, for a consented donor pool and for the benchmark's
    reference; a run trains the anonymizer federatedly (:func:`local_anonymizer_update`).

    Args:
        arrays: The training samples.
        attributes: ``(N,)`` the protected attribute of each sample, ids in ``[0, K)``.
        specs: The modalities.
        num_classes: Task classes.
        settings: Training settings.
        num_attributes: ``K`` (default: the largest attribute plus one).

    Raises:
        ValueError: If ``attributes`` does not match ``arrays`` or holds fewer than 2 values.
    """
    attributes = np.asarray(attributes)
    if len(np.unique(attributes)) < 2:
        raise ValueError("the attribute adversary needs at least 2 attribute values, got "
                         f"{np.unique(attributes).tolist()}")
    num_attributes = num_attributes or int(attributes.max()) + 1
    refuse_ragged(arrays, specs)
    torch.manual_seed(settings.seed)
    models = AnonymizerModels(specs, num_attributes, num_classes, settings)
    optimizers = models.optimizers(settings.learning_rate)
    loader = make_loader(attribute_carrier(arrays, attributes, num_attributes), specs,
                         settings.batch_size, shuffle=True, seed=settings.seed)
    history = []
    for _ in range(settings.epochs):
        totals = np.zeros(3)
        for batch in loader:
            totals += adversarial_step(models, optimizers, batch, settings)
        history.append(_accuracies(totals))
    models.generator.eval()
    return TrainedAnonymizer(models.generator, num_attributes, settings, history)


def local_anonymizer_update(models: AnonymizerModels, arrays: MultimodalArrays,
                            attributes: np.ndarray, settings: AnonymizerTraining,
                            steps: int, seed: int) -> dict[str, float]:
    """A device's part of a federated anonymizer round: ``steps`` adversarial steps.

    The steps run on the device's own samples, from the weights the server sent, with fresh
    optimizers (as FedAvg's clients).

    With one protected value per device (a subject's own watch) the adversary sees one class
    locally; few local steps keep the average of the devices' updates close to the
    centralized gradient (FedSGD, McMahan et al. 2017, is the one-step limit).

    Returns:
        ``adversary-accuracy``, ``utility-accuracy`` and ``num-examples`` of the steps.
    """
    refuse_ragged(arrays, models.generator.specs)
    torch.manual_seed(seed)
    models.train()
    optimizers = models.optimizers(settings.learning_rate)
    loader = make_loader(attribute_carrier(arrays, attributes, models.num_attributes),
                         models.generator.specs, settings.batch_size, shuffle=True, seed=seed)
    totals = np.zeros(3)
    done = 0
    while done < steps and len(arrays):
        for batch in loader:
            totals += adversarial_step(models, optimizers, batch, settings)
            done += 1
            if done == steps:
                break
    return {**_accuracies(totals), records.NUM_EXAMPLES: float(totals[2])}


def _accuracies(totals: np.ndarray) -> dict[str, float]:
    seen = max(float(totals[2]), 1.0)
    return {records.ADVERSARY_ACCURACY: float(totals[0]) / seen,
            records.UTILITY_ACCURACY: float(totals[1]) / seen}


def _realism_loss(critics: AnonymizerCritics, specs: tuple[ModalitySpec, ...],
                  real: dict[str, torch.Tensor], fake: dict[str, torch.Tensor],
                  keep: dict[str, torch.Tensor], mask: torch.Tensor,
                  detach: bool) -> torch.Tensor:
    """Discriminators' loss (``detach``: real 1, fake 0) or generator's (fake 1)."""
    total = torch.zeros(())
    for j, spec in enumerate(specs):
        rows = mask[:, j].bool()
        if not rows.any():
            continue
        weights = keep.get(spec.name)
        fake_view = modality_view(spec, fake[spec.name][rows],
                                  None if weights is None else weights[rows])
        discriminator = critics.realism[spec.name]
        if detach:
            real_logits = discriminator(modality_view(spec, real[spec.name][rows]))
            fake_logits = discriminator(fake_view.detach())
            total = total + F.binary_cross_entropy_with_logits(
                real_logits, torch.ones_like(real_logits)) + F.binary_cross_entropy_with_logits(
                fake_logits, torch.zeros_like(fake_logits))
        else:
            fake_logits = discriminator(fake_view)
            total = total + F.binary_cross_entropy_with_logits(
                fake_logits, torch.ones_like(fake_logits))
    return total


@torch.no_grad()
def anonymize(generator: MultimodalAnonymizer, arrays: MultimodalArrays,
              knobs: AnonymizerKnobs, seed: int | None = None,
              batch_size: int = 256) -> MultimodalArrays:
    """``arrays`` anonymized at ``knobs``: same shapes, dtypes, mask and labels.

    Args:
        generator: A trained generator for ``arrays``' modalities.
        arrays: The samples.
        knobs: Strength, noise, discard ratio and reframing.
        seed: Seeds the reframing, code-noise, noise and discard draws (``None``: the
            operating system's entropy, so whoever receives the output cannot reproduce the
            draws, and so cannot undo the reframing).
        batch_size: Samples per forward pass.
    """
    specs = generator.specs
    refuse_ragged(arrays, specs)
    draws = torch.Generator()
    if seed is None:
        draws.seed()
    else:
        draws.manual_seed(seed)
    parts: dict[str, list[np.ndarray]] = {s.name: [] for s in specs}
    for start in range(0, len(arrays), batch_size):
        stop = min(start + batch_size, len(arrays))
        inputs = {s.name: torch.as_tensor(arrays.inputs[s.name][start:stop]) for s in specs}
        mask = torch.as_tensor(arrays.mask[start:stop])
        strength = torch.full((stop - start,), knobs.strength)
        if knobs.reframe:
            inputs = reframe(inputs, mask, specs, torch.full((stop - start,), knobs.reframe),
                             draws)
        outputs, _ = generator(inputs, mask, strength, knobs, draws)
        for spec in specs:
            parts[spec.name].append(outputs[spec.name].numpy().astype(spec.dtype))
    inputs = {name: (np.concatenate(chunks) if chunks else arrays.inputs[name])
              for name, chunks in parts.items()}
    return MultimodalArrays(inputs=inputs, mask=arrays.mask.copy(), labels=arrays.labels.copy())


def save_anonymizer(trained: TrainedAnonymizer, path: Path) -> None:
    """Write the generator, its modalities and its training settings to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state": trained.generator.state_dict(),
                "specs": [dataclasses.asdict(s) | {"kind": s.kind.value}
                          for s in trained.generator.specs],
                "num_attributes": trained.num_attributes,
                "settings": dataclasses.asdict(trained.settings),
                "history": trained.history}, path)


def generator_from_state(state: dict[str, torch.Tensor],
                         specs: tuple[ModalitySpec, ...]) -> MultimodalAnonymizer:
    """The generator whose weights are ``state`` (as a training message carries them).

    Raises:
        ValueError: If ``state`` is not a generator for ``specs``.
    """
    embedding = state.get("modality_embedding")
    if embedding is None or tuple(embedding.shape[:1]) != (len(specs),):
        raise ValueError(f"expected a generator for {len(specs)} modalities (a "
                         f"'modality_embedding' of {len(specs)} rows), got "
                         f"{None if embedding is None else tuple(embedding.shape)}")
    codes = [k for k in state if k.startswith("codes.") and k.endswith(".weight")]
    generator = MultimodalAnonymizer(specs, token_dim=int(embedding.shape[1]),
                                     code_dim=int(state[codes[0]].shape[0]) if codes else 0)
    try:
        generator.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"the generator's weights do not fit the modalities {specs}: "
                         f"{error}") from error
    generator.eval()
    return generator


def load_anonymizer(path: Path, specs: tuple[ModalitySpec, ...]) -> MultimodalAnonymizer:
    """The generator saved at ``path``, for a run whose modalities are ``specs``.

    Raises:
        ValueError: If ``path`` is not a saved anonymizer or was trained for other modalities.
    """
    if not Path(path).is_file():
        raise ValueError(f"anonymizer must name the anonymizer.pt of an earlier run "
                         f"(anonymizer-rounds), got {str(path)!r}, which does not exist")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(saved, dict) or "state" not in saved or "specs" not in saved:
        raise ValueError(f"{path} is not a saved anonymizer (expected the keys 'state' and "
                         f"'specs', got {sorted(saved) if isinstance(saved, dict) else saved!r})")
    trained_for = [ModalitySpec(d["name"], ModalityKind(d["kind"]), tuple(d["shape"]),
                                d["vocab_size"]) for d in saved["specs"]]
    if tuple(trained_for) != tuple(specs):
        raise ValueError(f"anonymizer {path} was trained for the modalities {trained_for}, "
                         f"this run has {list(specs)}")
    return generator_from_state(saved["state"], specs)
