from unittest.mock import Mock

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord
from flwr.serverapp import Grid

from fedmosaic.strategies.moe_fusion import MoEFusion, modality_of

PREFIXES = {"camera": ("encoders.camera.", "heads.camera."), "audio": ("encoders.audio.",)}
GLOBAL = {"encoders.camera.w": 7.0, "heads.camera.b": 7.0, "encoders.audio.w": 7.0,
          "classifier.w": 7.0}


def arrays(value_per_key):
    return {k: np.full(2, v, dtype=np.float32) for k, v in value_per_key.items()}


def fused_after_one_round(strategy, train_reply, clients):
    grid = Mock(spec=Grid)
    grid.get_node_ids.return_value = [1, 2, 3]
    strategy.configure_train(1, ArrayRecord({k: Array(np.full(2, v, np.float32))
                                             for k, v in GLOBAL.items()}),
                             ConfigRecord(), grid)
    replies = [train_reply(arrays(values), metrics, node=i)
               for i, (values, metrics) in enumerate(clients, start=1)]
    fused, _ = strategy.aggregate_train(1, replies)
    return {k: float(fused[k].numpy()[0]) for k in GLOBAL}


def test_experts_average_over_holders_weighted_by_examples_and_confidence(train_reply):
    clients = [  # camera held by both, audio by nobody
        ({"encoders.camera.w": 1, "heads.camera.b": 1, "encoders.audio.w": 100,
          "classifier.w": 1},
         {"num-examples": 2, "embedding-variance": 0.5, "modalities-held": [1, 0]}),
        ({"encoders.camera.w": 4, "heads.camera.b": 4, "encoders.audio.w": -100,
          "classifier.w": 4},
         {"num-examples": 1, "embedding-variance": 1.0, "modalities-held": [1, 0]}),
    ]

    fused = fused_after_one_round(MoEFusion(PREFIXES, min_available_nodes=1), train_reply,
                                  clients)

    # weights n / v: 2 / 0.5 = 4 and 1 / 1 = 1 -> (4 * 1 + 1 * 4) / 5
    assert fused["encoders.camera.w"] == pytest.approx(1.6)
    assert fused["heads.camera.b"] == pytest.approx(1.6)
    assert fused["encoders.audio.w"] == 7.0  # nobody holds audio: the expert is untouched
    assert fused["classifier.w"] == pytest.approx(2.0)  # examples only: (2 * 1 + 1 * 4) / 3


def test_an_expert_is_averaged_over_its_holders_only(train_reply):
    clients = [
        ({**dict.fromkeys(GLOBAL, 1.0)},
         {"num-examples": 1, "embedding-variance": 1.0, "modalities-held": [1, 1]}),
        ({**dict.fromkeys(GLOBAL, 3.0)},
         {"num-examples": 1, "embedding-variance": 1.0, "modalities-held": [1, 0]}),
    ]

    fused = fused_after_one_round(MoEFusion(PREFIXES, min_available_nodes=1), train_reply,
                                  clients)

    assert fused["encoders.audio.w"] == 1.0
    assert fused["encoders.camera.w"] == 2.0


def test_trimming_drops_an_outlier_among_the_holders(train_reply):
    values = [1.0, 2.0, 3.0, 1000.0, -1000.0]
    clients = [({**dict.fromkeys(GLOBAL, v)},
                {"num-examples": 1, "embedding-variance": 1.0, "modalities-held": [1, 1]})
               for v in values]

    fused = fused_after_one_round(MoEFusion(PREFIXES, beta=0.2, min_available_nodes=1),
                                  train_reply, clients)

    assert fused == pytest.approx(dict.fromkeys(GLOBAL, 2.0))


def test_keys_map_to_their_modality():
    assert modality_of("heads.camera.mean.weight", PREFIXES) == 0
    assert modality_of("encoders.audio.x", PREFIXES) == 1
    assert modality_of("fusion.level2_gate.0.weight", PREFIXES) is None


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"modality_prefixes": {}}, "modality_prefixes must name at least one modality"),
    ({"modality_prefixes": PREFIXES, "beta": 0.5}, r"beta must lie in \[0, 0.5\), got 0.5"),
])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MoEFusion(**kwargs)
