r"""Federated training of the GAN anonymizer: Flower rounds before the model's rounds.

No raw sample leaves a device. Each round the server samples ``train_nodes`` devices and
sends them the generator's and the critics' weights in a ``train.anonymizer`` message; each
device runs ``anonymizer-steps`` adversarial steps on its own samples against its own value of
the protected attribute (:func:`~fedmosaic.privacy.anonymizer.training.local_anonymizer_update`)
and replies with the weights; the server averages them weighted by examples (FedAvg, McMahan et
al. 2017). The attribute adversary thereby learns to tell every device's subject (or site)
apart although each device holds one value, as in federated adversarial debiasing (FADE, Hong
et al. 2021): the averaged update of few local steps approximates the centralized gradient.

A reply is validated as a model update is (:func:`~fedmosaic.server.validation.validate_update`:
the arrays sent, their shapes and dtypes, finite values), its ``num-examples`` is at most what
``anonymizer-steps`` batches hold (so no device outweighs the others), its accuracies lie in
[0, 1] and its buffers (the code noise: a setting, not a weight) come back unchanged;
a rejected or failed reply is logged and counted, and the round averages the rest (a round with
none keeps the weights).
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass, field

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords, sample_nodes

from fedmosaic import records
from fedmosaic.config import RunConfig
from fedmosaic.data.datasets import FederatedDataset
from fedmosaic.privacy.anonymizer.training import AnonymizerModels, AnonymizerTraining
from fedmosaic.server.message_size import message_bytes
from fedmosaic.server.validation import (
    MetricRule,
    RejectedUpdate,
    Rejections,
    ReplyContract,
    require_records,
    validate_update,
)

log = logging.getLogger("fedmosaic")

ANONYMIZER_MESSAGE_TYPE = f"{MessageType.TRAIN}.{records.ANONYMIZER_ACTION}"


@dataclass
class AnonymizerRounds:
    """The outcome of the anonymizer's federated rounds.

    Attributes:
        models: The averaged generator and critics.
        history: Per round: the example-weighted adversary and utility accuracy of the
            accepted replies, replies, failures, rejections and bytes both ways.
        rejections: Rejected replies per round and reason.
    """

    models: AnonymizerModels
    history: list[dict[str, float]] = field(default_factory=list)
    rejections: Rejections = field(default_factory=Rejections)


def anonymizer_models(config: RunConfig, dataset: FederatedDataset) -> AnonymizerModels:
    """Fresh generator and critics for ``dataset``, seeded by the run's seed."""
    torch.manual_seed(config.seed)
    return AnonymizerModels(dataset.specs, dataset.num_sensitive_values, dataset.num_classes,
                            AnonymizerTraining.from_config(config))


def train_federated_anonymizer(grid: Grid, config: RunConfig,
                               dataset: FederatedDataset) -> AnonymizerRounds:
    """Run ``anonymizer-rounds`` federated anonymizer rounds over ``grid`` (module docstring).

    Raises:
        ValueError: If the dataset declares no sensitive attribute.
    """
    if dataset.sensitive_attribute is None:
        dataset.sensitive_value(0)  # raises the dataset's explanation
    outcome = AnonymizerRounds(anonymizer_models(config, dataset))
    most_examples = config.anonymizer_steps * config.batch_size
    for server_round in range(1, config.anonymizer_rounds + 1):
        reference = ArrayRecord(outcome.models.state_dict())
        sampled, _ = sample_nodes(grid, config.train_nodes, config.train_nodes)
        content = RecordDict({records.ANONYMIZER_MODELS: reference,
                              records.CONFIG: ConfigRecord({records.SERVER_ROUND: server_round})})
        messages = [Message(content=content, dst_node_id=node, message_type=ANONYMIZER_MESSAGE_TYPE)
                    for node in sampled]
        replies = list(grid.send_and_receive(messages))
        accepted, failed = [], 0
        reference_arrays = {k: a.numpy() for k, a in reference.items()}
        buffers = [name for name, _ in outcome.models.named_buffers()]
        for reply in replies:
            if reply.has_error():
                failed += 1
                log.warning("anonymizer round %d: node %d failed: %s", server_round,
                            reply.metadata.src_node_id, reply.error.reason)
                continue
            try:
                check_anonymizer_reply(reply, reference_arrays, most_examples, buffers)
            except RejectedUpdate as rejected:
                outcome.rejections.add(server_round, rejected.reason)
                log.warning("anonymizer round %d: rejected node %d: %s", server_round,
                            reply.metadata.src_node_id, rejected)
                continue
            accepted.append(reply.content)
        norms = {"generator-update-norm": 0.0, "critics-update-norm": 0.0}
        if accepted:
            averaged = aggregate_arrayrecords(accepted, records.NUM_EXAMPLES)
            norms = update_norms({k: a.numpy() for k, a in averaged.items()}, reference_arrays)
            outcome.models.load_state_dict(averaged.to_torch_state_dict())
        outcome.history.append({
            "round": server_round,
            **_weighted_accuracies(accepted),
            **norms,
            "replies": len(accepted),
            "failed": failed,
            "rejected": outcome.rejections.count(server_round),
            "bytes-down": sum(message_bytes(m) for m in messages),
            "bytes-up": sum(message_bytes(r) for r in replies),
        })
        log.info("anonymizer round %d/%d: %s", server_round, config.anonymizer_rounds,
                 outcome.history[-1])
    outcome.models.eval()
    return outcome


