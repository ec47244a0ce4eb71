"""The demo's pretrained "base model": a tiny Qwen2 taught the easy arithmetic problems only, cached on disk.

HPT, SFT, GRPO and SFT->GRPO must all start from the same base, and the paper's motivating base solves some easy
problems and almost none of the hard ones, although it has the skills a hard problem needs. A base with that profile is
made here by next-token SFT (loss on the completion only) on two kinds of examples, both built from easy problems of
the training split, each asked with a fresh random filler:

- an easy problem answered in full: `37+8=kq` -> `37+8=45\n\boxed{45}<eos>`;
- a line completion (`line_completion_fraction` of the examples): the prompt is an easy question, and the completion
  is given up to a second line that carries the first line's result on, `37+8=45\n45-19=`; the target is its value
  and the box, `26\n\boxed{26}<eos>`. So the base computes a line whose operands are in its own completion as well
  as one whose operands are in the question, but it is never shown a question with two operations, and never writes a
  second line itself.

The second kind is what makes demonstrations teach and not overwrite: every token of a hard demonstration is then
either an easy first line or a second line the base can already complete, and what SFT has to add is writing the
second line's start (`45-19=`, copying the operator and operand from the question), a behaviour the model can
represent but does not sample. Without it (the previous built-in task), SFT on two-step demonstrations broke the easy
skill (easy 0.43 -> 0.14) and taught no hard problem.

The model is saved with `save_pretrained` so it loads like any Hub checkpoint. The folder name carries a hash of
every setting that changes the weights, so a second call with the same settings loads the cached base instead of
training again, and different settings never share a folder.

The base with the default settings ships with the package (`pretrained_base/`, 1 MB, made by this module's
pretraining; the rearrangement task's, with the same settings, in `pretrained_base_rearrange/`): a matrix product
rounds differently on another CPU or with other library builds, and over hundreds of steps that moves the stop step and
every figure after it. The same code stopped at step 475 on the machine of the first comparison and at step 550 on an
AVX2 machine a few days later (which of the CPU and the library versions made the difference was not isolated). With
the shipped base every machine starts the demo and the comparison from the same weights, without the minutes of
pretraining; `use_shipped=False` pretrains it here instead.
"""

import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ..rng import private_rng
from .arithmetic_task import (
    ARITHMETIC,
    EASY_DIFFICULTY,
    VALIDATION_SPLIT,
    TaskSpec,
    evaluate_accuracy,
    generate_problems,
    problems_to_dataset,
    prompt_ids,
)
from .lookup_task import LookupTask
from .rearrange_task import RearrangeTask
from .tiny_model import build_char_tokenizer, build_tiny_qwen2


logger = logging.getLogger(__name__)

# Bump when the training recipe changes in a way the settings do not capture, so stale caches are not reused.
_CACHE_VERSION = 3
_SETTINGS_FILE = "base_model_settings.json"
# The bases with the default settings, pretrained once and shipped (see the module docstring): the arithmetic task's
# (the demo's) and the rearrangement task's.
SHIPPED_BASE = Path(__file__).with_name("pretrained_base")
SHIPPED_BASES = (SHIPPED_BASE, Path(__file__).with_name("pretrained_base_rearrange"))

# Four narrow layers learned two-digit addition in fewer CPU-seconds than two wider ones: after 600 steps (~85 s on
# one core) 64 x 4 was at 54% easy accuracy where 128 x 2 (~110 s) was below 10%, both with the same seed and data.
DEFAULT_MODEL_KWARGS = {
    "hidden_size": 64,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 256,
}


