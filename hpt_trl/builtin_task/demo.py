"""
The offline demo: the built-in tasks and base models behind `train.py`'s default recipe, and what it records
(held-out accuracy during training, the training-dynamics figure drawn from the run's `metrics.jsonl`).

A recipe selects a task with `dataset_name: builtin:arithmetic` (the demo's), `builtin:rearrange` (the second task of
the comparison, another skill) or `builtin:lookup` (a candidate whose base never learned its skill), and its pretrained
base with `model_name_or_path: <dataset name>-base`; everything else goes through the same `main()` as the paper
recipes.
"""

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from transformers import TrainerCallback

from ..evaluation.callback import log_at_step
from .arithmetic_task import (
    ARITHMETIC,
    EASY_DIFFICULTY,
    HARD_DIFFICULTY,
    HELD_OUT_SPLIT,
    VALIDATION_SPLIT,
    evaluate_accuracy,
    make_arithmetic_datasets,
)
from .base_model import get_base_model
from .lookup_task import LOOKUP
from .rearrange_task import REARRANGE


logger = logging.getLogger(__name__)

# The built-in tasks by dataset name, and the base model of each: `<dataset name>-base`.
BUILTIN_TASKS = {"builtin:arithmetic": ARITHMETIC, "builtin:rearrange": REARRANGE, "builtin:lookup": LOOKUP}
BUILTIN_MODELS = {f"{name}-base": name for name in BUILTIN_TASKS}
# The demo's.
BUILTIN_DATASET = "builtin:arithmetic"
BUILTIN_MODEL = "builtin:arithmetic-base"


