"""The ClientApp: a device's training round (``clients/round.py``) and its local evaluation.

A device's partition comes from its node config (``partition-id``, set by the simulation
engine or by ``flower-supernode --node-config``); everything else from the run config. An
edge SuperNode (its node config names an ``edge-spool``) hands the cloud's training round to
its edge instead (``clients/edge_forward.py``). With ``device-state = disk`` the device's
state waits on disk between its rounds (``clients/state_store.py``). A training round asked
again after the server resumed is answered with the reply already sent
(``clients/replay.py``). Under ``secure-aggregation`` the device answers the protocol's
queries and its training reply leaves masked (``clients/secure_aggregation.py``).
"""

from __future__ import annotations

import torch
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedmosaic import records
from fedmosaic.arrays import torch_state_dict
from fedmosaic.clients.anonymizer_round import run_anonymizer_round
from fedmosaic.clients.device_state import PersonalStore
from fedmosaic.clients.edge_forward import forward_to_edge, is_edge_node
from fedmosaic.clients.replay import replay_repeated_rounds
from fedmosaic.clients.round import partition_id, run_train_round
from fedmosaic.clients.secure_aggregation import (
    advertise_keys,
    mask_training_reply,
    share_keys,
    unmask_shares,
)
from fedmosaic.clients.state_store import keep_state_on_disk
from fedmosaic.config import RunConfig
from fedmosaic.data.absent_modalities import as_held
from fedmosaic.models.missing_modality import removal_metrics, remove_each_modality
from fedmosaic.models.training import evaluate, make_loader
from fedmosaic.task import build_model, cached_dataset

app = ClientApp(mods=[keep_state_on_disk, mask_training_reply, replay_repeated_rounds])


@app.train()
def train_locally(msg: Message, context: Context) -> Message:
    """One training round: the device's stages, or on an edge SuperNode its edge's sub-round."""
    if is_edge_node(context):
        return forward_to_edge(msg, context)
    return run_train_round(msg, context)


@app.train(records.ANONYMIZER_ACTION)
def train_anonymizer_locally(msg: Message, context: Context) -> Message:
    """One federated anonymizer round (``clients/anonymizer_round.py``)."""
    return run_anonymizer_round(msg, context)


@app.query(records.SECAGG_KEYS_ACTION)
def advertise_secure_aggregation_keys(msg: Message, context: Context) -> Message:
    """Secure aggregation, stage 1 (``clients/secure_aggregation.py``)."""
    return advertise_keys(msg, context)


@app.query(records.SECAGG_SHARE_ACTION)
def share_secure_aggregation_keys(msg: Message, context: Context) -> Message:
    """Secure aggregation, stage 2."""
    return share_keys(msg, context)


@app.query(records.SECAGG_UNMASK_ACTION)
def unmask_secure_aggregation(msg: Message, context: Context) -> Message:
    """Secure aggregation, stage 4 (stage 3 masks the training reply)."""
    return unmask_shares(msg, context)


@app.evaluate()
def evaluate_locally(msg: Message, context: Context) -> Message:
    """Evaluate the model the device predicts with on its local test split.

    That is the global weights, with ``personalization`` the device's personal parameters over
    them (under ``ditto`` its whole personal model), once it has trained. The reply also says
    what that model loses with each modality removed at prediction time
    (:func:`~fedmosaic.models.missing_modality.removal_metrics`).
    """
    config = RunConfig.from_mapping(context.run_config)
    dataset = cached_dataset(config)
    device = partition_id(context)
    test_arrays = as_held(config, dataset.partition(device)[1], device, dataset.specs)
    model = build_model(config, dataset)
    model.load_state_dict(torch_state_dict(msg.content[records.ARRAYS]))
    if config.personalization != "none":
        PersonalStore(config, context, device).apply(model)
    with torch.no_grad():
        result = evaluate(model, make_loader(test_arrays, dataset.specs, 256, shuffle=False,
                                             seed=0), dataset.specs)
    removals = remove_each_modality(model, test_arrays, dataset.specs)
    metrics = MetricRecord({
        records.NUM_EXAMPLES: result.num_examples,
        records.EVAL_LOSS: result.loss,
        records.EVAL_ACCURACY: result.accuracy,
        **removal_metrics(removals, [spec.name for spec in dataset.specs]),
    })
    return Message(content=RecordDict({records.METRICS: metrics}), reply_to=msg)
