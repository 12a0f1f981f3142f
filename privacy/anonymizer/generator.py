r"""The anonymizer's generator: per-modality encoders, cross-modal attention, per-modality decoders.

For a sample with modalities :math:`x_1..x_M` (mask :math:`m`) and strength :math:`\lambda`:

1. each present modality is encoded to a token :math:`h_j = \phi_j(x_j) + e_j` (a linear map of
   the flattened values, or of the log tokens' embeddings; :math:`e_j` a learned modality
   embedding);
2. FiLM conditions every token on :math:`\lambda`: :math:`h_j \leftarrow h_j (1 + \gamma(\lambda))
   + \beta(\lambda)` (Perez et al. 2018, arXiv:1709.07871);
3. one Transformer block of multi-head attention across the modality tokens, with the missing
   modalities masked out as keys (Vaswani et al. 2017), so each modality's rewrite can use what
   the others reveal;
4. each token is squeezed to a small code with Gaussian noise, :math:`c_j = W_j h_j + \sigma
   \varepsilon`, :math:`\varepsilon \sim \mathcal{N}(0, I)` (a noisy information bottleneck:
   the code carries at most :math:`\frac{d_c}{2}\log(1 + \mathrm{SNR})` nats, so what the
   adversary and the task do not both need is crowded out; without a code, :math:`c_j = h_j`);
5. each float modality is decoded back to its own shape from its code alone (an MLP
   :math:`\psi_j`), and the output moves from the input towards that reconstruction,
   :math:`x'_j = x_j + \lambda (\psi_j(c_j) - x_j)`: :math:`\lambda = 0` is exactly the
   identity, :math:`\lambda = 1` keeps only what the code carries (a replacement
   autoencoder, as Malekzadeh et al. 2019, arXiv:1810.11546);
   log tokens get a learned per-position keep score :math:`k`, and a token is dropped (set to
   the padding id 0) where :math:`\lambda (1 - k) > 1/2` (a straight-through estimator carries
   the gradient, Bengio et al. 2013, arXiv:1308.3432).

The ``noise`` and ``discard`` knobs (:class:`~fedmosaic.privacy.anonymizer.knobs.AnonymizerKnobs`)
are applied after decoding and need no training. Missing modalities stay all zeros.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fedmosaic.data.modality import ModalityKind, ModalitySpec
from fedmosaic.privacy.anonymizer.knobs import AnonymizerKnobs

TOKEN_EMBEDDING_DIM = 8
"""Embedding size of one log token inside the generator."""
ATTENTION_HEADS = 4
"""Heads of the cross-modal attention (they divide ``token_dim``)."""


class MultimodalAnonymizer(nn.Module):
    """The generator (module docstring).

    Args:
        specs: The dataset's modalities, in the mask's column order.
        token_dim: Size of each modality token.
        heads: Attention heads (must divide ``token_dim``).
        code_dim: With ``> 0``, each token is squeezed to a ``code_dim`` code plus Gaussian
            noise of std ``code_noise`` before an MLP decoder (step 4 of the module
            docstring); 0: a linear decoder reads the token itself.
        code_noise: Std of the code's noise (kept in the state dict, so it travels with the
            weights).

    Raises:
        ValueError: If ``specs`` is empty or ``heads`` does not divide ``token_dim``.
    """

    def __init__(self, specs: tuple[ModalitySpec, ...], token_dim: int = 32,
                 heads: int = ATTENTION_HEADS, code_dim: int = 0, code_noise: float = 1.0) -> None:
        super().__init__()
        if not specs:
            raise ValueError("the anonymizer needs at least one modality, got none")
        if token_dim % heads:
            raise ValueError(f"heads must divide token_dim, got {heads} and {token_dim}")
        self.specs = specs
        self.token_dim = token_dim
        self.encoders = nn.ModuleDict()
        self.decoders = nn.ModuleDict()
        for spec in specs:
            size = math.prod(spec.shape)
            if spec.kind == ModalityKind.TOKENS:
                self.encoders[spec.name] = nn.Sequential(
                    nn.Embedding(spec.vocab_size, TOKEN_EMBEDDING_DIM), nn.Flatten(),
                    nn.Linear(size * TOKEN_EMBEDDING_DIM, token_dim), nn.GELU())
                self.decoders[spec.name] = nn.Linear(code_dim or token_dim, size)
            else:
                self.encoders[spec.name] = nn.Sequential(
                    nn.Flatten(), nn.Linear(size, token_dim), nn.GELU())
                self.decoders[spec.name] = (nn.Sequential(
                    nn.Linear(code_dim, 2 * token_dim), nn.GELU(), nn.Linear(2 * token_dim, size))
                    if code_dim else nn.Linear(token_dim, size))
        self.register_buffer("code_noise", torch.tensor(float(code_noise)))
        # normalised codes (no affine): unit power per code, so code_noise fixes the SNR
        self.codes = nn.ModuleDict({
            s.name: nn.Sequential(nn.Linear(token_dim, code_dim),
                                  nn.LayerNorm(code_dim, elementwise_affine=False))
            for s in specs}) if code_dim else None
        self.modality_embedding = nn.Parameter(torch.zeros(len(specs), token_dim))
        self.film = nn.Linear(1, 2 * token_dim)
        self.attention = nn.MultiheadAttention(token_dim, heads, batch_first=True)
        self.norm_attention = nn.LayerNorm(token_dim)
        self.feed_forward = nn.Sequential(nn.Linear(token_dim, 2 * token_dim), nn.GELU(),
                                          nn.Linear(2 * token_dim, token_dim))
        self.norm_feed_forward = nn.LayerNorm(token_dim)

    def forward(
        self,
        inputs: dict[str, torch.Tensor],
        mask: torch.Tensor,
        strength: torch.Tensor,
        knobs: AnonymizerKnobs | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Anonymize a batch.

        Args:
            inputs: ``{name: (B, *shape)}`` (float32; int64 for tokens).
            mask: ``(B, M)`` presence mask.
            strength: ``(B,)`` per-sample λ in [0, 1].
            knobs: ``noise`` and ``discard`` (``None``: neither).
            generator: Source of the noise and discard draws (``None``: torch's default).

        Returns:
            ``(outputs, keep)``: the anonymized batch, same names, shapes and dtypes; and per
            token modality the ``(B, seq)`` keep weights (1 kept, 0 dropped; differentiable
            with respect to the keep scores), which the critics use to see dropped tokens.
        """
        batch = mask.shape[0]
        mask = mask.bool()
        tokens = torch.stack([self.encoders[spec.name](inputs[spec.name])
                              for spec in self.specs], dim=1) + self.modality_embedding
        gamma, beta = self.film(strength.reshape(batch, 1).float()).chunk(2, dim=-1)
        tokens = tokens * (1 + gamma.unsqueeze(1)) + beta.unsqueeze(1)
        attended, _ = self.attention(tokens, tokens, tokens, key_padding_mask=~mask,
                                     need_weights=False)
        tokens = self.norm_attention(tokens + attended)
        tokens = self.norm_feed_forward(tokens + self.feed_forward(tokens))
        outputs: dict[str, torch.Tensor] = {}
        keep: dict[str, torch.Tensor] = {}
        scale = strength.float().reshape(batch, 1)
        for j, spec in enumerate(self.specs):
            present = mask[:, j].float().reshape(batch, *([1] * len(spec.shape)))
            token = tokens[:, j]
            if self.codes is not None:
                token = self.codes[spec.name](token)
                token = token + self.code_noise * torch.randn(token.shape, generator=generator)
            decoded = self.decoders[spec.name](token)
            if spec.kind == ModalityKind.TOKENS:
                drop = scale * (1 - torch.sigmoid(decoded))
                soft = 1 - drop
                hard = (drop <= 0.5).float()
                weights = hard + soft - soft.detach()
                outputs[spec.name] = inputs[spec.name] * hard.long() * present.long()
                keep[spec.name] = weights
            else:
                reconstruction = decoded.reshape(batch, *spec.shape)
                lam = strength.float().reshape(batch, *([1] * len(spec.shape)))
                original = inputs[spec.name]
                outputs[spec.name] = (original + lam * (reconstruction - original)) * present
        if knobs is not None:
            outputs, keep = apply_post_knobs(outputs, keep, mask, self.specs, knobs, generator)
        return outputs, keep


