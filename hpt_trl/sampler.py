"""A prompt sampler whose order depends only on the seed and the epoch, so a resumed run sees the same prompts."""

from trl.trainer.utils import RepeatSampler


class EpochSeededRepeatSampler(RepeatSampler):
    """
    TRL's [`~trl.trainer.utils.RepeatSampler`], with each epoch's permutation drawn from `seed + epoch`.

    `RepeatSampler` draws every epoch's permutation from one generator whose state lives only in memory. A run resumed
    at an epoch boundary starts a fresh generator and so replays a different prompt order than the run it continues
    (mid-epoch resumes are unaffected: the Trainer skips batches of the same permutation). The Trainer calls
    `set_epoch` before each epoch, so reseeding there makes the order a function of `(seed, epoch)` alone. The first
    epoch is the same as `RepeatSampler`'s.
    """

    @classmethod
    def like(cls, sampler: RepeatSampler) -> "EpochSeededRepeatSampler":
        return cls(
            data_source=sampler.data_source,
            mini_repeat_count=sampler.mini_repeat_count,
            batch_size=sampler.batch_size,
            repeat_count=sampler.repeat_count,
            shuffle=sampler.shuffle,
            seed=sampler.seed,
        )

    def set_epoch(self, epoch: int) -> None:
        if self.shuffle and self.seed is not None:
            self.generator.manual_seed(self.seed + epoch)
