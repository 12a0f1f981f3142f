r"""AHP criterion weights and fuzzy comprehensive evaluation of the four risk criteria.

After ALPINE (arXiv:2510.17162, §4.1 and App. A), which weights its risk dimensions (channel,
data sensitivity, context, resources) by expert pairwise comparisons (ANP) and fuses them by
fuzzy comprehensive evaluation with triangular membership functions. ALPINE's paper was not
available offline when this was written: its pairwise matrices, its weights and its worked
example (a risk score of 0.47) could **not** be checked, and nothing here reproduces them. The
formulas below are the textbook ones; the default comparisons are ours. We implement AHP
(criteria treated as independent); ANP's supermatrix of interdependencies is not implemented.

**AHP weights** (Saaty 1980, "The Analytic Hierarchy Process"; Saaty 1990, EJOR 48(1)).
From a positive reciprocal matrix :math:`A` (:math:`a_{ii} = 1`, :math:`a_{ji} = 1/a_{ij}`,
:math:`a_{ij}` = how much more criterion :math:`i` matters than :math:`j` on the 1–9 scale),
the weights are the principal right eigenvector :math:`A w = \lambda_{\max} w`, normalised to
:math:`\sum_i w_i = 1`. Consistency: :math:`CI = (\lambda_{\max} - n)/(n - 1)`,
:math:`CR = CI / RI_n` with Saaty's random index :data:`RANDOM_INDEX`; :math:`CR > 0.1`
is rejected. For :math:`n \le 2` every reciprocal matrix is consistent (:math:`CR = 0`).

**Membership** (Zadeh 1965). Each criterion score :math:`x \in [0, 1]` gets degrees in three
triangular terms :math:`T(a, p, c)` (:data:`TERMS`): low :math:`T(0, 0, 0.5)`, medium
:math:`T(0, 0.5, 1)`, high :math:`T(0.5, 1, 1)`, with

.. math::
    \mu_{a,p,c}(x) = \begin{cases}
        1 & x = p \\ (x - a)/(p - a) & a < x < p \\ (c - x)/(c - p) & p < x < c \\
        0 & \text{otherwise,} \end{cases}

a degenerate side (:math:`a = p` or :math:`p = c`) being a shoulder at 1. The three degrees
sum to 1 everywhere on :math:`[0, 1]` (a Ruspini partition).

**Fusion** (fuzzy comprehensive evaluation with the weighted-average operator
:math:`M(\cdot, \oplus)`): with weights :math:`w_i` (normalised to sum 1) and memberships
:math:`\mu_{ik}` of criterion :math:`i` in level :math:`k`, the evaluation vector is
:math:`b_k = \sum_i w_i \mu_{ik}` (:math:`\sum_k b_k = 1`).

**Defuzzification** (centroid). The output fuzzy set scales each output term by its level,
:math:`\mu(y) = \sum_k b_k \mu_k(y)` on :math:`y \in [0, 1]` (product implication, sum
aggregation: Kosko's additive fuzzy system), whose centroid has the closed form

.. math::
    y^* = \frac{\int y\,\mu(y)\,dy}{\int \mu(y)\,dy}
        = \frac{\sum_k b_k A_k g_k}{\sum_k b_k A_k},
    \qquad A_k = \frac{c_k - a_k}{2}, \quad g_k = \frac{a_k + p_k + c_k}{3}

(area and centroid of triangle :math:`k`: :math:`A = (0.25, 0.5, 0.25)`,
:math:`g = (1/6, 1/2, 5/6)`). :math:`y^*` is a weighted mean of the :math:`g_k`, so it lies in
:math:`[1/6, 5/6]`; the risk score rescales that attainable range onto :math:`[0, 1]`:

.. math:: r = \frac{y^* - 1/6}{5/6 - 1/6} = 1.5\,y^* - 0.25,

so all criteria at 0 give 0 and all at 1 give 1. :math:`r` is non-decreasing in every
criterion score: raising a score moves membership from low to medium or from medium to high,
and :math:`\partial y^*` then has the sign of :math:`5/6 - y^*` resp. :math:`y^* - 1/6`,
both :math:`\ge 0`. The centroid pulls towards the middle (one criterion alone at
:math:`x \le 0.5` gives :math:`r = 2x / (1 + 2x)`): a hedged score, not the plain weighted
mean.

**Worked example** (computed by hand; ``tests/privacy/test_risk_fuzzy.py`` reproduces every
number). Scores channel 0.8, sensitivity 0.9, context 0.3, resources 0.4; weights 0.4, 0.3,
0.2, 0.1.

=============  =====  ======  ====  ======  ====
criterion      x      w       low   medium  high
=============  =====  ======  ====  ======  ====
channel        0.8    0.4     0     0.4     0.6
sensitivity    0.9    0.3     0     0.2     0.8
context        0.3    0.2     0.4   0.6     0
resources      0.4    0.1     0.2   0.8     0
=============  =====  ======  ====  ======  ====

- :math:`b_{low} = 0.2 \cdot 0.4 + 0.1 \cdot 0.2 = 0.10`,
  :math:`b_{med} = 0.4 \cdot 0.4 + 0.3 \cdot 0.2 + 0.2 \cdot 0.6 + 0.1 \cdot 0.8 = 0.42`,
  :math:`b_{high} = 0.4 \cdot 0.6 + 0.3 \cdot 0.8 = 0.48`.
- numerator :math:`0.10 \cdot 0.25 \cdot \tfrac16 + 0.42 \cdot 0.5 \cdot 0.5 + 0.48 \cdot
  0.25 \cdot \tfrac56 = 0.0041\overline{6} + 0.105 + 0.1 = 0.2091\overline{6}`;
  denominator :math:`0.10 \cdot 0.25 + 0.42 \cdot 0.5 + 0.48 \cdot 0.25 = 0.355`.
- :math:`y^* = 0.2091\overline{6} / 0.355 = 251/426 \approx 0.589202`;
  :math:`r = 1.5 \cdot 251/426 - 0.25 = 45/71 \approx 0.633803` (the plain weighted mean
  would be 0.69).

AHP example: the consistent matrix :math:`a_{ij} = w_i / w_j` built from
:math:`w = (0.4, 0.3, 0.2, 0.1)` has :math:`\lambda_{\max} = 4`, :math:`CI = CR = 0` and
gives back :math:`w` exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

CRITERIA = ("channel", "sensitivity", "context", "resources")
"""The four risk criteria, in the order of :data:`DEFAULT_COMPARISONS`."""

DEFAULT_COMPARISONS = np.array(
    [
        [1.0, 1.0, 3.0, 4.0],
        [1.0, 1.0, 3.0, 4.0],
        [1 / 3, 1 / 3, 1.0, 2.0],
        [1 / 4, 1 / 4, 1 / 2, 1.0],
    ]
)
"""Our default Saaty matrix over :data:`CRITERIA` (not ALPINE's, which we could not read).

Channel and sensitivity equally important, each moderately more than context (3) and
moderately-to-strongly more than resources (4); context a little more than resources (2).
Weights ≈ (0.385, 0.385, 0.143, 0.087), CR ≈ 0.008."""

RANDOM_INDEX = {1: 0.0, 2: 0.0, 3: 0.58, 4: 0.90, 5: 1.12, 6: 1.24, 7: 1.32, 8: 1.41, 9: 1.45,
                10: 1.49}
"""Saaty's random consistency index :math:`RI_n` (Saaty 1980, Table 1.7)."""

MAX_CONSISTENCY_RATIO = 0.1
"""Saaty's threshold: matrices with a larger CR are rejected."""


@dataclass(frozen=True)
class TriangularTerm:
    """A triangular fuzzy set :math:`T(a, p, c)` with ``left <= peak <= right``."""

    name: str
    left: float
    peak: float
    right: float

    def __post_init__(self) -> None:
        if not (self.left <= self.peak <= self.right and self.left < self.right):
            raise ValueError(
                f"TriangularTerm {self.name!r} needs left <= peak <= right and left < right, "
                f"got ({self.left}, {self.peak}, {self.right})"
            )

    def membership(self, x: float) -> float:
        r"""Degree :math:`\mu(x) \in [0, 1]` (module docstring)."""
        if x == self.peak:
            return 1.0
        if self.left < x < self.peak:
            return (x - self.left) / (self.peak - self.left)
        if self.peak < x < self.right:
            return (self.right - x) / (self.right - self.peak)
        return 0.0

    @property
    def area(self) -> float:
        """Area under the triangle, :math:`(c - a) / 2`."""
        return (self.right - self.left) / 2.0

    @property
    def centroid(self) -> float:
        """Abscissa of the triangle's centroid, :math:`(a + p + c) / 3`."""
        return (self.left + self.peak + self.right) / 3.0


TERMS = (
    TriangularTerm("low", 0.0, 0.0, 0.5),
    TriangularTerm("medium", 0.0, 0.5, 1.0),
    TriangularTerm("high", 0.5, 1.0, 1.0),
)
"""The three risk levels, used both to fuzzify criteria and as output sets."""

_LOWEST = min(t.centroid for t in TERMS)
_HIGHEST = max(t.centroid for t in TERMS)


@dataclass(frozen=True)
class AhpWeights:
    r"""Result of :func:`ahp_weights`.

    Attributes:
        weights: Principal eigenvector, normalised to sum 1 (one entry per row).
        lambda_max: Principal eigenvalue :math:`\lambda_{\max}`.
        consistency_index: :math:`CI = (\lambda_{\max} - n) / (n - 1)` (0 for n <= 2).
        consistency_ratio: :math:`CR = CI / RI_n` (0 for n <= 2).

    """

    weights: tuple[float, ...]
    lambda_max: float
    consistency_index: float
    consistency_ratio: float


def ahp_weights(
    comparisons: Sequence[Sequence[float]] | np.ndarray,
    *,
    max_consistency_ratio: float = MAX_CONSISTENCY_RATIO,
) -> AhpWeights:
    """Criterion weights of a Saaty pairwise-comparison matrix by the principal eigenvector.

    Raises:
        ValueError: If the matrix is not square with 1 <= n <= 10, has a non-finite or
            non-positive entry, is not reciprocal (``a_ii = 1``, ``a_ji = 1 / a_ij`` to 1e-6
            relative), or its consistency ratio exceeds ``max_consistency_ratio``.

    """
    a = np.asarray(comparisons, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or not 1 <= a.shape[0] <= max(RANDOM_INDEX):
        raise ValueError(
            f"comparisons must be a square n x n matrix with 1 <= n <= {max(RANDOM_INDEX)} "
            f"(Saaty's random index is tabulated that far), got shape {a.shape}"
        )
    if not np.all(np.isfinite(a)) or np.any(a <= 0):
        raise ValueError(f"comparisons must be finite and > 0, got\n{a}")
    if not np.allclose(a * a.T, 1.0, rtol=1e-6, atol=0.0):
        i, j = np.unravel_index(np.argmax(np.abs(a * a.T - 1.0)), a.shape)
        raise ValueError(
            f"comparisons must be reciprocal (a[j][i] = 1 / a[i][j], a[i][i] = 1), got "
            f"a[{i}][{j}] = {a[i, j]} and a[{j}][{i}] = {a[j, i]}"
        )
    n = a.shape[0]
    values, vectors = np.linalg.eig(a)
    top = int(np.argmax(values.real))
    vector = np.abs(vectors[:, top].real)  # Perron vector: one sign, real
    weights = vector / vector.sum()
    lambda_max = float(values[top].real)
    ci = (lambda_max - n) / (n - 1) if n > 2 else 0.0
    cr = ci / RANDOM_INDEX[n] if n > 2 else 0.0
    if cr > max_consistency_ratio:
        raise ValueError(
            f"comparisons are inconsistent: consistency ratio CR = {cr:.4f} (lambda_max = "
            f"{lambda_max:.4f}, n = {n}) exceeds {max_consistency_ratio}; revise the "
            "pairwise judgements"
        )
    return AhpWeights(tuple(float(w) for w in weights), lambda_max, ci, cr)


def criterion_weights(
    comparisons: Sequence[Sequence[float]] | np.ndarray = DEFAULT_COMPARISONS,
    criteria: Sequence[str] = CRITERIA,
) -> dict[str, float]:
    """``{criterion: AHP weight}`` for a matrix whose rows follow ``criteria``."""
    result = ahp_weights(comparisons)
    if len(criteria) != len(result.weights):
        raise ValueError(
            f"comparisons are {len(result.weights)} x {len(result.weights)} but "
            f"{len(criteria)} criteria were named: {list(criteria)}"
        )
    return dict(zip(criteria, result.weights, strict=True))


def memberships(x: float) -> tuple[float, ...]:
    """Degrees of ``x`` in :data:`TERMS` (low, medium, high); they sum to 1 on ``[0, 1]``."""
    return tuple(term.membership(x) for term in TERMS)


def evaluation_vector(scores: Mapping[str, float], weights: Mapping[str, float]) -> np.ndarray:
    r""":math:`b_k = \sum_i w_i \mu_{ik}` with weights normalised to sum 1 (module docstring)."""
    _check_inputs(scores, weights)
    total = math.fsum(weights.values())
    b = np.zeros(len(TERMS))
    for name, x in scores.items():
        b += (weights[name] / total) * np.array(memberships(float(x)))
    return b


def defuzzify(levels: Sequence[float] | np.ndarray) -> float:
    r"""Centroid :math:`y^*` of :math:`\sum_k b_k \mu_k`, in ``[1/6, 5/6]``."""
    b = np.asarray(levels, dtype=np.float64)
    if b.shape != (len(TERMS),) or not np.all(np.isfinite(b)) or np.any(b < 0) or b.sum() <= 0:
        raise ValueError(
            f"levels must be {len(TERMS)} finite non-negative degrees (low, medium, high) "
            f"with a positive sum, got {levels!r}"
        )
    areas = np.array([t.area for t in TERMS])
    centroids = np.array([t.centroid for t in TERMS])
    return float(np.sum(b * areas * centroids) / np.sum(b * areas))


def fuse(scores: Mapping[str, float], weights: Mapping[str, float]) -> float:
    """Risk score in ``[0, 1]`` of criterion ``scores`` under ``weights`` (module docstring).

    Args:
        scores: ``{criterion: score in [0, 1]}``.
        weights: ``{criterion: weight >= 0}`` over the same criteria, any positive sum
            (normalised here), e.g. :func:`criterion_weights`.

    Returns:
        :math:`r = (y^* - 1/6) / (5/6 - 1/6)`, clipped to ``[0, 1]`` against round-off.

    Raises:
        ValueError: If the criteria differ, a score is not in ``[0, 1]``, or a weight is
            negative or non-finite, or all weights are 0.

    """
    y = defuzzify(evaluation_vector(scores, weights))
    return min(1.0, max(0.0, (y - _LOWEST) / (_HIGHEST - _LOWEST)))


def _check_inputs(scores: Mapping[str, float], weights: Mapping[str, float]) -> None:
    if set(scores) != set(weights) or not scores:
        raise ValueError(
            f"scores and weights must name the same non-empty set of criteria, got scores for "
            f"{sorted(scores)} and weights for {sorted(weights)}"
        )
    for name, x in scores.items():
        if not (isinstance(x, (int, float)) and 0.0 <= x <= 1.0):
            raise ValueError(f"score of {name!r} must be a number in [0, 1], got {x!r}")
    for name, w in weights.items():
        if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0.0):
            raise ValueError(f"weight of {name!r} must be a finite number >= 0, got {w!r}")
    if math.fsum(weights.values()) <= 0.0:
        raise ValueError(f"weights must not all be 0, got {dict(weights)}")