def apply_post_knobs(
    outputs: dict[str, torch.Tensor],
    keep: dict[str, torch.Tensor],
    mask: torch.Tensor,
    specs: tuple[ModalitySpec, ...],
    knobs: AnonymizerKnobs,
    generator: torch.Generator | None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    r"""The ``noise`` and ``discard`` knobs on a decoded batch.

    Float modality: :math:`x' \leftarrow (x' + \nu \sigma(x') \varepsilon) \odot [u \ge p]`,
    :math:`\varepsilon \sim \mathcal{N}(0, I)`, :math:`\sigma` the sample's standard deviation
    over the modality's entries, :math:`u \sim U(0, 1)` per entry, :math:`p` = ``discard``.
    Tokens: a token is dropped where :math:`u < p`. One uniform draw per entry serves every
    ``p``, so a larger ``discard`` drops a superset of what a smaller one drops.
    """
    noisy: dict[str, torch.Tensor] = {}
    weights = dict(keep)
    for j, spec in enumerate(specs):
        value = outputs[spec.name]
        kept = torch.rand(value.shape, generator=generator) >= knobs.discard
        if spec.kind == ModalityKind.TOKENS:
            noisy[spec.name] = value * kept.long()
            weights[spec.name] = keep[spec.name] * kept.float()
            continue
        present = mask[:, j].float().reshape(-1, *([1] * len(spec.shape)))
        flat = value.reshape(value.shape[0], -1)
        std = flat.std(dim=1, unbiased=False).detach().reshape(-1, *([1] * len(spec.shape)))
        noise = torch.randn(value.shape, generator=generator) * knobs.noise * std
        noisy[spec.name] = (value + noise) * kept.float() * present
    return noisy, weights
