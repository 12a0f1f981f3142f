"""A simulated malicious device: data and model poisoning, and the colluding attacker's tag.

With ``-c attack=NAME -c malicious-fraction=f``, ``round(f * num-clients)`` partitions are
malicious, chosen by a permutation seeded with ``seed`` alone (:func:`malicious_partitions`),
so the same clients misbehave in every round and every process. Every malicious client first
trains honestly from the global weights ``w_g`` (on flipped labels for ``label-flip``) to
``w``, with ``Δ = w − w_g``; then, per behaviour:

==============  ============================================================================
``label-flip``  data poisoning: every local label ``y`` becomes ``C − 1 − y`` (Tolpegin et
                al. 2020, arXiv:2007.08432); the update is the honest training on them.
``sign-flip``   sends ``w_g − Δ``.
``gaussian``    sends ``w_g + ε``, ``ε ~ N(0, σ² I)``, σ = :data:`GAUSSIAN_STD`, drawn from
                ``(seed, partition, round)``.
``scale-10``    sends ``w_g + 10 Δ`` (``scale-100``: ``100 Δ``), the boosting of Bagdasaryan
                et al. 2020 (arXiv:1807.00459).
``nan``         sends NaN in every floating-point array (a garbage payload).
``alie``,       train honestly and tag the reply with ``records.ATTACKER_TAG``; the server
``ipm``         chain's colluding attacker (``server/collusion.py``) replaces tagged replies.
``malformed``   a rogue device: trains honestly, then breaks the reply contract
                (:meth:`ClientAttack.tamper_reply`); every tier must reject it.
``delay``       trains honestly, replies :data:`DELAY_SECONDS` late (a straggler, or a device
                whose traffic is being relayed or inspected).
``burst``       trains honestly, pads its reply with :data:`BURST_BYTES` (a burst of traffic,
                e.g. exfiltration riding on the channel).
==============  ============================================================================

Threat model: the local behaviours alter only the malicious device's own data or reply.
:class:`ClientAttack` is the device round's poisoning stage (``clients/round.py``); it is a
no-op on honest devices and whenever ``attack`` is ``none``, so a real deployment never
poisons.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fedmosaic import records
from fedmosaic.compression import payload_to_record
from fedmosaic.config import (
    COLLUDING_ATTACKS,
    DATA_POISONING_ATTACKS,
    MODEL_POISONING_ATTACKS,
    REPLY_TAMPERING_ATTACKS,
    RunConfig,
)
from fedmosaic.data.modality import MultimodalArrays

GAUSSIAN_STD = 1.0
"""σ of the ``gaussian`` attack's replacement update (per coordinate)."""
DELAY_SECONDS = 2.0
"""How late a ``delay`` device replies."""
BURST_BYTES = 1_000_000
"""Padding a ``burst`` device adds to its reply (a ``padding`` ConfigRecord)."""


def malicious_partitions(num_clients: int, fraction: float, seed: int) -> frozenset[int]:
    """The ``round(fraction * num_clients)`` malicious partitions, fixed by ``seed``.

    Raises:
        ValueError: if ``num_clients < 1`` or ``fraction`` is outside ``[0, 1)``.
    """
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must lie in [0, 1), got {fraction}")
    count = round(fraction * num_clients)
    order = np.random.default_rng([seed, 0xA77AC]).permutation(num_clients)
    return frozenset(int(p) for p in order[:count])


def flip_labels(arrays: MultimodalArrays, num_classes: int) -> MultimodalArrays:
    """The same samples with every label ``y`` replaced by ``num_classes − 1 − y``."""
    return MultimodalArrays(inputs=arrays.inputs, mask=arrays.mask,
                            labels=(num_classes - 1 - arrays.labels).astype(arrays.labels.dtype))


@dataclass(frozen=True)
class ClientAttack:
    """What one device does to its data and reply; a no-op for an honest device.

    Attributes:
        attack: a name from ``config.ATTACKS`` (``none`` for an honest device).
        seed: run seed.
        partition_id: the device.
    """

    attack: str
    seed: int
    partition_id: int

    @classmethod
    def for_partition(cls, config: RunConfig, partition_id: int,
                      server_round: int = 1) -> ClientAttack:
        """The behaviour of ``partition_id`` in ``server_round`` under ``config``.

        ``none`` unless the device is malicious and the attack has started
        (``attack-start-round``: attackers that appear mid-run).
        """
        bad = malicious_partitions(config.num_clients, config.malicious_fraction, config.seed)
        started = server_round >= config.attack_start_round
        attack = config.attack if partition_id in bad and started else "none"
        return cls(attack=attack, seed=config.seed, partition_id=partition_id)

    def poison_data(self, arrays: MultimodalArrays, num_classes: int) -> MultimodalArrays:
        """Training data as the device uses it (labels flipped for ``label-flip``)."""
        return flip_labels(arrays, num_classes) if self.attack in DATA_POISONING_ATTACKS else arrays

    def poison_model(self, model: torch.nn.Module, global_arrays: ArrayRecord,
                     server_round: int) -> None:
        """Replace the trained weights in ``model`` by what the device sends."""
        if self.attack not in MODEL_POISONING_ATTACKS:
            return
        reference = global_arrays.to_torch_state_dict()
        generator = torch.Generator().manual_seed(
            hash((self.seed, self.partition_id, server_round)) & 0x7FFF_FFFF)
        state = model.state_dict()
        for name, weight in state.items():
            if not weight.is_floating_point():
                continue
            delta = weight - reference[name]
            if self.attack == "sign-flip":
                state[name] = reference[name] - delta
            elif self.attack == "gaussian":
                noise = torch.randn(weight.shape, generator=generator) * GAUSSIAN_STD
                state[name] = reference[name] + noise.to(weight.dtype)
            elif self.attack == "nan":
                state[name] = torch.full_like(weight, math.nan)
            else:
                state[name] = reference[name] + float(self.attack.split("-")[1]) * delta
        model.load_state_dict(state)

    def reply_metrics(self) -> dict[str, int]:
        """Extra metrics of the reply: the tag a colluding attacker's reply carries."""
        return {records.ATTACKER_TAG: 1} if self.attack in COLLUDING_ATTACKS else {}

    def tamper_reply(self, reply: RecordDict) -> None:
        """``delay``, ``burst``: the channel anomalies (module docstring); ``malformed``: below.

        ``malformed`` breaks the reply contract in place, as a rogue device's bytes would.

        The reply claims ``num-examples = 10^15`` (to outweigh every other device), carries a
        metric the contract does not know, and its update is in float64 instead of the
        model's float32 (below an edge: a payload that is not a codec payload).
        """
        if self.attack == "delay":
            time.sleep(DELAY_SECONDS)
        if self.attack == "burst":
            reply["padding"] = ConfigRecord({"padding": os.urandom(BURST_BYTES)})
        if self.attack not in REPLY_TAMPERING_ATTACKS:
            return
        metrics = reply[records.METRICS]
        metrics[records.NUM_EXAMPLES] = 10**15
        metrics["injected"] = 1.0
        if records.COMPRESSED_DELTA in reply.array_records:
            reply[records.COMPRESSED_DELTA] = payload_to_record(b"FMZC" + bytes(64))
        else:
            arrays = reply[records.ARRAYS]
            reply[records.ARRAYS] = ArrayRecord({name: Array(array.numpy().astype(np.float64))
                                                 for name, array in arrays.items()})
