"""Secure aggregation as a stage of the server chain: SecAgg+ on Flower's Message API.

:class:`SecureAggregationServer` is the server's side of the protocol over a grid; the chain's
:class:`SecureAggregationStage` runs it around every training round, and a deployed edge
runs it around its sub-round (per-edge secure aggregation, ``server/edge/edge_server.py``).

:class:`SecureAggregationStage` runs the server's side of SecAgg+ (Bell et al. 2020;
``privacy/secure_aggregation``) around every training round, with any strategy that needs only
the weighted sum (``config.SUM_STRATEGIES``):

1. ``configure_train``: the aggregator samples the round's devices as usual; the stage asks
   them for keys (``query.secagg_keys``), forms the cohort and its neighbour graph, collects
   the encrypted shares (``query.secagg_share``), and adds to each training message the
   device's index, the encoding and the shares routed to it. A device that does not answer a
   stage (an error reply, no reply within ``round-timeout``, a malformed answer, a key that is
   not a P-384 point or is another device's too) is dropped from the round there; fewer
   devices than the threshold, and the round is skipped.
2. ``aggregate_train``: it sums the masked replies (each one device's, or an edge's relayed sum
   of its devices', ``server/edge/secure_relay.py``), asks the survivors for shares
   (``query.secagg_unmask``), removes the masks, decodes the weighted mean update, and hands
   the inner stages one reply, sent by the server (``SUPERLINK_NODE_ID``): ``w_global + Δ̄``
   with the summed ``num-examples``, the examples-weighted means of the other metrics
   (``ReplyContract.for_edge_aggregates``) and each device's weight ``min(n, W)``.

What each tier sees: a device's reply is its masked vector (uniform modulo ``2**k`` without
the masks' seeds) plus its metrics in the clear (``num-examples``, training loss, DP-SGD's
metadata, which the ledger needs); an edge sees its devices' masked vectors and sends their
masked sum; the server sees masked vectors (or sums) and, after unmasking, the sum of all
survivors' updates. A masked reply whose format is wrong (shape, dtype, an index not in the
cohort or, from a device, not its own, one counted twice, metrics outside the device
contract) is rejected with its reason and counted, and its device is unmasked as dropped.

The stage sits inside the privacy ledger (which reads each reply's DP metadata) and outside
validation (which checks the aggregate's shape, finiteness and norm).
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    Metadata,
    MetricRecord,
    RecordDict,
)
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedmosaic import records
from fedmosaic.privacy.secure_aggregation import Cohort, ProtocolError
from fedmosaic.privacy.secure_aggregation.keys import public_key
from fedmosaic.server.traffic import RoundTraffic
from fedmosaic.server.validation import Rejections, ReplyContract
from fedmosaic.strategies.wrapper import StrategyWrapper

log = logging.getLogger("fedmosaic")


@dataclass
class ProtocolFigures:
    """One round's protocol counts.

    Attributes:
        cohort: Devices that advertised keys.
        dropped: Devices dropped at each stage (``keys``, ``share``, ``mask``, ``unmask``).
        traffic: Bytes and messages of the protocol's own exchanges (not the training ones).
    """

    cohort: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    traffic: RoundTraffic = field(default_factory=RoundTraffic)


@dataclass
class SecureRound:
    """One open round: what ``aggregate_train`` needs from ``configure_train``.

    Attributes:
        reference: The global arrays of the round, by name.
        grid: The grid the round's stages talk through.
        figures: The round's counts.
        cohort: The cohort (``None`` until stage 1 ended, or when the round was skipped).
    """

    reference: dict[str, np.ndarray]
    grid: Grid
    figures: ProtocolFigures
    cohort: Cohort | None = None


class SecureAggregationServer:
    """The server's side of SecAgg+ rounds over a grid (module docstring).

    The cloud's :class:`SecureAggregationStage` runs it around the chain's training rounds;
    a deployed edge runs it around its sub-round (``server/edge/edge_server.py``).

    Args:
        clip: ``secure-aggregation-clip``.
        max_weight: ``secure-aggregation-max-weight``.
        device_bits: ``device-bits`` (the codes' levels).
        timeout: Seconds each protocol exchange waits for replies (``round-timeout``).
        contract: What a reply's metrics must fit: a device's (flat), or an edge's.
        relayed: Whether the replies are edges' relayed sums (``num-edges > 0``), which name
            their members and each member's ``num-examples``; otherwise each reply is one
            device's and must name that device's own index.
    """

    def __init__(self, clip: float, max_weight: int, device_bits: int, timeout: float,
                 contract: ReplyContract, relayed: bool = False) -> None:
        self.clip, self.max_weight, self.device_bits = clip, max_weight, device_bits
        self.timeout, self.contract, self.relayed = timeout, contract, relayed
        self.figures: dict[int, ProtocolFigures] = {}
        self._open: dict[int, SecureRound] = {}
        self.rejections = Rejections()

    def open(self, server_round: int, reference: Mapping[str, np.ndarray], grid: Grid,
             messages: Iterable[Message]) -> list[Message]:
        """Stages 1 and 2 with the devices ``messages`` go to.

        Returns the messages of the devices that shared their keys, each with its index, the
        encoding and its shares; none if the round is skipped.

        Args:
            server_round: The round (what the devices' sessions are keyed on).
            reference: The global arrays the devices train from, by name.
            grid: The grid to the devices.
            messages: The round's training messages.
        """
        messages = list(messages)
        self.figures[server_round] = ProtocolFigures()
        state = self._open[server_round] = SecureRound(dict(reference), grid,
                                                       self.figures[server_round])
        keys = self._advertise(server_round, state, [m.metadata.dst_node_id for m in messages])
        try:
            state.cohort = Cohort.form(keys, self.clip, self.max_weight, self.device_bits)
            state.figures.cohort = len(state.cohort.nodes)
            state.figures.dropped["keys"] += len(keys) - len(state.cohort.nodes)
            inboxes = state.cohort.route(self._share(server_round, state))
            state.cohort.request(set(inboxes))  # enough sharers to go on?
        except ProtocolError as error:
            log.warning("round %d skipped: secure aggregation stopped before training: %s",
                        server_round, error)
            state.cohort = None
            return []
        cohort = state.cohort
        sent = []
        for message in messages:
            node = message.metadata.dst_node_id
            if node not in cohort.nodes.values() or cohort.index_of(node) not in inboxes:
                continue
            index = cohort.index_of(node)
            content = RecordDict(dict(message.content.items()))
            content[records.SECURE_AGGREGATION] = ConfigRecord({
                records.SERVER_ROUND: server_round, "index": index,
                "clip": cohort.encoding.clip, "levels": cohort.encoding.levels,
                "max-weight": cohort.encoding.max_weight, "bits": cohort.encoding.bits})
            senders = sorted(inboxes[index])
            content[records.SECAGG_SHARES] = ConfigRecord({
                "senders": senders, "ciphertexts": [inboxes[index][v] for v in senders]})
            message.content = content
            sent.append(message)
        return sent

    def close(self, server_round: int, replies: Iterable[Message]) -> Message | None:
        """Stage 4: the unmasked aggregate of the masked replies, as one reply from the server.

        ``None`` if the round was skipped or cannot be unmasked. Error replies are the
        caller's to pass on.
        """
        state = self._open.pop(server_round, None)
        if state is None or state.cohort is None:
            return None
        cohort = state.cohort
        total = np.zeros(sum(a.size for a in state.reference.values()) + 1, dtype=np.uint64)
        examples: dict[int, int] = {}  # survivor index → its num-examples
        accepted: list[Message] = []
        for reply in replies:
            if reply.has_error():
                continue
            try:
                members, masked = self._masked(reply, cohort, total.size, set(examples))
            except ValueError as error:
                log.warning("round %d: rejected a masked reply from node %d: %s", server_round,
                            reply.metadata.src_node_id, error)
                self.rejections.add(server_round, "secure-aggregation")
                continue
            examples |= members
            total = (total + masked) & np.uint64(cohort.encoding.modulus - 1)
            accepted.append(reply)
        survivors = set(examples)
        state.figures.dropped["mask"] += len(cohort.sharers - survivors)
        try:
            alive, dropped = cohort.request(survivors)
            answers = self._unmask(server_round, state, alive, dropped)
            summed = cohort.unmask(total, alive, answers)
            mean, _ = cohort.encoding.decode(summed, len(alive))
        except (ProtocolError, ValueError) as error:
            log.warning("round %d skipped: secure aggregation could not unmask: %s",
                        server_round, error)
            return None
        weights = [cohort.encoding.weight(examples[u]) for u in sorted(alive)]
        if int(summed[-1]) != sum(weights):  # the sum's weights are what central DP accounts
            log.warning("round %d skipped: the unmasked weights add up to %d, the replies' "
                        "num-examples to %d", server_round, int(summed[-1]), sum(weights))
            return None
        return Message(_aggregate_content(accepted, mean, state.reference, weights),
                       metadata=_from_the_server(accepted[0].metadata))

    def round_figures(self, server_round: int) -> dict[str, object]:
        """A round's protocol figures for its :class:`~fedmosaic.server.recorder.RoundRecord`."""
        figures = self.figures.get(server_round)
        if figures is None:
            return {}
        return {"bytes_down": figures.traffic.bytes_down, "bytes_up": figures.traffic.bytes_up,
                "cohort": figures.cohort, "dropped": dict(figures.dropped)}

    def _exchange(self, server_round: int, state: SecureRound, action: str,
                  contents: Mapping[int, dict]) -> dict[int, ConfigRecord]:
        """Send each node its content as ``query.<action>``; the well-formed answers by node."""
        messages = [state.grid.create_message(
            RecordDict({records.SECURE_AGGREGATION: ConfigRecord(
                {records.SERVER_ROUND: server_round, **content})}),
            f"query.{action}", node, str(server_round)) for node, content in contents.items()]
        state.figures.traffic.add_down(messages)
        replies = list(state.grid.send_and_receive(messages, timeout=self.timeout))
        state.figures.traffic.add_up(replies)
        asked = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}
        answers = {}
        for reply in replies:
            node = asked.get(reply.metadata.reply_to_message_id)
            if node is None or reply.has_error():
                continue
            answer = reply.content.config_records.get(records.SECURE_AGGREGATION)
            if answer is not None:
                answers[node] = answer
        return answers

    def _advertise(self, server_round: int, state: SecureRound,
                   nodes: list[int]) -> dict[int, tuple[bytes, bytes]]:
        """Stage 1: the public keys of the nodes that answered (each a point of the curve)."""
        keys = {}
        for node, answer in self._exchange(server_round, state, records.SECAGG_KEYS_ACTION,
                                           {node: {} for node in nodes}).items():
            try:
                pair = (answer.get("c-public"), answer.get("s-public"))
                for key in pair:
                    public_key(key)  # type: ignore[arg-type]
                keys[node] = pair
            except ValueError as error:
                log.warning("round %d: node %d sent unusable keys: %s", server_round, node, error)
        state.figures.dropped["keys"] += len(nodes) - len(keys)
        return keys

    def _share(self, server_round: int, state: SecureRound) -> dict[int, dict[int, bytes]]:
        """Stage 2: each answering device's ciphertexts, by receiver index."""
        cohort = state.cohort
        contents = {}
        for index, node in cohort.nodes.items():
            peers = cohort.neighbourhood(index)
            contents[node] = {"index": index, "threshold": cohort.threshold(index),
                              "neighbours": list(peers),
                              "neighbour-c": [keys[0] for keys in peers.values()],
                              "neighbour-s": [keys[1] for keys in peers.values()]}
        sealed = {}
        for node, answer in self._exchange(server_round, state, records.SECAGG_SHARE_ACTION,
                                           contents).items():
            index = cohort.index_of(node)
            try:
                receivers = [_index(v) for v in answer["receivers"]]  # type: ignore[union-attr]
                outbox = dict(zip(receivers, map(_bytes, answer["ciphertexts"]),  # type: ignore[arg-type]
                                  strict=True))
                if set(outbox) != cohort.neighbours[index]:
                    raise ValueError(f"addressed {sorted(outbox)[:5]}, not its neighbours")
            except (KeyError, TypeError, ValueError, OverflowError) as error:
                log.warning("round %d: node %d sent unusable shares: %s", server_round, node,
                            error)
                continue
            sealed[index] = outbox
        state.figures.dropped["share"] += len(cohort.nodes) - len(sealed)
        return sealed

    def _masked(self, reply: Message, cohort: Cohort, size: int,
                counted: set[int]) -> tuple[dict[int, int], np.ndarray]:
        """The members (index → ``num-examples``) and masked vector of a reply that fits.

        Raises:
            ValueError: naming what is wrong (a missing record or key included).
        """
        try:
            return self._read_masked(reply, cohort, size, counted)
        except (KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"a masked reply of the wrong form: {error!r}") from error

    def _read_masked(self, reply: Message, cohort: Cohort, size: int,
                     counted: set[int]) -> tuple[dict[int, int], np.ndarray]:
        content = reply.content
        if records.SECAGG_MASKED not in content.array_records:
            raise ValueError(f"a training reply under secure aggregation carries "
                             f"'{records.SECAGG_MASKED}', got records {sorted(content.keys())}")
        metrics = content.metric_records[records.METRICS]
        self.contract.check_metrics(metrics, keys=(records.NUM_EXAMPLES,
                                                   *records.EDGE_AGGREGATE_METRICS))
        secure = content.config_records[records.SECURE_AGGREGATION]
        listed = list(secure["members"])  # type: ignore[arg-type]
        examples = (list(secure["examples"]) if self.relayed  # type: ignore[arg-type]
                    else [metrics[records.NUM_EXAMPLES]])
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                   for v in listed + examples):
            raise ValueError(f"members and their examples must be positive integers, got "
                             f"{listed[:5]} and {examples[:5]}")
        if len(examples) != len(listed) or sum(examples) != metrics[records.NUM_EXAMPLES]:
            raise ValueError(f"the members' examples {examples[:5]} do not add up to "
                             f"num-examples {metrics[records.NUM_EXAMPLES]}")
        members = dict(zip(listed, examples, strict=True))
        if (not members or len(members) != len(listed) or not set(members) <= cohort.sharers
                or set(members) & counted):
            raise ValueError(f"its members {sorted(members)[:5]} must be devices of the cohort "
                             "that shared their keys, each counted once")
        sender = reply.metadata.src_node_id
        if not self.relayed and cohort.nodes.get(listed[0]) != sender:
            raise ValueError(f"node {sender} sent the masked update of device {listed[0]}, "
                             "not its own")
        masked = masked_words(content[records.SECAGG_MASKED][records.SECAGG_MASKED_WORDS],
                              size, cohort.encoding.dtype)
        if len(members) == 1 and int(masked.max(initial=0)) >= cohort.encoding.modulus:
            raise ValueError(f"masked words must be below 2**{cohort.encoding.bits}")
        # an edge's sum wrapped around at the words' width, a multiple of the modulus
        return members, masked.astype(np.uint64) & np.uint64(cohort.encoding.modulus - 1)

    def _unmask(self, server_round: int, state: SecureRound, survivors: set[int],
                dropped: set[int]) -> dict[int, dict[int, tuple[bytes, bool]]]:
        """Stage 4: each answering survivor's shares, by owner index."""
        cohort = state.cohort
        request = {"survivors": sorted(survivors), "dropped": sorted(dropped)}
        answers: dict[int, dict[int, tuple[bytes, bool]]] = defaultdict(dict)
        replies = self._exchange(server_round, state, records.SECAGG_UNMASK_ACTION,
                                 {cohort.nodes[u]: request for u in survivors})
        for node, answer in replies.items():
            try:
                answers[cohort.index_of(node)] = {
                    _index(v): (_bytes(share), _flag(seed)) for v, share, seed in zip(
                        answer["owners"], answer["shares"], answer["is-seed"], strict=True)}  # type: ignore[arg-type]
            except (KeyError, TypeError, ValueError, OverflowError) as error:
                log.warning("round %d: node %d sent unusable unmasking shares: %s",
                            server_round, node, error)
        state.figures.dropped["unmask"] += len(survivors) - len(answers)
        return answers


