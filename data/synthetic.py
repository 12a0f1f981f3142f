r"""Synthetic multimodal IoT data: four modalities that each see only part of the label.

A class ``y`` in ``{0, ..., 7}`` is written in three bits ``b_k = floor(y / 2^k) mod 2``
(``k = 0, 1, 2``). Every modality encodes a different subset
of the bits, so no single modality can exceed about half the accuracy of all of them together:

========= ========================= ===========================================
modality  bits                      encoding
========= ========================= ===========================================
camera    ``b0, b1``                grating orientation (``b0``) and spatial
                                    frequency (``b1``) in a 1x16x16 frame
vibration ``b1, b2``                oscillation frequency (``b1``) and presence
                                    of its second harmonic (``b2``)
audio     ``b0, b2``                one tone per bit in a 256-sample waveform
logs      ``b0, b1, b2`` (weakly)   frequencies of 16 device-log event tokens
========= ========================= ===========================================

Every class signal is translation invariant: each sample draws its own phases, so the label
lives in orientations, frequencies and token counts (what convolutions with global pooling
and bag-of-token encoders can see), never in absolute phase or a fixed spatial layout.

Generative model. ``sigma = noise_scale``, ``lambda = site_signature``, every ``epsilon``
is i.i.d. standard normal, every ``theta``, ``phi``, ``psi`` is i.i.d. ``U[0, 2 pi)`` and
drawn afresh for each sample, and every constant ``c_*``, ``q_*``, ``r_v`` is a module
constant (``r_0 = 2``, ``r_1 = 6`` cycles per frame).

*Shared prototypes* (a function of ``seed`` only, the same for every device): a smooth random
background field ``B`` (16x16, zero mean, unit root-mean-square), vibration frequencies
``f_0, f_1`` (one from ``{3, ..., 5}``, the other from ``{9, ..., 12}``, in random order, and
if the larger is twice the smaller it is raised by one, so neither is the other's second
harmonic), per-axis amplitudes ``a_c ~ U[0.5, 1]`` and phase lags ``phi_c`` for channel ``c``,
audio tone frequencies ``h_{k,v}`` (``k in {0, 2}``, ``v in {0, 1}``; the two tones of a bit
are drawn from bands two apart of ``[40, 50], [60, 70], [84, 94], [108, 118]``, i.e.
``{0, 2}`` or ``{1, 3}``, at random), site offsets ``o_z in R^3`` with
``||o_z||_inf <= 1``, log evidence tokens ``E_{k,v,j}``, one firmware token ``T_z`` per site
and a background token distribution ``beta``.

*Device* ``d`` (a function of ``(seed, d)`` only): site ``z ~ U{0, ..., S-1}``; label
proportions ``pi ~ Dir(alpha 1_8)``; gains ``g_m = exp(0.1 xi_m)``, ``xi_m ~ N(0, 1)``, for
the three signal modalities; availability ``a_m ~ Bernoulli(1 - p)`` independently for the
``M = 4`` modalities and, if all ``a_m = 0``, one uniformly chosen modality is switched back
on, so a modality is missing with probability ``p - p^M / M``. Labels are i.i.d.
``y ~ Cat(pi)``: ``n`` training samples and ``round(f n)`` local test samples.

*Sample* with label ``y`` on a device with site ``z``:

* camera, pixel ``(i, j)``, ``i, j = 0, ..., 15``, with ``u = i`` if ``b_0 = 0`` (horizontal
  stripes) and ``u = j`` if ``b_0 = 1`` (vertical stripes):
  ``x_{ij} = g (c_B B_{ij} + c_G cos(2 pi r_{b_1} u / 16 + theta)) + sigma epsilon_{ij}``;
* vibration, channel ``c``, ``t = 0, ..., 63``, with ``phi, phi'`` shared by the channels:
  ``x_c(t) = g c_V a_c (sin(2 pi f_{b_1} t / 64 + phi + phi_c)
  + b_2 sin(4 pi f_{b_1} t / 64 + phi' + 2 phi_c)) + lambda c_O o_{z,c} + sigma epsilon``;
* audio, ``t = 0, ..., 255``:
  ``x(t) = g c_A sum_{k in {0, 2}} sin(2 pi h_{k,b_k} t / 256 + psi_k) + sigma epsilon``;
* logs: length ``L ~ U{8, ..., 16}``; positions ``>= L`` hold padding id 0; every other
  position is ``E_{k,b_k,j}`` with ``k ~ U{0,1,2}``, ``j ~ U{0,1}`` with probability ``q_E``,
  the firmware token ``T_z`` with probability ``lambda q_S``, else a draw from ``beta``.

A missing modality's arrays are all zeros and its mask column is ``False`` for every sample
of the device. The site ``z`` is the sensitive attribute: it leaves a small vibration offset
and a slightly over-represented log token, which re-identification attacks can look for.

The central test set has balanced labels and all modalities present; each of its samples
draws its own site and gains as if it came from a fresh device.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from fedmosaic.config import RunConfig
from fedmosaic.data.datasets import FederatedDataset, register_dataset
from fedmosaic.data.modality import ModalityKind, ModalitySpec, MultimodalArrays

SYNTHETIC_SPECS: tuple[ModalitySpec, ...] = (
    ModalitySpec("camera", ModalityKind.IMAGE, (1, 16, 16)),
    ModalitySpec("vibration", ModalityKind.SENSOR, (3, 64)),
    ModalitySpec("audio", ModalityKind.AUDIO, (1, 256)),
    ModalitySpec("logs", ModalityKind.TOKENS, (16,), vocab_size=64),
)
"""The four modalities: camera frames, 3-axis vibration, an audio waveform, log tokens."""

NUM_CLASSES = 8
NUM_BITS = 3
MAX_SITES = 16

_IMAGE_SIDE = 16
_VIB_CHANNELS, _VIB_LEN = 3, 64
_AUDIO_LEN = 256
_SEQ_LEN, _VOCAB = 16, 64
_MIN_LOG_LEN = 8

_C_B = 0.5  # camera background amplitude
_C_G = 1.2  # camera grating amplitude
_GRATING_CYCLES = (2, 6)  # r_v: grating cycles per frame for b_1 = v
_C_V = 1.5  # vibration oscillation amplitude
_VIB_BANDS = ((3, 5), (9, 12))  # bands of the vibration frequencies f_v (cycles/window)
_C_O = 0.2  # vibration site-offset amplitude
_C_A = 1.2  # audio tone amplitude
_AUDIO_BANDS = ((40, 50), (60, 70), (84, 94), (108, 118))  # bands of the tones h_{k,v}
_Q_E = 0.15  # probability that a log position is an evidence token
_Q_S = 0.03  # probability (per unit site_signature) that it is the site's firmware token
_GAIN_SPREAD = 0.1  # standard deviation of the log device gain

# First entries of the SeedSequence entropy, one per independent random stream.
_PROTOTYPE_STREAM, _CENTRAL_STREAM, _PROFILE_STREAM, _SAMPLE_STREAM = range(4)


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of the synthetic IoT population.

    Attributes:
        num_devices: Number of devices ``D``, in ``[1, inf)``.
        samples_per_device: Training samples ``n`` per device, in ``[1, inf)``.
        dirichlet_alpha: Concentration ``alpha`` of the label skew, in ``(0, inf)``; small
            values give each device few classes.
        missing_modality_prob: Probability ``p`` that a device lacks a modality, in
            ``[0, 1)``.
        seed: Root seed, in ``[0, inf)``.
        num_sites: Number of sites ``S`` (the sensitive attribute), in ``[1, 16]``.
        test_fraction: Local test size as a fraction ``f`` of ``n``, in ``[0, 1]``.
        central_test_size: Samples in the central test set, in ``[1, inf)``.
        noise_scale: Standard deviation ``sigma`` of the sensor noise, in ``(0, inf)``.
        site_signature: Strength ``lambda`` of the site's fingerprint, in ``[0, 10]``.

    """

    num_devices: int = 10
    samples_per_device: int = 200
    dirichlet_alpha: float = 0.5
    missing_modality_prob: float = 0.3
    seed: int = 0
    num_sites: int = 4
    test_fraction: float = 0.25
    central_test_size: int = 1000
    noise_scale: float = 1.0
    site_signature: float = 1.0

    def __post_init__(self) -> None:
        for name in ("num_devices", "samples_per_device", "central_test_size"):
            _check_int(name, getattr(self, name), 1, None)
        _check_int("seed", self.seed, 0, None)
        _check_int("num_sites", self.num_sites, 1, MAX_SITES)
        _check_float("dirichlet_alpha", self.dirichlet_alpha, 0.0, math.inf, "(0, inf)")
        _check_float("missing_modality_prob", self.missing_modality_prob, 0.0, 1.0, "[0, 1)")
        _check_float("test_fraction", self.test_fraction, 0.0, 1.0, "[0, 1]")
        _check_float("noise_scale", self.noise_scale, 0.0, math.inf, "(0, inf)")
        _check_float("site_signature", self.site_signature, 0.0, 10.0, "[0, 10]")


