"""flower_quickstart_baseline: model, data loading, training and test (quickstart's task.py).

The model is fedmosaic's ``MultimodalClassifier``, the data fedmosaic's smartwatch partitions
(one subject per ``partition-id``) or, with ``dataset = "synthetic"``, its synthetic devices
(each generated from its ``partition-id`` when it is sampled), and the loops
``fedmosaic.models.training.train``/``evaluate``, so this app does exactly the work
fedmosaic's ClientApp and ServerApp do.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from fedmosaic.config import RunConfig
from fedmosaic.data.datasets import FederatedDataset
from fedmosaic.models import LossWeights, MultimodalClassifier, training
from fedmosaic.task import cached_dataset

EVAL_BATCH_SIZE = 256


def _dataset(run_config: dict) -> FederatedDataset:
    """The federated dataset, loaded once per process (like quickstart's global ``fds``)."""
    return cached_dataset(RunConfig.from_mapping({
        key: run_config[key] for key in ("dataset", "num-clients", "window-seconds", "seed",
                                         "samples-per-client")}))


def Net(run_config: dict) -> MultimodalClassifier:  # noqa: N802 - quickstart's name
    """The model, initialised from the run config's seed."""
    dataset = _dataset(run_config)
    torch.manual_seed(int(run_config["seed"]))
    return MultimodalClassifier(
        dataset.specs,
        num_classes=dataset.num_classes,
        embed_dim=int(run_config["embed-dim"]),
        num_experts=int(run_config["num-experts"]),
    )


def load_data(partition_id: int, run_config: dict) -> tuple[DataLoader, DataLoader]:
    """Train and test loaders of one device's partition."""
    dataset = _dataset(run_config)
    train_arrays, test_arrays = dataset.partition(partition_id)
    seed = int(run_config["seed"]) * 100_003 + partition_id
    trainloader = training.make_loader(train_arrays, dataset.specs,
                                       int(run_config["batch-size"]), shuffle=True, seed=seed)
    testloader = training.make_loader(test_arrays, dataset.specs, EVAL_BATCH_SIZE,
                                      shuffle=False, seed=0)
    return trainloader, testloader


def load_centralized_dataset(run_config: dict) -> DataLoader:
    """The server's test loader: the dataset's central test set."""
    dataset = _dataset(run_config)
    return training.make_loader(dataset.central_test(), dataset.specs, EVAL_BATCH_SIZE,
                                shuffle=False, seed=0)


def train(net: MultimodalClassifier, trainloader: DataLoader, epochs: int, lr: float,
          run_config: dict) -> float:
    """Train the model on the training set; returns the mean loss of the last epoch."""
    weights = LossWeights(kl=float(run_config["kl-weight"]),
                          consistency=float(run_config["consistency-weight"]))
    result = training.train(net, trainloader, net.specs, epochs=epochs, learning_rate=lr,
                            weights=weights)
    return result.loss


def test(net: MultimodalClassifier, testloader: DataLoader) -> tuple[float, float]:
    """Validate the model on the test set; returns ``(loss, accuracy)``."""
    result = training.evaluate(net, testloader, net.specs)
    return result.loss, result.accuracy
