"""The run configuration: one frozen, validated dataclass read from Flower's run config.

Defaults live in ``pyproject.toml`` under ``[tool.flwr.app.config]`` (Flower's convention);
this module parses and checks the flat ``{key: value}`` mapping Flower hands to both the
ServerApp and the ClientApp, so every component sees the same validated values.

Every key is documented once, here: each field of :class:`RunConfig` carries its meaning and,
for a key with a fixed set of values, those values (:func:`setting`). The README's
configuration table is generated from them (``python -m fedmosaic.config``), and a test
checks that the README, ``pyproject.toml`` and this class agree.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

from fedmosaic import PROJECT_DIR

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ConfigValue = bool | int | float | str
COMPRESSION_BITS = (4, 8, 32)
"""Bits per transmitted value an update hop may use (32: float32, no quantization)."""
EDGE_ROLES = ("simulated", "cloud", "edge")
"""``simulated``: the cloud run simulates its edges; ``cloud``: its nodes are edge SuperNodes;
``edge``: the run is one edge's sub-round server (see ``server/edge/``)."""
EDGE_AGGREGATIONS = ("mean", "trimmed-mean", "median")
"""How an edge combines its devices' deltas (``server/edge/robust.py``)."""
PARTITIONERS = ("iid", "dirichlet")
"""How a data file without a ``device`` column is split across devices (``data/files.py``)."""
SENSOR_ENCODERS = ("tcn", "features")
"""Sensor encoders: the trainable TCN, or fixed features and a projection (for DP-SGD)."""
FUSIONS = ("moe", "concat")
"""Fusion of the modalities: the hierarchical mixture, or zero-filled concatenation."""
PERSONALIZATIONS = ("none", "fedbn", "fedrep", "ditto", "local-gate")
"""What a device keeps to itself (``models/personalization.py``)."""
MODES = ("sync", "async")
"""Synchronous rounds (Flower's), or buffered asynchronous ones (``server/async_rounds.py``)."""
DEVICE_STATES = ("auto", "memory", "disk")
"""Where a device keeps its state between rounds (``clients/state_store.py``)."""
FINE_TUNES = ("all", "top", "head")
"""What devices train: every parameter, all but the encoders, or the classifier alone."""
DATA_POISONING_ATTACKS = ("label-flip",)
"""Attacks a malicious device makes on its own data (``clients/poisoning.py``)."""
MODEL_POISONING_ATTACKS = ("sign-flip", "gaussian", "scale-10", "scale-100", "nan")
"""Attacks a malicious device makes on its own reply (``clients/poisoning.py``)."""
COLLUDING_ATTACKS = ("alie", "ipm")
"""Attacks that need the round's honest updates, played in the server chain
(``server/collusion.py``)."""
REPLY_TAMPERING_ATTACKS = ("malformed",)
"""Attacks on the reply's bytes rather than the model: a rogue device breaking the reply
contract (``clients/poisoning.py``), which every tier must reject."""
CHANNEL_ATTACKS = ("delay", "burst")
"""``attack`` values where a device trains honestly but its channel looks wrong: it replies late
(``delay``) or pads its reply (``burst``); what risk perception's channel score must notice."""
ATTACKS = ("none", *DATA_POISONING_ATTACKS, *MODEL_POISONING_ATTACKS, *COLLUDING_ATTACKS,
           *REPLY_TAMPERING_ATTACKS, *CHANNEL_ATTACKS)
"""Behaviours of simulated malicious clients (``attack``)."""
ACCOUNTANTS = ("rdp", "prv", "filter")
"""Accountants a run may select (``dp-accountant``)."""
GRAD_SAMPLE_MODES = ("hooks", "functorch")
"""Opacus per-sample-gradient modes that support the multimodal model's dict inputs."""
CONTROLLERS = ("none", "static", "linear", "exponential", "alpine", "bandit", "ddpg", "td3",
               "random")
"""``controller``: who sets each device's per-round spend and anonymizer knobs (``none``: the
device spends its budget evenly over the planned rounds, as without the adaptive loop)."""
SUM_STRATEGIES = ("fedavg", "fedprox", "fedavgm", "fedadam", "fedadagrad", "fedyogi")
"""Strategies that need only the (weighted) sum of the updates, so secure aggregation suits
them; the others look at each update (robust statistics, per-device losses, expert routing)."""
CENTRAL_DP_MODES = ("none", "server", "client")
"""``central-dp``: none, or Flower's server-side or client-side fixed-clipping wrapper."""
RENAMED_KEYS = {"epsilon": "dp-epsilon-budget"}
"""Run-config keys that were renamed: old key → new key (an old key gets a clear error)."""


def setting(meaning: str, choices: tuple[ConfigValue, ...] | None = None) -> Any:
    """A :class:`RunConfig` field: its ``meaning`` and, if fixed, its allowed ``choices``.

    The default lives in ``pyproject.toml``; ``choices`` are checked for every config.
    """
    return dataclasses.field(metadata={"meaning": meaning, "choices": choices})


@dataclass(frozen=True)
class RayResources:
    """Where the ClientApps run and what each one (one device at a time) is given.

    Attributes:
        address: An existing Ray cluster to join (``HOST:PORT`` of its head, ``auto`` or a
            ``ray://`` client address); empty: start a private Ray on this machine.
        client_cpus: CPUs each ClientApp actor reserves (Flower's ``client_resources``).
        client_gpus: GPUs (or fractions of one) each ClientApp actor reserves.
    """

    address: str = ""
    client_cpus: float = 1.0
    client_gpus: float = 0.0

    def __post_init__(self) -> None:
        if not self.client_cpus > 0:
            raise ValueError(f"client CPUs must be > 0, got {self.client_cpus}")
        if not self.client_gpus >= 0:
            raise ValueError(f"client GPUs must be >= 0, got {self.client_gpus}")