def _check_int(name: str, value: object, low: int, high: int | None) -> None:
    """Raise ``ValueError`` unless ``value`` is an integer in ``[low, high]``."""
    allowed = f"[{low}, inf)" if high is None else f"[{low}, {high}]"
    is_int = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not is_int or value < low or (high is not None and value > high):
        raise ValueError(f"{name} must be an integer in {allowed}, got {value!r}")


def _check_float(name: str, value: object, low: float, high: float, allowed: str) -> None:
    """Raise ``ValueError`` unless ``value`` is a real number in the interval ``allowed``.

    ``allowed`` is ``low`` and ``high`` written with brackets, which say whether each end is
    included.
    """
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if ok:
        above = value >= low if allowed[0] == "[" else value > low
        below = value <= high if allowed[-1] == "]" else value < high
        ok = bool(above and below)
    if not ok:
        raise ValueError(f"{name} must be a number in {allowed}, got {value!r}")


@dataclass(frozen=True)
class SyntheticDevice:
    """One device's local data and the hidden variables that generated it.

    Attributes:
        train: ``n`` training samples.
        test: ``round(f n)`` local test samples from the same distribution.
        site: The device's site ``z`` (the sensitive attribute).
        available: ``(M,)`` booleans, ``True`` where the device has modality ``specs[j]``.
        label_proportions: ``(8,)`` class proportions ``pi`` the labels were drawn from.

    """

    train: MultimodalArrays
    test: MultimodalArrays
    site: int
    available: np.ndarray
    label_proportions: np.ndarray


