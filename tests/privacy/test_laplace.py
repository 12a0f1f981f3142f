import math

import numpy as np
import pytest
from scipy import integrate

from fedmosaic.privacy.laplace import (
    BoundedLaplace,
    calibrate_scale,
    normaliser,
    privacy_loss,
)


def test_normaliser_matches_numerical_integral_of_the_laplace_density():
    lower, upper, scale = -1.0, 2.0, 0.7
    for x in (-1.0, 0.0, 0.5, 2.0):
        expected, _ = integrate.quad(
            lambda y, x=x: math.exp(-abs(y - x) / scale) / (2 * scale), lower, upper, points=[x]
        )
        assert normaliser(x, scale, lower, upper) == pytest.approx(expected, rel=1e-9)


def test_privacy_loss_equals_brute_force_maximum_of_the_density_ratio():
    # Independent of the closed form: max over x, x' (|x - x'| <= Δ) and y of
    # ln f_x(y) / f_x'(y), with the densities normalised by numerical integration.
    lower, upper, sensitivity, scale = 0.0, 1.0, 0.3, 0.2
    mechanism_grid = np.linspace(lower, upper, 61)
    outputs = np.linspace(lower, upper, 201)

    def log_density(x):
        mass, _ = integrate.quad(lambda y: math.exp(-abs(y - x) / scale) / (2 * scale),
                                 lower, upper, points=[x])
        return -np.abs(outputs - x) / scale - math.log(2 * scale * mass)

    logs = {x: log_density(x) for x in mechanism_grid}
    worst = max(
        float(np.max(logs[x] - logs[x2]))
        for x in mechanism_grid for x2 in mechanism_grid if abs(x - x2) <= sensitivity + 1e-12
    )

    assert privacy_loss(scale, sensitivity, lower, upper) == pytest.approx(worst, rel=1e-6)


def test_full_domain_sensitivity_gives_the_plain_laplace_scale():
    # Δ = u - l: C_b(l + Δ) = C_b(u) = C_b(l), so b = Δ / ε exactly.
    assert calibrate_scale(2.0, 4.0, -1.0, 3.0) == pytest.approx(2.0, rel=1e-12)


def test_calibrated_scale_reaches_epsilon_and_exceeds_the_plain_scale():
    epsilon, sensitivity = 1.0, 0.25

    scale = calibrate_scale(epsilon, sensitivity, 0.0, 1.0)

    assert privacy_loss(scale, sensitivity, 0.0, 1.0) == pytest.approx(epsilon, rel=1e-9)
    assert scale > sensitivity / epsilon
    # the plain scale leaks more than ε: Δ/b = 1 plus ln(C(0.25)/C(0)) = ln(0.7912/0.4908)
    assert privacy_loss(sensitivity / epsilon, sensitivity, 0.0, 1.0) == pytest.approx(
        1.0 + math.log((1 - 0.5 * (math.exp(-1) + math.exp(-3))) / (0.5 * (1 - math.exp(-4)))),
        rel=1e-9,
    )


def test_release_stays_inside_the_domain_for_extreme_inputs_and_tiny_epsilon():
    mechanism = BoundedLaplace(epsilon=0.01, lower=-2.0, upper=5.0)
    values = np.array([-2.0, 5.0, 1.5] * 20_000)

    noisy = mechanism.release(values, np.random.default_rng(0))

    assert noisy.shape == values.shape
    assert noisy.min() >= -2.0 and noisy.max() <= 5.0


def _empirical_log_ratios(mechanism, x, x2, samples, bins, rng):
    edges = np.linspace(mechanism.lower, mechanism.upper, bins + 1)
    counts_x, _ = np.histogram(mechanism.release(np.full(samples, x), rng), edges)
    counts_x2, _ = np.histogram(mechanism.release(np.full(samples, x2), rng), edges)
    log_ratio = np.log(counts_x / counts_x2)
    standard_error = np.sqrt(1 / counts_x + 1 / counts_x2)
    return log_ratio, standard_error


def test_empirical_density_ratio_of_neighbouring_inputs_stays_within_e_to_the_epsilon():
    # Worst pair (x = l, x' = l + Δ); the ratio is largest in the bin at y = l.
    mechanism = BoundedLaplace(epsilon=1.0, lower=0.0, upper=1.0, sensitivity=0.25)
    rng = np.random.default_rng(1234)

    log_ratio, standard_error = _empirical_log_ratios(mechanism, 0.0, 0.25, 1_000_000, 100, rng)

    # every bin's ratio is at most e^ε up to 4 standard errors of sampling noise
    assert np.all(log_ratio - 4 * standard_error <= 1.0)
    # and the bound is nearly tight near y = l (the mechanism is not over-noised)
    assert log_ratio[0] > 0.9


def test_density_ratio_test_detects_the_uncalibrated_plain_laplace_scale():
    # Same test with b = Δ/ε = 0.25 (ignoring renormalisation): for Δ = 0.25 the true loss
    # is ≈ 1.48 > ε = 1. (ε = 4 at full-domain sensitivity 1 gives exactly b = 0.25.)
    plain = BoundedLaplace(epsilon=4.0, lower=0.0, upper=1.0)
    assert plain.scale == pytest.approx(0.25)
    rng = np.random.default_rng(1234)

    log_ratio, standard_error = _empirical_log_ratios(plain, 0.0, 0.25, 1_000_000, 100, rng)

    assert log_ratio[0] - 4 * standard_error[0] > 1.0


def test_density_integrates_to_one_and_matches_the_sampler_mean():
    mechanism = BoundedLaplace(epsilon=2.0, lower=0.0, upper=10.0, sensitivity=3.0)
    total, _ = integrate.quad(lambda y: float(mechanism.density(y, 1.0)), 0.0, 10.0,
                              points=[1.0])
    mean, _ = integrate.quad(lambda y: y * float(mechanism.density(y, 1.0)), 0.0, 10.0,
                             points=[1.0])

    samples = mechanism.release(np.full(200_000, 1.0), np.random.default_rng(3))

    assert total == pytest.approx(1.0, abs=1e-8)
    assert samples.mean() == pytest.approx(mean, abs=0.03)


@pytest.mark.parametrize("kwargs, message", [
    ({"epsilon": 0.0, "lower": 0.0, "upper": 1.0}, "epsilon"),
    ({"epsilon": -1.0, "lower": 0.0, "upper": 1.0}, "epsilon"),
    ({"epsilon": math.inf, "lower": 0.0, "upper": 1.0}, "epsilon"),
    ({"epsilon": 1.0, "lower": 1.0, "upper": 1.0}, "lower < upper"),
    ({"epsilon": 1.0, "lower": 0.0, "upper": math.inf}, "lower < upper"),
    ({"epsilon": 1.0, "lower": 0.0, "upper": 1.0, "sensitivity": 2.0}, "sensitivity"),
    ({"epsilon": 1.0, "lower": 0.0, "upper": 1.0, "sensitivity": 0.0}, "sensitivity"),
])
def test_bad_parameters_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BoundedLaplace(**kwargs)


@pytest.mark.parametrize("values", [np.array([0.5, 1.5]), np.array([-0.1]), np.array([np.nan])])
def test_release_rejects_values_outside_the_domain(values):
    mechanism = BoundedLaplace(epsilon=1.0, lower=0.0, upper=1.0)

    with pytest.raises(ValueError, match=r"inside \[0.0, 1.0\]"):
        mechanism.release(values, np.random.default_rng(0))