class SecureAggregationStage(StrategyWrapper):
    """SecAgg+ around ``strategy``, the chain's stage (module docstring).

    Args:
        strategy: The next stage inward.
        protocol: The server's side of the protocol.
    """

    def __init__(self, strategy: Strategy, protocol: SecureAggregationServer) -> None:
        super().__init__(strategy)
        self.protocol = protocol
        self.rejections = protocol.rejections

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Sample through ``strategy``, then run stages 1 and 2 with the sampled devices."""
        return self.protocol.open(
            server_round, {name: array.numpy() for name, array in arrays.items()}, grid,
            self.strategy.configure_train(server_round, arrays, config, grid))

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Unmask the sum of the masked replies (stage 4) and aggregate it as one reply."""
        replies = list(replies)
        failures = [r for r in replies if r.has_error()]
        aggregate = self.protocol.close(server_round, replies)
        return self.strategy.aggregate_train(
            server_round, failures if aggregate is None else [aggregate, *failures])

    def round_figures(self, server_round: int) -> dict[str, object]:
        """A round's protocol figures (:meth:`SecureAggregationServer.round_figures`)."""
        return self.protocol.round_figures(server_round)


def masked_words(array: Array, size: int, dtype: np.dtype) -> np.ndarray:
    """The ``size`` masked words of ``dtype`` an Array holds, read only once its header fits.

    A header is checked before NumPy reads the payload, so a reply that claims a huge shape
    allocates nothing.

    Raises:
        ValueError: if the array is not ``size`` words of ``dtype`` in NumPy's format, or its
            payload does not decode to them.
    """
    if (not isinstance(array, Array) or array.stype != "numpy.ndarray"
            or array.dtype != str(dtype) or tuple(array.shape) != (size,)
            or len(array.data) > size * dtype.itemsize + 1024):
        raise ValueError(f"expected {size} masked words of {dtype}, got "
                         f"{getattr(array, 'shape', '?')} of {getattr(array, 'dtype', '?')}")
    try:
        words = array.numpy()
    except Exception as error:  # noqa: BLE001 - a device's bytes must not end the round
        raise ValueError(f"the masked words do not decode: {error!r}") from error
    if words.dtype != dtype or words.shape != (size,):
        raise ValueError(f"expected {size} masked words of {dtype}, decoded shape "
                         f"{words.shape} of {words.dtype}")
    return words