@dataclass(frozen=True)
class _Prototypes:
    """The seed-level patterns shared by all devices (see the module docstring)."""

    background_field: np.ndarray  # (16, 16): c_B B
    vib_freqs: np.ndarray  # (2,): f_v
    vib_amplitudes: np.ndarray  # (3,): a_c
    vib_phases: np.ndarray  # (3,): phi_c
    tone_freqs: np.ndarray  # (2, 2): h_{k, v}, rows k = 0 and k = 2
    site_offsets: np.ndarray  # (S, 3): o_z
    evidence_tokens: np.ndarray  # (3, 2, 2): E_{k, v, j}
    site_tokens: np.ndarray  # (S,): T_z
    background: np.ndarray  # (63,): beta over token ids 1..63


@dataclass(frozen=True)
class _Profile:
    """A device's hidden variables: site, gains, availability and label proportions."""

    site: int
    gains: np.ndarray  # (3,): camera, vibration, audio
    available: np.ndarray  # (M,)
    label_proportions: np.ndarray  # (8,)


@lru_cache(maxsize=8)
def _prototypes(seed: int, num_sites: int) -> _Prototypes:
    """Draw the shared class and site patterns from ``(seed, _PROTOTYPE_STREAM)``."""
    rng = np.random.default_rng([seed, _PROTOTYPE_STREAM, 0])

    side = _IMAGE_SIDE
    freq = np.fft.fftfreq(side)
    lowpass = np.exp(-(freq[:, None] ** 2 + freq[None, :] ** 2) / (2 * 0.08**2))
    field = np.fft.ifft2(np.fft.fft2(rng.standard_normal((side, side))) * lowpass).real
    field = (field - field.mean()) / field.std()  # zero mean, unit root-mean-square
    background_field = _C_B * field

    vib_bands = rng.permutation(len(_VIB_BANDS))
    vib_freqs = np.array([rng.integers(*_VIB_BANDS[b], endpoint=True) for b in vib_bands])
    if 2 * vib_freqs.min() == vib_freqs.max():  # keep f_1 off f_0's second harmonic
        vib_freqs[vib_freqs.argmax()] += 1
    vib_amplitudes = rng.uniform(0.5, 1.0, size=_VIB_CHANNELS)
    vib_phases = rng.uniform(0.0, 2 * np.pi, size=_VIB_CHANNELS)

    # Bit k's two tones lie two bands apart: bands (0, 2) and (1, 3) in a random assignment.
    pairs = rng.permutation(2)[:, None] + np.array([0, 2])
    pairs = np.where(rng.random(2)[:, None] < 0.5, pairs, pairs[:, ::-1])
    tone_freqs = np.array(
        [[rng.integers(*_AUDIO_BANDS[b], endpoint=True) for b in row] for row in pairs]
    )

    token_ids = rng.permutation(np.arange(1, _VOCAB))
    evidence_tokens = token_ids[: 4 * NUM_BITS].reshape(NUM_BITS, 2, 2)
    site_tokens = token_ids[4 * NUM_BITS : 4 * NUM_BITS + num_sites]
    background = rng.dirichlet(np.ones(_VOCAB - 1))
    site_offsets = rng.uniform(-1.0, 1.0, size=(num_sites, _VIB_CHANNELS))

    arrays = (
        background_field.astype(np.float32),
        vib_freqs,
        vib_amplitudes.astype(np.float32),
        vib_phases,
        tone_freqs,
        site_offsets.astype(np.float32),
        evidence_tokens,
        site_tokens,
        background,
    )
    for array in arrays:
        array.setflags(write=False)
    return _Prototypes(*arrays)


