"""Stochastic rounding with per-block scales: hand-computed codes, error bound, unbiasedness."""

import numpy as np
import pytest

from fedmosaic.compression.quantize import dequantize, levels, quantize


class QuarterNoise:
    """A stand-in generator whose rounding noise is always 0.25: ``q = floor(x / Δ + 0.25)``."""

    def random(self, shape, dtype):
        return np.full(shape, 0.25, dtype=dtype)


def test_levels():
    assert (levels(8), levels(4)) == (127, 7)
    with pytest.raises(ValueError, match="bits"):
        levels(32)


def test_hand_computed_4_bit_codes():
    # scale 1, step 1/7: x / step = 3.5, -7, 1.4, 0; floor(. + 0.25) = 3, -7, 1, 0
    values = np.array([0.5, -1.0, 0.2, 0.0], dtype=np.float32)

    codes, scales = quantize(values, 4, 256, QuarterNoise())

    assert codes.tolist() == [3, -7, 1, 0]
    assert scales.tolist() == [1.0]
    np.testing.assert_allclose(dequantize(codes, scales, 4, 256), [3 / 7, -1.0, 1 / 7, 0.0],
                               rtol=1e-6)


def test_hand_computed_blocks_have_their_own_absmax_scale():
    values = np.array([2.0, -4.0, 0.5, 0.25, 0.0], dtype=np.float32)

    codes, scales = quantize(values, 8, 2, QuarterNoise())

    assert scales.tolist() == [4.0, 0.5, 0.0]
    # steps 4/127, 0.5/127, none: x / step = 63.5, -127 | 127, 63.5 | 0
    assert codes.tolist() == [63, -127, 127, 63, 0]


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("block_size", [1, 7, 256])
def test_every_error_is_within_one_step_of_its_block(bits, block_size):
    rng = np.random.default_rng(bits * 1000 + block_size)
    values = (rng.normal(size=3001) * rng.choice([1e-4, 1.0, 50.0], size=3001)).astype(np.float32)

    codes, scales = quantize(values, bits, block_size, rng)
    decoded = dequantize(codes, scales, bits, block_size)

    step = np.repeat(scales / levels(bits), block_size)[: values.size]
    assert np.all(np.abs(decoded - values) <= step * (1 + 1e-5))
    assert codes.min() >= -levels(bits) and codes.max() <= levels(bits)
    assert scales.size == -(-values.size // block_size)


@pytest.mark.parametrize("bits", [8, 4])
def test_stochastic_rounding_is_unbiased(bits):
    rng = np.random.default_rng(bits)
    values = rng.uniform(-1, 1, size=64).astype(np.float32)
    values[0] = 1.0  # fixes the block scale at 1
    trials = 4000

    mean = np.mean([dequantize(*quantize(values, bits, 64, rng), bits, 64)
                    for _ in range(trials)], axis=0)

    # each rounding is a two-point variable of spread one step: std <= step / 2
    standard_error = (1.0 / levels(bits)) / 2 / np.sqrt(trials)
    assert np.all(np.abs(mean - values) <= 5 * standard_error)


def test_deterministic_rounding_would_be_caught_by_the_unbiasedness_check():
    values = np.full(64, 0.3 / 7, dtype=np.float32)
    values[0] = 1.0

    codes, scales = quantize(values, 4, 64, QuarterNoise())  # 0.3 steps round to 0 every time

    decoded = dequantize(codes, scales, 4, 64)
    assert abs(decoded[1] - values[1]) > 5 * (1 / 7) / 2 / np.sqrt(4000)


def test_empty_input():
    codes, scales = quantize(np.empty(0, np.float32), 8, 4, np.random.default_rng(0))

    assert codes.size == 0 and scales.size == 0


def test_dequantize_rejects_a_wrong_number_of_scales():
    with pytest.raises(ValueError, match="expected 2 scales"):
        dequantize(np.zeros(5, np.int8), np.ones(3, np.float32), 8, 4)
