"""An edge under secure aggregation: it relays one masked sum, never a device's update in clear.

Relay security (Zhang et al. 2024, arXiv:2410.14035): with ``secure-aggregation`` every device
of every edge belongs to one SecAgg+ cohort run by the cloud
(``server/secure_aggregation.py``), and its reply is its masked vector
``y_u = x_u + PRG(b_u) ± Σ PRG(s_uv)``. The edge adds its devices' vectors modulo ``2**16`` or
``2**32`` (the words' width; the cloud reduces modulo its ``2**k``, which divides it) and sends
the sum with the list of its members. Pairwise masks between two devices of the same edge
cancel in that sum, but every self-mask ``PRG(b_u)`` stays: the edge cannot remove it without
``t`` shares of ``b_u``, which travel encrypted between devices. So an edge learns each
device's masked vector and their masked sum, uniform noise to it, plus the devices' metrics
(``num-examples``, training loss) in the clear. The cloud learns the edges' masked sums and,
after unmasking, only the total over all surviving devices.

Top-k and quantization of the edge→cloud hop (``edge-topk``, ``edge-bits``) do not apply to a
masked sum (dropping or rounding masked words breaks the cancellation): its words travel at
the masked width.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedmosaic import records
from fedmosaic.server.traffic import message_bytes
from fedmosaic.server.validation import RejectedUpdate, ReplyContract

log = logging.getLogger("fedmosaic")

AVERAGED = (records.TRAIN_LOSS, records.EMBEDDING_VARIANCE, records.DATASET_SIZE)
"""Metrics an edge's relayed reply carries as its devices' examples-weighted means."""


@dataclass
class MaskedSum:
    """One edge's running sum of masked vectors."""

    words: np.ndarray
    members: list[int] = field(default_factory=list)
    examples: list[float] = field(default_factory=list)
    metrics: list[dict[str, float]] = field(default_factory=list)
    bytes_in: int = 0


def masked_reply(reply: Message, contract: ReplyContract, size: int) -> tuple[int, int, np.ndarray]:
    """``(edge ID, member index, masked words)`` of a device's masked reply.

    Raises:
        RejectedUpdate: naming what does not fit: the records, the member, the words.
    """
    content = reply.content
    if records.SECAGG_MASKED not in content.array_records:
        raise RejectedUpdate("malformed", f"a device reply under secure aggregation carries "
                                          f"'{records.SECAGG_MASKED}', got {sorted(content)[:10]}")
    metrics = content.metric_records[records.METRICS]
    contract.check_metrics(metrics, keys=(records.NUM_EXAMPLES, records.EDGE_ID, *AVERAGED))
    members = content.config_records.get(records.SECURE_AGGREGATION, {}).get("members", [])
    if len(members) != 1 or not isinstance(members[0], int) or isinstance(members[0], bool):
        raise RejectedUpdate("malformed", f"a device's masked reply names one member, got "
                                          f"{list(members)[:5]}")
    words = content[records.SECAGG_MASKED][records.SECAGG_MASKED_WORDS].numpy()
    if words.dtype not in (np.uint16, np.uint32) or words.shape != (size,):
        raise RejectedUpdate("malformed", f"expected {size} masked words of uint16 or uint32, "
                                          f"got shape {words.shape} of {words.dtype}")
    return int(metrics[records.EDGE_ID]), int(members[0]), words  # type: ignore[arg-type]


def relay_masked_sums(replies: Iterable[Message], contract: ReplyContract, size: int,
                      server_round: int) -> tuple[list[Message], dict[int, int], int]:
    """Each edge's reply to the cloud: its devices' masked sum, members and metrics.

    Args:
        replies: The devices' replies (error replies are skipped).
        contract: What a device's metrics must fit (``edge-id`` in range among them).
        size: Words of a masked vector (the model's values plus the weight).
        server_round: For the log.

    Returns:
        ``(edge replies, device bytes by edge, rejected device replies)``.
    """
    sums: dict[int, MaskedSum] = {}
    metadata = {}
    rejected = 0
    for reply in replies:
        if reply.has_error():
            continue
        try:
            edge, member, words = masked_reply(reply, contract, size)
            if edge in sums and words.dtype != sums[edge].words.dtype:
                raise RejectedUpdate("malformed", f"masked words of {words.dtype}, the edge's "
                                                  f"others are {sums[edge].words.dtype}")
        except RejectedUpdate as error:
            log.warning("round %d: an edge rejected the masked reply of node %d: %s",
                        server_round, reply.metadata.src_node_id, error)
            rejected += 1
            continue
        total = sums.setdefault(edge, MaskedSum(np.zeros(size, dtype=words.dtype)))
        metadata.setdefault(edge, reply.metadata)
        total.words += words  # wraps around modulo 2**16 or 2**32
        total.members.append(member)
        metrics = reply.content.metric_records[records.METRICS]
        total.examples.append(float(metrics[records.NUM_EXAMPLES]))  # type: ignore[arg-type]
        total.metrics.append({key: float(metrics[key]) for key in AVERAGED})  # type: ignore[arg-type]
        total.bytes_in += message_bytes(reply)
    relayed = [Message(_relayed_content(sums[edge]), metadata=copy.copy(metadata[edge]))
               for edge in sorted(sums)]
    return relayed, {edge: sums[edge].bytes_in for edge in sums}, rejected


def _relayed_content(total: MaskedSum) -> RecordDict:
    examples = sum(total.examples) or 1.0
    means = {key: sum(m[key] * n for m, n in zip(total.metrics, total.examples, strict=True))
             / examples for key in AVERAGED}
    return RecordDict({
        records.SECAGG_MASKED: ArrayRecord({records.SECAGG_MASKED_WORDS: Array(total.words)}),
        records.SECURE_AGGREGATION: ConfigRecord({"members": sorted(total.members)}),
        records.METRICS: MetricRecord({**means,
                                       records.NUM_EXAMPLES: int(sum(total.examples))}),
    })
