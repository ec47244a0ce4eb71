"""A private, seeded random stream for work done inside someone else's run (evaluation, building a model)."""

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def private_rng(seed: int) -> Iterator[None]:
    """
    Seed torch's generators for the block and restore them afterwards, so the caller's random stream does not move.

    `torch.random.fork_rng(devices=[])` with `torch.manual_seed` would restore the CPU generator only: `manual_seed`
    also reseeds every CUDA generator, so an evaluation inside a GPU training run would reset the trainer's CUDA
    stream to the evaluation seed at each call. Here every initialized CUDA device is forked too, and an uninitialized
    CUDA runtime is left alone (seeding it would queue a seed that applies when it starts).
    """
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.random.default_generator.manual_seed(seed)
        if devices:
            torch.cuda.manual_seed_all(seed)
        yield
