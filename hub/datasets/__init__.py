"""Datasets: the dataset model, CSV and npz readers and writers, schemas, validation
with line/column/rule reports, sensor windows, seeded splits and the synthetic sample."""

from edgeloop.hub.datasets.dataset import (
    MIN_ROWS,
    SENSOR_FEATURES,
    SENSOR_LABELS,
    TEMPERATURE_SD,
    VIBRATION_SD,
    Dataset,
    Splits,
    align_labels,
    dataset_sha256,
    generate_sensor_data,
    load_csv,
    load_dataset,
    load_npz,
    sample_dataset_path,
    split_dataset,
    validate_dataset,
    validate_labels_known,
    write_csv,
    write_npz,
)
from edgeloop.hub.datasets.problems import Problem
from edgeloop.hub.datasets.schema import FeatureSpec, Schema, load_schema_file, write_schema_file
from edgeloop.hub.datasets.windows import (
    WINDOW_LABELS,
    WINDOW_SAMPLE_SD,
    generate_sensor_windows,
    window_feature_names,
)

__all__ = [
    "MIN_ROWS", "SENSOR_FEATURES", "SENSOR_LABELS", "TEMPERATURE_SD", "VIBRATION_SD", "WINDOW_LABELS",
    "WINDOW_SAMPLE_SD", "Dataset", "FeatureSpec", "Problem", "Schema", "Splits", "align_labels",
    "dataset_sha256", "generate_sensor_data", "generate_sensor_windows", "load_csv", "load_dataset",
    "load_npz", "load_schema_file", "sample_dataset_path", "split_dataset", "validate_dataset",
    "validate_labels_known", "window_feature_names", "write_csv", "write_npz", "write_schema_file",
]