@dataclass
class ArithmeticTaskArguments:
    r"""
    Options of the built-in tasks, used when `dataset_name` is one of `BUILTIN_TASKS` (ignored otherwise).

    Parameters:
        task_num_train (`int`, *optional*, defaults to `4000`):
            Training problems.
        task_num_eval (`int`, *optional*, defaults to `200`):
            Held-out problems (a fixed set, the same for every seed and method).
        task_hard_fraction (`float`, *optional*, defaults to `0.5`):
            Share of hard (two-step) problems in both sets; the rest are easy (one step).
        task_eval_split (`str`, *optional*, defaults to `"held_out"`):
            Split the accuracy during and after training is measured on: `"held_out"` to report, `"validation"` to
            choose settings on (as `benchmarks/compare_methods.py` does).
        base_model_cache (`str`, *optional*, defaults to `".cache/hpt-trl"`):
            Folder where the pretrained base model is cached, keyed by its settings.
        base_model_seed (`int`, *optional*, defaults to `0`):
            Seed of the base model. Kept apart from the training seed, so every method and seed starts from one base.
        base_model_max_steps (`int`, *optional*, defaults to `1000`):
            Pretraining steps of the base model (of a 1500-step cosine schedule).
        base_model_target_accuracy (`float`, *optional*, defaults to `0.6`):
            Stop pretraining once the base's greedy accuracy on easy validation problems reaches this; `-1` trains
            for exactly `base_model_max_steps`.
        base_model_shipped (`bool`, *optional*, defaults to `True`):
            Use the base model shipped with the package when the base settings are its own (the defaults), so every
            machine starts from the same weights; `False` pretrains it on this machine (a few minutes; another CPU
            rounds otherwise and gives another base).
        heldout_eval_steps (`int`, *optional*, defaults to `10`):
            Greedy held-out accuracy is measured every this many steps (and before and after training); `0` only
            before and after.
        task_num_threads (`int`, *optional*, defaults to `2`):
            CPU threads of torch for a run on the built-in task; `0` leaves torch's default (one per core). A matrix
            product split over another number of threads can round differently, and over hundreds of steps that
            moves the figures, so the count is fixed rather than the machine's: a run gives the same result on a
            laptop and on a 2-core CI machine. Two threads ran the demo 1.25x faster than one on a 2-core machine and
            printed the same line (its weights were bit-identical after 10 steps); runs side by side (the benchmark)
            take one each.
        plot (`bool`, *optional*, defaults to `True`):
            Write `training_dynamics.png` in `output_dir` at the end (needs matplotlib).
    """

    task_num_train: int = field(default=4000, metadata={"help": "Training problems of the built-in task."})
    task_num_eval: int = field(default=200, metadata={"help": "Held-out problems of the built-in task."})
    task_hard_fraction: float = field(default=0.5, metadata={"help": "Share of hard (two-step) problems."})
    task_eval_split: str = field(
        default="held_out", metadata={"help": "Split to measure accuracy on.", "choices": ["held_out", "validation"]}
    )
    base_model_cache: str = field(default=".cache/hpt-trl", metadata={"help": "Cache folder of the base model."})
    base_model_seed: int = field(default=0, metadata={"help": "Seed of the built-in base model."})
    base_model_max_steps: int = field(default=1000, metadata={"help": "Pretraining steps of the base model."})
    base_model_target_accuracy: float = field(
        default=0.6, metadata={"help": "Stop pretraining at this validation accuracy (-1: run all steps)."}
    )
    base_model_shipped: bool = field(
        default=True, metadata={"help": "Use the shipped base model (false: pretrain it on this machine)."}
    )
    heldout_eval_steps: int = field(default=10, metadata={"help": "Held-out accuracy every N steps (0: ends only)."})
    task_num_threads: int = field(default=2, metadata={"help": "torch CPU threads (0: torch's default)."})
    plot: bool = field(default=True, metadata={"help": "Write training_dynamics.png at the end."})

    def __post_init__(self):
        if not 0.0 <= self.task_hard_fraction <= 1.0:
            raise ValueError(f"task_hard_fraction must be in [0, 1], got {self.task_hard_fraction}.")
        if self.task_eval_split not in (HELD_OUT_SPLIT, VALIDATION_SPLIT):
            raise ValueError(f"task_eval_split must be 'held_out' or 'validation', got {self.task_eval_split!r}.")
        for name in ("task_num_train", "task_num_eval"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.task_num_threads < 0:
            raise ValueError(f"task_num_threads must be >= 0 (0: torch's default), got {self.task_num_threads}.")
        if self.heldout_eval_steps < 0:
            raise ValueError(f"heldout_eval_steps must be >= 0, got {self.heldout_eval_steps}.")

    def datasets(self, seed: int, dataset_name: str = BUILTIN_DATASET):
        """The training and evaluation sets of the built-in task `dataset_name`."""
        mixture = {EASY_DIFFICULTY: 1.0 - self.task_hard_fraction, HARD_DIFFICULTY: self.task_hard_fraction}
        mixture = {level: share for level, share in mixture.items() if share > 0}
        return make_arithmetic_datasets(
            self.task_num_train,
            self.task_num_eval,
            mixture,
            seed=seed,
            eval_split=self.task_eval_split,
            task=BUILTIN_TASKS[dataset_name],
        )

    def base_model(self, dataset_name: str = BUILTIN_DATASET) -> str:
        """The folder of the base model of the built-in task `dataset_name` (pretrained first unless cached)."""
        target = None if self.base_model_target_accuracy < 0 else self.base_model_target_accuracy
        path = get_base_model(
            self.base_model_cache,
            seed=self.base_model_seed,
            task=BUILTIN_TASKS[dataset_name],
            num_steps=self.base_model_max_steps,
            target_accuracy=target,
            use_shipped=self.base_model_shipped,
        )
        return str(path)


def heldout_accuracy(model, tokenizer, eval_dataset) -> dict[str, float]:
    """Greedy held-out accuracy, overall and per difficulty level (`easy`, `hard`)."""
    result = evaluate_accuracy(model, tokenizer, eval_dataset)
    names = {EASY_DIFFICULTY: "easy", HARD_DIFFICULTY: "hard"}
    by_level = result.accuracy_by(list(eval_dataset["difficulty"]))
    return {"heldout/accuracy": result.accuracy} | {
        f"heldout/accuracy_{names.get(level, level)}": value for level, value in sorted(by_level.items())
    }


class HeldOutAccuracyCallback(TrainerCallback):
    """Measures greedy held-out accuracy every `every` steps and at the end, and logs it with the training metrics."""

    def __init__(self, trainer, eval_dataset, every: int):
        self.trainer, self.eval_dataset, self.every = trainer, eval_dataset, every
        self.last_step = None

    def _measure(self, args, state, control):
        if self.last_step == state.global_step:
            return
        self.last_step = state.global_step
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        metrics = heldout_accuracy(model, self.trainer.processing_class, self.eval_dataset)
        log_at_step(self.trainer, args, state, control, metrics)

    def on_step_end(self, args, state, control, **kwargs):
        if self.every and state.global_step % self.every == 0 and state.is_world_process_zero:
            self._measure(args, state, control)

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self._measure(args, state, control)


PLOTTED = (
    ("heldout/accuracy", "held-out accuracy (greedy)"),
    ("hpt/sft_prompt_ratio", "SFT prompt ratio (offline data ratio)"),
    ("completions/mean_length", "mean response length (tokens)"),
    ("entropy", "policy entropy (RL tokens)"),
)


def plot_training_dynamics(metrics_path: str | Path, output_path: str | Path, title: str = "") -> Path | None:
    """Draw the paper's training-dynamics panels from a `metrics.jsonl`; returns the PNG path, or None without it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no training_dynamics.png (pip install 'hpt-trl[plot]').")
        return None
    records = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    figure, axes = plt.subplots(1, len(PLOTTED), figsize=(4 * len(PLOTTED), 3.2))
    for axis, (key, label) in zip(axes, PLOTTED, strict=True):
        # One point per step (the last logged), in step order: a metrics file from before resumes dropped the steps
        # a resumed run trained again could hold a step twice, which drew a line back in time.
        points = sorted({r["step"]: r[key] for r in records if r.get(key) is not None}.items())
        if points:
            steps, values = zip(*points, strict=True)
            axis.plot(steps, values, marker="o" if len(points) < 30 else None, markersize=3)
        axis.set_title(label, fontsize=10)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    output_path = Path(output_path)
    figure.savefig(output_path, dpi=110)
    plt.close(figure)
    return output_path
