"""A device's training round as a pipeline of stages over one :class:`DeviceRound`.

:data:`TRAIN_STAGES` lists the stages in the order they run, one line each; every stage is a
plain function ``stage(state) -> None`` that reads what earlier stages left in the
:class:`DeviceRound` and adds its own part. A stage may finish the round early by setting
``state.reply`` and ``state.finished`` (DP-SGD refusing to exceed the budget); the remaining
stages are then skipped.
Adding a stage (an anonymizer before training, say) is one function and one line in
:data:`TRAIN_STAGES`. Secure aggregation masks the finished reply in a ClientApp mod
(``clients/secure_aggregation.py``), outside the replay of a repeated round.

==================  ==========================================================================
stage               contract
==================  ==========================================================================
load_partition      ``train_arrays`` and ``held_arrays``: the device's training split (node
                    config partition), without a modality it lacks
                    (``missing-modality-devices``)
anonymize_inputs    ``anonymize-training``: ``train_arrays`` through the anonymizer the message
                    carries, at the knobs it names (``anonymizer-knobs``)
poison_data         simulation only: a malicious device's data poisoning (label flips)
drop_modalities     ``modality-dropout``: each sample's modalities hidden at random, one kept
prepare_model       ``model``: the global weights, the device's personal parameters over them
                    (``personalization``); ``loader`` over ``train_arrays``
fit_personal_head   ``fedrep``: the personal head fitted on the frozen shared body
train_model         ``model`` trained (under ``fedrep`` its shared part only), ``result``,
                    DP-SGD ``metrics``; plain, or DP-SGD with ``dp=true`` (a refusal sets
                    ``reply``)
train_personal      ``ditto``: the device's personal model trained towards the global one
keep_personal       personal parameters stored on the device; ``model`` carries the global
                    values in their place, so the reply holds nothing personal
clip_update         ``central-dp=client``: ``w ← w_g + clip(w − w_g, C)``
poison_model        simulation only: a malicious device's model poisoning
reply_update        ``reply``: the full weights, or below an edge the compressed delta (under
                    ``secure-aggregation`` the weights, which the ClientApp's mod masks)
tamper_reply        simulation only: a rogue device breaks the reply contract
attach_telemetry    ``telemetry=true``: local-DP sensor summaries added to ``reply``
release_records     ``anonymizer-release``: anonymized records and the device's pseudonym
                    added to ``reply``
==================  ==========================================================================
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psutil
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from torch.utils.data import DataLoader

from fedmosaic import records
from fedmosaic.arrays import torch_state_dict
from fedmosaic.clients.device_state import PersonalStore
from fedmosaic.clients.edge_reply import edge_reply_content
from fedmosaic.clients.poisoning import ClientAttack
from fedmosaic.clients.private_training import train_private_round
from fedmosaic.clients.telemetry import publish_telemetry
from fedmosaic.config import RunConfig
from fedmosaic.data.absent_modalities import as_held
from fedmosaic.data.datasets import FederatedDataset
from fedmosaic.data.modality import ModalityKind, MultimodalArrays
from fedmosaic.models.fine_tuning import fine_tuned_parameters
from fedmosaic.models.multimodal import MultimodalClassifier
from fedmosaic.models.personalization import personal_keys, training_only
from fedmosaic.models.training import TrainResult, make_loader, train
from fedmosaic.privacy.anonymization import pseudonym
from fedmosaic.privacy.anonymizer.generator import MultimodalAnonymizer
from fedmosaic.privacy.anonymizer.knobs import AnonymizerKnobs
from fedmosaic.privacy.anonymizer.training import anonymize, generator_from_state
from fedmosaic.privacy.central import clip_model_update
from fedmosaic.task import build_model, cached_dataset, loss_weights


def partition_id(context: Context) -> int:
    """The device's partition, from its node config.

    Raises:
        ValueError: if the node config has no ``partition-id``.
    """
    if records.PARTITION_ID not in context.node_config:
        raise ValueError(
            f"node config needs '{records.PARTITION_ID}' (e.g. flower-supernode "
            f"--node-config '{records.PARTITION_ID}=0'), got keys "
            f"{sorted(context.node_config)}"
        )
    return int(context.node_config[records.PARTITION_ID])


@dataclass
class DeviceRound:
    """What one training round of a device carries from stage to stage.

    Attributes:
        message: The server's training message (global ``arrays``, training ``config``).
        context: The ClientApp's context (node config, persistent ``state``).
        config: The run config.
        dataset: The run's dataset.
        partition_id: The device's partition.
        received: The training message's config record (``lr``, ``server-round``, ...).
        attack: The device's simulated behaviour (a no-op on honest devices).
        train_arrays: The training samples (``load_partition``, ``anonymize_inputs``,
            ``poison_data``).
        held_arrays: The training samples as the device holds them (``load_partition``),
            what the release path anonymizes afresh.
        anonymizer: The generator the message carries, if any (``anonymize_inputs``).
        model: The model, holding the trained weights after ``train_model``.
        loader: The training loader over ``train_arrays`` (``prepare_model``).
        personal: The ``state_dict`` keys the device keeps to itself (``prepare_model``).
        result: The training result.
        metrics: Reply metrics added by the stages (DP-SGD's ``dp-*``).
        reply: The reply content.
        finished: Set by a stage that ends the round early; later stages are skipped.
    """

    message: Message
    context: Context
    config: RunConfig
    dataset: FederatedDataset
    partition_id: int
    received: dict[str, Any]
    attack: ClientAttack
    train_arrays: MultimodalArrays | None = None
    held_arrays: MultimodalArrays | None = None
    anonymizer: MultimodalAnonymizer | None = None
    model: MultimodalClassifier | None = None
    loader: DataLoader | None = None
    personal: frozenset[str] = frozenset()
    result: TrainResult | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    reply: RecordDict | None = None
    finished: bool = False

    @classmethod
    def start(cls, message: Message, context: Context) -> DeviceRound:
        """The state before the first stage: config, dataset and the device's identity."""
        config = RunConfig.from_mapping(context.run_config)
        device = partition_id(context)
        received = dict(message.content.config_records.get(records.CONFIG, {}))
        server_round = received.get(records.SERVER_ROUND, 1)
        return cls(message=message, context=context, config=config,
                   dataset=cached_dataset(config), partition_id=device, received=received,
                   attack=ClientAttack.for_partition(
                       config, device, server_round if isinstance(server_round, int) else 1))

    @property
    def global_arrays(self) -> ArrayRecord:
        """The global weights the round trains from."""
        return self.message.content[records.ARRAYS]

    @property
    def knobs(self) -> AnonymizerKnobs:
        """The anonymizer knobs the message names for this device (the run's by default)."""
        sent = self.message.content.config_records.get(records.ANONYMIZER_KNOBS)
        return AnonymizerKnobs.from_mapping(sent if sent is not None
                                            else self.config.to_mapping())

    @property
    def server_round(self) -> int:
        """The cloud's round (0 if the strategy does not send it)."""
        return int(self.received.get(records.SERVER_ROUND, 0))

    @property
    def learning_rate(self) -> float:
        """The learning rate the training config sends (the run's by default)."""
        return float(self.received.get(records.LEARNING_RATE, self.config.learning_rate))

    @property
    def personal_store(self) -> PersonalStore:
        """Where the device keeps its personal parameters."""
        return PersonalStore(self.config, self.context, self.partition_id)

    def seed(self, *purpose: int) -> int:
        """A seed for this device, round and ``purpose``, from the run's seed."""
        return int(np.random.SeedSequence([self.config.seed, self.partition_id,
                                           self.server_round, *purpose]).generate_state(1)[0])


Stage = Callable[[DeviceRound], None]


def load_partition(state: DeviceRound) -> None:
    """The device's training split of its partition (without a modality it lacks)."""
    train_arrays, _ = state.dataset.partition(state.partition_id)
    state.train_arrays = state.held_arrays = as_held(state.config, train_arrays,
                                                     state.partition_id, state.dataset.specs)


def anonymize_inputs(state: DeviceRound) -> None:
    """``anonymize-training``: train on the samples as the anonymizer rewrites them."""
    if records.ANONYMIZER not in state.message.content.array_records:
        return
    state.anonymizer = generator_from_state(
        state.message.content[records.ANONYMIZER].to_torch_state_dict(), state.dataset.specs)
    if state.config.anonymize_training:  # seeded: the samples never leave the device
        state.train_arrays = anonymize(state.anonymizer, state.train_arrays, state.knobs,
                                       seed=state.seed())


def poison_data(state: DeviceRound) -> None:
    """Simulation only: the training data as a malicious device uses it."""
    state.train_arrays = state.attack.poison_data(state.train_arrays, state.dataset.num_classes)


def drop_modalities(state: DeviceRound) -> None:
    """``modality-dropout``: hide modalities of the training samples at random (one kept)."""
    if state.config.modality_dropout > 0.0:
        state.train_arrays = state.train_arrays.drop_modalities(
            state.config.modality_dropout, np.random.default_rng(state.seed(1)))


def prepare_model(state: DeviceRound) -> None:
    """The model from the global weights with the device's personal parameters over them."""
    config = state.config
    model = build_model(config, state.dataset)
    model.load_state_dict(torch_state_dict(state.global_arrays))
    state.personal = personal_keys(model, config.personalization)
    if state.personal:
        state.personal_store.apply(model)
    state.model = model
    shuffle_seed = hash((config.seed, state.partition_id, state.server_round)) & 0x7FFF_FFFF
    state.loader = make_loader(state.train_arrays, state.dataset.specs, config.batch_size,
                               shuffle=True, seed=shuffle_seed)


def fit_personal_head(state: DeviceRound) -> None:
    """``fedrep``: fit the personal head on the frozen shared body (FedRep's first phase).

    Plain training, without DP-SGD: the head never leaves the device. Under ``dp=true`` this
    phase is skipped: a head fitted on the raw data would make every example's DP-SGD gradient
    of the body depend on all the others (through the head), which DP-SGD's bound does not
    cover; the head then trains with the body, in the same DP-SGD steps (FedPer's joint update,
    Arivazhagan et al. 2019), and stays on the device.
    """
    if state.config.personalization != "fedrep" or state.config.dp:
        return
    with training_only(state.model, state.personal):
        train(state.model, state.loader, state.dataset.specs, epochs=state.config.local_epochs,
              learning_rate=state.learning_rate, weights=loss_weights(state.config))


def train_model(state: DeviceRound) -> None:
    """Local training from the global weights: plain, or DP-SGD with ``dp=true``.

    Under ``fedrep`` without DP only the shared parameters train (the head stays as its first
    phase fitted it); ``fine-tune`` names what trains (``models/fine_tuning.py``). FedProx's
    ``proximal-mu`` and the learning rate come from the training config. A device whose DP-SGD
    round would exceed its budget refuses: it replies with the global weights,
    ``num-examples = 0`` and its DP metrics.
    """
    config, specs, model = state.config, state.dataset.specs, state.model
    head_fitted = config.personalization == "fedrep" and not config.dp
    shared = fine_tuned_parameters(model, config.fine_tune) - (
        state.personal if head_fitted else frozenset())
    proximal_mu = float(state.received.get(records.PROXIMAL_MU, 0.0))
    reference = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else None
    if not config.dp:
        with training_only(model, shared):
            state.result = train(model, state.loader, specs, epochs=config.local_epochs,
                                 learning_rate=state.learning_rate,
                                 weights=loss_weights(config), proximal_mu=proximal_mu,
                                 reference_params=reference)
        return
    if any(np.isnan(state.train_arrays.inputs[s.name]).any() for s in specs
           if s.kind == ModalityKind.SENSOR):
        raise ValueError("dp=true does not support ragged (NaN-padded) sensor series yet: "
                         "Opacus's per-sample gradients assume GroupNorm over every step; "
                         "pad or crop the series to one length")
    with training_only(model, shared):
        private = train_private_round(model, state.loader, specs, config, state.context,
                                      state.partition_id, state.received,
                                      learning_rate=state.learning_rate,
                                      proximal_mu=proximal_mu, reference_params=reference)
    state.metrics.update(private.metrics)
    state.result = private.result
    if private.result is None:  # the budget would be exceeded: refuse, send the weights back
        state.reply = RecordDict({records.ARRAYS: state.global_arrays,
                                  records.METRICS: MetricRecord({records.NUM_EXAMPLES: 0,
                                                                 **private.metrics})})
        state.finished = True


def train_personal(state: DeviceRound) -> None:
    r"""``ditto``: train the device's own personal model towards the global one.

    Its model :math:`v` minimises :math:`F_k(v) + \tfrac{\lambda}{2}\lVert v - w^t\rVert^2`
    (:math:`\lambda` = ``ditto-lambda``), from its last :math:`v` (the global :math:`w^t` at
    first). Plain training: :math:`v` never leaves the device, so it spends no ε.
    """
    if state.config.personalization != "ditto":
        return
    config, store = state.config, state.personal_store
    received = torch_state_dict(state.global_arrays)
    personal = build_model(config, state.dataset)
    personal.load_state_dict(received)
    store.apply(personal)
    train(personal, state.loader, state.dataset.specs, epochs=config.local_epochs,
          learning_rate=state.learning_rate, weights=loss_weights(config),
          proximal_mu=config.ditto_lambda,
          reference_params=[received[name] for name, _ in personal.named_parameters()])
    store.save(personal.state_dict())


def keep_personal(state: DeviceRound) -> None:
    """Store the personal parameters; put the global values in their place in ``model``.

    The reply then carries, for a personal key, exactly what the device received (a zero
    delta, which top-k compression does not even send): nothing personal leaves the device.
    """
    if not state.personal:
        return
    trained = state.model.state_dict()
    state.personal_store.save({key: trained[key] for key in state.personal})
    received = torch_state_dict(state.global_arrays)
    state.model.load_state_dict({key: received[key] for key in state.personal}, strict=False)


def clip_update(state: DeviceRound) -> None:
    """``central-dp=client``: clip the update to the norm the server's wrapper sent."""
    if state.config.central_dp == "client":
        clip_model_update(state.model, state.global_arrays, state.received)


def poison_model(state: DeviceRound) -> None:
    """Simulation only: replace the trained weights by what a malicious device sends."""
    state.attack.poison_model(state.model, state.global_arrays, state.server_round)


def reply_update(state: DeviceRound) -> None:
    """The reply: the weights and metrics, or below an edge the compressed delta."""
    metrics = MetricRecord({
        records.NUM_EXAMPLES: state.result.num_examples,
        records.TRAIN_LOSS: state.result.loss,
        records.EMBEDDING_VARIANCE: state.result.mean_embedding_variance,
        records.DATASET_SIZE: len(state.train_arrays),
        records.MODALITIES_HELD: [int(held) for held in state.train_arrays.mask.any(axis=0)],
        **device_load(),
        **state.attack.reply_metrics(),
        **state.metrics,
    })
    if state.config.num_edges and not state.config.secure_aggregation:
        state.reply = edge_reply_content(state.model.state_dict(), state.global_arrays,
                                         metrics, state.config, state.context,
                                         state.server_round)
    else:
        state.reply = RecordDict({records.ARRAYS: ArrayRecord(state.model.state_dict()),
                                  records.METRICS: metrics})


def device_load() -> dict[str, float]:
    """The device's CPU load (load average per core, capped at 1) and memory in use, in [0, 1].

    Reported to the server for risk perception's resource criterion (``privacy/risk``).
    """
    cpu = psutil.getloadavg()[0] / (psutil.cpu_count() or 1)
    return {records.CPU_LOAD: min(1.0, cpu),
            records.MEMORY_LOAD: psutil.virtual_memory().percent / 100.0}


def tamper_reply(state: DeviceRound) -> None:
    """Simulation only: a rogue device (``attack=malformed``) breaks its reply's contract."""
    state.attack.tamper_reply(state.reply)


def attach_telemetry(state: DeviceRound) -> None:
    """``telemetry=true``: this round's local-DP sensor summaries, in the reply."""
    if state.config.telemetry:
        state.reply[records.TELEMETRY] = publish_telemetry(
            state.train_arrays, state.dataset.specs, state.config, state.context)


def release_records(state: DeviceRound) -> None:
    """``anonymizer-release``: publish up to that many anonymized records under a pseudonym.

    The records are drawn at random from the training split as the device holds it and
    rewritten by the anonymizer with draws from the operating system's entropy (the training
    path's rewrite is seeded from the run's seed, which the server knows: its reframing and
    noise could be replayed and undone). The pseudonym is the HMAC of the
    device's partition under a key the device draws once and keeps in its context state, so
    the server can link a device's releases but cannot recompute whose they are.
    """
    count = min(state.config.anonymizer_release, len(state.held_arrays))
    if not count or state.anonymizer is None:
        return
    picked = np.random.default_rng().choice(len(state.held_arrays), count, replace=False)
    released = anonymize(state.anonymizer, state.held_arrays.subset(np.sort(picked)),
                         state.knobs)
    state.reply[records.RELEASE] = ArrayRecord({
        **{name: Array(values) for name, values in released.inputs.items()},
        "mask": Array(released.mask), "labels": Array(released.labels)})
    state.reply[records.RELEASE_META] = ConfigRecord({
        records.PSEUDONYM: pseudonym(str(state.partition_id), device_key(state.context))})


def device_key(context: Context) -> bytes:
    """The device's secret pseudonym key, drawn once and kept in its context state."""
    saved = context.state.config_records.get(records.PSEUDONYM_KEY)
    if saved is None:
        saved = ConfigRecord({"key": secrets.token_bytes(32)})
        context.state[records.PSEUDONYM_KEY] = saved
    return bytes(saved["key"])


TRAIN_STAGES: tuple[Stage, ...] = (
    load_partition,
    anonymize_inputs,
    poison_data,
    drop_modalities,
    prepare_model,
    fit_personal_head,
    train_model,
    train_personal,
    keep_personal,
    clip_update,
    poison_model,
    reply_update,
    tamper_reply,
    attach_telemetry,
    release_records,
)
"""The device's training round, in order (module docstring)."""


def run_train_round(message: Message, context: Context,
                    stages: tuple[Stage, ...] = TRAIN_STAGES) -> Message:
    """Run ``stages`` over one training message; reply with the ``reply`` they built.

    Raises:
        RuntimeError: if no stage built a reply.
    """
    state = DeviceRound.start(message, context)
    for stage in stages:
        if state.finished:
            break
        stage(state)
    if state.reply is None:
        raise RuntimeError(f"the device round's stages {[s.__name__ for s in stages]} built no "
                           "reply")
    return Message(content=state.reply, reply_to=message)