def _bits(labels: np.ndarray) -> np.ndarray:
    """Return the ``(N, 3)`` bits ``b_k = floor(y / 2^k) mod 2`` of the labels."""
    return (labels[:, None] >> np.arange(NUM_BITS)) & 1


def _render(
    rng: np.random.Generator,
    config: SyntheticConfig,
    labels: np.ndarray,
    sites: np.ndarray,
    gains: np.ndarray,
) -> dict[str, np.ndarray]:
    """Draw every modality for ``labels`` with per-sample ``sites`` and ``(N, 3)`` ``gains``."""
    protos = _prototypes(config.seed, config.num_sites)
    n, sigma = labels.shape[0], np.float32(config.noise_scale)
    g = gains.astype(np.float32)
    bits = _bits(labels)

    # Camera: a grating along rows (b_0 = 0) or columns (b_0 = 1) with r_{b_1} cycles.
    theta = rng.uniform(0.0, 2 * np.pi, size=n)
    coord = np.arange(_IMAGE_SIDE) / _IMAGE_SIDE
    cycles = np.asarray(_GRATING_CYCLES)[bits[:, 1]]
    wave = np.cos(2 * np.pi * cycles[:, None] * coord + theta[:, None])  # (N, 16)
    grating = np.where(bits[:, 0, None, None] == 0, wave[:, :, None], wave[:, None, :])
    camera = (protos.background_field + _C_G * grating).astype(np.float32)
    camera = g[:, 0, None, None] * np.broadcast_to(camera, (n, _IMAGE_SIDE, _IMAGE_SIDE))
    camera += sigma * rng.standard_normal(camera.shape, dtype=np.float32)

    # Vibration: frequency f_{b_1} on every axis, plus its second harmonic when b_2 = 1.
    phi = rng.uniform(0.0, 2 * np.pi, size=(n, 2))
    t_vib = np.arange(_VIB_LEN) / _VIB_LEN
    f = protos.vib_freqs[bits[:, 1]][:, None, None]
    fundamental = np.sin(2 * np.pi * f * t_vib + (phi[:, :1] + protos.vib_phases)[..., None])
    harmonic = np.sin(4 * np.pi * f * t_vib + (phi[:, 1:] + 2 * protos.vib_phases)[..., None])
    oscillation = fundamental + bits[:, 2, None, None] * harmonic
    vibration = (_C_V * protos.vib_amplitudes[:, None] * oscillation).astype(np.float32)
    vibration *= g[:, 1, None, None]
    vibration += np.float32(config.site_signature * _C_O) * protos.site_offsets[sites][..., None]
    vibration += sigma * rng.standard_normal(vibration.shape, dtype=np.float32)

    # Audio: one tone per bit b_0, b_2, each with its own random phase.
    psi = rng.uniform(0.0, 2 * np.pi, size=(n, 2))
    t_audio = np.arange(_AUDIO_LEN) / _AUDIO_LEN
    h = np.stack([protos.tone_freqs[0, bits[:, 0]], protos.tone_freqs[1, bits[:, 2]]], axis=1)
    tones = np.sin(2 * np.pi * h[..., None] * t_audio + psi[..., None]).sum(axis=1)
    audio = (g[:, 2, None] * (_C_A * tones)).astype(np.float32)
    audio += sigma * rng.standard_normal(audio.shape, dtype=np.float32)

    u = rng.random((n, _SEQ_LEN))
    k = rng.integers(0, NUM_BITS, size=(n, _SEQ_LEN))
    j = rng.integers(0, 2, size=(n, _SEQ_LEN))
    evidence = protos.evidence_tokens[k, np.take_along_axis(bits, k, axis=1), j]
    background = 1 + rng.choice(_VOCAB - 1, size=(n, _SEQ_LEN), p=protos.background)
    q_site = config.site_signature * _Q_S
    logs = np.where(u < _Q_E, evidence, background)
    logs = np.where((u >= _Q_E) & (u < _Q_E + q_site), protos.site_tokens[sites][:, None], logs)
    lengths = rng.integers(_MIN_LOG_LEN, _SEQ_LEN + 1, size=n)
    logs = np.where(np.arange(_SEQ_LEN) < lengths[:, None], logs, 0)

    return {
        "camera": camera[:, None],
        "vibration": vibration,
        "audio": audio[:, None],
        "logs": logs.astype(np.int64),
    }


