import pytest
import torch

from fedmosaic.data.modality import ModalityKind, ModalitySpec
from fedmosaic.models.encoders import (
    AudioEncoder,
    ImageEncoder,
    SensorEncoder,
    SensorFeatureEncoder,
    TokenEncoder,
    build_encoder,
)

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


def test_sensor_feature_encoder_computes_the_documented_features_of_a_sine():
    # One channel, T = 16, sin at DFT bin 3 (amplitude 1): mean 0, std and power 1/sqrt(2)
    # and 1/2, extremes +-1 (bin 3 of 16 hits them), all power in the band [2, 4).
    length = 16
    time = torch.arange(length, dtype=torch.float64)
    sine = torch.sin(2 * torch.pi * 3 * time / length).to(torch.float32)
    encoder = SensorFeatureEncoder(in_channels=1, length=length, hidden_dim=4)
    mean_abs_difference = float((sine[1:] - sine[:-1]).abs().mean())
    # statistics, then bands [1, 2), [2, 4), [4, 8), [8, 9) of bins 1..8
    expected = torch.tensor([0.0, 2**-0.5, -1.0, 1.0, mean_abs_difference,
                             0.0, float(torch.log1p(torch.tensor(0.5))), 0.0, 0.0])

    features = encoder.features(sine.view(1, 1, length))

    torch.testing.assert_close(features, expected.view(1, -1), atol=1e-5, rtol=1e-5)


def test_sensor_feature_encoder_trains_only_its_projection():
    encoder = SensorFeatureEncoder(in_channels=3, length=100, hidden_dim=16)

    # 3 channels x (5 statistics + 6 octave bands of bins 1..50)
    assert encoder.num_features == 33
    assert list(encoder.state_dict()) == ["project.0.weight", "project.0.bias"]
    assert encoder(torch.randn(2, 3, 100)).shape == (2, 16)


def test_build_encoder_picks_the_sensor_encoder_by_name():
    spec, _ = SPECS[ModalityKind.SENSOR]

    assert isinstance(build_encoder(spec, 4, sensor_encoder="features"), SensorFeatureEncoder)
    assert isinstance(build_encoder(spec, 4, sensor_encoder="tcn"), SensorEncoder)
    with pytest.raises(ValueError, match="sensor_encoder must be one of"):
        build_encoder(spec, 4, sensor_encoder="wavelets")


def test_sensor_feature_encoder_rejects_windows_shorter_than_two():
    with pytest.raises(ValueError, match="length >= 2, got 1"):
        SensorFeatureEncoder(in_channels=1, length=1, hidden_dim=4)


def test_opacus_per_sample_gradients_of_the_feature_encoder_match_one_sample_backward():
    from opacus import GradSampleModule

    torch.manual_seed(0)
    encoder = SensorFeatureEncoder(in_channels=2, length=16, hidden_dim=3)
    windows = torch.randn(4, 2, 16)
    expected = []
    for window in windows:
        encoder.zero_grad()
        encoder(window.unsqueeze(0)).pow(2).sum().backward()
        expected.append(encoder.project[0].weight.grad.clone())
    wrapped = GradSampleModule(encoder, loss_reduction="sum")

    wrapped(windows).pow(2).sum().backward()

    torch.testing.assert_close(encoder.project[0].weight.grad_sample, torch.stack(expected))
