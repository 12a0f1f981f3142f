import pytest
import torch
import torch.nn.functional as F
from opacus import GradSampleModule
from opacus.validators import ModuleValidator

from fedmosaic.data.modality import ModalityKind, ModalitySpec
from fedmosaic.models.multimodal import ModelOutput, MultimodalClassifier

SPECS = (
    ModalitySpec("cam", ModalityKind.IMAGE, (1, 8, 8)),
    ModalitySpec("imu", ModalityKind.SENSOR, (2, 16)),
    ModalitySpec("mic", ModalityKind.AUDIO, (1, 64)),
    ModalitySpec("log", ModalityKind.TOKENS, (6,), vocab_size=10),
)
NUM_CLASSES = 3


def _model(**kwargs) -> MultimodalClassifier:
    torch.manual_seed(0)
    sizes = {"embed_dim": 8, "num_experts": 2, "hidden_dim": 16} | kwargs
    return MultimodalClassifier(SPECS, NUM_CLASSES, **sizes)


def _inputs(batch_size: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    inputs = {}
    for spec in SPECS:
        if spec.kind == ModalityKind.TOKENS:
            inputs[spec.name] = torch.randint(
                0, spec.vocab_size, (batch_size, *spec.shape), generator=generator
            )
        else:
            inputs[spec.name] = torch.randn(batch_size, *spec.shape, generator=generator)
    return inputs


def _full_loss(output: ModelOutput, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(output.logits, labels) + output.kl + output.consistency + output.balance


def test_forward_shapes_for_all_four_kinds():
    model = _model()
    mask = torch.tensor(
        [[True, True, True, True], [True, False, False, True], [False] * 3 + [True]]
    )

    output = model(_inputs(3), mask)

    assert output.logits.shape == (3, NUM_CLASSES)
    assert output.mus.shape == (3, 4, 8)
    assert output.logvars.shape == (3, 4, 8)
    assert output.gate_weights.shape == (3, 4)
    assert output.kl.shape == () and output.kl.item() >= 0
    assert output.consistency.shape == ()
    assert output.balance.shape == ()
    torch.testing.assert_close(output.gate_weights.sum(dim=1), torch.ones(3))


@pytest.mark.parametrize("missing", [spec.name for spec in SPECS])
def test_missing_modality_gets_zero_weight_and_exactly_zero_gradient(missing):
    model = _model()
    column = [spec.name for spec in SPECS].index(missing)
    mask = torch.ones(4, len(SPECS), dtype=torch.bool)
    mask[:, column] = False
    inputs = _inputs(4)
    inputs[missing] = torch.zeros_like(inputs[missing])

    output = model(inputs, mask)
    _full_loss(output, torch.tensor([0, 1, 2, 0])).backward()

    assert (output.gate_weights[:, column] == 0).all()
    prefixes = model.modality_parameter_prefixes(missing)
    own = {name: p for name, p in model.named_parameters() if name.startswith(prefixes)}
    assert own
    for name, parameter in own.items():
        assert parameter.grad is None or (parameter.grad == 0).all(), name
    other = model.modality_parameter_prefixes(SPECS[(column + 1) % len(SPECS)].name)
    assert any(
        p.grad is not None and (p.grad != 0).any()
        for name, p in model.named_parameters()
        if name.startswith(other)
    )


def test_parameter_prefixes_partition_modality_parameters():
    model = _model()
    keys = list(model.state_dict())

    owned = [
        k
        for spec in SPECS
        for k in keys
        if k.startswith(model.modality_parameter_prefixes(spec.name))
    ]
    shared = [k for k in keys if k not in owned]

    assert len(owned) == len(set(owned))
    assert model.modality_parameter_prefixes("imu") == (
        "encoders.imu.",
        "heads.imu.",
        "fusion.level1.1.",
    )
    assert all(k.startswith(("fusion.level2_gate.", "classifier.")) for k in shared)


def test_parameter_prefixes_reject_unknown_modality():
    with pytest.raises(ValueError, match="modality_name must be one of"):
        _model().modality_parameter_prefixes("radar")


def test_kl_averages_over_present_modalities_only():
    model = _model()
    mask = torch.tensor([[True, False, True, False], [False, True, True, True]])

    output = model(_inputs(2), mask)

    per_modality = 0.5 * (output.mus**2 + output.logvars.exp() - output.logvars - 1).sum(-1)
    expected = ((per_modality * mask).sum(1) / mask.sum(1)).mean()
    torch.testing.assert_close(output.kl, expected)


def test_evaluation_is_deterministic_and_training_samples():
    model = _model()
    inputs, mask = _inputs(3), torch.ones(3, len(SPECS), dtype=torch.bool)

    model.eval()
    first, second = model(inputs, mask), model(inputs, mask)
    model.train()
    third, fourth = model(inputs, mask), model(inputs, mask)

    torch.testing.assert_close(first.logits, second.logits)
    assert not torch.equal(third.logits, fourth.logits)


def test_rejects_bad_mask_and_inputs():
    model = _model()
    inputs = _inputs(2)

    with pytest.raises(ValueError, match="mask must be bool"):
        model(inputs, torch.ones(2, len(SPECS)))
    with pytest.raises(ValueError, match="all-False row"):
        model(inputs, torch.tensor([[True] * 4, [False] * 4]))
    with pytest.raises(ValueError, match="inputs must have modalities"):
        model({"cam": inputs["cam"]}, torch.ones(2, len(SPECS), dtype=torch.bool))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"specs": (), "num_classes": 2}, "at least one"),
        ({"specs": SPECS[:1] * 2, "num_classes": 2}, "unique names"),
        ({"specs": SPECS, "num_classes": 1}, "num_classes must be >= 2"),
    ],
)
def test_constructor_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MultimodalClassifier(**kwargs)


def test_model_passes_opacus_validation():
    assert ModuleValidator.validate(_model(), strict=True) == []


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_opacus_per_sample_gradients_average_to_the_batch_gradient():
    model = GradSampleModule(_model())
    batch_size = 3
    mask = torch.ones(batch_size, len(SPECS), dtype=torch.bool)

    _full_loss(model(_inputs(batch_size), mask), torch.tensor([0, 1, 2])).backward()

    for name, parameter in model.named_parameters():
        assert parameter.grad_sample.shape == (batch_size, *parameter.shape), name
        torch.testing.assert_close(
            parameter.grad_sample.mean(dim=0), parameter.grad, atol=1e-5, rtol=1e-4
        )
