"""Secure aggregation: SecAgg+ (Bell et al. 2020) on integers modulo ``2**k``.

Built from Flower's and ``cryptography``'s primitives; the server learns the sum of the
surviving devices' updates and nothing else.

- :mod:`~fedmosaic.privacy.secure_aggregation.keys`: ECDH key pairs and agreement, share
  encryption, the ChaCha20 mask generator;
- :mod:`~fedmosaic.privacy.secure_aggregation.encoding`: updates as integers modulo ``2**k``;
- :mod:`~fedmosaic.privacy.secure_aggregation.device`: a device's side of a round;
- :mod:`~fedmosaic.privacy.secure_aggregation.cohort`: the server's side of a round.

The Flower stages that run it are ``server/secure_aggregation.py`` (server chain) and
``clients/secure_aggregation.py`` (the device's round); an edge relays masked sums
(``server/edge/secure_relay.py``).
"""

from fedmosaic.privacy.secure_aggregation.cohort import Cohort, degree
from fedmosaic.privacy.secure_aggregation.device import DeviceSession, ProtocolError
from fedmosaic.privacy.secure_aggregation.encoding import FieldEncoding

__all__ = ["Cohort", "DeviceSession", "FieldEncoding", "ProtocolError", "degree"]