def base_model_settings(
    seed: int = 0,
    task: "TaskSpec | LookupTask | RearrangeTask" = ARITHMETIC,
    line_completion_fraction: float = 0.3,
    num_steps: int = 1000,
    schedule_steps: int = 1500,
    batch_size: int = 64,
    learning_rate: float = 3e-3,
    warmup_steps: int = 30,
    target_accuracy: float | None = 0.6,
    eval_every: int = 25,
    num_validation: int = 128,
    model_kwargs: dict | None = None,
) -> dict:
    """
    The settings that determine the base model's weights, with defaults filled in: the keyword arguments of
    [`get_base_model`] and [`base_model_path`], and the cache key.

    Args:
        seed (`int`, *optional*, defaults to `0`):
            Seed of the initial weights and of the training examples.
        task ([`~hpt_trl.builtin_task.arithmetic_task.ChainTask`], *optional*, defaults to `ARITHMETIC`):
            The task whose easy problems (and line completions) the base is pretrained on.
        line_completion_fraction (`float`, *optional*, defaults to `0.3`):
            Share of line-completion examples (see the module docstring); the rest are easy problems in full.
        num_steps (`int`, *optional*, defaults to `1000`):
            Optimizer steps.
        schedule_steps (`int`, *optional*, defaults to `1500`):
            Length of the cosine schedule; stopping before its end (`num_steps < schedule_steps`) leaves the base
            partly trained, with room for RL to improve the easy problems.
        batch_size (`int`, *optional*, defaults to `64`):
            Examples per step.
        learning_rate (`float`, *optional*, defaults to `3e-3`):
            Peak learning rate.
        warmup_steps (`int`, *optional*, defaults to `30`):
            Linear warmup steps.
        target_accuracy (`float` or `None`, *optional*, defaults to `0.6`):
            Stop as soon as greedy accuracy on easy validation problems reaches this. `None` trains for all
            `num_steps`.
        eval_every (`int`, *optional*, defaults to `25`):
            Steps between validation checks (with `target_accuracy` only).
        num_validation (`int`, *optional*, defaults to `128`):
            Validation problems (validation split) of the stop rule.
        model_kwargs (`dict` or `None`, *optional*, defaults to `None`):
            Overrides of [`DEFAULT_MODEL_KWARGS`], passed to [`~hpt_trl.builtin_task.tiny_model.build_tiny_qwen2`].
    """
    if not 0.0 <= line_completion_fraction <= 1.0:
        raise ValueError(f"line_completion_fraction must be in [0, 1], got {line_completion_fraction}")
    if num_steps > schedule_steps:
        raise ValueError(f"num_steps ({num_steps}) must not exceed schedule_steps ({schedule_steps})")
    return {
        "cache_version": _CACHE_VERSION,
        "seed": seed,
        "task": dataclasses.asdict(task),
        "line_completion_fraction": line_completion_fraction,
        "num_steps": num_steps,
        "schedule_steps": schedule_steps,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "warmup_steps": warmup_steps,
        "target_accuracy": target_accuracy,
        "eval_every": eval_every,
        "num_validation": num_validation,
        "model_kwargs": {**DEFAULT_MODEL_KWARGS, **(model_kwargs or {})},
    }


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    """
    Run the block on one torch thread, whatever the machine has, and restore the count afterwards. A matrix product
    summed in another order (as a different thread count splits it) moves the weights by rounding, which compounds
    over the steps: it moved the stop rule's step from 475 (one thread) to 525 (two). At this model size a second
    thread saved little time.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def task_from_settings(task: dict) -> TaskSpec | LookupTask | RearrangeTask:
    """The task of a settings dict (`dataclasses.asdict` of it): the task type whose fields those are."""
    for task_type in (TaskSpec, LookupTask, RearrangeTask):
        if set(task) == {field.name for field in dataclasses.fields(task_type)}:
            return task_type(**task)
    raise ValueError(f"no built-in task has the fields {sorted(task)}")


def _cache_path(cache_dir: str | Path, settings: dict) -> Path:
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode("utf-8")).hexdigest()[:16]
    return Path(cache_dir) / f"base-{key}"


def base_model_path(cache_dir: str | Path, **kwargs) -> Path:
    """
    The cache folder of the base model with these settings (the keyword arguments of [`base_model_settings`]), whether
    or not it has been trained yet.
    """
    return _cache_path(cache_dir, base_model_settings(**kwargs))


def _encode(
    tokenizer: PreTrainedTokenizerBase, question: str, completion_prefix: str, target: str
) -> tuple[list[int], int]:
    """Token ids of prompt + completion prefix + target + EOS, and where the target (the part with a loss) starts."""
    # The prompt ids `evaluate_accuracy` generates from, so the base is trained on exactly what it is asked.
    prompt = prompt_ids(tokenizer, [{"role": "user", "content": question}])
    prefix = tokenizer(completion_prefix, add_special_tokens=False)["input_ids"] if completion_prefix else []
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"]
    return prompt + prefix + target_ids + [tokenizer.eos_token_id], len(prompt) + len(prefix)


def pretraining_examples(settings: dict, num_examples: int) -> list[tuple[str, str, str]]:
    """
    The base model's pretraining examples as `(question, completion_prefix, target)`, deterministic for the settings'
    seed: easy training-split problems in full, and line completions (see the module docstring), each with a fresh
    filler.
    """
    task = task_from_settings(settings["task"])
    rng = random.Random(f"pretraining-{settings['seed']}")
    examples = []
    while len(examples) < num_examples:
        example = task.pretraining_example(rng, line_completion=rng.random() < settings["line_completion_fraction"])
        if example is not None:
            examples.append(example)
    return examples


def _collate(batch: list[tuple[list[int], int]], pad_token_id: int) -> dict[str, torch.Tensor]:
    length = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), length), dtype=torch.long)
    labels = torch.full((len(batch), length), -100, dtype=torch.long)
    for row, (ids, completion_start) in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
        # Loss on the completion only: the prompt is given at generation time, so fitting it would spend capacity
        # the tiny model needs for the arithmetic.
        labels[row, completion_start : len(ids)] = input_ids[row, completion_start : len(ids)]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def _pretrain(settings: dict, output_dir: Path, show_progress: bool = True) -> dict:
    """Train the base model described by `settings` and save it with its tokenizer to `output_dir`."""
    start = time.perf_counter()
    tokenizer = build_char_tokenizer()
    model = build_tiny_qwen2(tokenizer, seed=settings["seed"], **settings["model_kwargs"])
    num_steps, batch_size = settings["num_steps"], settings["batch_size"]
    target_accuracy = settings["target_accuracy"]
    num_validation = settings["num_validation"] if target_accuracy is not None else 0
    # Fresh examples every step, from the training split only: the ~1,200 distinct easy training problems are each
    # seen dozens of times, but each time with another filler, so the model learns to find the operands rather than
    # to recall a prompt. The stop rule's problems come from the validation split (the held-out split stays
    # untouched for reporting).
    validation = problems_to_dataset(
        generate_problems(
            num_validation,
            EASY_DIFFICULTY,
            seed=settings["seed"],
            split=VALIDATION_SPLIT,
            task=task_from_settings(settings["task"]),
        )
    )
    examples = [_encode(tokenizer, *example) for example in pretraining_examples(settings, num_steps * batch_size)]

    optimizer = torch.optim.AdamW(model.parameters(), lr=settings["learning_rate"], weight_decay=0.0)
    warmup, schedule_steps = settings["warmup_steps"], settings["schedule_steps"]

    def lr_lambda(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, schedule_steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    model.train()
    losses, validation_accuracy, steps_done = [], None, 0
    with _one_torch_thread(), private_rng(settings["seed"]):
        progress = tqdm(range(num_steps), desc="Pretraining base model", disable=not show_progress)
        for step in progress:
            batch = _collate(examples[step * batch_size : (step + 1) * batch_size], tokenizer.pad_token_id)
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            steps_done = step + 1
            if target_accuracy is not None and steps_done % settings["eval_every"] == 0:
                validation_accuracy = evaluate_accuracy(model, tokenizer, validation).accuracy
            if steps_done % 10 == 0 or steps_done == num_steps:
                postfix = {"loss": f"{sum(losses[-10:]) / len(losses[-10:]):.3f}"}
                if validation_accuracy is not None:
                    postfix["val_acc"] = f"{validation_accuracy:.2f}"
                progress.set_postfix(postfix)
            if validation_accuracy is not None and validation_accuracy >= target_accuracy:
                progress.close()
                message = (
                    f"Base model pretraining stopped early, as intended, at step {steps_done} of {num_steps}: "
                    f"validation accuracy {validation_accuracy:.2f} reached the target {target_accuracy}."
                )
                if show_progress:
                    tqdm.write(message)
                logger.info(message)
                break

    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return {
        "train_seconds": round(time.perf_counter() - start, 1),
        "steps_done": steps_done,
        "final_loss": round(sum(losses[-10:]) / max(1, len(losses[-10:])), 4),
        "validation_accuracy": validation_accuracy,
    }


def shipped_base_settings(folder: Path = SHIPPED_BASE) -> dict:
    """The settings a shipped base (a folder of [`SHIPPED_BASES`]) was pretrained with (the keys of its settings)."""
    recorded = json.loads((folder / _SETTINGS_FILE).read_text())
    return {key: recorded[key] for key in base_model_settings() if key in recorded}


def get_base_model(cache_dir: str | Path, *, show_progress: bool = True, use_shipped: bool = True, **settings) -> Path:
    """
    Return the folder of the base model for these settings, pretraining it first unless it is already cached.

    The base is [`~hpt_trl.builtin_task.tiny_model.build_tiny_qwen2`] trained with plain next-token SFT on batches of
    fresh pretraining examples (see the module docstring), loss on the completion's target and EOS, AdamW with linear
    warmup and cosine decay over `schedule_steps`, on one CPU thread. Training stops early, at the first check where
    greedy accuracy on `num_validation` easy validation problems reaches `target_accuracy`: when the model starts to
    get carries right varies with the seed, and the stop rule gives every seed the same profile, partial skill on easy
    problems with room for RL to improve. Hard problems are never trained on; the base answers them with one line
    and a box, right only by chance.

    With the defaults (measured on one thread of a 2-core CPU, the other core busy; 400 held-out problems per level),
    seeds 0, 1, 2 stopped after 475, 550, 400 steps (106-138 s) and solve 70%, 62%, 67% of easy and 1.0%, 1.8%, 3.3% of
    hard problems (greedy). The shipped base (seed 0, pretrained on another 2-core machine, AVX2) stopped after 550
    steps (195 s) and solves 63.5% of easy and 2.5% of hard problems.

    Args:
        cache_dir (`str` or `Path`):
            Folder holding cached base models, one sub-folder `base-<hash of the settings>` each.
        **settings:
            The keyword arguments of [`base_model_settings`], which documents them; a setting left out takes its
            default there.
        show_progress (`bool`, *optional*, defaults to `True`):
            Show a tqdm progress bar while pretraining. Not part of the cache key.
        use_shipped (`bool`, *optional*, defaults to `True`):
            Return a shipped base (of [`SHIPPED_BASES`]) when the settings are the ones it was pretrained with,
            instead of pretraining on this machine (whose rounding gives other weights).

    Returns:
        `Path`: a folder with the model and tokenizer, loadable with `from_pretrained` (or [`load_base_model`]) and
        usable as a trainer's model id. Its `base_model_settings.json` holds the settings, the pretraining time, the
        number of steps run and the last validation accuracy.
    """
    settings = base_model_settings(**settings)
    for folder in SHIPPED_BASES if use_shipped else ():
        if settings == shipped_base_settings(folder):
            logger.info("Using the shipped base model %s", folder)
            return folder
    path = _cache_path(cache_dir, settings)
    if (path / _SETTINGS_FILE).is_file():
        logger.info("Loading cached base model from %s", path)
        return path

    logger.info("Pretraining base model into %s", path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Train into a temporary sibling and rename it into place, so an interrupted run never leaves a folder that
    # looks cached, and two processes racing on the same settings both end with a complete folder.
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    tmp_dir.chmod(0o755)  # mkdtemp's 0o700 would hide a shared cache from other users
    try:
        stats = _pretrain(settings, tmp_dir, show_progress=show_progress)
        (tmp_dir / _SETTINGS_FILE).write_text(json.dumps({**settings, **stats}, indent=2, sort_keys=True) + "\n")
        try:
            os.rename(tmp_dir, path)
        except OSError:
            if not (path / _SETTINGS_FILE).is_file():
                raise
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return path


def load_base_model(path: str | Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a base model folder from [`get_base_model`] as `(model, tokenizer)`."""
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
