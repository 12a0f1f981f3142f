"""Framework-free task code the ClientApp and ServerApp share: dataset and model from config."""

from __future__ import annotations

import functools

import torch

from fedmosaic.config import RunConfig
from fedmosaic.data.datasets import FederatedDataset, load_dataset
from fedmosaic.models import MultimodalClassifier
from fedmosaic.models.training import LossWeights


@functools.lru_cache(maxsize=2)
def cached_dataset(config: RunConfig) -> FederatedDataset:
    """The run's dataset, loaded once per process (Ray actors and SuperNodes reuse it)."""
    return load_dataset(config)


def build_model(config: RunConfig, dataset: FederatedDataset) -> MultimodalClassifier:
    """The run's model, with weights initialised from ``config.seed``."""
    torch.manual_seed(config.seed)
    return MultimodalClassifier(
        dataset.specs,
        num_classes=dataset.num_classes,
        embed_dim=config.embed_dim,
        num_experts=config.num_experts,
        hidden_dim=config.hidden_dim,
        sensor_encoder=config.sensor_encoder,
        fusion=config.fusion,
    )


def loss_weights(config: RunConfig) -> LossWeights:
    """Weights of the KL, consistency, gate-balance and unimodal terms of the local loss."""
    return LossWeights(kl=config.kl_weight, consistency=config.consistency_weight,
                       balance=config.gate_balance_weight, unimodal=config.unimodal_loss_weight)
