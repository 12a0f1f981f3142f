"""The ClientApp: unpack the message, train or evaluate locally, reply with arrays and metrics.

A device's partition comes from its node config (``partition-id``, set by the simulation
engine or by ``flower-supernode --node-config``); everything else from the run config.
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedmosaic import records
from fedmosaic.clients.edge_forward import forward_to_edge, is_edge_node
from fedmosaic.clients.edge_reply import edge_reply_content
from fedmosaic.clients.private_training import train_private_round
from fedmosaic.clients.telemetry import publish_telemetry
from fedmosaic.config import RunConfig
from fedmosaic.models.training import evaluate, make_loader, train
from fedmosaic.privacy.central import clip_model_update
from fedmosaic.simulation.attacks import ClientAttack
from fedmosaic.task import build_model, cached_dataset, loss_weights

app = ClientApp()


def _partition_id(context: Context) -> int:
    if "partition-id" not in context.node_config:
        raise ValueError(
            "node config needs 'partition-id' (e.g. flower-supernode --node-config "
            f"'partition-id=0'), got keys {sorted(context.node_config)}"
        )
    return int(context.node_config["partition-id"])


@app.train()
def train_locally(msg: Message, context: Context) -> Message:
    """Local training from the global weights; FedProx's ``proximal-mu`` if the server sent it."""
    if is_edge_node(context):
        return forward_to_edge(msg, context)
    config = RunConfig.from_mapping(context.run_config)
    dataset = cached_dataset(config)
    partition_id = _partition_id(context)
    train_arrays, _ = dataset.partition(partition_id)
    attack = ClientAttack.for_partition(config, partition_id)  # a no-op on honest devices
    train_arrays = attack.poison_data(train_arrays, dataset.num_classes)
    model = build_model(config, dataset)
    model.load_state_dict(msg.content[records.ARRAYS].to_torch_state_dict())
    received = msg.content.config_records.get(records.CONFIG, {})
    learning_rate = float(received.get(records.LEARNING_RATE, config.learning_rate))
    proximal_mu = float(received.get(records.PROXIMAL_MU, 0.0))
    reference = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else None
    server_round = int(received.get(records.SERVER_ROUND, 0))
    shuffle_seed = hash((config.seed, partition_id, server_round)) & 0x7FFF_FFFF
    loader = make_loader(train_arrays, dataset.specs, config.batch_size, shuffle=True,
                         seed=shuffle_seed)
    private = (train_private_round(model, loader, dataset.specs, config, context, partition_id,
                                   received, learning_rate=learning_rate,
                                   proximal_mu=proximal_mu, reference_params=reference)
               if config.dp else None)
    if private is not None and private.result is None:  # budget: refuse, send weights back
        return Message(content=RecordDict({records.ARRAYS: msg.content[records.ARRAYS],
                                           records.METRICS: MetricRecord({
                                               records.NUM_EXAMPLES: 0, **private.metrics})}),
                       reply_to=msg)
    result = private.result if private is not None else train(
        model,
        loader,
        dataset.specs,
        epochs=config.local_epochs,
        learning_rate=learning_rate,
        weights=loss_weights(config),
        proximal_mu=proximal_mu,
        reference_params=reference,
    )
    if config.central_dp == "client":
        clip_model_update(model, msg.content[records.ARRAYS], received)
    attack.poison_model(model, msg.content[records.ARRAYS], server_round)
    metrics = MetricRecord({
        records.NUM_EXAMPLES: result.num_examples,
        records.TRAIN_LOSS: result.loss,
        records.EMBEDDING_VARIANCE: result.mean_embedding_variance,
        records.DATASET_SIZE: len(train_arrays),
        records.MODALITIES_HELD: [int(held) for held in train_arrays.mask.any(axis=0)],
        **attack.reply_metrics(),
        **(private.metrics if private is not None else {}),
    })
    content = RecordDict({records.ARRAYS: ArrayRecord(model.state_dict()),
                          records.METRICS: metrics})
    if config.num_edges:
        content = edge_reply_content(model.state_dict(), msg.content[records.ARRAYS], metrics,
                                     config, context, server_round)
    if config.telemetry:
        content[records.TELEMETRY] = publish_telemetry(train_arrays, dataset.specs, config,
                                                       context)
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_locally(msg: Message, context: Context) -> Message:
    """Evaluate the global weights on the device's local test split."""
    config = RunConfig.from_mapping(context.run_config)
    dataset = cached_dataset(config)
    _, test_arrays = dataset.partition(_partition_id(context))
    model = build_model(config, dataset)
    model.load_state_dict(msg.content[records.ARRAYS].to_torch_state_dict())
    with torch.no_grad():
        result = evaluate(model, make_loader(test_arrays, dataset.specs, 256, shuffle=False,
                                             seed=0), dataset.specs)
    metrics = MetricRecord({
        records.NUM_EXAMPLES: result.num_examples,
        records.EVAL_LOSS: result.loss,
        records.EVAL_ACCURACY: result.accuracy,
    })
    return Message(content=RecordDict({records.METRICS: metrics}), reply_to=msg)
