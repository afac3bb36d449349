"""Generated 1-D signals: length-64 sequences from two stationary random processes, each
scaled to unit variance per time step.

- ``sines``: a sum of three sinusoids with random frequency, amplitude and phase, plus a little
  white noise (phases uniform, so every time step has the same distribution);
- ``ar2``: stationary AR(2) processes ``x_t = phi1 x_{t-1} + phi2 x_{t-2} + e_t`` whose
  characteristic roots ``r exp(±i theta)`` are drawn per sequence (damped oscillations),
  started in their stationary distribution by a burn-in.
"""

from __future__ import annotations

import numpy as np

from fewstep.data.registry import Dataset, generated_loader

LENGTH = 64
SIGNAL_DEFAULT_N = {"train": 10_000, "val": 2_000, "test": 2_000}
SIGNAL_LICENCE = "generated procedurally by fewstep's own code (no external data); Apache-2.0"
N_SINES, SINE_NOISE = 3, 0.1
AR_BURN_IN = 200


def sines(n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` sums of 3 sinusoids (frequency 1-8 cycles per 64 steps, amplitude U(0.5, 1.5),
    uniform phase) plus N(0, 0.1^2) noise, as (n, 64) float32 with unit variance per step."""
    t = np.arange(LENGTH)
    freq = rng.uniform(1.0, 8.0, (n, N_SINES, 1)) / LENGTH
    amp = rng.uniform(0.5, 1.5, (n, N_SINES, 1))
    phase = rng.uniform(0.0, 2 * np.pi, (n, N_SINES, 1))
    x = (amp * np.sin(2 * np.pi * freq * t + phase)).sum(axis=1)
    x += SINE_NOISE * rng.standard_normal((n, LENGTH))
    var = N_SINES * (1.5**3 - 0.5**3) / 3 / 2 + SINE_NOISE**2  # E[amp^2] / 2 per sinusoid
    return (x / np.sqrt(var)).astype(np.float32)


def ar2_variance(phi1: np.ndarray, phi2: np.ndarray) -> np.ndarray:
    """Stationary variance of AR(2) with unit innovation variance (Box & Jenkins eq. 3.2.27):
    ``(1 - phi2) / ((1 + phi2) ((1 - phi2)^2 - phi1^2))``."""
    return (1 - phi2) / ((1 + phi2) * ((1 - phi2) ** 2 - phi1**2))


def ar2(n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` stationary AR(2) sequences, roots of modulus U(0.7, 0.95) at angle U(0.05, 0.5) pi,
    each divided by its stationary std, as (n, 64) float32."""
    r = rng.uniform(0.7, 0.95, n)
    theta = np.pi * rng.uniform(0.05, 0.5, n)
    phi1, phi2 = 2 * r * np.cos(theta), -(r**2)
    e = rng.standard_normal((n, AR_BURN_IN + LENGTH))
    x = np.zeros((n, AR_BURN_IN + LENGTH))
    for t in range(2, AR_BURN_IN + LENGTH):
        x[:, t] = phi1 * x[:, t - 1] + phi2 * x[:, t - 2] + e[:, t]
    return (x[:, AR_BURN_IN:] / np.sqrt(ar2_variance(phi1, phi2))[:, None]).astype(np.float32)


def signal_datasets() -> list[Dataset]:
    """The built-in 1-D signal sets (generated: each split draws from its own seed stream)."""
    return [
        Dataset(name=name, kind="vector", shape=(LENGTH,), licence=SIGNAL_LICENCE,
                loader=generated_loader(fn, SIGNAL_DEFAULT_N), finite=False,
                splits=("train", "val", "test"),
                description=f"{desc}; 1-D signal of length {LENGTH}; train/val/test drawn from "
                "separate seed streams (default 10 000 / 2 000 / 2 000)")
        for name, fn, desc in (
            ("sines", sines, "sums of 3 random sinusoids plus white noise"),
            ("ar2", ar2, "stationary AR(2) processes with random damped-oscillation roots"))
    ]