def _check_device_id(config: SyntheticConfig, device_id: int) -> None:
    """Raise ``ValueError`` unless ``0 <= device_id < config.num_devices``."""
    if not 0 <= device_id < config.num_devices:
        raise ValueError(f"device_id must lie in [0, {config.num_devices}), got {device_id}")


def _profile(config: SyntheticConfig, device_id: int) -> _Profile:
    """Draw device ``device_id``'s hidden variables from ``(seed, _PROFILE_STREAM, id)``."""
    rng = np.random.default_rng([config.seed, _PROFILE_STREAM, device_id])
    num_modalities = len(SYNTHETIC_SPECS)
    site = int(rng.integers(config.num_sites))
    gains = np.exp(_GAIN_SPREAD * rng.standard_normal(3))
    available = rng.random(num_modalities) >= config.missing_modality_prob
    restored = int(rng.integers(num_modalities))
    if not available.any():
        available[restored] = True
    proportions = rng.dirichlet(np.full(NUM_CLASSES, config.dirichlet_alpha))
    return _Profile(site, gains, available, proportions)


def generate_device(config: SyntheticConfig, device_id: int) -> SyntheticDevice:
    """Generate device ``device_id``'s local train and test data.

    The result depends only on ``config`` and ``device_id`` (random streams seeded with
    ``(seed, stream, device_id)``), so any device is generated in O(1) without the others.

    Raises:
        ValueError: If ``device_id`` is not in ``[0, num_devices)``.

    """
    _check_device_id(config, device_id)
    profile = _profile(config, device_id)
    rng = np.random.default_rng([config.seed, _SAMPLE_STREAM, device_id])
    num_train = config.samples_per_device
    num_test = int(round(config.test_fraction * num_train))
    total = num_train + num_test
    labels = rng.choice(NUM_CLASSES, size=total, p=profile.label_proportions).astype(np.int64)
    sites = np.full(total, profile.site)
    inputs = _render(rng, config, labels, sites, np.broadcast_to(profile.gains, (total, 3)))
    for spec, present in zip(SYNTHETIC_SPECS, profile.available, strict=True):
        if not present:
            inputs[spec.name][:] = 0
    arrays = MultimodalArrays(
        inputs=inputs,
        mask=np.broadcast_to(profile.available, (total, len(SYNTHETIC_SPECS))).copy(),
        labels=labels,
    )
    return SyntheticDevice(
        train=arrays.subset(np.arange(num_train)),
        test=arrays.subset(np.arange(num_train, total)),
        site=profile.site,
        available=profile.available,
        label_proportions=profile.label_proportions,
    )


