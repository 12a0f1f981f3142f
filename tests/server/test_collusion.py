from unittest.mock import Mock

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedmosaic.records import ATTACKER_TAG
from fedmosaic.server.collusion import CollusionSimulation, alie_update, ipm_update


def test_alie_matches_the_hand_computed_value():
    honest = np.arange(10, dtype=np.float64)[:, None]  # mean 4.5, population std sqrt(8.25)

    # n = 10, m = 2: s = floor(10/2 + 1) - 2 = 4, z = Phi^-1(6/10) = 0.253347
    assert alie_update(honest, 2)[0] == pytest.approx(4.5 - 0.253347 * 8.25 ** 0.5, rel=1e-5)


def test_ipm_reverses_the_mean_update():
    honest = np.array([[2.0], [4.0]])

    assert ipm_update(honest, np.array([1.0]), 10.0)[0] == pytest.approx(1.0 - 10.0 * 2.0)


def test_collusion_replaces_tagged_replies_before_the_strategy(train_reply):
    grid = Mock(spec=Grid)
    grid.get_node_ids.return_value = [1, 2, 3]
    wrapper = CollusionSimulation(FedAvg(min_available_nodes=1), "ipm")
    wrapper.configure_train(1, ArrayRecord({"w": torch.ones(1)}), ConfigRecord(), grid)
    replies = [train_reply({"w": np.array([2.0], np.float32)}, {"num-examples": 1}, node=1),
               train_reply({"w": np.array([4.0], np.float32)}, {"num-examples": 1}, node=2),
               train_reply({"w": np.array([3.0], np.float32)},
                           {"num-examples": 1, ATTACKER_TAG: 1}, node=3)]

    arrays, metrics = wrapper.aggregate_train(1, replies)

    # mean honest update 3 - 1 = 2, crafted 1 - 10 * 2 = -19; FedAvg (2 + 4 - 19) / 3
    assert arrays["w"].numpy()[0] == pytest.approx(-13 / 3)
    assert ATTACKER_TAG not in metrics


def test_collusion_needs_a_colluding_attack():
    with pytest.raises(ValueError, match=r"attack must be one of \('alie', 'ipm'\)"):
        CollusionSimulation(FedAvg(), "sign-flip")
