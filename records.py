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


def eval_without(modality: str) -> tuple[str, str, str]:
    """An evaluation reply's keys for ``modality`` removed at prediction time.

    The test samples that hold it and another modality, the accuracy on them with every
    modality they hold, and with ``modality`` removed
    (:func:`~fedmosaic.models.missing_modality.remove_each_modality`).
    """
    prefix = f"eval-without-{modality}"
    return f"{prefix}-samples", f"{prefix}-accuracy-with", f"{prefix}-accuracy"


SERVER_ROUND = "server-round"
"""Set by Flower's FedAvg family in every message config."""

LEARNING_RATE = "lr"
ROUND_OFFSET = "round-offset"
"""Rounds the run completed before it was resumed: a training message's round of the run is
Flower's ``server-round`` plus this."""
RUN_TOKEN = "run-token"
"""A random token of the run, kept across a resume: a device's kept reply answers only its run."""
LAST_REPLY = "last-reply"
"""Device state: the last training reply and the round of the run it answered."""
PROXIMAL_MU = "proximal-mu"
"""Set by Flower's FedProx in every training message."""

TELEMETRY = "telemetry"
"""ConfigRecord of a training reply with the device's local-DP telemetry (``telemetry=true``)."""
TELEMETRY_EPSILON_SPENT = "epsilon-spent"
"""In the telemetry record: ε this release cost (sum over released fields)."""
TELEMETRY_EPSILON_TOTAL = "epsilon-total"
"""In the telemetry record: ε all of the device's telemetry releases have cost so far."""
TELEMETRY_WITHHELD = "withheld"
"""In the telemetry record: names of fields withheld because their budget is spent."""
TELEMETRY_LEDGER = "telemetry-ledger"
"""ConfigRecord in a ClientApp's ``context.state``: ε spent per telemetry field."""

COMPRESSED_DELTA = "compressed-delta"
"""ArrayRecord of a reply below or from the edge tier: the codec's payload of ``w - w_global``."""
DEVICE_RESIDUAL = "device-residual"
"""ArrayRecord in a ClientApp's ``context.state``: the device's error-feedback residual."""

DATASET_SIZE = "dataset-size"
"""Metric of a training reply: training examples the device holds (bounds ``num-examples``)."""
MODALITIES_HELD = "modalities-held"
"""Metric of a training reply: per modality of ``specs`` (in order), 1 if any local sample has
it, else 0 (MoEFusion averages a modality's expert over its holders only)."""

PARTITION_ID = "partition-id"
"""Node-config key: the device's partition of the dataset; in a DP-SGD training reply: the same
partition, the key of the server's privacy ledger."""
DP_EPSILON_SPENT = "dp-epsilon-spent"
"""In a DP-SGD training reply: ε the device's DP-SGD has spent in this run, this round included."""
DP_EPSILON_BUDGET = "dp-epsilon-budget"
"""The device's DP-SGD ε budget, under one name everywhere: the run-config key (every device's
default), a node-config key (one device's own), in a training config (a new budget from the
server), in a DP-SGD training reply (the budget the device trained under)."""
DP_DELTA = "dp-delta"
"""In a DP-SGD training reply: the δ at which ε is reported."""
DP_NOISE_MULTIPLIER = "dp-noise-multiplier"
"""In a DP-SGD training reply: σ of the device's DP-SGD."""
DP_REFUSED = "dp-refused"
"""In a DP-SGD training reply: 1 if the device did not train because its budget would be
exceeded (its arrays are then the global ones, unchanged), else 0."""
DP_ACCOUNT = "dp-account"
"""ConfigRecord in a ClientApp's ``context.state``: the device's DP-SGD accountant history."""
DP_SAMPLE_RATE = "dp-sample-rate"
"""In a DP-SGD training reply: the Poisson sampling rate q of this round's steps."""
DP_STEPS = "dp-steps"
"""In a DP-SGD training reply: DP-SGD steps taken this round (0 if refused)."""
DP_SPEND_SHARE = "dp-spend-share"
"""In a training config, per device, from the controller: the share in (0, 1] of the device's
remaining ε (under its cap, by the Rényi filter) that this round may spend."""
DP_PRIOR_PREFIX = "dp-prior-"
"""Training-config keys ``dp-prior-<partition-id>`` after a server restart: the device's DP-SGD
segments from before it, flattened ``[σ, q, steps, σ, q, steps, ...]``, from the ledger."""

ATTACKER_TAG = "simulated-attacker"
"""Simulation only: metric a colluding attacker's reply carries until the server chain's
colluding attacker (``server/collusion.py``) replaces its arrays."""

NUM_PARTITIONS = "num-partitions"
"""Node-config key: devices in the federation."""
STATE_DIR = "state-dir"
"""Node-config key: directory where the device keeps its privacy account and its personal
parameters across restarts."""
DEVICE_STATE_FOLDER = "device-state"
"""Folder of a run folder with the devices' state: ``deploy-local`` devices' ``state-dir``, and
with ``device-state = disk`` one file per simulated device (``clients/state_store.py``)."""
PERSONAL = "personal"
"""ArrayRecord in a ClientApp's ``context.state``: the device's personal parameters
(``personalization``), never sent."""
EDGE_ID = "edge-id"
"""Node-config key of a device below an edge (its edge) or of an edge SuperNode (its own ID);
in a device's training reply below an edge: the edge that aggregates it."""
EDGE_REQUEST = "edge-request"
"""Train-config key of an asynchronous training message: its number among all the training
messages the run sent (1, 2, ...). A deployed edge's spool files the request under it (a
synchronous cloud's edges use the round), and serves its requests in that order."""
EDGE_SPOOL = "edge-spool"
"""Node-config key of an edge SuperNode: the spool directory it shares with its edge's run
(also the run-config key of that run)."""

