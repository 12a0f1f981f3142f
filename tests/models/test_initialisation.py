import math

import torch
from torch import nn

from fedmosaic.data.modality import ModalityKind, ModalitySpec
from fedmosaic.models.initialisation import he_initialise
from fedmosaic.models.multimodal import MultimodalClassifier


def test_he_initialise_draws_weights_with_variance_two_over_fan_in_and_zero_bias():
    torch.manual_seed(0)
    layer = nn.Linear(200, 300)
    nested = nn.Sequential(nn.ReLU(), nn.Sequential(layer))

    he_initialise(nested)

    # 60,000 draws: the sample std is within 2 % of sqrt(2/200) = 0.1 with overwhelming odds
    assert math.isclose(float(layer.weight.std()), 0.1, rel_tol=0.02)
    assert abs(float(layer.weight.mean())) < 0.002
    assert torch.count_nonzero(layer.bias) == 0


def test_classifier_keeps_the_level2_gate_output_at_zero_and_he_initialises_the_rest():
    torch.manual_seed(0)
    specs = (ModalitySpec("imu", ModalityKind.SENSOR, (3, 16)),
             ModalitySpec("mic", ModalityKind.AUDIO, (1, 64)))
    model = MultimodalClassifier(specs, num_classes=4)

    gate_output = model.fusion.level2_gate[-1]
    assert torch.count_nonzero(gate_output.weight) == 0
    assert torch.count_nonzero(gate_output.bias) == 0
    for name, layer in model.named_modules():
        if isinstance(layer, nn.Linear) and layer is not gate_output:
            assert torch.count_nonzero(layer.bias) == 0, name