def generate_central_test(config: SyntheticConfig) -> MultimodalArrays:
    """Generate the server's test set from ``(seed, _CENTRAL_STREAM)``.

    Labels are balanced (``central_test_size`` samples cycling through the classes, then
    shuffled), every modality is present, and each sample draws its own site and gains.
    """
    rng = np.random.default_rng([config.seed, _CENTRAL_STREAM, 0])
    n = config.central_test_size
    labels = rng.permutation(np.arange(n) % NUM_CLASSES).astype(np.int64)
    sites = rng.integers(config.num_sites, size=n)
    gains = np.exp(_GAIN_SPREAD * rng.standard_normal((n, 3)))
    return MultimodalArrays(
        inputs=_render(rng, config, labels, sites, gains),
        mask=np.ones((n, len(SYNTHETIC_SPECS)), dtype=bool),
        labels=labels,
    )


class SyntheticIoTDataset(FederatedDataset):
    """The synthetic population as a :class:`FederatedDataset`, one partition per device.

    Partitions are generated on demand (nothing is cached), the central test set once.
    """

    specs = SYNTHETIC_SPECS
    num_classes = NUM_CLASSES
    sensitive_attribute = "site"

    def __init__(self, config: SyntheticConfig) -> None:
        self.config = config
        self.num_sensitive_values = config.num_sites
        self._central: MultimodalArrays | None = None

    @property
    def num_partitions(self) -> int:
        """The number of devices."""
        return self.config.num_devices

    def partition(self, partition_id: int) -> tuple[MultimodalArrays, MultimodalArrays]:
        """Device ``partition_id``'s ``(train, test)`` samples."""
        self.check_partition_id(partition_id)
        device = generate_device(self.config, partition_id)
        return device.train, device.test

    def central_test(self) -> MultimodalArrays:
        """Return the balanced, fully observed central test set (generated once)."""
        if self._central is None:
            self._central = generate_central_test(self.config)
        return self._central

    def central_test_without(self, partitions: Collection[int]) -> MultimodalArrays:
        """The central test set: generated apart from every device, so it holds none of theirs."""
        return self.central_test()

    def site_of(self, partition_id: int) -> int:
        """Return device ``partition_id``'s site (the sensitive attribute), without its samples."""
        self.check_partition_id(partition_id)
        return _profile(self.config, partition_id).site

    sensitive_value = site_of


@register_dataset("synthetic")
def synthetic_dataset(config: RunConfig) -> SyntheticIoTDataset:
    """Build the synthetic dataset from a run config's client, skew, missingness and noise keys."""
    return SyntheticIoTDataset(
        SyntheticConfig(
            num_devices=config.num_partitions,
            samples_per_device=config.samples_per_client,
            dirichlet_alpha=config.dirichlet_alpha,
            missing_modality_prob=config.missing_modality_prob,
            noise_scale=config.synthetic_noise,
            seed=config.seed,
        )
    )
