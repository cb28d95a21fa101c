"""Training with PyTorch: parameters, models (MLP, 1D-CNN) with standardization inside,
the training loop, continual learning (replay, EWC), metrics and run provenance.

Modules: ``params`` (:class:`TrainParams`), ``models`` (the model factory, save/load),
``data`` (dataset checks and splits), ``loop`` (:func:`train_model`), ``replay``
(reservoir, EWC), ``continual`` (:func:`fine_tune`), ``metrics``, ``provenance``.
"""

from edgeloop.hub.training.continual import adopt_parent_labels, fine_tune
from edgeloop.hub.training.data import (
    check_fractions,
    check_splits,
    dataset_task,
    dataset_window_shape,
    make_splits,
    parse_split,
    validate_for_training,
)
from edgeloop.hub.training.loop import TRAIN_THREADS, train_classifier, train_model
from edgeloop.hub.training.metrics import confusion_matrix, macro_f1, regression_metrics
from edgeloop.hub.training.models import (
    CNN1D,
    FactoryModel,
    MLPClassifier,
    MLPRegressor,
    build_model,
    load_model,
    model_bytes,
    save_model,
    standardization_stats,
)
from edgeloop.hub.training.params import TrainParams, default_arch
from edgeloop.hub.training.provenance import code_version, library_versions
from edgeloop.hub.training.replay import EWCPenalty, reservoir_sample

__all__ = [
    "CNN1D", "TRAIN_THREADS", "EWCPenalty", "FactoryModel", "MLPClassifier", "MLPRegressor", "TrainParams",
    "adopt_parent_labels", "build_model", "check_fractions", "check_splits", "code_version", "confusion_matrix",
    "dataset_task", "dataset_window_shape", "default_arch", "fine_tune", "library_versions", "load_model",
    "macro_f1", "make_splits", "model_bytes", "parse_split", "regression_metrics", "reservoir_sample",
    "save_model", "standardization_stats", "train_classifier", "train_model", "validate_for_training",
]
