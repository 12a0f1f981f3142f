"""A device's part of a federated anonymizer round (``server/anonymizer_rounds.py``).

The device loads its training split, labels every sample with its own value of the dataset's
protected attribute (its subject, its site: a device knows whose data it holds), runs
``anonymizer-steps`` adversarial steps from the weights the server sent and replies with the
new weights, the examples it used and the adversary's and utility head's accuracy.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict

from fedmosaic import records
from fedmosaic.clients.round import partition_id
from fedmosaic.config import RunConfig
from fedmosaic.data.absent_modalities import as_held
from fedmosaic.privacy.anonymizer.training import (
    AnonymizerModels,
    AnonymizerTraining,
    local_anonymizer_update,
)
from fedmosaic.task import cached_dataset


def run_anonymizer_round(message: Message, context: Context) -> Message:
    """Train the anonymizer the message carries on this device's samples; reply with it."""
    config = RunConfig.from_mapping(context.run_config)
    dataset = cached_dataset(config)
    device = partition_id(context)
    train_arrays = as_held(config, dataset.partition(device)[0], device, dataset.specs)
    settings = AnonymizerTraining.from_config(config)
    models = AnonymizerModels(dataset.specs, dataset.num_sensitive_values, dataset.num_classes,
                              settings)
    models.load_state_dict(message.content[records.ANONYMIZER_MODELS].to_torch_state_dict())
    received = message.content.config_records.get(records.CONFIG, {})
    server_round = int(received.get(records.SERVER_ROUND, 0))
    attributes = np.full(len(train_arrays), dataset.sensitive_value(device), dtype=np.int64)
    seed = int(np.random.SeedSequence([config.seed, device, server_round]).generate_state(1)[0])
    metrics = local_anonymizer_update(models, train_arrays, attributes, settings,
                                      steps=config.anonymizer_steps, seed=seed)
    reply = RecordDict({
        records.ANONYMIZER_MODELS: ArrayRecord(models.state_dict()),
        records.METRICS: MetricRecord({
            records.NUM_EXAMPLES: int(metrics[records.NUM_EXAMPLES]),
            records.ADVERSARY_ACCURACY: metrics[records.ADVERSARY_ACCURACY],
            records.UTILITY_ACCURACY: metrics[records.UTILITY_ACCURACY],
        }),
    })
    return Message(content=reply, reply_to=message)