CPU_LOAD = "cpu-load"
"""Metric of a device's training reply: its CPU load (1-minute load average per core, capped at
1) as it reports it; risk perception's resource criterion."""
MEMORY_LOAD = "memory-load"
"""Metric of a device's training reply: the share of its memory in use, as it reports it."""

TRAIN_METRICS = (NUM_EXAMPLES, TRAIN_LOSS, EMBEDDING_VARIANCE, DATASET_SIZE, MODALITIES_HELD,
                 CPU_LOAD, MEMORY_LOAD)
"""The metrics of every device's training reply (the server's reply contract checks them)."""
DP_METRICS = (PARTITION_ID, DP_EPSILON_SPENT, DP_EPSILON_BUDGET, DP_DELTA, DP_NOISE_MULTIPLIER,
              DP_REFUSED, DP_SAMPLE_RATE, DP_STEPS)
"""The metrics a DP-SGD training reply adds (``dp=true``); a refusal carries these and
``num-examples = 0`` only."""
EDGE_AGGREGATE_METRICS = (TRAIN_LOSS, EMBEDDING_VARIANCE, DATASET_SIZE)
"""The device metrics an edge averages (weighted by examples) into its reply to the cloud; under
secure aggregation, those a masked reply carries in the clear and the unmasked aggregate
averages."""

EDGE_ACCEPTED = "edge-accepted"
"""Metric of an edge's reply: device updates it averaged."""
EDGE_REJECTED = "edge-rejected"
"""Metric of an edge's reply: device updates it rejected."""
EDGE_BYTES_IN = "edge-bytes-in"
"""Metric of an edge's reply: serialized bytes of its devices' replies this round."""
EDGE_TIER_METRICS = (EDGE_ACCEPTED, EDGE_BYTES_IN, EDGE_REJECTED)
"""The edge-tier counters of an edge's reply; the cloud removes them before its strategy."""

ANONYMIZER_ACTION = "anonymizer"
"""Message action of a federated anonymizer round (message type ``train.anonymizer``)."""
ANONYMIZER_MODELS = "anonymizer-models"
"""ArrayRecord of an anonymizer round: the generator's and the critics' weights."""
ANONYMIZER = "anonymizer"
"""ArrayRecord of a training message (``anonymize-training`` or ``anonymizer-release``): the
trained generator the device applies."""
ANONYMIZER_KNOBS = "anonymizer-knobs"
"""ConfigRecord of a training message: this device's ``strength``, ``noise``, ``discard``,
``reframe``."""
ADVERSARY_ACCURACY = "adversary-accuracy"
"""Metric of an anonymizer reply: the attribute adversary's accuracy on the device's batches."""
UTILITY_ACCURACY = "utility-accuracy"
"""Metric of an anonymizer reply: the utility head's accuracy on the anonymized batches."""
RELEASE = "release"
"""ArrayRecord of a training reply (``anonymizer-release``): anonymized records, one array per
modality plus ``mask`` and ``labels``."""
RELEASE_META = "release-meta"
"""ConfigRecord of a training reply with a release: the device's ``pseudonym``."""
PSEUDONYM = "pseudonym"
"""In the release metadata: the device's keyed pseudonym (HMAC-SHA256 under its own key)."""
PSEUDONYM_KEY = "pseudonym-key"
"""Context-state record of a device: its secret pseudonym key, kept across rounds."""

SECAGG_KEYS_ACTION = "secagg_keys"
"""Message action of secure aggregation's first stage (``query.secagg_keys``): advertise keys."""
SECAGG_SHARE_ACTION = "secagg_share"
"""Message action of its second stage (``query.secagg_share``): share the secrets."""
SECAGG_UNMASK_ACTION = "secagg_unmask"
"""Message action of its last stage (``query.secagg_unmask``): shares for unmasking."""
SECURE_AGGREGATION = "secure-aggregation"
"""ConfigRecord of every secure-aggregation message and reply (round, index, keys, encoding)."""
SECAGG_SHARES = "secagg-shares"
"""ConfigRecord of a training message under secure aggregation: the neighbours' encrypted
shares routed to this device (``senders``, ``ciphertexts``)."""
SECAGG_MASKED = "secagg-masked"
"""ArrayRecord of a training reply under secure aggregation: ``masked``, the masked codes
(one device's, or an edge's sum of its devices'), instead of ``arrays``."""
SECAGG_MASKED_WORDS = "masked"
"""Array of ``secagg-masked``: the masked words, ``uint16`` or ``uint32``."""
SECAGG_SESSION = "secagg-session"
"""Context-state record of a device: its secure-aggregation session of the current round."""
