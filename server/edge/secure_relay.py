"""An edge under secure aggregation: it relays one masked sum, never a device's update in clear.

Relay security (Zhang et al. 2024, arXiv:2410.14035): with ``secure-aggregation`` every device
of every edge belongs to one SecAgg+ cohort run by the cloud
(``server/secure_aggregation.py``), and its reply is its masked vector
``y_u = x_u + PRG(b_u) ± Σ PRG(s_uv)``. The edge takes a device's vector only under the index
the round's training message gave that node and in the cohort's word type
(:class:`RelayPlan`), once per device; it adds its devices' vectors modulo ``2**16`` or
``2**32`` (the words' width; the cloud reduces modulo its ``2**k``, which divides it) and sends
the sum with its members and each one's ``num-examples``. Pairwise masks between two devices
of the same edge cancel in that sum, but every self-mask ``PRG(b_u)`` stays: the edge cannot
remove it without ``t`` shares of ``b_u``, which travel encrypted between devices. So an edge
learns each device's masked vector and their masked sum, uniform noise to it, plus the
devices' metrics (``num-examples``, training loss) in the clear. The cloud learns the edges'
masked sums and, after unmasking, only the total over all surviving devices.

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
from fedmosaic.server.message_size import message_bytes
from fedmosaic.server.secure_aggregation import masked_words
from fedmosaic.server.validation import RejectedUpdate, ReplyContract

log = logging.getLogger("fedmosaic")


@dataclass(frozen=True)
class RelayPlan:
    """What a round's training messages told the devices, as an edge reads it.

    Attributes:
        indices: Node ID → the device's index in the round's cohort.
        dtype: The masked words' type (the cohort's encoding).
    """

    indices: dict[int, int]
    dtype: np.dtype

    @classmethod
    def of(cls, messages: Iterable[Message]) -> RelayPlan | None:
        """The plan of a round's training messages (``None`` if none went out)."""
        indices, dtype = {}, None
        for message in messages:
            sent = message.content.config_records[records.SECURE_AGGREGATION]
            indices[message.metadata.dst_node_id] = int(sent["index"])  # type: ignore[arg-type]
            dtype = np.dtype(np.uint16 if int(sent["bits"]) <= 16 else np.uint32)  # type: ignore[arg-type]
        return cls(indices, dtype) if dtype is not None else None


@dataclass
class MaskedSum:
    """One edge's running sum of masked vectors, its members and their ``num-examples``."""

    words: np.ndarray
    examples: dict[int, int] = field(default_factory=dict)
    metrics: list[dict[str, float]] = field(default_factory=list)
    bytes_in: int = 0


def masked_reply(reply: Message, contract: ReplyContract, size: int, plan: RelayPlan
                 ) -> tuple[int, int, np.ndarray]:
    """``(edge ID, member index, masked words)`` of a device's masked reply.

    Raises:
        RejectedUpdate: naming what does not fit: the records, the member (one, the sender's
            own index), the words (``size`` of the cohort's type), the metrics.
    """
    try:
        content = reply.content
        if records.SECAGG_MASKED not in content.array_records:
            raise RejectedUpdate("malformed", f"a device reply under secure aggregation carries "
                                              f"'{records.SECAGG_MASKED}', got "
                                              f"{sorted(content)[:10]}")
        metrics = content.metric_records[records.METRICS]
        contract.check_metrics(metrics, keys=(records.NUM_EXAMPLES, records.EDGE_ID,
                                              *records.EDGE_AGGREGATE_METRICS))
        members = list(content.config_records[records.SECURE_AGGREGATION]["members"])  # type: ignore[arg-type]
        own = plan.indices.get(reply.metadata.src_node_id)
        if members != [own] or own is None:
            raise RejectedUpdate("malformed", f"node {reply.metadata.src_node_id} is device "
                                              f"{own} of the cohort, its reply names "
                                              f"{members[:5]}")
        words = masked_words(content[records.SECAGG_MASKED][records.SECAGG_MASKED_WORDS],
                             size, plan.dtype)
    except (KeyError, TypeError, AttributeError, ValueError) as error:
        if isinstance(error, RejectedUpdate):
            raise
        raise RejectedUpdate("malformed", f"a masked reply of the wrong form: {error!r}"
                             ) from error
    return int(metrics[records.EDGE_ID]), own, words  # type: ignore[arg-type]


def relay_masked_sums(replies: Iterable[Message], contract: ReplyContract, size: int,
                      plan: RelayPlan, server_round: int
                      ) -> tuple[list[Message], dict[int, int], int]:
    """Each edge's reply to the cloud: its devices' masked sum, members and metrics.

    Args:
        replies: The devices' replies (error replies are skipped).
        contract: What a device's metrics must fit (``edge-id`` in range among them).
        size: Words of a masked vector (the model's values plus the weight).
        plan: The round's cohort indices and word type.
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
            edge, member, words = masked_reply(reply, contract, size, plan)
            if edge in sums and member in sums[edge].examples:
                raise RejectedUpdate("malformed", f"device {member} replied twice")
        except RejectedUpdate as error:
            log.warning("round %d: an edge rejected the masked reply of node %d: %s",
                        server_round, reply.metadata.src_node_id, error)
            rejected += 1
            continue
        total = sums.setdefault(edge, MaskedSum(np.zeros(size, dtype=plan.dtype)))
        metadata.setdefault(edge, reply.metadata)
        total.words += words  # wraps around modulo 2**16 or 2**32
        metrics = reply.content.metric_records[records.METRICS]
        total.examples[member] = int(metrics[records.NUM_EXAMPLES])  # type: ignore[call-overload]
        total.metrics.append({key: float(metrics[key])  # type: ignore[arg-type]
                              for key in records.EDGE_AGGREGATE_METRICS})
        total.bytes_in += message_bytes(reply)
    relayed = [Message(_relayed_content(sums[edge]), metadata=copy.copy(metadata[edge]))
               for edge in sorted(sums)]
    return relayed, {edge: sums[edge].bytes_in for edge in sums}, rejected


def _relayed_content(total: MaskedSum) -> RecordDict:
    examples = list(total.examples.values())
    means = {key: sum(m[key] * n for m, n in zip(total.metrics, examples, strict=True))
             / sum(examples) for key in records.EDGE_AGGREGATE_METRICS}
    members = sorted(total.examples)
    return RecordDict({
        records.SECAGG_MASKED: ArrayRecord({records.SECAGG_MASKED_WORDS: Array(total.words)}),
        records.SECURE_AGGREGATION: ConfigRecord({
            "members": members, "examples": [total.examples[u] for u in members]}),
        records.METRICS: MetricRecord({**means, records.NUM_EXAMPLES: sum(examples)}),
    })
