"""The server's side of one round of SecAgg+ (Bell et al. 2020): a :class:`Cohort`.

The server never holds a device's secret and never sees an update in the clear. It

1. takes the devices that advertised keys as the cohort ``U1``, numbers them ``1..n`` and
   draws the sparse neighbour graph: SecAgg+'s ``k``-regular graph, here a circulant graph of
   degree ``k = min(n − 1, 2⌈1.5 log2 n⌉)`` over a random order (complete for ``n ≤ 13``; 18 of
   49 others at ``n = 50``). Devices that advertised a key another device also advertised are
   left out (a copied key would let its owner read the copier's shares). Each device's secrets
   are shared among its ``k + 1`` holders (its neighbours and itself) with threshold
   ``t = ⌊(k + 1) / 2⌋ + 1``, a strict majority, so the ``b_v``-shares and ``s_v``-shares of
   one device cannot both reach ``t`` from disjoint sets of honest holders;
2. routes the encrypted shares (:meth:`Cohort.route`): those that shared form ``U2``;
3. sums what comes back masked (``U3``: the devices whose masked vector is in the sum, directly
   or through an edge's relayed sum) and asks the survivors for shares (:meth:`Cohort.request`);
4. reconstructs, from at least ``t`` shares each, ``b_v`` of every survivor and ``s_v`` of
   every device of ``U2`` that dropped, and removes their masks (:meth:`Cohort.unmask`).

A round goes on while every survivor keeps at least ``t`` surviving holders of its shares, and
every dropped sharer too; fewer, and it is skipped.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from flwr.common.secure_aggregation.crypto.shamir import combine_shares

from fedmosaic.privacy.secure_aggregation.device import ProtocolError
from fedmosaic.privacy.secure_aggregation.encoding import FieldEncoding
from fedmosaic.privacy.secure_aggregation.keys import mask, pairwise_seed, private_key, public_bytes

Keys = tuple[bytes, bytes]
"""A device's public keys ``(pk_c, pk_s)``."""


def degree(size: int) -> int:
    """SecAgg+'s neighbour count for a cohort of ``size`` devices (module docstring)."""
    if size < 2:
        return 0
    return min(size - 1, 2 * math.ceil(1.5 * math.log2(size)))