def _bytes(value: object) -> bytes:
    """``value`` if it is bytes (a share or ciphertext), never a conversion of something else."""
    if not isinstance(value, bytes) or not value:
        raise ValueError(f"expected non-empty bytes, got {type(value).__name__}")
    return value


def _index(value: object) -> int:
    """``value`` if it is a device index (a positive integer)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"expected a device index (an integer >= 1), got {value!r:.40}")
    return value


def _flag(value: object) -> bool:
    """``value`` if it is a bool."""
    if not isinstance(value, bool):
        raise ValueError(f"expected a bool, got {type(value).__name__}")
    return value


def _from_the_server(metadata: Metadata) -> Metadata:
    """The metadata of the aggregate: a reply to the round's train message, from the server.

    So no later stage counts (or blames) it as one device's.
    """
    return Metadata(run_id=metadata.run_id, message_id="", src_node_id=SUPERLINK_NODE_ID,
                    dst_node_id=metadata.dst_node_id,
                    reply_to_message_id=metadata.reply_to_message_id,
                    group_id=metadata.group_id, created_at=metadata.created_at,
                    ttl=metadata.ttl, message_type=metadata.message_type)


def _aggregate_content(accepted: list[Message], mean: np.ndarray,
                       reference: Mapping[str, np.ndarray], weights: list[int]) -> RecordDict:
    """The one reply the inner stages get: ``arrays`` = ``w_global + Δ̄``.

    ``metrics``: the summed examples and the examples-weighted means of the rest;
    ``secure-aggregation``: each surviving device's weight ``min(num-examples, W)``, the very
    weights of the sum (central DP's account).
    """
    arrays, offset = {}, 0
    for name in sorted(reference):
        array = reference[name]
        arrays[name] = (array + mean[offset:offset + array.size].reshape(array.shape)
                        ).astype(array.dtype)
        offset += array.size
    metrics = [r.content.metric_records[records.METRICS] for r in accepted]
    examples = [int(m[records.NUM_EXAMPLES]) for m in metrics]  # type: ignore[call-overload]
    total = sum(examples)
    means = {key: sum(float(m[key]) * n for m, n in zip(metrics, examples, strict=True)) / total  # type: ignore[arg-type]
             for key in records.EDGE_AGGREGATE_METRICS}
    return RecordDict({
        records.ARRAYS: ArrayRecord({name: Array(arrays[name]) for name in reference}),
        records.METRICS: MetricRecord({**means, records.NUM_EXAMPLES: total}),
        records.SECURE_AGGREGATION: ConfigRecord({"weights": [float(w) for w in weights]}),
    })