def update_norms(averaged: dict[str, np.ndarray], reference: dict[str, np.ndarray]
                 ) -> dict[str, float]:
    """L2 norms of the round's averaged update of the generator and of the critics.

    The averaged update of a few Adam steps is the server's view of the adversarial game's
    gradient signal (the controller's observation, as the IoT-anonymization design uses the
    generator's and discriminators' gradient norms). Buffers add nothing: a sound reply leaves
    them unchanged.
    """
    totals = {"generator": 0.0, "critics": 0.0}
    for name, value in averaged.items():
        part = name.split(".", 1)[0]
        if part in totals and np.issubdtype(value.dtype, np.floating):
            totals[part] += float(np.sum((value.astype(np.float64)
                                          - reference[name].astype(np.float64)) ** 2))
    return {f"{part}-update-norm": float(np.sqrt(total)) for part, total in totals.items()}


def check_anonymizer_reply(reply: Message, reference: dict[str, np.ndarray],
                           most_examples: int, buffers: Collection[str] = ()) -> None:
    """Raise :class:`RejectedUpdate` unless ``reply`` is a sound anonymizer update.

    Args:
        reply: The device's reply.
        reference: The weights the round sent (``{name: array}``).
        most_examples: The most examples one device's steps can use
            (``anonymizer-steps × batch-size``); a claim above it would outweigh the others.
        buffers: Entries that are settings, not weights (the code noise): a device must
            send them back unchanged.
    """
    content = reply.content
    require_records(content, records.ANONYMIZER_MODELS, "an anonymizer reply")
    metrics = dict(content.metric_records[records.METRICS])
    ReplyContract({records.NUM_EXAMPLES: MetricRule(1, most_examples, integer=True),
                   records.ADVERSARY_ACCURACY: MetricRule(0.0, 1.0),
                   records.UTILITY_ACCURACY: MetricRule(0.0, 1.0)},
                  most_examples).check_metrics(metrics)
    try:
        update = {k: a.numpy() for k, a in content.array_records[records.ANONYMIZER_MODELS].items()}
    except Exception as error:  # a payload that does not deserialize  # noqa: BLE001
        raise RejectedUpdate("malformed", f"arrays do not decode ({error})") from error
    validate_update(update, reference, metrics[records.NUM_EXAMPLES],
                    declared_examples=most_examples)
    for name in buffers:
        if not np.array_equal(update[name], reference[name]):
            raise RejectedUpdate("malformed", f"{name!r} is a setting of the anonymizer, not a "
                                              f"weight: it must come back as sent, "
                                              f"{reference[name].tolist()}")


def _weighted_accuracies(accepted: list[RecordDict]) -> dict[str, float]:
    """Example-weighted mean adversary and utility accuracy of the accepted replies."""
    weights = [float(c[records.METRICS][records.NUM_EXAMPLES]) for c in accepted]
    total = sum(weights) or 1.0
    return {key: sum(w * float(c[records.METRICS][key]) for w, c in zip(weights, accepted,
                                                                        strict=True)) / total
            for key in (records.ADVERSARY_ACCURACY, records.UTILITY_ACCURACY)}
