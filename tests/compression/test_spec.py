"""CompressionSpec accepts the documented ranges and names the field it rejects."""

import pytest

from fedmosaic.compression import CompressionSpec


def test_defaults_are_lossless():
    spec = CompressionSpec()

    assert (spec.topk_ratio, spec.bits, spec.block_size) == (1.0, 32, 256)
    assert spec.lossless
    assert not CompressionSpec(topk_ratio=0.5).lossless
    assert not CompressionSpec(bits=8).lossless


@pytest.mark.parametrize("kwargs", [
    {"topk_ratio": 1e-6}, {"topk_ratio": 1}, {"bits": 8}, {"bits": 4}, {"block_size": 1},
    {"block_size": 1 << 20},
])
def test_edges_of_the_allowed_ranges_are_accepted(kwargs):
    CompressionSpec(**kwargs)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"topk_ratio": 0.0}, "topk_ratio"),
    ({"topk_ratio": -0.1}, "topk_ratio"),
    ({"topk_ratio": 1.01}, "topk_ratio"),
    ({"topk_ratio": float("nan")}, "topk_ratio"),
    ({"topk_ratio": "0.1"}, "topk_ratio"),
    ({"topk_ratio": True}, "topk_ratio"),
    ({"bits": 16}, "bits"),
    ({"bits": 2}, "bits"),
    ({"bits": 8.0}, "bits"),
    ({"bits": True}, "bits"),
    ({"block_size": 0}, "block_size"),
    ({"block_size": (1 << 20) + 1}, "block_size"),
    ({"block_size": 2.5}, "block_size"),
])
def test_out_of_range_values_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        CompressionSpec(**kwargs)
