"""Risk perception: a per-device, per-round privacy risk score in [0, 1], computed by the server.

After ALPINE (Lightweight and Adaptive Privacy-Decision Agent for dynamic edge crowdsensing,
arXiv:2510.17162, §4.1 and App. A). Each device is scored on four criteria from what the
server may see of it, never its raw data, and the criteria are fused into one score:

- :mod:`~fedmosaic.privacy.risk.channel`: channel criterion, the reconstruction error of a
  tiny autoencoder over the server's observations of the device's round (round trip, reply
  bytes, update norm, cosine to the aggregate, rejections);
- :mod:`~fedmosaic.privacy.risk.sensitivity`: data sensitivity of the modalities a device
  declares, and the entropy-weighted context criterion;
- :mod:`~fedmosaic.privacy.risk.fuzzy`: AHP criterion weights (principal eigenvector,
  consistency ratio) and fuzzy comprehensive evaluation with centroid defuzzification;
- :mod:`~fedmosaic.privacy.risk.perception`: :class:`RiskPerception`, which holds the state
  (channel model and its bounded history, sensitivity table, weights) and scores a round.

Pure math lives in module-level functions; state lives in :class:`ChannelModel` and
:class:`RiskPerception`.
"""

from fedmosaic.privacy.risk.channel import ChannelModel, ChannelObservation
from fedmosaic.privacy.risk.fuzzy import ahp_weights, criterion_weights, fuse
from fedmosaic.privacy.risk.perception import DeviceObservation, RiskPerception, RiskScore
from fedmosaic.privacy.risk.sensitivity import SensitivityTable, parse_sensitivities

__all__ = [
    "ChannelModel",
    "ChannelObservation",
    "DeviceObservation",
    "RiskPerception",
    "RiskScore",
    "SensitivityTable",
    "ahp_weights",
    "criterion_weights",
    "fuse",
    "parse_sensitivities",
]
