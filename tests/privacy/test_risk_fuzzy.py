import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmosaic.privacy.risk.fuzzy import (
    CRITERIA,
    DEFAULT_COMPARISONS,
    TERMS,
    TriangularTerm,
    ahp_weights,
    criterion_weights,
    defuzzify,
    evaluation_vector,
    fuse,
    memberships,
)

# The worked example of the fuzzy.py module docstring, computed by hand.
EXAMPLE_SCORES = {"channel": 0.8, "sensitivity": 0.9, "context": 0.3, "resources": 0.4}
EXAMPLE_WEIGHTS = {"channel": 0.4, "sensitivity": 0.3, "context": 0.2, "resources": 0.1}


def consistent_matrix(weights):
    w = np.asarray(weights, dtype=float)
    return w[:, None] / w[None, :]


# --- AHP -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "weights",
    [(0.4, 0.3, 0.2, 0.1), (0.5, 0.5), (0.6, 0.25, 0.15), (0.05, 0.1, 0.2, 0.3, 0.35)],
)
def test_consistent_matrix_gives_back_its_generating_weights(weights):
    result = ahp_weights(consistent_matrix(weights))

    np.testing.assert_allclose(result.weights, weights, rtol=0, atol=1e-12)
    assert result.lambda_max == pytest.approx(len(weights), abs=1e-9)
    assert result.consistency_ratio == pytest.approx(0.0, abs=1e-9)


def test_default_weights_match_power_iteration_and_documented_values():
    # Independent of numpy.linalg.eig: the normalised limit of A^k 1.
    vector = np.ones(4)
    for _ in range(200):
        vector = DEFAULT_COMPARISONS @ vector
        vector /= vector.sum()

    result = ahp_weights(DEFAULT_COMPARISONS)

    np.testing.assert_allclose(result.weights, vector, atol=1e-12)
    np.testing.assert_allclose(result.weights, (0.385, 0.385, 0.143, 0.087), atol=5e-4)
    assert result.consistency_ratio == pytest.approx(0.0076, abs=1e-4)
    assert list(criterion_weights()) == list(CRITERIA)


def test_consistency_ratio_is_ci_over_saatys_random_index():
    # 3x3 with a = 2 (1 vs 2), 4 (1 vs 3), 3 (2 vs 3): lambda_max from the eigenvalues.
    matrix = np.array([[1, 2, 4], [1 / 2, 1, 3], [1 / 4, 1 / 3, 1]])
    lam = max(np.linalg.eigvals(matrix).real)

    result = ahp_weights(matrix)

    assert result.consistency_index == pytest.approx((lam - 3) / 2, rel=1e-12)
    assert result.consistency_ratio == pytest.approx((lam - 3) / 2 / 0.58, rel=1e-12)


def test_inconsistent_matrix_raises_with_its_consistency_ratio():
    cyclic = [[1, 9, 1 / 9], [1 / 9, 1, 9], [9, 1 / 9, 1]]  # 1 > 2 > 3 > 1

    with pytest.raises(ValueError, match=r"inconsistent: consistency ratio CR = \d"):
        ahp_weights(cyclic)
    with pytest.raises(ValueError, match="inconsistent"):
        criterion_weights(cyclic, ("a", "b", "c"))


def test_two_criteria_are_always_consistent():
    assert ahp_weights([[1, 7], [1 / 7, 1]]).consistency_ratio == 0.0


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        ([[1, 2, 3]], "square"),
        (np.ones((11, 11)), "square"),
        ([[1, 2], [0.4, 1]], "reciprocal"),
        ([[2, 1], [1, 1]], "reciprocal"),
        ([[1, 0], [0, 1]], "> 0"),
        ([[1, float("nan")], [float("nan"), 1]], "finite"),
    ],
)
def test_bad_matrices_are_rejected(matrix, message):
    with pytest.raises(ValueError, match=message):
        ahp_weights(matrix)


def test_criterion_names_must_match_the_matrix_size():
    with pytest.raises(ValueError, match="3 criteria were named"):
        criterion_weights(DEFAULT_COMPARISONS, ("a", "b", "c"))


# --- membership and defuzzification ------------------------------------------------------------


@pytest.mark.parametrize(
    ("x", "expected"),
    [
        (0.0, (1.0, 0.0, 0.0)),
        (0.25, (0.5, 0.5, 0.0)),
        (0.3, (0.4, 0.6, 0.0)),
        (0.5, (0.0, 1.0, 0.0)),
        (0.8, (0.0, 0.4, 0.6)),
        (1.0, (0.0, 0.0, 1.0)),
    ],
)
def test_memberships_by_hand(x, expected):
    np.testing.assert_allclose(memberships(x), expected, atol=1e-12)


@given(st.floats(0.0, 1.0))
def test_memberships_form_a_ruspini_partition(x):
    assert math.fsum(memberships(x)) == pytest.approx(1.0, abs=1e-12)


def test_term_areas_and_centroids():
    assert [t.area for t in TERMS] == [0.25, 0.5, 0.25]
    np.testing.assert_allclose([t.centroid for t in TERMS], (1 / 6, 1 / 2, 5 / 6), atol=1e-15)


