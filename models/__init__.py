"""Multimodal models: per-modality encoders, probabilistic embeddings, HMoE fusion, training.

Everything is plain PyTorch built from Opacus-compatible layers (``Linear``, ``Conv1d``,
``Conv2d``, ``Embedding``, ``GroupNorm``), so the models can be trained with per-sample
gradients for differential privacy.
"""

from fedmosaic.models.consistency import cross_modal_consistency
from fedmosaic.models.encoders import (
    AudioEncoder,
    ImageEncoder,
    SensorEncoder,
    SensorFeatureEncoder,
    TokenEncoder,
    build_encoder,
)
from fedmosaic.models.fusion import HierarchicalMoEFusion, ModalityExperts, masked_softmax
from fedmosaic.models.multimodal import ModelOutput, MultimodalClassifier
from fedmosaic.models.probabilistic import ProbabilisticHead, gaussian_kl
from fedmosaic.models.training import (
    EvalResult,
    LossWeights,
    TrainResult,
    evaluate,
    make_loader,
    split_batch,
    train,
)

__all__ = [
    "AudioEncoder",
    "EvalResult",
    "HierarchicalMoEFusion",
    "ImageEncoder",
    "LossWeights",
    "ModalityExperts",
    "ModelOutput",
    "MultimodalClassifier",
    "ProbabilisticHead",
    "SensorEncoder",
    "SensorFeatureEncoder",
    "TokenEncoder",
    "TrainResult",
    "build_encoder",
    "cross_modal_consistency",
    "evaluate",
    "gaussian_kl",
    "make_loader",
    "masked_softmax",
    "split_batch",
    "train",
]
