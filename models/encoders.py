"""Per-modality encoders: one small, Opacus-compatible network per :class:`ModalityKind`.

Every encoder maps a batch of one modality, ``(B, *spec.shape)``, to a feature vector
``(B, hidden_dim)``. Only ``Linear``, ``Conv1d``, ``Conv2d``, ``Embedding`` and ``GroupNorm``
layers are used, so Opacus can compute per-sample gradients (no BatchNorm, whose statistics
mix samples; Wu & He 2018, "Group Normalization", ECCV, is the sample-wise replacement).
"""

from __future__ import annotations

import torch
from torch import nn

from fedmosaic.config import SENSOR_ENCODERS
from fedmosaic.data.modality import ModalityKind, ModalitySpec

_GROUPS = 4


def _conv_block(conv: nn.Module, channels: int) -> nn.Sequential:
    """``ReLU(GroupNorm(conv(x)))`` with ``_GROUPS`` groups."""
    return nn.Sequential(conv, nn.GroupNorm(_GROUPS, channels), nn.ReLU())


def _projection(in_features: int, hidden_dim: int) -> nn.Sequential:
    """``ReLU(W p + b)``: the pooled representation projected to ``hidden_dim``."""
    return nn.Sequential(nn.Linear(in_features, hidden_dim), nn.ReLU())


