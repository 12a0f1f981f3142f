import pytest
import torch

from fedmosaic.models.encoders import (
    AudioEncoder,
    ImageEncoder,
    SensorEncoder,
    TokenEncoder,
    build_encoder,
)
from fedmosaic.simulation.modality import ModalityKind, ModalitySpec

SPECS = {
    ModalityKind.IMAGE: (ModalitySpec("cam", ModalityKind.IMAGE, (3, 8, 8)), ImageEncoder),
    ModalityKind.SENSOR: (ModalitySpec("imu", ModalityKind.SENSOR, (2, 16)), SensorEncoder),
    ModalityKind.AUDIO: (ModalitySpec("mic", ModalityKind.AUDIO, (1, 64)), AudioEncoder),
    ModalityKind.TOKENS: (
        ModalitySpec("log", ModalityKind.TOKENS, (6,), vocab_size=10),
        TokenEncoder,
    ),
}


def _batch(spec: ModalitySpec, batch_size: int) -> torch.Tensor:
    if spec.kind == ModalityKind.TOKENS:
        return torch.randint(0, spec.vocab_size, (batch_size, *spec.shape))
    return torch.randn(batch_size, *spec.shape)


@pytest.mark.parametrize("kind", list(ModalityKind))
def test_build_encoder_maps_every_kind_to_hidden_dim(kind):
    spec, expected_type = SPECS[kind]
    encoder = build_encoder(spec, hidden_dim=12)

    features = encoder(_batch(spec, batch_size=5))

    assert isinstance(encoder, expected_type)
    assert features.shape == (5, 12)
    assert torch.isfinite(features).all()


def test_sensor_encoder_accepts_other_lengths():
    encoder = SensorEncoder(in_channels=2, hidden_dim=4)

    assert encoder(torch.randn(3, 2, 7)).shape == (3, 4)


def test_audio_encoder_accepts_very_short_waveforms():
    encoder = AudioEncoder(in_channels=1, hidden_dim=4)

    assert encoder(torch.randn(2, 1, 3)).shape == (2, 4)


def test_token_encoder_excludes_padding_from_the_mean():
    torch.manual_seed(0)
    encoder = TokenEncoder(vocab_size=10, hidden_dim=4)
    unpadded = torch.tensor([[5, 7]])
    padded = torch.tensor([[0, 5, 0, 0, 7, 0]])

    torch.testing.assert_close(encoder(padded), encoder(unpadded))


def test_token_encoder_maps_all_padding_to_the_projection_of_zero():
    encoder = TokenEncoder(vocab_size=10, hidden_dim=4)
    expected = torch.relu(encoder.project[0].bias).unsqueeze(0)

    torch.testing.assert_close(encoder(torch.zeros(1, 6, dtype=torch.int64)), expected)


def test_build_encoder_rejects_non_positive_hidden_dim():
    spec, _ = SPECS[ModalityKind.SENSOR]

    with pytest.raises(ValueError, match="hidden_dim must be >= 1"):
        build_encoder(spec, hidden_dim=0)
