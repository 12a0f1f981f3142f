import numpy as np
import pytest
import torch
import torch.nn.functional as F
from opacus import GradSampleModule

from fedmosaic.data.modality import ModalityKind, ModalitySpec, MultimodalArrays
from fedmosaic.models.missing_modality import remove_each_modality
from fedmosaic.models.multimodal import MultimodalClassifier
from fedmosaic.models.training import LossWeights, local_objective, make_loader, train
from fedmosaic.models.unimodal import unimodal_loss

SPECS = (
    ModalitySpec("imu", ModalityKind.SENSOR, (2, 16)),
    ModalitySpec("mic", ModalityKind.AUDIO, (1, 32)),
    ModalitySpec("log", ModalityKind.TOKENS, (5,), vocab_size=8),
)


def _model(fusion: str = "moe") -> MultimodalClassifier:
    torch.manual_seed(0)
    return MultimodalClassifier(SPECS, num_classes=3, embed_dim=8, num_experts=2,
                                hidden_dim=16, fusion=fusion)


def _inputs(batch_size: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {"imu": torch.randn(batch_size, 2, 16, generator=generator),
            "mic": torch.randn(batch_size, 1, 32, generator=generator),
            "log": torch.randint(0, 8, (batch_size, 5), generator=generator)}


def test_loss_averages_each_samples_present_views_over_the_batch():
    logits = torch.randn(3, 3, 4)
    mask = torch.tensor([[True, True, False], [True, True, True], [False, True, False]])
    labels = torch.tensor([0, 3, 1])
    per_view = torch.stack([F.cross_entropy(logits[:, m], labels, reduction="none")
                            for m in range(3)], dim=1)
    expected = (per_view[0, :2].mean() + per_view[1].mean()) / 3  # sample 2 has one modality

    torch.testing.assert_close(unimodal_loss(logits, mask, labels), expected)


def test_missing_views_and_single_modality_samples_get_no_gradient():
    logits = torch.randn(2, 3, 4, requires_grad=True)
    mask = torch.tensor([[True, False, True], [False, True, False]])

    unimodal_loss(logits, mask, torch.tensor([1, 2])).backward()

    assert torch.all(logits.grad[0, 1] == 0) and torch.all(logits.grad[1] == 0)
    assert torch.any(logits.grad[0, 0] != 0) and torch.any(logits.grad[0, 2] != 0)


def test_loss_is_zero_with_its_graph_when_no_sample_has_two_modalities():
    logits = torch.randn(2, 2, 3, requires_grad=True)
    loss = unimodal_loss(logits, torch.tensor([[True, False], [False, True]]),
                         torch.tensor([0, 1]))

    assert float(loss) == 0.0 and loss.requires_grad


@pytest.mark.parametrize(("shape", "mask_shape", "labels_shape"), [
    ((2, 3), (2, 3), (2,)), ((2, 3, 4), (2, 2), (2,)), ((2, 3, 4), (2, 3), (3,))])
def test_loss_rejects_shapes_that_disagree(shape, mask_shape, labels_shape):
    with pytest.raises(ValueError, match="modality_logits must be"):
        unimodal_loss(torch.zeros(shape), torch.ones(mask_shape, dtype=torch.bool),
                      torch.zeros(labels_shape, dtype=torch.int64))


@pytest.mark.parametrize("fusion", ["moe", "concat"])
def test_each_view_is_the_models_prediction_with_that_modality_alone(fusion):
    model = _model(fusion).eval()
    inputs = _inputs(5)
    mask = torch.ones(5, 3, dtype=torch.bool)
    mask[1, 2] = False

    with torch.no_grad():
        views = model(inputs, mask, views=True).modality_logits
        assert model(inputs, mask).modality_logits is None
        for m in range(3):
            alone = torch.zeros_like(mask)
            alone[:, m] = True
            present = mask[:, m]  # a missing modality's view is never used
            torch.testing.assert_close(views[present, m], model(inputs, alone).logits[present])

    assert views.shape == (5, 3, 3)


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
@pytest.mark.parametrize("fusion", ["moe", "concat"])
def test_opacus_per_sample_gradients_are_each_samples_own(fusion, monkeypatch):
    """DP-SGD clips each sample's gradient: with the views, layers run several times per batch.

    Opacus scales the batch-mean loss's per-sample gradients back to each sample's own, the
    way the devices' DP-SGD trains (``loss_reduction="mean"``).
    """
    monkeypatch.setattr(torch, "randn_like", torch.zeros_like)  # z = mu in training mode too
    inputs, labels = _inputs(3), torch.tensor([0, 1, 2])
    mask = torch.tensor([[True, True, True], [True, False, True], [False, True, False]])
    weights = LossWeights(kl=0.001, consistency=0.05, unimodal=1.0)  # every per-sample term

    def loss(model, rows):
        return local_objective(model, {k: v[rows] for k, v in inputs.items()}, mask[rows],
                               labels[rows], weights)[0]

    private = GradSampleModule(_model(fusion), loss_reduction="mean")
    loss(private, list(range(3))).backward()
    for row in range(3):
        single = _model(fusion)
        loss(single, [row]).backward()
        for (name, parameter), own in zip(private.named_parameters(), single.parameters(),
                                          strict=True):
            expected = own.grad if own.grad is not None else torch.zeros_like(own)
            torch.testing.assert_close(parameter.grad_sample[row], expected, atol=1e-5,
                                       rtol=1e-4, msg=name)


def test_the_local_objective_adds_the_weighted_views_loss():
    model = _model().eval()
    inputs, labels = _inputs(4), torch.tensor([0, 1, 2, 0])
    mask = torch.tensor([[True, True, True], [True, False, False], [False, True, True],
                         [True, True, False]])

    with torch.no_grad():
        plain, output = local_objective(model, inputs, mask, labels, LossWeights(0.0, 0.0))
        weighted, views = local_objective(model, inputs, mask, labels,
                                          LossWeights(0.0, 0.0, unimodal=2.0))

    assert output.modality_logits is None  # no views computed when they are not weighed
    torch.testing.assert_close(weighted - plain,
                               2.0 * unimodal_loss(views.modality_logits, mask, labels))


def _two_cues(n: int, seed: int) -> MultimodalArrays:
    """``imu`` gives the class away; ``mic`` carries it too, under noise; ``log`` is noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    imu = np.repeat(np.eye(3)[labels][:, None, :], 2, axis=1).repeat(6, axis=2)[:, :, :16] * 3
    mic = (1.0 * np.eye(3)[labels].repeat(11, axis=1)[:, None, :32]
           + rng.standard_normal((n, 1, 32)))
    return MultimodalArrays({"imu": imu.astype(np.float32), "mic": mic.astype(np.float32),
                             "log": rng.integers(0, 8, (n, 5))},
                            np.ones((n, 3), dtype=bool), labels)


def _accuracy_without_imu(unimodal: float) -> float:
    model = _model()
    train(model, make_loader(_two_cues(384, 0), SPECS, batch_size=32, shuffle=True, seed=0),
          SPECS, epochs=15, learning_rate=0.01,
          weights=LossWeights(kl=0.0, consistency=0.0, unimodal=unimodal))
    return remove_each_modality(model, _two_cues(600, 1), SPECS)["imu"].accuracy_without


def test_training_the_views_keeps_the_model_working_without_its_easiest_modality():
    assert _accuracy_without_imu(1.0) > _accuracy_without_imu(0.0) + 0.2


def test_the_run_config_sets_the_weight():
    from fedmosaic.config import RunConfig
    from fedmosaic.task import loss_weights

    assert loss_weights(RunConfig.from_mapping({})).unimodal == 0.0
    assert loss_weights(RunConfig.from_mapping({"unimodal-loss-weight": 0.5})).unimodal == 0.5
    with pytest.raises(ValueError, match="unimodal-loss-weight must be >= 0"):
        RunConfig.from_mapping({"unimodal-loss-weight": -1.0})