class ImageEncoder(nn.Module):
    r"""Small 2-D CNN for ``(C, H, W)`` images (LeCun et al. 1998, "Gradient-based learning").

    Two stride-2 ``3x3`` convolutions (16 then 32 channels, GroupNorm, ReLU) are followed by
    global average pooling :math:`p_c = \frac{1}{H'W'}\sum_{h,w} a_{c,h,w}` and a projection
    to ``hidden_dim``.
    """

    def __init__(self, in_channels: int, hidden_dim: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv_block(nn.Conv2d(in_channels, 16, 3, stride=2, padding=1), 16),
            _conv_block(nn.Conv2d(16, 32, 3, stride=2, padding=1), 32),
        )
        self.project = _projection(32, hidden_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode ``(B, C, H, W)`` float images into ``(B, hidden_dim)`` features."""
        return self.project(self.features(x).mean(dim=(2, 3)))


class _DilatedResidualBlock(nn.Module):
    """``y = ReLU(x + GroupNorm(conv_d(x)))`` with a kernel-3 convolution of dilation ``d``."""

    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, 3, dilation=dilation, padding=dilation)
        self.norm = nn.GroupNorm(_GROUPS, channels)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the residual block to ``(B, channels, T)``; the length is preserved."""
        return self.act(x + self.norm(self.conv(x)))

    def masked(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The block on the valid steps ``valid`` ``(B, 1, T)`` only; padded steps are 0."""
        return self.act(x + masked_group_norm(self.conv(x), valid, self.norm)) * valid


def masked_group_norm(x: torch.Tensor, valid: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    r"""``norm`` with its statistics over the valid time steps only.

    Per sample and group :math:`g`, :math:`\mu_g` and :math:`\sigma^2_g` are taken over the
    group's channels and the steps where ``valid`` ``(B, 1, T)`` is 1, exactly what
    ``GroupNorm`` computes on the unpadded series; then ``norm``'s affine map.
    """
    batch, channels, steps = x.shape
    groups = norm.num_groups
    grouped = x.reshape(batch, groups, channels // groups, steps)
    mask = valid.reshape(batch, 1, 1, steps).to(x.dtype)
    count = (mask.sum(dim=(2, 3), keepdim=True) * (channels // groups)).clamp(min=1.0)
    mean = (grouped * mask).sum(dim=(2, 3), keepdim=True) / count
    variance = (((grouped - mean) * mask) ** 2).sum(dim=(2, 3), keepdim=True) / count
    normalised = ((grouped - mean) / torch.sqrt(variance + norm.eps)).reshape(x.shape)
    return normalised * norm.weight.reshape(1, -1, 1) + norm.bias.reshape(1, -1, 1)


class SensorEncoder(nn.Module):
    r"""Temporal convolutional network for ``(C, T)`` sensor windows.

    TCN-style (Bai et al. 2018, arXiv:1803.01271): a kernel-3 convolution lifts the ``C``
    channels to 32, then residual blocks with dilations 2 and 4 give a receptive field of
    :math:`1 + 2(1 + 2 + 4) = 15` steps; padding equals the dilation so the length ``T`` is
    kept. Global average pooling over time, :math:`p_c = \frac{1}{T}\sum_t a_{c,t}`, makes
    the features independent of ``T`` before the projection to ``hidden_dim``.

    Ragged series: a window shorter than ``T`` is padded with NaN at the end
    (:func:`~fedmosaic.data.modality.pad_series`). The steps that hold a NaN in any channel
    are padding: their values are zeroed after every block, group statistics and the pooling
    use the valid steps only, so a padded series encodes exactly as the unpadded one. A batch
    without padding takes the plain path.
    """

    def __init__(self, in_channels: int, hidden_dim: int, channels: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv_block(nn.Conv1d(in_channels, channels, 3, padding=1), channels),
            _DilatedResidualBlock(channels, 2),
            _DilatedResidualBlock(channels, 4),
        )
        self.project = _projection(channels, hidden_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode ``(B, C, T)`` float windows (NaN-padded if ragged) into ``(B, hidden_dim)``."""
        padding = torch.isnan(x)
        if not bool(padding.any()):
            return self.project(self.features(x).mean(dim=2))
        valid = (~padding.any(dim=1, keepdim=True)).to(x.dtype)  # (B, 1, T)
        h = torch.nan_to_num(x) * valid
        conv, norm, act = self.features[0]
        h = act(masked_group_norm(conv(h), valid, norm)) * valid
        for block in self.features[1:]:
            h = block.masked(h, valid)
        pooled = h.sum(dim=2) / valid.sum(dim=2).clamp(min=1.0)
        return self.project(pooled)


class SensorFeatureEncoder(nn.Module):
    r"""Fixed statistical and spectral features of ``(C, T)`` sensor windows, then a projection.

    The DP-friendly sensor encoder. Tramèr & Boneh 2021 ("Differentially Private Learning
    Needs Better Features (or Much More Data)", ICLR, arXiv:2011.11660) show that under DP-SGD
    a linear model on fixed hand-crafted features beats an end-to-end network: the Gaussian
    noise added to the summed clipped gradients has norm :math:`\sigma C \sqrt{d}`, so every
    trainable parameter :math:`d` dilutes the signal. Here only the projection is trained.

    Per channel :math:`x_{1..T}` the features are the classic activity-recognition set
    (after Anguita et al. 2013, "A Public Domain Dataset for Human Activity Recognition
    Using Smartphones", ESANN): the mean, the standard deviation, the minimum, the maximum,
    the mean absolute first difference :math:`\frac{1}{T-1}\sum_t |x_{t+1} - x_t|`, and the
    log band powers :math:`\log\big(1 + \sum_{k \in b} 2|X_k|^2 / T^2\big)` of the
    mean-removed signal's DFT :math:`X_k` over dyadic bands :math:`b = [2^j, 2^{j+1})` of
    the bins :math:`1..\lfloor T/2 \rfloor` (octaves, independent of the sampling rate; the
    last band ends at :math:`\lfloor T/2 \rfloor`). The :math:`C (5 + J)` features are
    projected to ``hidden_dim`` with ``ReLU(W f + b)``.
    """

    STATISTICS = 5
    """Time-domain features per channel: mean, std, min, max, mean absolute difference."""

    def __init__(self, in_channels: int, length: int, hidden_dim: int) -> None:
        super().__init__()
        if length < 2:
            raise ValueError(f"SensorFeatureEncoder needs windows of length >= 2, got {length}")
        last_bin = length // 2
        edges = [1]
        while edges[-1] * 2 <= last_bin:
            edges.append(edges[-1] * 2)
        edges.append(last_bin + 1)
        bands = torch.zeros(last_bin + 1, len(edges) - 1)
        for band, (low, high) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
            bands[low:high, band] = 2.0 / length**2
        self.register_buffer("bands", bands, persistent=False)
        self.num_features = in_channels * (self.STATISTICS + bands.shape[1])
        self.project = _projection(self.num_features, hidden_dim)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The fixed ``(B, C (5 + J))`` features of ``(B, C, T)`` windows (no parameters).

        Raises:
            ValueError: For ragged (NaN-padded) windows: the spectrum needs equal lengths.
        """
        if bool(torch.isnan(x).any()):
            raise ValueError("sensor-encoder=features needs equal-length windows, got NaN "
                             "padding (ragged series); use sensor-encoder=tcn")
        power = torch.fft.rfft(x - x.mean(dim=2, keepdim=True), dim=2).abs().pow(2)
        statistics = [x.mean(dim=2), x.std(dim=2, unbiased=False), x.amin(dim=2),
                      x.amax(dim=2), (x[..., 1:] - x[..., :-1]).abs().mean(dim=2)]
        band_power = torch.log1p(power @ self.bands)
        return torch.cat([*statistics, band_power.flatten(1)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode ``(B, C, T)`` float windows into ``(B, hidden_dim)`` features."""
        return self.project(self.features(x))


class AudioEncoder(nn.Module):
    """Raw-waveform 1-D CNN for ``(1, S)`` audio.

    After Dai et al. 2017 ("Very deep convolutional neural networks for raw waveforms", ICASSP):
    three kernel-9, stride-4 convolutions (16, 32, 32 channels, GroupNorm, ReLU) downsample
    the waveform by :math:`4^3 = 64`; with padding 4 every layer keeps at least one step, so
    any ``S >= 1`` works. Global average pooling over time precedes the projection.
    """

    def __init__(self, in_channels: int, hidden_dim: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv_block(nn.Conv1d(in_channels, 16, 9, stride=4, padding=4), 16),
            _conv_block(nn.Conv1d(16, 32, 9, stride=4, padding=4), 32),
            _conv_block(nn.Conv1d(32, 32, 9, stride=4, padding=4), 32),
        )
        self.project = _projection(32, hidden_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode ``(B, 1, S)`` float waveforms into ``(B, hidden_dim)`` features."""
        return self.project(self.features(x).mean(dim=2))


class TokenEncoder(nn.Module):
    r"""Bag-of-embeddings encoder for ``(L,)`` token ids, 0 being padding.

    A deep averaging network (Iyyer et al. 2015, ACL): with token embeddings :math:`e_{t}`
    and the non-padding indicator :math:`m_t = [x_t \neq 0]`, the pooled vector is
    :math:`p = \sum_t m_t e_t / \max(1, \sum_t m_t)`, so padding never contributes and an
    all-padding sequence maps to :math:`p = 0`. The embedding table has no ``padding_idx``
    because the mask already excludes padding (and Opacus's per-sample gradients assume none).
    """

    def __init__(self, vocab_size: int, hidden_dim: int, embedding_dim: int = 32) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.project = _projection(embedding_dim, hidden_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Encode ``(B, L)`` int64 token ids into ``(B, hidden_dim)`` features."""
        present = (tokens != 0).unsqueeze(-1).to(self.embedding.weight.dtype)
        summed = (self.embedding(tokens) * present).sum(dim=1)
        pooled = summed / present.sum(dim=1).clamp(min=1.0)
        return self.project(pooled)


def build_encoder(spec: ModalitySpec, hidden_dim: int, sensor_encoder: str = "tcn") -> nn.Module:
    """Build the encoder for ``spec``'s kind, producing ``(B, hidden_dim)`` features.

    Args:
        spec: The modality to encode; its ``shape`` gives the input channels.
        hidden_dim: Size of the feature vector, ``>= 1``.
        sensor_encoder: For sensor modalities, one of :data:`SENSOR_ENCODERS`: ``"tcn"``
            (:class:`SensorEncoder`) or ``"features"`` (:class:`SensorFeatureEncoder`).

    Returns:
        An :class:`ImageEncoder`, :class:`SensorEncoder`, :class:`SensorFeatureEncoder`,
        :class:`AudioEncoder` or :class:`TokenEncoder`.

    Raises:
        ValueError: If ``hidden_dim < 1`` or ``sensor_encoder`` is unknown.

    """
    if hidden_dim < 1:
        raise ValueError(f"hidden_dim must be >= 1, got {hidden_dim}")
    if sensor_encoder not in SENSOR_ENCODERS:
        raise ValueError(f"sensor_encoder must be one of {SENSOR_ENCODERS}, got "
                         f"{sensor_encoder!r}")
    kind = ModalityKind(spec.kind)
    if kind == ModalityKind.IMAGE:
        return ImageEncoder(spec.shape[0], hidden_dim)
    if kind == ModalityKind.SENSOR and sensor_encoder == "features":
        return SensorFeatureEncoder(spec.shape[0], spec.shape[1], hidden_dim)
    if kind == ModalityKind.SENSOR:
        return SensorEncoder(spec.shape[0], hidden_dim)
    if kind == ModalityKind.AUDIO:
        return AudioEncoder(spec.shape[0], hidden_dim)
    return TokenEncoder(int(spec.vocab_size), hidden_dim)
