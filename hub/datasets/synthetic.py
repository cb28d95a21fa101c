"""Synthetic sensor data: pump-motor condition rows (:func:`generate_sensor_data`), vibration windows
(:func:`generate_sensor_windows`), and the shipped sample CSV (:func:`sample_dataset_path`).

Both generators are seeded (``numpy.random.default_rng(seed)``), so the same
arguments give the same :class:`~edgeloop.hub.datasets.dataset.Dataset`, bit
for bit; ``shift`` moves features by a multiple of their standard deviation to
simulate drift.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeloop.hub.datasets.dataset import Dataset
from edgeloop.hub.datasets.windows import window_feature_names

__all__ = [
    "LABEL_NOISE",
    "SENSOR_CLASS_PRIORS",
    "SENSOR_FEATURES",
    "SENSOR_LABELS",
    "TEMPERATURE_SD",
    "VIBRATION_SD",
    "WINDOW_CLASS_PRIORS",
    "WINDOW_LABELS",
    "WINDOW_NOISE_SD",
    "WINDOW_SAMPLE_SD",
    "generate_sensor_data",
    "generate_sensor_windows",
    "sample_dataset_path",
]

# --------------------------------------------------------------------------
# Pump-motor condition rows
# --------------------------------------------------------------------------

SENSOR_FEATURES = ["temperature_c", "vibration_rms", "pressure_kpa", "current_a", "humidity_pct", "rpm"]
SENSOR_LABELS = ["normal", "overheating", "worn_bearing"]  # sorted, as load_csv orders classes
SENSOR_CLASS_PRIORS = {"normal": 0.6, "overheating": 0.2, "worn_bearing": 0.2}
# Marginal standard deviations of the undrifted process (from 10^6 rows); the
# unit in which ``shift`` moves temperature and vibration.
TEMPERATURE_SD = 7.68  # °C
VIBRATION_SD = 0.95  # mm/s
LABEL_NOISE = 0.02
_DECIMALS = {"temperature_c": 2, "vibration_rms": 3, "pressure_kpa": 1, "current_a": 2, "humidity_pct": 1, "rpm": 0}


def generate_sensor_data(n_rows: int, seed: int, *, shift: float = 0.0) -> Dataset:
    """Synthetic condition-monitoring data of an electric pump motor (3 classes).

    Process, per row (``numpy.random.default_rng(seed)``):

    * condition ~ Categorical(normal 0.6, overheating 0.2, worn_bearing 0.2);
    * hidden operating point: load ~ U(0.35, 1.0) of rated load, ambient
      temperature ~ N(22, 3) °C, relative humidity ~ N(50, 12) % clipped to [5, 95];
    * ``rpm`` = 1800 - 150·load + N(0, 15) (induction-motor slip), worn bearings
      add friction (-15 rpm);
    * ``current_a`` = 6 + 14·load + N(0, 0.9), +2 A when overheating, +0.8 A
      with a worn bearing;
    * ``temperature_c`` = ambient + 20 + 25·load + 0.04·(humidity - 50) + N(0, 2.5),
      +12 °C when overheating, +3 °C with a worn bearing;
    * ``vibration_rms`` (mm/s) = (0.8 + 1.2·load) · exp(N(0, 0.2)), ×2.2 with a
      worn bearing, ×1.1 when overheating;
    * ``pressure_kpa`` (coolant) = 250 + 40·load + N(0, 10), -25 kPa when
      overheating (coolant loss is what overheats the motor);
    * then 2% of the labels are replaced by a random class (labelling mistakes).

    Classes overlap through the load and noise terms (a hot day at full load
    looks like mild overheating), so a small MLP reaches about 90-97% accuracy,
    not 100%. Values are rounded to sensor resolution (rpm to 1, pressure and
    humidity to 0.1, temperature and current to 0.01, vibration to 0.001).

    ``shift`` simulates drift (a recalibrated thermometer and a loosened
    mount): temperature moves by ``shift × TEMPERATURE_SD`` and vibration by
    ``shift × VIBRATION_SD``, the features' standard deviations under the
    undrifted process (7.68 °C and 0.95 mm/s). Labels are not changed.
    """
    if n_rows < 1:
        raise ValueError(f"n_rows must be positive, got {n_rows}")
    rng = np.random.default_rng(seed)
    priors = np.array([SENSOR_CLASS_PRIORS[lab] for lab in SENSOR_LABELS])
    y = rng.choice(len(SENSOR_LABELS), size=n_rows, p=priors)
    over = (y == SENSOR_LABELS.index("overheating")).astype(np.float64)
    worn = (y == SENSOR_LABELS.index("worn_bearing")).astype(np.float64)

    load = rng.uniform(0.35, 1.0, n_rows)
    ambient = rng.normal(22.0, 3.0, n_rows)
    humidity = np.clip(rng.normal(50.0, 12.0, n_rows), 5.0, 95.0)
    rpm = 1800.0 - 150.0 * load + rng.normal(0.0, 15.0, n_rows) - 15.0 * worn
    current = 6.0 + 14.0 * load + rng.normal(0.0, 0.9, n_rows) + 2.0 * over + 0.8 * worn
    temperature = (ambient + 20.0 + 25.0 * load + 0.04 * (humidity - 50.0) + rng.normal(0.0, 2.5, n_rows)
                   + 12.0 * over + 3.0 * worn)
    vibration = (0.8 + 1.2 * load) * np.exp(rng.normal(0.0, 0.2, n_rows)) * (1.0 + 1.2 * worn + 0.1 * over)
    pressure = 250.0 + 40.0 * load + rng.normal(0.0, 10.0, n_rows) - 25.0 * over

    flip = rng.random(n_rows) < LABEL_NOISE
    y = np.where(flip, rng.integers(0, len(SENSOR_LABELS), n_rows), y)

    temperature = temperature + shift * TEMPERATURE_SD
    vibration = vibration + shift * VIBRATION_SD
    cols = {
        "temperature_c": temperature,
        "vibration_rms": vibration,
        "pressure_kpa": pressure,
        "current_a": current,
        "humidity_pct": humidity,
        "rpm": rpm,
    }
    X = np.stack([np.round(cols[n], _DECIMALS[n]) for n in SENSOR_FEATURES], axis=1).astype(np.float32)
    source = f"generate_sensor_data(n_rows={n_rows}, seed={seed}, shift={shift:g})"
    return Dataset(list(SENSOR_FEATURES), X, y.astype(np.int64), list(SENSOR_LABELS), label_column="label",
                   source=source)


# --------------------------------------------------------------------------
# Vibration windows (multichannel, for the 1D-CNN)
# --------------------------------------------------------------------------

WINDOW_LABELS = ["bearing_fault", "imbalance", "normal"]  # sorted, as the loaders order classes
WINDOW_CLASS_PRIORS = {"normal": 0.4, "imbalance": 0.3, "bearing_fault": 0.3}
WINDOW_NOISE_SD = 0.3
# Marginal standard deviation of one sample value of the undrifted process
# (3 channels × 32 steps, from 2*10^5 windows): the unit in which ``shift`` moves every sample.
WINDOW_SAMPLE_SD = 0.72
_RESONANCE = 0.35  # cycles per sample of the ringing a bearing impact excites


def generate_sensor_windows(n_windows: int, seed: int, *, channels: int = 3, steps: int = 32,
                            shift: float = 0.0) -> Dataset:
    """Synthetic vibration windows of a rotating machine, 3 classes, for the 1D-CNN.

    Each window is ``steps`` samples of a ``channels``-axis accelerometer
    (channels 0, 1 radial, 2 axial, repeating for more channels). Process, per
    window (``numpy.random.default_rng(seed)``):

    * condition ~ Categorical(normal 0.4, imbalance 0.3, bearing_fault 0.3);
    * shaft speed ``f`` ~ U(2, 4) revolutions per window, phase ``φ`` ~ U(0, 2π);
    * every condition has a residual once-per-revolution vibration
      ``a · g_c · sin(2π f t/steps + φ + c·π/2)`` with ``a`` ~ U(0.3, 0.9) and
      gain ``g_c`` = 1 on radial and 0.4 on axial channels;
    * **imbalance** adds a stronger sinusoid at the same frequency and phase,
      amplitude ~ U(0.5, 1.5) (times ``g_c``);
    * **bearing_fault** adds periodic impacts: every ``P`` ~ U(steps/8, steps/4)
      samples (random start) an impulse of height ~ U(1, 2.5) rings down,
      ``B · exp(-k/1.2) · cos(2π·0.35·k)`` for ``k`` samples after it, with
      gain ``1/(1 + 0.3c)`` on channel ``c``;
    * white noise N(0, 0.3) on every sample; values rounded to 0.001.

    The classes overlap at the edges (a rough normal machine vs. a mild
    imbalance, small impacts in noise), so a small 1D-CNN separates them well
    but not perfectly; there is no label noise. ``shift`` simulates sensor drift
    (a bias after remounting): every sample moves by ``shift × WINDOW_SAMPLE_SD``
    (0.72, the marginal SD of a sample without drift). Labels are sorted
    (``bearing_fault, imbalance, normal``); ``X`` is (n_windows, channels*steps),
    channel-major, and ``window_shape`` is ``(channels, steps)``.
    """
    if n_windows < 1 or channels < 1 or steps < 2:
        raise ValueError(f"need n_windows >= 1, channels >= 1, steps >= 2; got {n_windows}, {channels}, {steps}")
    rng = np.random.default_rng(seed)
    priors = np.array([WINDOW_CLASS_PRIORS[lab] for lab in WINDOW_LABELS])
    y = rng.choice(len(WINDOW_LABELS), size=n_windows, p=priors)
    imbalance = (y == WINDOW_LABELS.index("imbalance")).astype(np.float64)
    fault = (y == WINDOW_LABELS.index("bearing_fault")).astype(np.float64)

    t = np.arange(steps, dtype=np.float64)
    c = np.arange(channels, dtype=np.float64)
    radial_gain = np.where(np.arange(channels) % 3 == 2, 0.4, 1.0)
    impact_gain = 1.0 / (1.0 + 0.3 * c)
    speed = rng.uniform(2.0, 4.0, n_windows)
    phase = rng.uniform(0.0, 2.0 * np.pi, n_windows)
    amplitude = rng.uniform(0.3, 0.9, n_windows) + imbalance * rng.uniform(0.5, 1.5, n_windows)
    angle = (2.0 * np.pi * speed[:, None, None] * t[None, None, :] / steps + phase[:, None, None]
             + c[None, :, None] * np.pi / 2.0)
    signal = amplitude[:, None, None] * radial_gain[None, :, None] * np.sin(angle)

    period = rng.uniform(steps / 8.0, steps / 4.0, n_windows)
    start = rng.uniform(0.0, 1.0, n_windows) * period
    height = rng.uniform(1.0, 2.5, n_windows)
    since = np.mod(t[None, :] - start[:, None], period[:, None])  # samples since the last impact
    since = np.where(t[None, :] >= start[:, None], since, np.inf)  # nothing before the first impact
    ringing = np.exp(-since / 1.2) * np.cos(2.0 * np.pi * _RESONANCE * np.where(np.isfinite(since), since, 0.0))
    ringing = np.where(np.isfinite(since), ringing, 0.0)
    signal += (fault * height)[:, None, None] * impact_gain[None, :, None] * ringing[:, None, :]

    signal += rng.normal(0.0, WINDOW_NOISE_SD, signal.shape)
    signal += shift * WINDOW_SAMPLE_SD
    X = np.round(signal, 3).reshape(n_windows, channels * steps).astype(np.float32)
    source = (f"generate_sensor_windows(n_windows={n_windows}, seed={seed}, channels={channels}, steps={steps}, "
              f"shift={shift:g})")
    return Dataset(window_feature_names(channels, steps), X, y.astype(np.int64), list(WINDOW_LABELS),
                   label_column="label", source=source, window_shape=(channels, steps))


def sample_dataset_path() -> Path:
    """Path of the shipped sample CSV (``hub/datasets/samples/sensors.csv``, written by scripts/make_sample_data.py)."""
    return Path(__file__).resolve().parent / "samples" / "sensors.csv"
