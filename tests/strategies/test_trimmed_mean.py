import numpy as np
import pytest
from flwr.serverapp.strategy import FedMedian, FedTrimmedAvg

from fedmosaic.strategies.trimmed_mean import TrimmedMean


def replies_from(make_reply, values, seed=0):
    rng = np.random.default_rng(seed)
    layers = [rng.normal(size=(len(values), 3, 4)).astype(np.float32),
              np.asarray(values, dtype=np.float32)[:, None]]
    return [make_reply({"conv": layers[0][i], "bias": layers[1][i]},
                       {"num-examples": i + 1, "train-loss": float(i)}, node=i + 1)
            for i in range(len(values))]


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.2, 0.4])
def test_equals_flowers_fedtrimmedavg_on_identical_replies(train_reply, beta):
    values = [0.5, -2.0, 7.0, 1.0, 300.0, 0.0, 2.0]

    ours, our_metrics = TrimmedMean(beta=beta).aggregate_train(1, replies_from(train_reply, values))
    flower, flower_metrics = FedTrimmedAvg(beta=beta).aggregate_train(
        1, replies_from(train_reply, values))

    for key in ("conv", "bias"):
        np.testing.assert_allclose(ours[key].numpy(), flower[key].numpy(), rtol=1e-6)
    assert dict(our_metrics) == pytest.approx(dict(flower_metrics))


def test_largest_trim_of_an_odd_count_equals_flowers_fedmedian(train_reply):
    values = [0.5, -2.0, 7.0, 1.0, 300.0]  # beta 0.4 of 5 keeps only the middle value

    ours, _ = TrimmedMean(beta=0.4).aggregate_train(1, replies_from(train_reply, values))
    median, _ = FedMedian().aggregate_train(1, replies_from(train_reply, values))

    np.testing.assert_allclose(ours["conv"].numpy(), median["conv"].numpy(), rtol=1e-6)
    assert ours["bias"].numpy()[0] == pytest.approx(1.0)


@pytest.mark.parametrize(("call", "message"), [
    (lambda: TrimmedMean(beta=0.5), r"beta must lie in \[0, 0.5\), got 0.5"),
    (lambda: TrimmedMean(beta=-0.1), r"beta must lie in \[0, 0.5\), got -0.1"),
])
def test_bad_settings_are_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()
