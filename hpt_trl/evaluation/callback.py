"""A trainer callback that scores a small benchmark during training, with the transformers backend."""

import os

from transformers import TrainerCallback

from hpt_trl.prompts import render_prompt

from .backends import SamplingConfig, TransformersBackend
from .benchmarks import Problem, load_benchmark
from .grading import grade_completions
from .metrics import summarize_records


def log_at_step(trainer, args, state, control, metrics: dict) -> None:
    """
    Log metrics measured by a callback at the current step: into `state.log_history` and, with a trainer, to its
    `on_log` callbacks (the reporters).

    Not `trainer.log`: GRPOTrainer's `log` drains its buffered training metrics (rewards, lengths, `hpt/*`) into
    whatever it logs, which would move them out of the step's own log entry and into this one.
    """
    state.log_history.append({**metrics, "step": state.global_step})
    if trainer is not None:
        # The handler's on_log clears `control.should_log`: restore it, or this step's own training log is dropped.
        should_log = control.should_log
        trainer.callback_handler.on_log(args, state, control, logs=metrics)
        control.should_log = should_log


class BenchmarkCallback(TrainerCallback):
    """
    Every `eval_steps` optimizer steps (and/or at each evaluation), sample `n` responses for a few benchmark problems
    with the model being trained and log their avg@n, pass@n, mean length and truncated share.

    Generation runs on the main process only, on the unsharded model (single process or DDP; not FSDP/ZeRO-3). Use a
    few problems and a short `max_new_tokens`: it pauses training while it runs.

    Args:
        benchmark (`str` or `list[Problem]`):
            A benchmark name (see `hpt_trl.evaluation.BENCHMARKS`) or already loaded problems.
        eval_steps (`int`, *optional*):
            Run every `eval_steps` global steps; `None` runs only on `on_evaluate`.
        run_on_evaluate (`bool`, *optional*, defaults to `False`):
            Also run whenever the trainer evaluates.
        trainer (`transformers.Trainer`, *optional*):
            When given, metrics also go to the trainer's `on_log` callbacks (and so to every reporter, e.g. wandb);
            they are appended to `state.log_history` either way.
        limit (`int`, *optional*, defaults to `16`):
            Problems to evaluate (the first ones of the benchmark).
        n (`int`, *optional*, defaults to `4`):
            Samples per problem.
        temperature (`float`, *optional*, defaults to `0.6`):
            Sampling temperature.
        top_p (`float`, *optional*, defaults to `0.95`):
            Nucleus sampling.
        max_new_tokens (`int`, *optional*, defaults to `1024`):
            Response token limit.
        template (`str`, *optional*, defaults to `"chat"`):
            Prompt template, as in training.
        instruction (`str`, *optional*):
            Text appended to each problem.
        data_dir (`str`, *optional*):
            Folder of local benchmark files.
        path (`str`, *optional*):
            An explicit benchmark file.
        source (`str`, *optional*, defaults to `"auto"`):
            See `load_benchmark`.
        batch_size (`int`, *optional*, defaults to `8`):
            Problems per `generate` call.
        seed (`int`, *optional*, defaults to `0`):
            Sampling seed (the trainer's random state is left untouched).
        prefix (`str`, *optional*, defaults to `"benchmark"`):
            Metric name prefix: `<prefix>/<benchmark>/avg@<n>`.
    """

    def __init__(
        self,
        benchmark: "str | list[Problem]",
        eval_steps: int | None = None,
        run_on_evaluate: bool = False,
        trainer=None,
        limit: int | None = 16,
        n: int = 4,
        temperature: float = 0.6,
        top_p: float = 0.95,
        max_new_tokens: int = 1024,
        template: str = "chat",
        instruction: str | None = None,
        data_dir: "str | os.PathLike | None" = None,
        path: "str | os.PathLike | None" = None,
        source: str = "auto",
        batch_size: int = 8,
        seed: int = 0,
        prefix: str = "benchmark",
    ):
        if eval_steps is None and not run_on_evaluate:
            raise ValueError("BenchmarkCallback would never run: set `eval_steps` or `run_on_evaluate=True`.")
        if eval_steps is not None and eval_steps < 1:
            raise ValueError(f"`eval_steps` must be >= 1, got {eval_steps}.")
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
        if isinstance(benchmark, str):
            self.problems = load_benchmark(benchmark, path=path, data_dir=data_dir, source=source, limit=limit)
        else:
            self.problems = list(benchmark)[:limit] if limit is not None else list(benchmark)
            if not self.problems:
                raise ValueError("BenchmarkCallback got an empty list of problems.")
        self.name = self.problems[0].benchmark
        self.sampling = SamplingConfig(
            n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed
        )
        self.eval_steps = eval_steps
        self.run_on_evaluate = run_on_evaluate
        self.trainer = trainer
        self.template = template
        self.instruction = instruction
        self.batch_size = batch_size
        self.prefix = prefix
        self._last_step = None

    def score(self, model, tokenizer) -> dict[str, float]:
        """
        Sample, grade and summarize the problems with `model`.

        Args:
            model (`PreTrainedModel`):
                The model (left in the train/eval mode it was in).
            tokenizer (`PreTrainedTokenizerBase`):
                Its tokenizer.

        Returns:
            `dict[str, float]`: The metrics, keyed `<prefix>/<benchmark>/<metric>`.
        """
        backend = TransformersBackend(model, tokenizer=tokenizer)
        records = []
        for start in range(0, len(self.problems), self.batch_size):
            batch = self.problems[start : start + self.batch_size]
            prompt_ids = [render_prompt(p.prompt, tokenizer, self.template, self.instruction)[1] for p in batch]
            outputs = backend.generate(prompt_ids, self.sampling, seeds=[self.sampling.seed + start])
            for problem, generations in zip(batch, outputs):
                correct = [ok for ok, _ in grade_completions(problem, [g.text for g in generations])]
                records.append(
                    {
                        "n": len(generations),
                        "num_correct": sum(correct),
                        "response_lengths": [g.num_tokens for g in generations],
                        "truncated": [g.truncated for g in generations],
                    }
                )
        summary = summarize_records(records)
        n = self.sampling.n
        key = f"{self.prefix}/{self.name}"
        return {
            f"{key}/avg@{n}": summary["avg_at_n"],
            f"{key}/pass@{n}": summary["pass_at_k"][str(n)],
            f"{key}/mean_response_length": summary["mean_response_length"],
            f"{key}/truncated_rate": summary["truncated_rate"],
        }

    def _run(self, args, state, control, model, processing_class):
        if not state.is_world_process_zero or self._last_step == state.global_step:
            return
        if model is None or processing_class is None:
            raise ValueError("BenchmarkCallback needs the trainer's `model` and `processing_class` (tokenizer).")
        # A processor (vision models) wraps the tokenizer.
        tokenizer = getattr(processing_class, "tokenizer", processing_class)
        metrics = self.score(model, tokenizer)
        self._last_step = state.global_step
        log_at_step(self.trainer, args, state, control, metrics)

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if self.eval_steps is not None and state.global_step % self.eval_steps == 0:
            self._run(args, state, control, model, processing_class)

    def on_evaluate(self, args, state, control, model=None, processing_class=None, **kwargs):
        if self.run_on_evaluate:
            self._run(args, state, control, model, processing_class)
