"""Training with PyTorch: parameters, models (MLP, 1D-CNN) with standardization inside,
the training loop, continual learning (replay, EWC), metrics and run provenance."""

from edgeloop.hub.training.train import (
    CNN1D,
    TRAIN_THREADS,
    EWCPenalty,
    MLPClassifier,
    MLPRegressor,
    TrainParams,
    build_model,
    code_version,
    confusion_matrix,
    dataset_task,
    dataset_window_shape,
    fine_tune,
    library_versions,
    load_model,
    macro_f1,
    make_splits,
    regression_metrics,
    reservoir_sample,
    save_model,
    standardization_stats,
    train_classifier,
    train_model,
)

__all__ = [
    "CNN1D", "TRAIN_THREADS", "EWCPenalty", "MLPClassifier", "MLPRegressor", "TrainParams", "build_model",
    "code_version", "confusion_matrix", "dataset_task", "dataset_window_shape", "fine_tune",
    "library_versions", "load_model", "macro_f1", "make_splits", "regression_metrics", "reservoir_sample",
    "save_model", "standardization_stats", "train_classifier", "train_model",
]
