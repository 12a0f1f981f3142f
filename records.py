"""Names of the records and metrics exchanged between the ServerApp and the ClientApp.

Flower's built-in strategies read ``arrays``, ``config`` and the ``num-examples`` metric by
default; ours use the same names so every Flower strategy works unchanged.
"""

ARRAYS = "arrays"
"""ArrayRecord with the model's state dict (server → client: global, client → server: local)."""

CONFIG = "config"
"""ConfigRecord the strategy sends with each message (``lr``, ``proximal-mu``, ...)."""

METRICS = "metrics"
"""MetricRecord of a client's reply."""

NUM_EXAMPLES = "num-examples"
"""Samples a reply is based on; Flower's strategies weight by it."""

TRAIN_LOSS = "train-loss"
EMBEDDING_VARIANCE = "embedding-variance"
"""Mean variance of the client's probabilistic embeddings (inverse confidence)."""

EVAL_LOSS = "eval-loss"
EVAL_ACCURACY = "eval-accuracy"

SERVER_ROUND = "server-round"
"""Set by Flower's FedAvg family in every message config."""

LEARNING_RATE = "lr"
PROXIMAL_MU = "proximal-mu"
"""Set by Flower's FedProx in every training message."""