@dataclass(frozen=True)
class RunConfig:
    """Every setting of a run. Field ``x_y`` is run-config key ``x-y``."""

    run_name: str = setting("run folder name; empty: `<dataset>-<strategy>-<timestamp>`")
    out_dir: str = setting("parent of run folders")
    seed: int = setting(
        "seeds model initialisation, data generation, shuffling and the sampling of clients each "
        "round (in-process runs, whose node IDs are fixed, sample the same clients for the same "
        "seed)"
    )
    dataset: str = setting(
        "`smartwatch`, `synthetic`, a registered name, or `package.module:factory`"
    )
    num_clients: int = setting("virtual SuperNodes (devices); smartwatch has at most 10")
    num_server_rounds: int = setting("federated rounds")
    strategy: str = setting(
        'a name from "Strategies" (`fedavg`, `fedprox`, `trimmed-mean`, `moe-fusion`, '
        "`moe-fusion-trim`, every Flower built-in) or `package.module:Class`"
    )
    proximal_mu: float = setting("FedProx's μ; sent to clients by `fedprox` only")
    server_learning_rate: float = setting(
        "`fedavgm`'s server step η on the averaged update Δ (w ← w + η Δ, or its momentum)"
    )
    server_momentum: float = setting(
        "`fedavgm`'s server momentum β in [0, 1) (Hsu et al. 2019: v ← β v + Δ, w ← w + η v)"
    )
    trim_fraction: float = setting(
        "β of `trimmed-mean`, `moe-fusion-trim` and Flower's `fedtrimmedavg`: share cut at each "
        "end, in [0, 0.5)"
    )
    max_update_norm: float = setting(
        'reject an update with `‖w − w_global‖₂` above this (0: no bound); see "Update validation"'
    )
    max_examples: int = setting(
        "most training examples one device may claim (`num-examples`, `dataset-size`); a reply "
        "above it is rejected, so no device can outweigh the others by claiming more"
    )
    min_valid_replies: int = setting(
        "a round with fewer accepted training replies is skipped (global model unchanged)"
    )
    num_malicious_nodes: int = setting("attackers Krum, MultiKrum and Bulyan assume per round")
    attack: str = setting(
        'behaviour of simulated malicious clients; see "Attack simulation"',
        choices=ATTACKS,
    )
    attack_start_round: int = setting(
        "the first round in which malicious clients attack (before it they are honest: attackers "
        "that appear mid-run)"
    )
    malicious_fraction: float = setting(
        "share of clients that are malicious (chosen from `seed`), in [0, 1)"
    )
    fraction_train: float = setting("share of clients sampled to train each round")
    fraction_evaluate: float = setting("share sampled for federated evaluation (0 disables it)")
    local_epochs: int = setting("epochs of local training per round")
    batch_size: int = setting("local batch size")
    learning_rate: float = setting("Adam step size on the clients")
    embed_dim: int = setting("size of each modality's probabilistic embedding")
    num_experts: int = setting("experts per modality in the first level of the mixture")
    hidden_dim: int = setting("size of each encoder's feature vector")
    sensor_encoder: str = setting(
        "sensor modalities' encoder: `tcn` (trained convolutions) or `features` (fixed statistical "
        'and spectral features, only a projection trained; the DP-SGD choice, see "Privacy")',
        choices=SENSOR_ENCODERS,
    )
    fusion: str = setting(
        "how the modalities' embeddings are fused: `moe` (the uncertainty-aware hierarchical "
        "mixture of experts; a missing modality is left out) or `concat` (zero-filled "
        "concatenation, the baseline of FedMultimodal; a missing modality's input is zeros)",
        choices=FUSIONS,
    )
    modality_dropout: float = setting(
        "chance each present modality of a training sample is hidden (at least one is kept), "
        "so the model learns to predict without it; in [0, 1)"
    )
    personalization: str = setting(
        "what each device keeps to itself: `none`, `fedbn` (its normalisation layers), `fedrep` "
        "(its classifier head, fitted before the shared body each round; under DP trained with "
        "it), `ditto` (a whole "
        "personal model pulled towards the global one by `ditto-lambda`) or `local-gate` (its "
        'mixture-of-experts routing); see "Personalization"',
        choices=PERSONALIZATIONS,
    )
    ditto_lambda: float = setting(
        "Ditto's λ: weight of ‖v − w_global‖²/2 in a device's personal objective (>= 0)"
    )
    unseen_devices: int = setting(
        "devices held out of training (the partitions after the first `num-clients`); at the "
        "end of the run the shared model, with each one's personal parameters fitted on its own "
        "training split, is evaluated on their held-out data (leave-subjects-out)"
    )
    public_devices: int = setting(
        "devices whose training data is public (consented donors: the partitions after the "
        "unseen ones); the server pretrains the model on it for `pretrain-epochs` before the "
        "first round, and their data is left out of every evaluation"
    )
    pretrain_epochs: int = setting(
        "epochs of the server's plain training on the `public-devices`' data (0: none)"
    )
    pretrain_reframe: float = setting(
        "augmentation of that pretraining, R in [0, 1]: each batch's sensor windows are moved to "
        "a random frame of strength r ~ U(0, R) per sample (rotation of 3k channels as k x, y, z "
        "triples, gain, offset; `privacy/anonymizer/reframe.py`), so the pretrained encoders "
        "read the activity whatever the wearer's frame (0: the windows as recorded)"
    )
    fine_tune: str = setting(
        "what devices train: `all` parameters, the `top` only (probabilistic heads, fusion, "
        "classifier; the encoders stay as the server sent them, e.g. pretrained on public data), "
        "or the classifier `head` only (the fewest parameters for DP-SGD to noise)",
        choices=FINE_TUNES,
    )
    kl_weight: float = setting("weight of the KL term of the probabilistic embeddings")
    consistency_weight: float = setting("weight of the cross-modal consistency loss")
    gate_balance_weight: float = setting(
        "weight of the gate's load-balancing loss (keeps every modality's encoder learning)"
    )
    unimodal_loss_weight: float = setting(
        "weight of the unimodal views' loss: each training sample also classified with each "
        "modality alone, so the model keeps working when the others are missing; 0: off"
    )
    partitioner: str = setting(
        "how a data file without a `device` column is split across devices: `iid` (after a "
        "shuffle with `seed`) or `dirichlet` (label skew, `dirichlet-alpha`)",
        choices=PARTITIONERS,
    )
    local_test_fraction: float = setting(
        "share of each device's partition it keeps for its own (federated) evaluation, never "
        "trained on (datasets built with `from_arrays` and file datasets)"
    )
    dirichlet_alpha: float = setting(
        "label skew of the synthetic devices and of `partitioner=dirichlet` (smaller: more skew)"
    )
    missing_modality_prob: float = setting("chance a synthetic device lacks each modality")
    missing_modality_devices: float = setting(
        "simulation: share of devices (drawn from `seed`) that each lack one modality (drawn "
        "too, unless `missing-modality-name` names it) in all their data, for training and "
        "their own evaluation; in [0, 1]"
    )
    missing_modality_name: str = setting(
        "simulation: the modality the `missing-modality-devices` lack (empty: each draws one)"
    )
    samples_per_client: int = setting("training samples per synthetic device")
    synthetic_noise: float = setting(
        "standard deviation of the synthetic devices' sensor noise (larger: a harder task)"
    )
    window_seconds: float = setting("smartwatch window length (50 Hz, 50 % overlap)")
    num_edges: int = setting(
        "edge aggregators between devices and cloud (0: flat, devices talk to the cloud); see "
        '"Edge tier"'
    )
    device_topk: float = setting(
        "share of update entries a device sends to its edge (top-k by magnitude, error feedback)"
    )
    device_bits: int = setting(
        "bits per value device→edge: `32` (float32), `8` or `4` (stochastic rounding, per-block "
        "scales)",
        choices=COMPRESSION_BITS,
    )
    edge_topk: float = setting("share of aggregate entries an edge sends to the cloud")
    edge_bits: int = setting(
        "bits per value edge→cloud: `32`, `8` or `4`",
        choices=COMPRESSION_BITS,
    )
    edge_role: str = setting(
        "`simulated`: the run simulates its edges; `cloud`: the run's SuperNodes are edges "
        "(deployment); `edge`: this run is one edge's sub-round server",
        choices=EDGE_ROLES,
    )
    edge_aggregation: str = setting(
        "how an edge combines its devices' deltas: `mean` (examples-weighted), `trimmed-mean` "
        "(coordinate-wise, `trim-fraction` cut at each end) or `median`; robust aggregation at the "
        "edge, the cloud (`strategy`) or both",
        choices=EDGE_AGGREGATIONS,
    )
    edge_spool: str = setting(
        "with `edge-role=edge`: the edge's spool directory (hand-off with its SuperNode)"
    )
    telemetry: bool = setting(
        "each training reply carries local-DP sensor summaries (per channel mean and std, bounded "
        'Laplace); see "Privacy"'
    )
    telemetry_epsilon: float = setting("ε of one release of one telemetry field")
    telemetry_budget: float = setting(
        "total ε per telemetry field over the run (sequential composition); a spent field is "
        "withheld"
    )
    telemetry_bound: float = setting(
        "telemetry domain: means in [-bound, bound], stds in [0, bound] (standardised data)"
    )
    dp: bool = setting(
        "DP-SGD (Opacus) on every device, each with its own (ε, δ) budget for the run; see "
        '"Privacy"'
    )
    dp_epsilon_budget: float = setting(
        "a device's ε budget for the whole run (unless `privacy-budgets`, its node config's "
        "`dp-epsilon-budget` or the server says otherwise)"
    )
    delta: float = setting("δ of DP-SGD's and central DP's (ε, δ)")
    max_grad_norm: float = setting("DP-SGD's per-example clipping bound C")
    dp_accountant: str = setting(
        "`rdp` (Rényi DP), `prv` (privacy loss random variables, tighter, slower) or `filter` (a "
        "Rényi privacy filter, valid for adaptive budgets; every `controller` run uses it)",
        choices=ACCOUNTANTS,
    )
    grad_sample_mode: str = setting(
        "Opacus per-sample-gradient mode: `hooks` or `functorch` (`hooks` measured faster here)",
        choices=GRAD_SAMPLE_MODES,
    )
    privacy_budgets: str = setting(
        "TOML file of per-device budgets, `partition-id = epsilon` lines (e.g. `0 = 3.0`)"
    )
    central_dp: str = setting(
        "central (user-level) DP: `server` or `client` (where updates are clipped; Flower's "
        "fixed-clipping wrappers)",
        choices=CENTRAL_DP_MODES,
    )
    central_noise_multiplier: float = setting(
        "z of central DP: noise std z·C/m on the aggregate of m sampled devices"
    )
    central_clipping_norm: float = setting("C of central DP: bound on each device's update norm")
    anonymizer_rounds: int = setting(
        "federated rounds that train the GAN anonymizer before the model's rounds (0: none); "
        'see "Anonymizer"'
    )
    anonymizer_steps: int = setting(
        "adversarial steps (batches) each device runs per anonymizer round"
    )
    anonymizer: str = setting(
        "an `anonymizer.pt` written by an earlier run, used instead of training one"
    )
    anonymize_training: bool = setting(
        "training path: devices train the shared model on their anonymized samples"
    )
    anonymizer_release: int = setting(
        "release path: anonymized records each device publishes per round (0: none)"
    )
    release_k: int = setting(
        "k-anonymity of released records' metadata (modalities held, label); smaller classes "
        "are suppressed"
    )
    anonymizer_strength: float = setting(
        "the anonymizer's privacy strength λ in [0, 1] (0: the identity); the controller may "
        "set it per device"
    )
    anonymizer_noise: float = setting(
        "Gaussian noise added after the anonymizer, in units of each sample's std"
    )
    anonymizer_discard: float = setting(
        "share of each anonymized sample's entries discarded, in [0, 1)"
    )
    anonymizer_reframe: float = setting(
        "scale in [0, 1] of the random orientation, gain and offset each sample's sensor "
        "windows are moved to before the anonymizer rewrites them (0: as recorded)"
    )
    risk_perception: bool = setting(
        "score every device's risk each round from what the server observes (flat federations "
        'without secure aggregation; see "Risk perception")'
    )
    risk_sensitivities: str = setting(
        "data sensitivity per modality, `name=value,...` in [0, 1], over the built-in table"
    )
    controller: str = setting(
        "sets each device's share of its remaining ε and its anonymizer knobs between rounds: "
        '`static`, `linear`, `exponential`, `alpine`, `bandit`, `ddpg`, `td3`, `random`; see '
        '"Adaptive privacy controller"',
        choices=CONTROLLERS,
    )
    controller_policy: str = setting(
        "a stable-baselines3 policy `.zip` for `ddpg`/`td3` (empty: the one shipped in "
        "`privacy/controller/policies/`)"
    )
    controller_privacy_weight: float = setting(
        "w_p: weight of leakage against utility in the controller's reward (>= 0)"
    )
    controller_epsilon_weight: float = setting(
        "w_ε: weight of the round's spend (share of the cap) in the controller's reward (>= 0)"
    )
    resume_from: str = setting(
        "a `checkpoints/round-NNN.pt` to continue from: restores the global model and the privacy "
        "ledger; one in this run's own folder continues the run (`num-server-rounds` stays the "
        "total, rounds numbered on, history kept; see \"Server restart\")"
    )
    mode: str = setting(
        "`sync`: rounds wait for every sampled device; `async`: FedBuff, the server keeps "
        "`concurrency` devices training and aggregates every `buffer-size` replies, each "
        "stale one weighted 1/sqrt(1 + staleness); a round is one aggregation; see "
        '"Asynchronous rounds"',
        choices=MODES,
    )
    concurrency: int = setting(
        "async: devices (deployed edges, with `edge-role=cloud`) training at once, a new one "
        "starting as soon as one replies (0: as many as `fraction-train` samples)"
    )
    buffer_size: int = setting(
        "async: replies aggregated into each new global model, FedBuff's K (0: half the "
        "concurrency, at least 1)"
    )
    max_staleness: int = setting(
        "async: a reply trained on a global model older than this many aggregations is "
        "rejected (`stale`), its privacy spend still entered"
    )
    straggler_fraction: float = setting(
        "simulation: share of devices (drawn from `seed`) that take `straggler-slowdown` times "
        "longer per round; with it or `latency-sigma`, rounds are timed on a simulated clock "
        "(`simulated_seconds`); in [0, 1]"
    )
    straggler_slowdown: float = setting(
        "simulation: how many times longer a straggler's round takes (>= 1)"
    )
    latency_sigma: float = setting(
        "simulation: σ of the log-normal factor of each device round's simulated duration "
        "(1 s times LogNormal(0, σ²); 0: no spread)"
    )
    round_timeout: float = setting(
        "seconds a synchronous round (or, with `mode = async`, one device's work) waits for "
        "its replies; a device that has not answered by then counts as a failed reply "
        "(`timeout`) and the round closes with the replies that came (> 0)"
    )
    node_wait: float = setting(
        "seconds a round waits for the nodes it would sample to be online before it goes on "
        "with those that are (the first round waits up to `round-timeout` while devices "
        "connect); with none online it waits up to `round-timeout`, then ends the run (>= 0)"
    )
    secure_aggregation: bool = setting(
        "SecAgg+: the server, and every edge, sees only sums of the devices' masked updates, "
        "never one in the clear (a deployed edge: the sum of its own devices); see "
        '"Secure aggregation"'
    )
    secure_aggregation_clip: float = setting(
        "secure aggregation: each coordinate of a device's (weighted) update is clipped to "
        "[-c, c] before it is quantized (> 0)"
    )
    secure_aggregation_max_weight: int = setting(
        "secure aggregation: the `num-examples` that counts fully; a device's weight is "
        "min(num-examples, this), exactly (the cohort size times it must fit 32 bits; >= 1)"
    )
    device_state: str = setting(
        "where a device keeps its state between rounds (privacy account, error-feedback "
        "residual, personal parameters, telemetry ledger): `memory` (its Flower context), "
        "`disk` (one file per device in the run folder's `device-state/`, read when it is "
        "sampled, so memory follows the sample, not the population) or `auto` (`disk` in "
        "`fedmosaic run` on a private Ray and in-process runs, else `memory`); see "
        '"Many devices"',
        choices=DEVICE_STATES,
    )

    def __post_init__(self) -> None:
        for field in fields(self):
            choices = field.metadata["choices"]
            if choices is not None and getattr(self, field.name) not in choices:
                raise ValueError(f"{_key(field.name)} must be one of {choices}, got "
                                 f"{getattr(self, field.name)!r}")
        positive_ints = ("num_clients", "num_server_rounds", "max_examples", "local_epochs",
                         "batch_size", "embed_dim", "num_experts", "hidden_dim",
                         "samples_per_client")
        for name in positive_ints:
            if getattr(self, name) < 1:
                raise ValueError(f"{_key(name)} must be >= 1, got {getattr(self, name)}")
        for name in ("fraction_train", "fraction_evaluate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{_key(name)} must lie in [0, 1], got {getattr(self, name)}")
        _check_robustness(self)
        if self.fraction_train == 0.0:
            raise ValueError("fraction-train must be > 0, got 0.0 (no client would train)")
        for name in ("proximal_mu", "kl_weight", "consistency_weight", "gate_balance_weight",
                     "unimodal_loss_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{_key(name)} must be >= 0, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning-rate must be > 0, got {self.learning_rate}")
        if not 0 < self.server_learning_rate < math.inf:
            raise ValueError(f"server-learning-rate must be finite and > 0, got "
                             f"{self.server_learning_rate}")
        if not 0.0 <= self.server_momentum < 1.0:
            raise ValueError(f"server-momentum must lie in [0, 1), got {self.server_momentum}")
        if self.dirichlet_alpha <= 0:
            raise ValueError(f"dirichlet-alpha must be > 0, got {self.dirichlet_alpha}")
        if not 0.0 <= self.local_test_fraction < 1.0:
            raise ValueError(
                f"local-test-fraction must lie in [0, 1), got {self.local_test_fraction}")
        if not 0.0 <= self.missing_modality_prob < 1.0:
            raise ValueError(
                f"missing-modality-prob must lie in [0, 1), got {self.missing_modality_prob}"
            )
        if not 0.0 < self.synthetic_noise < float("inf"):
            raise ValueError(f"synthetic-noise must be finite and > 0, got {self.synthetic_noise}")
        if self.window_seconds <= 0:
            raise ValueError(f"window-seconds must be > 0, got {self.window_seconds}")
        if not 0 <= self.num_edges <= self.num_clients:
            raise ValueError(
                f"num-edges must lie in [0, num-clients={self.num_clients}] (0: no edge tier), "
                f"got {self.num_edges}"
            )
        for name in ("device_topk", "edge_topk"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"{_key(name)} must lie in (0, 1], got {getattr(self, name)}")
        if self.edge_role != "simulated" and self.num_edges == 0:
            raise ValueError(f"edge-role={self.edge_role!r} needs num-edges >= 1, got 0")
        if self.edge_role == "edge" and not self.edge_spool:
            raise ValueError("edge-role='edge' needs edge-spool, the edge's spool directory; "
                             "got ''")
        if self.num_edges and self.attack in COLLUDING_ATTACKS and self.malicious_fraction > 0:
            raise ValueError(
                f"attack={self.attack!r} needs num-edges=0, got num-edges={self.num_edges}: the "
                "colluding attacker is simulated at the cloud, which sees only edge aggregates"
            )
        if self.central_dp != "none" and self.strategy == "fedavgm" and (
                self.server_learning_rate != 1.0 or self.server_momentum != 0.0):
            raise ValueError(
                f"central-dp={self.central_dp!r} with fedavgm's server-learning-rate="
                f"{self.server_learning_rate} / server-momentum={self.server_momentum}: central "
                "DP noises the strategy's output, calibrated to a plain mean; a scaled step or "
                "momentum (which carries earlier un-noised aggregates) is not covered; use 1 and "
                "0, or another strategy")
        if self.num_edges and (self.dp or self.central_dp != "none"):
            raise ValueError(
                f"dp={self.dp} / central-dp={self.central_dp!r} need num-edges=0, got "
                f"num-edges={self.num_edges}: the privacy ledger accounts per device, and an "
                "edge tier hands the cloud per-edge aggregates"
            )
        for name in ("telemetry_epsilon", "telemetry_bound"):
            if not 0.0 < getattr(self, name) < float("inf"):
                raise ValueError(f"{_key(name)} must be finite and > 0, got {getattr(self, name)}")
        if not self.telemetry_epsilon <= self.telemetry_budget < float("inf"):
            raise ValueError(
                f"telemetry-budget must be finite and >= telemetry-epsilon="
                f"{self.telemetry_epsilon}, got {self.telemetry_budget}"
            )
        _check_privacy(self)
        _check_anonymizer(self)
        _check_controller(self)
        _check_learning(self)
        _check_secure_aggregation(self)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> RunConfig:
        """Build from a flat run config (``num-clients = 10`` style keys).

        Unknown keys are an error (a typo must not be silently ignored); missing keys take
        the defaults from ``pyproject.toml``. Ints are accepted where floats are expected.
        """
        renamed = sorted(set(values) & set(RENAMED_KEYS))
        if renamed:
            raise ValueError("renamed run-config key(s): " + ", ".join(
                f"{old!r} is now {RENAMED_KEYS[old]!r}" for old in renamed))
        merged = {**default_run_config(), **values}
        known = {_key(f.name): f for f in fields(cls)}
        unknown = sorted(set(merged) - set(known))
        if unknown:
            raise ValueError(
                f"unknown run-config key(s) {unknown}; expected one of {sorted(known)}"
            )
        kwargs: dict[str, Any] = {}
        for key, field in known.items():
            kwargs[field.name] = _coerce(key, merged[key], field.type)
        return cls(**kwargs)

    def run_dir(self) -> Path:
        """``out-dir/run-name``; an empty run name becomes ``<dataset>-<strategy>-<timestamp>``.

        Launchers fix the name before starting processes, so every process sees the same
        folder; ``flwr run`` without a ``run-name`` gets the ServerApp's timestamp.
        """
        name = self.run_name or (
            f"{self.dataset.replace(':', '-')}-{self.strategy}-"
            f"{datetime.now().strftime('%Y%m%d-%H%M%S')}"
        )
        return Path(self.out_dir).expanduser().resolve() / name

    @property
    def num_partitions(self) -> int:
        """Partitions the dataset is cut into: the devices, the unseen ones, the public ones."""
        return self.num_clients + self.unseen_devices + self.public_devices

    @property
    def unseen_partitions(self) -> range:
        """The ``unseen-devices`` partitions, held out of training, after the devices."""
        return range(self.num_clients, self.num_clients + self.unseen_devices)

    @property
    def public_partitions(self) -> range:
        """The ``public-devices`` partitions (consented donors), after the unseen ones."""
        return range(self.num_clients + self.unseen_devices, self.num_partitions)

    @property
    def train_nodes(self) -> int:
        """Devices sampled to train each round (:func:`sampled_nodes` of ``fraction-train``)."""
        return sampled_nodes(self.fraction_train, self.num_clients)

    @property
    def async_concurrency(self) -> int:
        """Nodes training at once in ``mode = async`` (``concurrency``).

        0: as many as ``fraction-train`` samples of :attr:`async_nodes`.
        """
        return self.concurrency or sampled_nodes(self.fraction_train, self.async_nodes)

    @property
    def async_nodes(self) -> int:
        """How many nodes an asynchronous cloud sends work to.

        ``num-edges`` deployed edges (``edge-role = cloud``), else ``num-clients`` devices.
        """
        return self.num_edges if self.edge_role == "cloud" else self.num_clients

    @property
    def async_buffer(self) -> int:
        """Replies per asynchronous aggregation (``buffer-size``, 0: half the concurrency)."""
        return self.buffer_size or max(1, self.async_concurrency // 2)

    @property
    def simulated_latency(self) -> bool:
        """Whether rounds run on a simulated clock (stragglers or a latency spread)."""
        return self.straggler_fraction > 0 or self.latency_sigma > 0

    @property
    def evaluate_nodes(self) -> int:
        """Devices sampled for federated evaluation each round (0: none)."""
        return sampled_nodes(self.fraction_evaluate, self.num_clients)

    @property
    def accountant(self) -> str:
        """The accountant devices and the ledger compose with: ``filter`` under a controller.

        A controller chooses each round's σ from earlier rounds, which only a privacy filter
        accounts validly (:mod:`fedmosaic.privacy.renyi_filter`); else ``dp-accountant``.
        """
        return "filter" if self.controller != "none" else self.dp_accountant

    def to_mapping(self) -> dict[str, ConfigValue]:
        """The flat run config this object was built from (round-trips ``from_mapping``)."""
        return {_key(k): v for k, v in dataclasses.asdict(self).items()}


def renamed_to_current(values: Mapping[str, Any]) -> dict[str, Any]:
    """A stored run config (a checkpoint's) with renamed keys under their current names."""
    return {RENAMED_KEYS.get(key, key): value for key, value in values.items()}


def sampled_nodes(fraction: float, num_clients: int) -> int:
    """Nodes a round samples: ``max(1, ceil(fraction * num_clients))``, or 0 if ``fraction`` is 0.

    Flower's FedAvg family samples ``max(int(fraction * n), min_nodes)`` of ``n`` connected
    nodes; the strategies are built with ``min_nodes`` = this count, so it is exact. The
    ``1e-9`` keeps a product such as ``0.3 * 10 = 3.0000000000000004`` at 3.
    """
    if fraction == 0.0:
        return 0
    return max(1, math.ceil(fraction * num_clients - 1e-9))


def _check_robustness(config: RunConfig) -> None:
    """Range checks of the strategy, validation and attack settings."""
    if not 0.0 <= config.trim_fraction < 0.5:
        raise ValueError(f"trim-fraction must lie in [0, 0.5), got {config.trim_fraction}")
    if not 0.0 <= config.max_update_norm < float("inf"):
        raise ValueError(
            f"max-update-norm must be finite and >= 0 (0: no bound), got {config.max_update_norm}"
        )
    if config.min_valid_replies < 1:
        raise ValueError(f"min-valid-replies must be >= 1, got {config.min_valid_replies}")
    if not 0 <= config.num_malicious_nodes < config.num_clients:
        raise ValueError(f"num-malicious-nodes must lie in [0, num-clients={config.num_clients}), "
                         f"got {config.num_malicious_nodes}")
    if config.attack_start_round < 1:
        raise ValueError(f"attack-start-round must be >= 1, got {config.attack_start_round}")
    if not 0.0 <= config.malicious_fraction < 1.0:
        raise ValueError(
            f"malicious-fraction must lie in [0, 1), got {config.malicious_fraction}"
        )


def _check_privacy(config: RunConfig) -> None:
    """Range checks of the DP-SGD and central-DP keys."""
    if not 0.0 < config.dp_epsilon_budget < math.inf:
        raise ValueError(f"dp-epsilon-budget must be finite and > 0, got "
                         f"{config.dp_epsilon_budget}")
    if not 0.0 < config.delta < 1.0:
        raise ValueError(f"delta must lie in (0, 1), got {config.delta}")
    for name in ("max_grad_norm", "central_noise_multiplier", "central_clipping_norm"):
        value = getattr(config, name)
        if not 0.0 < value < math.inf:
            raise ValueError(f"{_key(name)} must be finite and > 0, got {value}")


def _check_anonymizer(config: RunConfig) -> None:
    """Range checks of the anonymizer's keys (the knobs by :class:`AnonymizerKnobs`' rules)."""
    for name in ("anonymizer_rounds", "anonymizer_release"):
        if getattr(config, name) < 0:
            raise ValueError(f"{_key(name)} must be >= 0, got {getattr(config, name)}")
    for name in ("anonymizer_steps", "release_k"):
        if getattr(config, name) < 1:
            raise ValueError(f"{_key(name)} must be >= 1, got {getattr(config, name)}")
    if not 0.0 <= config.anonymizer_strength <= 1.0:
        raise ValueError(f"anonymizer-strength must lie in [0, 1], got "
                         f"{config.anonymizer_strength}")
    if not 0.0 <= config.anonymizer_noise < math.inf:
        raise ValueError(f"anonymizer-noise must be finite and >= 0, got "
                         f"{config.anonymizer_noise}")
    if not 0.0 <= config.anonymizer_discard < 1.0:
        raise ValueError(f"anonymizer-discard must lie in [0, 1), got {config.anonymizer_discard}")
    if not 0.0 <= config.anonymizer_reframe <= 1.0:
        raise ValueError(f"anonymizer-reframe must lie in [0, 1], got {config.anonymizer_reframe}")
    uses = config.anonymize_training or config.anonymizer_release > 0
    if uses and not (config.anonymizer_rounds or config.anonymizer):
        raise ValueError("anonymize-training / anonymizer-release need an anonymizer: set "
                         "anonymizer-rounds >= 1 (train one in this run) or anonymizer=PATH "
                         "(an earlier run's anonymizer.pt), got neither")
    if uses and config.edge_role != "simulated":
        raise ValueError(f"anonymize-training / anonymizer-release reach devices directly (a flat "
                         f"federation or simulated edges), got edge-role={config.edge_role!r}")
    if config.anonymizer_rounds and config.edge_role != "simulated":
        raise ValueError(f"anonymizer-rounds need the devices connected to this server (a flat "
                         f"federation or simulated edges), got edge-role={config.edge_role!r}; "
                         f"train the anonymizer in a flat run and pass anonymizer=PATH")
    if config.anonymizer_rounds and config.anonymizer:
        raise ValueError(f"set anonymizer-rounds or anonymizer, not both: got "
                         f"anonymizer-rounds={config.anonymizer_rounds} and "
                         f"anonymizer={config.anonymizer!r}")


def _check_controller(config: RunConfig) -> None:
    """The controller needs DP-SGD budgets to tune (and DP-SGD a flat federation)."""
    for name in ("controller_privacy_weight", "controller_epsilon_weight"):
        if not 0.0 <= getattr(config, name) < math.inf:
            raise ValueError(f"{_key(name)} must be finite and >= 0, got {getattr(config, name)}")
    if config.controller == "none":
        return
    if not config.dp:
        raise ValueError(f"controller={config.controller} tunes DP-SGD budgets: set dp=true, "
                         f"got dp=false")
    if config.controller_policy and config.controller not in ("ddpg", "td3"):
        raise ValueError(f"controller-policy is a ddpg/td3 policy file, got controller="
                         f"{config.controller}")


def _check_learning(config: RunConfig) -> None:
    """Modality dropout, Ditto's λ, the held-out and the public devices."""
    if not 0.0 <= config.missing_modality_devices <= 1.0:
        raise ValueError(f"missing-modality-devices must lie in [0, 1], got "
                         f"{config.missing_modality_devices}")
    if not 0.0 <= config.modality_dropout < 1.0:
        raise ValueError(f"modality-dropout must lie in [0, 1), got {config.modality_dropout}")
    if not 0.0 <= config.ditto_lambda < math.inf:
        raise ValueError(f"ditto-lambda must be finite and >= 0, got {config.ditto_lambda}")
    for name in ("unseen_devices", "public_devices", "pretrain_epochs"):
        if getattr(config, name) < 0:
            raise ValueError(f"{_key(name)} must be >= 0, got {getattr(config, name)}")
    if config.personalization == "local-gate" and config.fusion == "concat":
        raise ValueError("personalization=local-gate keeps the mixture of experts' routing; "
                         "fusion=concat has none: use fusion=moe")
    if config.personalization == "ditto" and config.dp:
        raise ValueError("personalization=ditto trains each device's personal model without DP "
                         "and reports its evaluation; with dp=true use fedrep, fedbn or "
                         "local-gate, whose personal parameters DP-SGD trains")
    if config.personalization == "fedbn" and config.fine_tune != "all":
        raise ValueError("personalization=fedbn keeps the encoders' normalisation layers, which "
                         f"fine-tune={config.fine_tune} never trains: use fine-tune=all")
    if config.personalization == "fedrep" and config.fine_tune == "head":
        raise ValueError("personalization=fedrep keeps the classifier head on the device, and "
                         "fine-tune=head trains nothing else: no shared part would train; use "
                         "fine-tune=top or all")
    if config.personalization == "local-gate" and config.fine_tune == "head":
        raise ValueError("personalization=local-gate keeps the fusion's gates, which "
                         "fine-tune=head never trains: use fine-tune=top or all")
    check_async(config)
    if not 0.0 <= config.pretrain_reframe <= 1.0:
        raise ValueError(f"pretrain-reframe must lie in [0, 1], got {config.pretrain_reframe}")
    if config.pretrain_reframe and not config.pretrain_epochs:
        raise ValueError(f"pretrain-reframe={config.pretrain_reframe} augments the public "
                         f"pretraining: set pretrain-epochs >= 1, got 0")
    if config.pretrain_epochs and not config.public_devices:
        raise ValueError(f"pretrain-epochs={config.pretrain_epochs} pretrains on the public "
                         f"devices' data: set public-devices >= 1, got 0")


def check_async(config: RunConfig) -> None:
    """Refuse async settings out of range and what asynchronous rounds do not compose with.

    Raises:
        ValueError: Naming the setting and what to use instead.
    """
    for name in ("concurrency", "buffer_size", "max_staleness"):
        if getattr(config, name) < 0:
            raise ValueError(f"{_key(name)} must be >= 0, got {getattr(config, name)}")
    if not 0.0 <= config.straggler_fraction <= 1.0:
        raise ValueError(f"straggler-fraction must lie in [0, 1], got "
                         f"{config.straggler_fraction}")
    if not 1.0 <= config.straggler_slowdown < math.inf:
        raise ValueError(f"straggler-slowdown must be finite and >= 1, got "
                         f"{config.straggler_slowdown}")
    if not 0.0 <= config.latency_sigma < math.inf:
        raise ValueError(f"latency-sigma must be finite and >= 0, got {config.latency_sigma}")
    if not 0.0 < config.round_timeout < math.inf:
        raise ValueError(f"round-timeout must be finite and > 0, got {config.round_timeout}")
    if not 0.0 <= config.node_wait < math.inf:
        raise ValueError(f"node-wait must be finite and >= 0, got {config.node_wait}")
    if config.mode != "async":
        return
    if config.async_buffer > config.async_concurrency:
        raise ValueError(f"buffer-size ({config.async_buffer}) must not exceed concurrency "
                         f"({config.async_concurrency}): the buffer would never fill")
    if config.async_concurrency > config.async_nodes:
        nodes = "num-edges" if config.edge_role == "cloud" else "num-clients"
        raise ValueError(f"concurrency ({config.async_concurrency}) must not exceed "
                         f"{nodes} ({config.async_nodes})")
    refused = {
        "central-dp": (config.central_dp != "none", "its accounting assumes m of N devices "
                       "sampled uniformly each round, which asynchronous selection (by device "
                       "speed) is not"),
        "controller": (config.controller != "none", "the controller acts between rounds"),
        "anonymize-training / anonymizer-release": (
            config.anonymize_training or config.anonymizer_release > 0,
            "the anonymizer stage works on synchronous rounds"),
    }
    for name, (used, why) in refused.items():
        if used:
            raise ValueError(f"mode=async does not combine with {name}: {why}; use mode=sync")


def _key(field_name: str) -> str:
    return field_name.replace("_", "-")


def _coerce(key: str, value: Any, type_name: Any) -> ConfigValue:
    expected = {"int": int, "float": float, "str": str, "bool": bool}[str(type_name)]
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ValueError(
            f"run-config key {key!r} expects {expected.__name__}, got "
            f"{type(value).__name__} {value!r}"
        )
    return value


def default_run_config() -> dict[str, ConfigValue]:
    """The defaults from ``[tool.flwr.app.config]`` in the app's ``pyproject.toml``.

    The file is parsed once per version of it (its modification time and size): every
    ``RunConfig.from_mapping`` reads the defaults, a device several times a round.
    """
    pyproject = PROJECT_DIR / "pyproject.toml"
    try:
        stat = pyproject.stat()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"expected the Flower app's pyproject.toml at {pyproject}; reinstall fedmosaic "
            "(pip install -e .) so the app's defaults are available"
        ) from None
    return dict(_parsed_defaults(pyproject, stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=4)
def _parsed_defaults(pyproject: Path, mtime_ns: int, size: int) -> Mapping[str, ConfigValue]:
    """``[tool.flwr.app.config]`` of ``pyproject`` as it was at (``mtime_ns``, ``size``)."""
    with pyproject.open("rb") as handle:
        return MappingProxyType(dict(tomllib.load(handle)["tool"]["flwr"]["app"]["config"]))


def parse_overrides(pairs: list[str], config_file: Path | None = None) -> dict[str, ConfigValue]:
    """Parse ``key=value`` strings (TOML values; bare words are strings) and a TOML file.

    The file is read first, so ``key=value`` pairs win over it.
    """
    overrides: dict[str, ConfigValue] = {}
    if config_file is not None:
        with Path(config_file).open("rb") as handle:
            overrides.update(tomllib.load(handle))
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected an override of the form key=value, got {pair!r}")
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()
        overrides[key.strip()] = value
    return overrides


def config_table() -> str:
    """The README's configuration table: every key, its default and its meaning (Markdown)."""
    defaults = default_run_config()
    rows = ["| key | default | allowed | meaning |", "|---|---|---|---|"]
    for field in fields(RunConfig):
        key, choices = _key(field.name), field.metadata["choices"]
        allowed = ", ".join(f"`{_toml_value(c)}`" for c in choices) if choices else ""
        rows.append(f"| `{key}` | `{_toml_value(defaults[key])}` | {allowed} | "
                    f"{field.metadata['meaning']} |")
    return "\n".join(rows)


def _toml_value(value: ConfigValue) -> str:
    """``value`` as ``pyproject.toml`` writes it (``"runs"``, ``false``, ``1e-5``)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value).replace("e-0", "e-")


if __name__ == "__main__":
    print(config_table())


def _check_secure_aggregation(config: RunConfig) -> None:
    """Secure aggregation's ranges, and the settings that need each device's update in the clear.

    Raises:
        ValueError: Naming the setting that conflicts and why.
    """
    if not 0.0 < config.secure_aggregation_clip < math.inf:
        raise ValueError(f"secure-aggregation-clip must be finite and > 0, got "
                         f"{config.secure_aggregation_clip}")
    if config.secure_aggregation_max_weight < 1:
        raise ValueError(f"secure-aggregation-max-weight must be >= 1, got "
                         f"{config.secure_aggregation_max_weight}")
    if not config.secure_aggregation:
        return
    sees_updates = {
        "central-dp=server": (config.central_dp == "server",
                              "server-side clipping clips each device's update; clip on the "
                              "devices with central-dp=client"),
        f"strategy={config.strategy}": (config.strategy not in SUM_STRATEGIES,
                                        f"it needs each update; use one of {SUM_STRATEGIES}"),
        "mode=async": (config.mode == "async", "a buffered reply is aggregated alone"),
        f"attack={config.attack}": (config.attack in COLLUDING_ATTACKS
                                    and config.malicious_fraction > 0,
                                    "the simulated colluders craft updates from the others'"),
        f"controller={config.controller}": (config.controller != "none",
                                            "its observation reads each update's norm"),
        f"device-topk={config.device_topk}": (config.device_topk < 1.0,
                                              "a masked vector is dense"),
        f"min-valid-replies={config.min_valid_replies}": (
            config.min_valid_replies > 1 and config.edge_role == "simulated",
            "validation sees one aggregate reply a round"),
        f"edge-aggregation={config.edge_aggregation}": (
            config.num_edges > 0 and config.edge_aggregation != "mean",
            "an edge never holds its devices' updates, only their masked sum"),
    }
    conflicts = [f"{setting} ({why})" for setting, (conflict, why) in sees_updates.items()
                 if conflict]
    if config.edge_role != "simulated" and config.num_clients // config.num_edges < 2:
        conflicts.append(f"num-clients={config.num_clients} over num-edges={config.num_edges} "
                         "(a deployed edge runs secure aggregation among its own devices and "
                         "needs at least 2 of them)")
    if conflicts:
        raise ValueError("secure-aggregation=true hides each device's update from the server, "
                         "which these settings need: " + "; ".join(conflicts))
