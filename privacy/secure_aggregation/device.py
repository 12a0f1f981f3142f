"""A device's side of one round of SecAgg+ (Bell et al. 2020, after Bonawitz et al. 2017).

Between the server's messages a device keeps a :class:`DeviceSession` (in its context state):

1. :meth:`DeviceSession.advertise`: two fresh key pairs, ``(c_u, s_u)``: ``c`` encrypts
   shares, ``s`` seeds pairwise masks. The public halves go to the server.
2. :meth:`DeviceSession.share`: given its index ``u``, the threshold ``t`` and the public keys
   of its neighbours ``N(u)`` (chosen by the server), it draws a self-mask seed ``b_u`` and
   splits ``b_u`` and ``s_u``'s private value into ``|N(u)| + 1`` Shamir shares with threshold
   ``t``; it keeps its own and sends every neighbour ``v`` its pair, encrypted under
   ``KA(c_u, pk_c_v)`` with the indices ``u ‖ v`` inside.
3. :meth:`DeviceSession.receive` and :meth:`DeviceSession.mask`: it decrypts the shares its
   neighbours sent (those neighbours form ``U2 ∩ N(u)``) and replies with

       y_u = x_u + PRG(b_u) + Σ_{v ∈ U2∩N(u), v > u} PRG(s_uv) − Σ_{v < u} PRG(s_uv)  (mod 2^k)

   where ``s_uv = KA(s_u, pk_s_v)`` and ``x_u`` are the update's codes
   (``encoding.FieldEncoding``).
4. :meth:`DeviceSession.unmask`: told who survived (``U3``) and who dropped after sharing, it
   returns its share of ``b_v`` for each surviving neighbour and of ``s_v`` for each dropped
   one; never both for one ``v``, and only once per round (so a server cannot learn a
   survivor's ``s_v`` by calling it dropped later), and only while at least ``t`` of its own
   share holders (``N(u) ∪ {u}``) survive.

The threshold a device accepts is at least a strict majority of its ``|N(u)| + 1`` holders, and
it masks one update per session, never after it answered the unmasking: two masked vectors
under one ``b_u``, or one sent after ``b_u`` was revealed, would give the update away.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import numpy as np
from flwr.common.secure_aggregation.crypto.shamir import create_shares

from fedmosaic.privacy.secure_aggregation.keys import (
    SEED_BYTES,
    KeyPair,
    agreed_key,
    decrypt,
    encrypt,
    mask,
    pairwise_seed,
)

INDEX_BYTES = 4
"""Bytes of an index inside an encrypted share."""


class ProtocolError(ValueError):
    """A message that breaks the protocol (wrong round, stage, index or share)."""


@dataclass
class DeviceSession:
    """What a device keeps through one round of the protocol.

    Attributes:
        round: The server round the keys belong to.
        encryption: The key pair ``c_u``.
        masking: The key pair ``s_u``.
        index: ``u`` (0 until :meth:`share`).
        threshold: ``t``.
        self_seed: ``b_u``.
        neighbours: ``v → (pk_c_v, pk_s_v)``.
        shares: ``v → (share of b_v, share of s_v)`` held by this device (its own included).
        masked: Whether it masked its update.
        answered: Whether it answered the unmasking request.
    """

    round: int
    encryption: KeyPair
    masking: KeyPair
    index: int = 0
    threshold: int = 0
    self_seed: bytes = b""
    neighbours: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    shares: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    masked: bool = False
    answered: bool = False

    @classmethod
    def advertise(cls, server_round: int) -> DeviceSession:
        """Stage 1: fresh key pairs for ``server_round``."""
        return cls(server_round, KeyPair.generate(), KeyPair.generate())

    def share(self, index: int, threshold: int,
              neighbours: dict[int, tuple[bytes, bytes]]) -> dict[int, bytes]:
        """Stage 2: the encrypted shares for each neighbour.

        Raises:
            ProtocolError: if the index is among the neighbours, the threshold is not in
                ``[⌊(|N(u)| + 1) / 2⌋ + 1, |N(u)| + 1]`` (a strict majority of the holders),
                a neighbour has this device's keys, or keys were shared already this round.
        """
        if self.index:
            raise ProtocolError(f"round {self.round}: keys were shared already")
        if index < 1 or index in neighbours:
            raise ProtocolError(f"index must be >= 1 and not a neighbour's, got {index}")
        holders = len(neighbours) + 1
        if not holders // 2 + 1 <= threshold <= holders:
            raise ProtocolError(f"threshold must be a strict majority of the {holders} share "
                                f"holders, in [{holders // 2 + 1}, {holders}], got {threshold}")
        advertised = [self.encryption.public, self.masking.public,
                      *(key for keys in neighbours.values() for key in keys)]
        if len(set(advertised)) != len(advertised):
            raise ProtocolError("a key appears twice among this device's and its neighbours' "
                                "keys")
        self.index, self.threshold, self.neighbours = index, threshold, dict(neighbours)
        self.self_seed = secrets.token_bytes(SEED_BYTES)
        seed_shares = create_shares(self.self_seed, threshold, holders)
        key_shares = create_shares(self.masking.private, threshold, holders)
        order = [index, *sorted(neighbours)]
        self.shares = {index: (seed_shares[0], key_shares[0])}
        sealed = {}
        for position, peer in enumerate(order[1:], start=1):
            plain = _pack(index, peer, seed_shares[position], key_shares[position])
            sealed[peer] = encrypt(agreed_key(self.encryption.private, neighbours[peer][0]),
                                   plain)
        return sealed

    def receive(self, sealed: dict[int, bytes]) -> None:
        """Stage 3, first half: keep the shares neighbours sent (each checked and decrypted).

        Raises:
            ProtocolError: if a sender is not a neighbour, or a share does not decrypt or
                names other indices.
        """
        for peer, ciphertext in sealed.items():
            if peer not in self.neighbours:
                raise ProtocolError(f"got shares from {peer}, not a neighbour of {self.index}")
            try:
                plain = decrypt(agreed_key(self.encryption.private, self.neighbours[peer][0]),
                                ciphertext)
            except Exception as error:
                raise ProtocolError(f"the shares from {peer} do not decrypt: {error!r}") from error
            sender, receiver, seed_share, key_share = _unpack(plain)
            if (sender, receiver) != (peer, self.index):
                raise ProtocolError(f"shares from {peer} to {self.index} name {sender} → "
                                    f"{receiver}")
            self.shares[peer] = (seed_share, key_share)

    def mask(self, codes: np.ndarray, bits: int) -> np.ndarray:
        """Stage 3, second half: ``y_u`` for the neighbours whose shares arrived (``uint64``).

        Raises:
            ProtocolError: if keys were not shared yet, the update was masked already, or
                unmasking was answered (the self-mask may be known).
        """
        if not self.index or self.masked or self.answered:
            raise ProtocolError(f"round {self.round}: a device masks one update, after sharing "
                                "its keys and before unmasking")
        self.masked = True
        modulus_mask = np.uint64((1 << bits) - 1)
        masked = (codes.astype(np.uint64) + mask(self.self_seed, codes.size, bits)) & modulus_mask
        for peer in sorted(set(self.shares) - {self.index}):
            pairwise = mask(pairwise_seed(self.masking.private, self.neighbours[peer][1]),
                            codes.size, bits)
            masked = masked + pairwise if peer > self.index else masked - pairwise
            masked &= modulus_mask
        return masked

    def unmask(self, survivors: set[int], dropped: set[int]) -> dict[int, tuple[bytes, bool]]:
        """Stage 4: ``v → (share, is_seed)`` for the neighbours this device holds shares of.

        ``b_v``'s share for a survivor ``v``, ``s_v``'s for a dropped one.

        Raises:
            ProtocolError: if asked twice, if a device is both survivor and dropped, if this
                device is not a survivor, or if fewer than ``t`` of its share holders survive.
        """
        if self.answered:
            raise ProtocolError(f"round {self.round}: unmasking was answered already")
        if survivors & dropped:
            raise ProtocolError(f"devices {sorted(survivors & dropped)[:5]} are called both "
                                "survivors and dropped")
        if self.index not in survivors:
            raise ProtocolError(f"device {self.index} is not among the survivors")
        holding = survivors & (set(self.neighbours) | {self.index})
        if len(holding) < self.threshold:
            raise ProtocolError(f"{len(holding)} of this device's share holders survive, fewer "
                                f"than the threshold {self.threshold}")
        self.answered = True
        out = {peer: (self.shares[peer][0], True) for peer in survivors & set(self.shares)}
        out |= {peer: (self.shares[peer][1], False) for peer in dropped & set(self.shares)}
        return out


def _pack(sender: int, receiver: int, seed_share: bytes, key_share: bytes) -> bytes:
    """``sender ‖ receiver ‖ len(seed_share) ‖ seed_share ‖ key_share``."""
    return b"".join((sender.to_bytes(INDEX_BYTES, "big"), receiver.to_bytes(INDEX_BYTES, "big"),
                     len(seed_share).to_bytes(INDEX_BYTES, "big"), seed_share, key_share))


def _unpack(plain: bytes) -> tuple[int, int, bytes, bytes]:
    """The fields :func:`_pack` joined."""
    if len(plain) < 3 * INDEX_BYTES:
        raise ProtocolError(f"an encrypted share has {len(plain)} bytes, too few")
    sender, receiver, length = (int.from_bytes(plain[i:i + INDEX_BYTES], "big")
                                for i in range(0, 3 * INDEX_BYTES, INDEX_BYTES))
    body = plain[3 * INDEX_BYTES:]
    if not 0 < length < len(body):
        raise ProtocolError(f"an encrypted share's seed share has length {length} of "
                            f"{len(body)} bytes")
    return sender, receiver, body[:length], body[length:]
