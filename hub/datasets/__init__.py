"""Datasets: the dataset model, CSV and npz readers and writers, schemas, validation
with line/column/rule reports, sensor windows, seeded splits and the synthetic sample.

Modules, each importing only those above it in this list:

* :mod:`~edgeloop.hub.datasets.problems` -- :class:`Problem` and the validation error;
* :mod:`~edgeloop.hub.datasets.schema` -- :class:`Schema`, inference, schema files;
* :mod:`~edgeloop.hub.datasets.windows` -- the sensor-window layout (names, wide/long);
* :mod:`~edgeloop.hub.datasets.data_warnings` -- :class:`DataWarning`: constant and identical
  columns, few rows (reported, not refused);
* :mod:`~edgeloop.hub.datasets.dataset` -- :class:`Dataset` and its content hash;
* :mod:`~edgeloop.hub.datasets.validation` -- value rules, :func:`validate_dataset`, label checks;
* :mod:`~edgeloop.hub.datasets.tables` -- parsed cells to a Dataset (shared by the readers);
* :mod:`~edgeloop.hub.datasets.csv_io`, :mod:`~edgeloop.hub.datasets.npz_io` -- the file formats;
* :mod:`~edgeloop.hub.datasets.loading` -- :func:`load_dataset`, by file suffix;
* :mod:`~edgeloop.hub.datasets.splits` -- seeded train/val/test splits;
* :mod:`~edgeloop.hub.datasets.synthetic` -- the synthetic sensor rows and windows, the sample CSV.
"""

from edgeloop.hub.datasets.csv_io import load_csv, write_csv
from edgeloop.hub.datasets.data_warnings import WARNING_RULES, DataWarning
from edgeloop.hub.datasets.dataset import MIN_ROWS, MIN_ROWS_FLOOR, Dataset, dataset_sha256
from edgeloop.hub.datasets.loading import load_dataset
from edgeloop.hub.datasets.npz_io import load_npz, write_npz
from edgeloop.hub.datasets.problems import Problem
from edgeloop.hub.datasets.schema import FeatureSpec, Schema, load_schema_file, write_schema_file
from edgeloop.hub.datasets.splits import Splits, split_dataset
from edgeloop.hub.datasets.synthetic import (
    SENSOR_FEATURES,
    SENSOR_LABELS,
    TEMPERATURE_SD,
    VIBRATION_SD,
    WINDOW_LABELS,
    WINDOW_SAMPLE_SD,
    generate_sensor_data,
    generate_sensor_windows,
    sample_dataset_path,
)
from edgeloop.hub.datasets.validation import align_labels, validate_dataset, validate_labels_known
from edgeloop.hub.datasets.windows import window_feature_names

__all__ = [
    "MIN_ROWS", "MIN_ROWS_FLOOR", "SENSOR_FEATURES", "SENSOR_LABELS", "TEMPERATURE_SD", "VIBRATION_SD",
    "WARNING_RULES", "WINDOW_LABELS", "WINDOW_SAMPLE_SD", "DataWarning", "Dataset", "FeatureSpec", "Problem",
    "Schema", "Splits", "align_labels",
    "dataset_sha256", "generate_sensor_data", "generate_sensor_windows", "load_csv", "load_dataset",
    "load_npz", "load_schema_file", "sample_dataset_path", "split_dataset", "validate_dataset",
    "validate_labels_known", "window_feature_names", "write_csv", "write_npz", "write_schema_file",
]
