"""Run the attacks against any finished (or running) fedmosaic run folder.

The run folder's ``checkpoints/round-NNN.pt`` holds the global model and the run config, so the
attacks rebuild the dataset and the model exactly as the run did. Attacks that need only the
global model run here: loss-threshold membership inference (members: every client's training
samples; non-members: the central held-out samples) and subject re-identification from
the shared embeddings (reference: training samples with their client; targets: each client's
held-out samples).

``python -m fedmosaic.privacy.attacks RUN_DIR [--round N]`` prints the results.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedmosaic.config import RunConfig, renamed_to_current
from fedmosaic.data.absent_modalities import as_held
from fedmosaic.data.datasets import FederatedDataset
from fedmosaic.data.modality import MultimodalArrays
from fedmosaic.models.multimodal import MultimodalClassifier
from fedmosaic.privacy.attacks.attribute import reidentify, shared_embeddings
from fedmosaic.privacy.attacks.membership import loss_threshold_attack
from fedmosaic.task import build_model, cached_dataset

CHECKPOINT_PATTERN = re.compile(r"round-(\d+)\.pt")


def load_checkpoint(run_dir: Path, server_round: int | None = None
                    ) -> tuple[RunConfig, FederatedDataset, MultimodalClassifier, int]:
    """The run's config, dataset, and global model after ``server_round`` (default: last).

    Raises:
        FileNotFoundError: If the run folder has no (such) checkpoint.

    """
    folder = Path(run_dir) / "checkpoints"
    found = sorted((int(m.group(1)), p) for p in folder.glob("round-*.pt")
                   if (m := CHECKPOINT_PATTERN.fullmatch(p.name)))
    if not found:
        raise FileNotFoundError(f"expected checkpoints/round-NNN.pt in {run_dir}, found none")
    rounds = dict(found)
    chosen = found[-1][0] if server_round is None else server_round
    if chosen not in rounds:
        raise FileNotFoundError(f"run {run_dir} has no checkpoint for round {chosen}; it has "
                                f"rounds {sorted(rounds)}")
    checkpoint = torch.load(rounds[chosen], map_location="cpu", weights_only=False)
    config = RunConfig.from_mapping(renamed_to_current(checkpoint["config"]))
    dataset = cached_dataset(config)
    model = build_model(config, dataset)
    model.load_state_dict(checkpoint["model_state"])
    return config, dataset, model, chosen


def members_and_non_members(config: RunConfig, dataset: FederatedDataset
                            ) -> tuple[MultimodalArrays, MultimodalArrays]:
    """Equal-sized random subsets of all training samples and of the central test set."""
    members = MultimodalArrays.concatenate(
        [as_held(config, dataset.partition(p)[0], p, dataset.specs)
         for p in range(config.num_clients)])
    others = dataset.central_test()
    size = min(len(members), len(others))
    rng = np.random.default_rng(config.seed)
    return (members.subset(np.sort(rng.choice(len(members), size, replace=False))),
            others.subset(np.sort(rng.choice(len(others), size, replace=False))))


def embedding_reidentification(config: RunConfig, dataset: FederatedDataset,
                               model: MultimodalClassifier) -> dict[str, Any]:
    """Subject re-identification from embeddings: train windows -> held-out windows."""
    reference, reference_ids, targets, target_ids = [], [], [], []
    for partition in range(config.num_clients):
        train, test = (as_held(config, split, partition, dataset.specs)
                       for split in dataset.partition(partition))
        reference.append(shared_embeddings(model, train, dataset.specs))
        reference_ids.append(np.full(len(train), partition))
        targets.append(shared_embeddings(model, test, dataset.specs))
        target_ids.append(np.full(len(test), partition))
    result = reidentify(np.concatenate(reference), np.concatenate(reference_ids),
                        np.concatenate(targets), np.concatenate(target_ids), seed=config.seed)
    return vars(result)


def attack_run(run_dir: Path, server_round: int | None = None) -> dict[str, Any]:
    """Membership inference and embedding re-identification against a run's global model."""
    config, dataset, model, chosen = load_checkpoint(run_dir, server_round)
    members, non_members = members_and_non_members(config, dataset)
    membership = loss_threshold_attack(model, members, non_members, dataset.specs)
    return {
        "run_dir": str(run_dir),
        "round": chosen,
        "membership_loss_threshold": vars(membership),
        "reidentification_from_embeddings": embedding_reidentification(config, dataset, model),
    }