def test_triangular_term_rejects_unordered_corners():
    with pytest.raises(ValueError, match="left <= peak <= right"):
        TriangularTerm("bad", 0.5, 0.2, 1.0)


@pytest.mark.parametrize(
    ("levels", "expected"), [((1, 0, 0), 1 / 6), ((0, 1, 0), 0.5), ((0, 0, 1), 5 / 6)]
)
def test_defuzzify_one_level_gives_its_centroid(levels, expected):
    assert defuzzify(levels) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("levels", [(0, 0, 0), (1, -0.1, 0), (1, 0), (float("nan"), 1, 0)])
def test_defuzzify_rejects_bad_levels(levels):
    with pytest.raises(ValueError, match="levels must be 3 finite non-negative"):
        defuzzify(levels)


# --- the worked example ----------------------------------------------------------------------


def test_worked_example_reproduces_every_hand_computed_number():
    table = {name: memberships(x) for name, x in EXAMPLE_SCORES.items()}
    np.testing.assert_allclose(table["channel"], (0.0, 0.4, 0.6), atol=1e-12)
    np.testing.assert_allclose(table["sensitivity"], (0.0, 0.2, 0.8), atol=1e-12)
    np.testing.assert_allclose(table["context"], (0.4, 0.6, 0.0), atol=1e-12)
    np.testing.assert_allclose(table["resources"], (0.2, 0.8, 0.0), atol=1e-12)

    b = evaluation_vector(EXAMPLE_SCORES, EXAMPLE_WEIGHTS)
    np.testing.assert_allclose(b, (0.10, 0.42, 0.48), atol=1e-12)

    numerator = 0.10 * 0.25 / 6 + 0.42 * 0.5 * 0.5 + 0.48 * 0.25 * 5 / 6
    denominator = 0.10 * 0.25 + 0.42 * 0.5 + 0.48 * 0.25
    assert numerator == pytest.approx(0.2091666666666667, abs=1e-12)
    assert denominator == pytest.approx(0.355, abs=1e-12)
    assert defuzzify(b) == pytest.approx(251 / 426, abs=1e-9)  # 0.589202
    assert fuse(EXAMPLE_SCORES, EXAMPLE_WEIGHTS) == pytest.approx(45 / 71, abs=1e-9)  # 0.633803


# --- fuse ------------------------------------------------------------------------------------


@pytest.mark.parametrize("x", [0.0, 0.1, 0.25, 0.5, 0.7, 0.9, 1.0])
def test_one_criterion_follows_its_closed_form(x):
    expected = 2 * x / (1 + 2 * x) if x <= 0.5 else 1 / (3 - 2 * x)

    assert fuse({"only": x}, {"only": 1.0}) == pytest.approx(expected, abs=1e-12)


def test_extremes_map_to_zero_and_one():
    weights = criterion_weights()
    assert fuse(dict.fromkeys(CRITERIA, 0.0), weights) == 0.0
    assert fuse(dict.fromkeys(CRITERIA, 1.0), weights) == 1.0


def test_weights_are_normalised():
    scaled = {k: 3 * v for k, v in EXAMPLE_WEIGHTS.items()}
    assert fuse(EXAMPLE_SCORES, scaled) == pytest.approx(45 / 71, abs=1e-12)


unit = st.floats(0.0, 1.0)


@settings(max_examples=200, deadline=None)
@given(
    scores=st.tuples(unit, unit, unit, unit),
    weights=st.tuples(*[st.floats(0.0, 10.0)] * 4).filter(lambda w: sum(w) > 1e-3),
    which=st.integers(0, 3),
    raised=unit,
)
def test_fuse_is_monotone_in_each_criterion_and_stays_in_unit_interval(
    scores, weights, which, raised
):
    before = dict(zip(CRITERIA, scores, strict=True))
    after = dict(before)
    after[CRITERIA[which]] = max(before[CRITERIA[which]], raised)
    w = dict(zip(CRITERIA, weights, strict=True))

    low, high = fuse(before, w), fuse(after, w)

    assert 0.0 <= low <= high + 1e-12 <= 1.0 + 1e-12


@pytest.mark.parametrize(
    ("scores", "weights", "message"),
    [
        ({"a": 0.5}, {"b": 1.0}, "same non-empty set of criteria"),
        ({}, {}, "same non-empty set of criteria"),
        ({"a": 1.2}, {"a": 1.0}, r"score of 'a' must be a number in \[0, 1\], got 1.2"),
        ({"a": float("nan")}, {"a": 1.0}, "score of 'a'"),
        ({"a": "0.5"}, {"a": 1.0}, "score of 'a'"),
        ({"a": 0.5}, {"a": -1.0}, "weight of 'a' must be a finite number >= 0, got -1.0"),
        ({"a": 0.5}, {"a": float("inf")}, "weight of 'a'"),
        ({"a": 0.5, "b": 0.1}, {"a": 0.0, "b": 0.0}, "must not all be 0"),
    ],
)
def test_fuse_rejects_bad_inputs(scores, weights, message):
    with pytest.raises(ValueError, match=message):
        fuse(scores, weights)
