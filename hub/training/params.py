"""Training hyper-parameters (:class:`TrainParams`), checked on construction and read from run files.

:meth:`TrainParams.from_dict` is the one strict reader of parameter mappings
(the Hub facade, the CLI and run files use it): unknown names are errors that
list the known ones.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgeloop.hub.errors import TrainingError

__all__ = ["ARCHS", "DEFAULT_EPOCHS", "DEFAULT_PATIENCE", "STANDARDIZE", "TASKS", "TrainParams", "default_arch"]

TASKS = ("classification", "regression")
ARCHS = ("mlp", "cnn1d")  # concrete architectures (build_model); TrainParams.arch may also be "auto"
DEFAULT_EPOCHS = 200  # a ceiling: the validation loss decides when training stops (patience)
DEFAULT_PATIENCE = 20
STANDARDIZE = ("auto", "feature", "channel")

_INT_FIELDS = ("epochs", "batch_size", "patience", "seed", "kernel_size")
_FLOAT_FIELDS = ("lr", "weight_decay")
_TUPLE_FIELDS = ("hidden", "channels")
_STR_FIELDS = {"arch": ("auto", *ARCHS), "standardize": STANDARDIZE}
# Spellings other tools use for these parameters (named in the unknown-key error).
_ALIASES = {"learning_rate": "lr", "max_epochs": "epochs", "n_epochs": "epochs", "batch": "batch_size",
            "hidden_sizes": "hidden", "hidden_layers": "hidden", "layers": "hidden", "random_seed": "seed",
            "random_state": "seed", "wd": "weight_decay", "early_stopping_patience": "patience",
            "conv_channels": "channels", "filters": "channels", "kernel": "kernel_size", "model": "arch"}


def default_arch(window_shape: tuple[int, int] | None) -> str:
    """The architecture ``arch="auto"`` means: ``"cnn1d"`` for sensor windows, ``"mlp"`` for tables."""
    return "cnn1d" if window_shape is not None else "mlp"


@dataclass
class TrainParams:
    """Hyper-parameters of :func:`train_model` (recorded with every run).

    ``arch`` picks the model: ``"mlp"``, ``"cnn1d"`` or ``"auto"`` (the default:
    the 1D-CNN for window datasets, the MLP for tables; see :meth:`resolved`,
    which training applies before it records the run); ``hidden`` are the MLP
    layer widths, ``channels`` the CNN's Conv1d widths (one block each) with
    ``kernel_size``. ``standardize`` is ``"feature"`` (one mean/std per input
    column), ``"channel"`` (one per sensor channel of a window dataset) or
    ``"auto"`` (channel for the CNN, feature for the MLP). ``epochs`` is a
    ceiling (default 200): training stops once ``patience`` (default 20) epochs
    pass without a better validation loss, and the best epoch's weights are
    restored. Fields after ``seed`` were added later, so positional
    construction still works.
    """

    hidden: tuple[int, ...] = (64, 32)
    epochs: int = DEFAULT_EPOCHS
    lr: float = 3e-3
    batch_size: int = 64
    weight_decay: float = 1e-4
    patience: int = DEFAULT_PATIENCE  # epochs without a better validation loss before stopping
    seed: int = 0
    arch: str = "auto"
    channels: tuple[int, ...] = (16, 32)
    kernel_size: int = 5
    standardize: str = "auto"

    def __post_init__(self) -> None:
        bad = []
        for name in _TUPLE_FIELDS:
            value = getattr(self, name)
            try:
                setattr(self, name, tuple(int(h) for h in value))
            except (TypeError, ValueError):
                bad.append(f"{name}={value!r} (need a list of positive integers)")
        if not bad:
            if not self.hidden or any(h < 1 for h in self.hidden):
                bad.append(f"hidden={self.hidden} (need one or more positive layer widths)")
            if not self.channels or any(c < 1 for c in self.channels):
                bad.append(f"channels={self.channels} (need one or more positive Conv1d widths)")
        if self.epochs < 1:
            bad.append(f"epochs={self.epochs} (need >= 1)")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            bad.append(f"lr={self.lr} (need a positive number)")
        if self.batch_size < 1:
            bad.append(f"batch_size={self.batch_size} (need >= 1)")
        if self.weight_decay < 0:
            bad.append(f"weight_decay={self.weight_decay} (need >= 0)")
        if self.patience < 1:
            bad.append(f"patience={self.patience} (need >= 1)")
        if self.kernel_size < 1:
            bad.append(f"kernel_size={self.kernel_size} (need >= 1)")
        for name, allowed in _STR_FIELDS.items():
            if getattr(self, name) not in allowed:
                bad.append(f"{name}={getattr(self, name)!r} (need one of {', '.join(map(repr, allowed))})")
        if bad:
            raise TrainingError("invalid training parameters: " + "; ".join(bad) + ". Correct them and start again.")

    def resolved(self, window_shape: tuple[int, int] | None) -> TrainParams:
        """These parameters with ``arch="auto"`` replaced by :func:`default_arch` for the data."""
        if self.arch != "auto":
            return self
        return dataclasses.replace(self, arch=default_arch(window_shape))

    def to_dict(self) -> dict:
        d = asdict(self)
        for name in _TUPLE_FIELDS:
            d[name] = list(getattr(self, name))
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, where: str = "training parameters") -> TrainParams:
        """Parameters from a mapping (a parsed run file); unknown keys and wrong types are errors.

        Missing keys keep their defaults. Raises :class:`edgeloop.hub.errors.TrainingError`
        naming every unknown key (with the closest known name) and every value of
        the wrong type.
        """
        if not isinstance(d, Mapping):
            raise TrainingError(f"{where} must be a table of parameters, got {type(d).__name__}")
        known = [f.name for f in dataclasses.fields(cls)]
        problems = []
        for key in d:
            if key not in known:
                close = [_ALIASES[key]] if key in _ALIASES else difflib.get_close_matches(str(key), known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                problems.append(f"unknown key {key!r}{hint}")
        kwargs: dict[str, Any] = {}
        for key, value in d.items():
            if key not in known:
                continue
            if key in _INT_FIELDS:
                if isinstance(value, bool) or not isinstance(value, int):
                    problems.append(f"{key} must be an integer, got {value!r}")
                    continue
            elif key in _FLOAT_FIELDS:
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    problems.append(f"{key} must be a number, got {value!r}")
                    continue
                value = float(value)
            elif key in _TUPLE_FIELDS:
                if not isinstance(value, (list, tuple)) or any(
                        isinstance(v, bool) or not isinstance(v, int) for v in value):
                    problems.append(f"{key} must be a list of integers, got {value!r}")
                    continue
                value = tuple(value)
            elif key in _STR_FIELDS and not isinstance(value, str):
                problems.append(f"{key} must be a string, got {value!r}")
                continue
            kwargs[key] = value
        if problems:
            raise TrainingError(f"{where}: " + "; ".join(problems) + f". Known keys: {', '.join(known)}.")
        return cls(**kwargs)

    @classmethod
    def from_file(cls, path: str | Path) -> TrainParams:
        """Parameters from a run file: JSON (``.json``) or TOML (``.toml``).

        The file holds the parameters at its top level, or in one ``train``
        table (``[train]`` in TOML, ``{"train": {...}}`` in JSON); any other key
        is an error (see :meth:`from_dict`).
        """
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in (".json", ".toml"):
            raise TrainingError(f"run file {path} must end in .json or .toml, not {suffix or '(no suffix)'!r}")
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise TrainingError(f"run file {path} does not exist; check the path") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise TrainingError(f"run file {path} cannot be read: {exc}") from exc
        try:
            d = json.loads(text) if suffix == ".json" else tomllib.loads(text)
        except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
            raise TrainingError(f"run file {path} is not valid {suffix[1:].upper()}: {exc}") from exc
        if isinstance(d, Mapping) and list(d) == ["train"] and isinstance(d["train"], Mapping):
            d = d["train"]
        return cls.from_dict(d, where=f"run file {path}")