def circulant_neighbours(size: int, rng: random.Random) -> dict[int, set[int]]:
    """Indices ``1..size`` → neighbours: a circulant graph of :func:`degree` over a random order."""
    order = list(range(1, size + 1))
    if degree(size) == size - 1:
        return {u: set(order) - {u} for u in order}
    rng.shuffle(order)
    graph: dict[int, set[int]] = {u: set() for u in order}
    for position, u in enumerate(order):
        for step in range(1, degree(size) // 2 + 1):
            v = order[(position + step) % size]
            graph[u].add(v)
            graph[v].add(u)
    return graph


@dataclass
class Cohort:
    """One round's devices, their keys, the graph and what they sent (module docstring).

    Attributes:
        nodes: Flower node ID of each index.
        public: Public keys of each index.
        neighbours: Neighbours of each index.
        encoding: How the cohort's updates are encoded.
        sharers: ``U2``, the indices that sent their shares.
    """

    nodes: dict[int, int]
    public: dict[int, Keys]
    neighbours: dict[int, set[int]]
    encoding: FieldEncoding
    sharers: set[int] = field(default_factory=set)

    @classmethod
    def form(cls, keys: Mapping[int, Keys], clip: float, max_weight: int, device_bits: int,
             rng: random.Random | None = None) -> Cohort:
        """The cohort of the nodes that advertised ``keys`` (node ID → public keys).

        A node whose key is not its own alone (advertised twice, by it or by another node) is
        left out; :attr:`nodes` lists those taken.

        Raises:
            ProtocolError: if fewer than 2 devices remain (a sum of one is the update).
        """
        seen = Counter(key for pair in keys.values() for key in pair)
        unique = {node: pair for node, pair in keys.items()
                  if all(seen[key] == 1 for key in pair) and pair[0] != pair[1]}
        if len(unique) < 2:
            raise ProtocolError(f"secure aggregation needs at least 2 devices with keys of their "
                                f"own, got {len(unique)} of {len(keys)}")
        keys = unique
        nodes = dict(enumerate(sorted(keys), start=1))
        return cls(nodes=nodes, public={u: keys[node] for u, node in nodes.items()},
                   neighbours=circulant_neighbours(len(nodes), rng or random.SystemRandom()),
                   encoding=FieldEncoding.for_cohort(len(nodes), clip, max_weight, device_bits))

    def index_of(self, node: int) -> int:
        """The index of a node of the cohort.

        Raises:
            KeyError: if the node is not in the cohort.
        """
        for index, member in self.nodes.items():
            if member == node:
                return index
        raise KeyError(f"node {node} is not in the cohort")

    def threshold(self, index: int) -> int:
        """``t`` of a device: a strict majority of its ``k + 1`` share holders."""
        return (len(self.neighbours[index]) + 1) // 2 + 1

    def neighbourhood(self, index: int) -> dict[int, Keys]:
        """The public keys of a device's neighbours (what stage 2 sends it)."""
        return {v: self.public[v] for v in sorted(self.neighbours[index])}

    def route(self, sealed: Mapping[int, Mapping[int, bytes]]) -> dict[int, dict[int, bytes]]:
        """``U2`` and, for each of its devices, the ciphertexts its neighbours in ``U2`` sent.

        Args:
            sealed: sender index → receiver index → ciphertext, from the devices that replied.

        Raises:
            ProtocolError: if a sender addressed someone other than exactly its neighbours.
        """
        for sender, outbox in sealed.items():
            if set(outbox) != self.neighbours[sender]:
                raise ProtocolError(f"device {sender} sent shares to {sorted(outbox)[:5]}, not "
                                    f"to its neighbours {sorted(self.neighbours[sender])[:5]}")
        self.sharers = set(sealed)
        return {receiver: {sender: sealed[sender][receiver]
                           for sender in self.neighbours[receiver] & self.sharers}
                for receiver in self.sharers}

    def request(self, survivors: set[int]) -> tuple[set[int], set[int]]:
        """``(U3, U2 − U3)``: what stage 4 tells every survivor.

        Raises:
            ProtocolError: if a survivor did not share its keys, or a sharer (survivor or
                dropped) has fewer than ``t`` surviving holders of its shares: its mask could
                not be removed, and a survivor would refuse to answer.
        """
        if not survivors <= self.sharers:
            raise ProtocolError(f"devices {sorted(survivors - self.sharers)[:5]} sent masked "
                                "updates without sharing their keys")
        for u in sorted(self._to_rebuild(survivors)):
            holding = len(survivors & (self.neighbours[u] | {u}))
            if holding < self.threshold(u):
                raise ProtocolError(f"{len(survivors)} masked updates: device {u} has "
                                    f"{holding} surviving share holders, fewer than its "
                                    f"threshold {self.threshold(u)}")
        return set(survivors), self.sharers - survivors

    def unmask(self, total: np.ndarray, survivors: set[int],
               answers: Mapping[int, Mapping[int, tuple[bytes, bool]]]) -> np.ndarray:
        """The sum of the survivors' codes: ``total`` without the masks.

        ``total`` is the sum of the survivors' masked vectors; the result lacks their
        self-masks and their pairwise masks with the dropped devices.

        Args:
            total: Σ y_u over ``survivors``, modulo ``2**bits`` (``uint64``).
            survivors: ``U3``.
            answers: answering index → (index → (share, is-a-``b``-share)) (stage 4).

        Raises:
            ProtocolError: if a secret has fewer than ``t`` shares, or a reconstructed key
                does not match the public key it was advertised with.
        """
        bits = self.encoding.bits
        top = np.uint64(self.encoding.modulus - 1)
        dropped = self._to_rebuild(survivors) - survivors
        seeds: dict[int, list[bytes]] = {u: [] for u in survivors}
        keys: dict[int, list[bytes]] = {u: [] for u in dropped}
        for answerer, shares in answers.items():
            for owner, (share, is_seed) in shares.items():
                if owner not in self.neighbours or answerer not in (
                        self.neighbours[owner] | {owner}):
                    continue  # only the owner's holders can hold a share of it
                if is_seed and owner in seeds:
                    seeds[owner].append(share)
                elif not is_seed and owner in keys:
                    keys[owner].append(share)
        result = total.astype(np.uint64)
        for owner, shares in seeds.items():
            seed = self._combine(owner, shares, "self-mask seed")
            result = (result - mask(seed, result.size, bits)) & top
        for owner, shares in keys.items():
            secret = self._combine(owner, shares, "masking key")
            if public_bytes(private_key(secret).public_key()) != self.public[owner][1]:
                raise ProtocolError(f"the masking key of device {owner} rebuilt from its "
                                    "shares does not match its public key")
            for peer in self.neighbours[owner] & survivors:
                pairwise = mask(pairwise_seed(secret, self.public[peer][1]), result.size, bits)
                # the survivor added +PRG when the dropped device's index is larger
                result = (result - pairwise if owner > peer else result + pairwise) & top
        return result

    def _to_rebuild(self, survivors: set[int]) -> set[int]:
        """The sharers whose secret a round with ``survivors`` rebuilds.

        Every survivor, and each dropped sharer with a surviving neighbour (the only devices
        its pairwise masks reached).
        """
        return {u for u in self.sharers if u in survivors or self.neighbours[u] & survivors}

    def _combine(self, owner: int, shares: list[bytes], what: str) -> bytes:
        needed = self.threshold(owner)
        if len(shares) < needed:
            raise ProtocolError(f"device {owner}'s {what} has {len(shares)} shares, "
                                f"{needed} needed")
        try:
            return combine_shares(shares[:needed])
        except (ValueError, IndexError, TypeError) as error:  # shares of the wrong form
            raise ProtocolError(f"device {owner}'s {what} does not rebuild: {error!r}") from error
