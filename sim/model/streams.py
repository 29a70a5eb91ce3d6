"""Named random streams and batched samplers.

Every stochastic source in a run (a vCPU's think time, a guest's access mix, a device
model's service times, ...) draws from its own ``numpy`` generator, seeded with
``SeedSequence(entropy=seed, spawn_key=(crc32(stream name),))``. Streams are therefore
independent of each other and of the order in which the model creates them: adding a
source does not shift the numbers any other source sees.

Drawing numpy scalars one at a time costs about a microsecond each, as much as a SimPy
event, so samplers draw blocks of values and hand them out one by one.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from itertools import chain, repeat
from typing import Any

import numpy as np

BLOCK = 4096


def stream(seed: int, name: str) -> np.random.Generator:
    """The generator for the stream called ``name`` in a run seeded with ``seed``."""
    key = zlib.crc32(name.encode("utf-8"))
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(key,)))


def block_sampler(
    rng: np.random.Generator, draw: Callable[[np.random.Generator, int], Any]
) -> Callable[[], Any]:
    """A sampler handing out values from blocks drawn by ``draw(rng, n)``, one per call.

    Deterministic per stream: a block of ``BLOCK`` values is drawn when the previous one
    is used up (the first on the first call). The sampler is the ``__next__`` of a C
    iterator over the blocks, so a draw costs no Python frame: samplers are called
    several times per trap, and a Python ``__call__`` cost ten times the draw itself.
    """

    def blocks() -> Iterator[list[Any]]:
        while True:
            # tolist() turns numpy scalars into Python floats/ints: faster downstream.
            yield draw(rng, BLOCK).tolist()

    return chain.from_iterable(blocks()).__next__


def constant_sampler(value: float) -> Callable[[], float]:
    """A sampler that always returns ``value`` (no random stream needed)."""
    return repeat(value).__next__


def make_sampler(dist: Any, rng: np.random.Generator, empirical: list[float] | None = None) -> Any:
    """A zero-argument callable drawing ns values from a scenario distribution.

    ``dist`` is one of the ``sim.model.dists`` distribution models; ``empirical`` holds the
    values of an empirical distribution's CSV column.
    """
    kind = dist.dist
    if kind == "constant":
        return constant_sampler(float(dist.value_ns))
    if kind == "exponential":
        mean = float(dist.mean_ns)
        return block_sampler(rng, lambda r, n: r.exponential(mean, n))
    if kind == "uniform":
        low, high = float(dist.low_ns), float(dist.high_ns)
        return block_sampler(rng, lambda r, n: r.uniform(low, high, n))
    if kind == "lognormal":
        # Parameterised by its mean: E[X] = exp(mu + sigma^2 / 2).
        sigma = float(dist.sigma)
        mu = float(np.log(dist.mean_ns)) - sigma * sigma / 2
        return block_sampler(rng, lambda r, n: r.lognormal(mu, sigma, n))
    if kind == "gamma":
        shape = float(dist.shape)
        scale = float(dist.mean_ns) / shape
        return block_sampler(rng, lambda r, n: r.gamma(shape, scale, n))
    if kind == "empirical":
        if not empirical:
            raise ValueError("an empirical distribution needs its values")
        values = np.asarray(empirical, dtype=float)
        return block_sampler(rng, lambda r, n: r.choice(values, n))
    raise ValueError(f"unknown distribution {kind!r}")
