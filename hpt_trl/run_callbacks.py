"""
Callbacks `train.py` adds to every run, the paper recipes' as well as the demo's: the metrics file (`metrics.jsonl` in
`output_dir`) and a console output of a few key metrics in place of transformers' full metrics dict at every log.
"""

import json
from pathlib import Path

from transformers import ProgressCallback, TrainerCallback


class MetricsFileCallback(TrainerCallback):
    """
    Appends every logged dict, with its step, as one JSON line of a file (`metrics.jsonl` in `output_dir`).

    `step_offset` shifts the steps of a second training stage (SFT->GRPO) onto the same axis as the first.
    `resume_step` is the (stage's) step the run starts from (train.py passes it): before its first line, the file drops
    what a previous attempt logged after that step (all of it when a run starts from step 0 of the first stage), since
    those steps are trained again. A resumed run so logs each step once, and the file stays in step order. `None`
    (the default) appends to the file as it is.
    """

    def __init__(self, path: str | Path, step_offset: int = 0, resume_step: int | None = None):
        self.path, self.step_offset, self.resume_step = Path(path), step_offset, resume_step
        self._trimmed = resume_step is None

    def _trim(self) -> None:
        self._trimmed = True
        if not self.path.is_file():
            return
        limit = self.step_offset + self.resume_step
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                step = json.loads(line)["step"]
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line cut off by a kill
            if step < limit or (step == limit and limit > 0):
                kept.append(line + "\n")
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(kept))
        tmp.replace(self.path)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not self._trimmed:
                self._trim()
            with self.path.open("a") as file:
                file.write(json.dumps({"step": self.step_offset + state.global_step, **logs}) + "\n")


class CompactProgressCallback(ProgressCallback):
    """
    transformers' progress bar without the full metrics dict it writes under the bar at every log (30-odd keys a
    step): a few key metrics go to the bar's postfix instead. Every metric still goes to `report_to` and, in train.py,
    to `metrics.jsonl`.
    """

    POSTFIX = (
        ("loss", "loss"),
        ("reward", "reward"),
        ("hpt/sft_prompt_ratio", "sft"),
        ("heldout/accuracy", "heldout"),
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.postfix = {}

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and self.training_bar is not None and logs:
            for key, name in self.POSTFIX:
                if isinstance(logs.get(key), (int, float)):
                    self.postfix[name] = f"{logs[key]:.4g}"
            if self.postfix:
                self.training_bar.set_postfix(self.postfix, refresh=False)


class CompactPrinterCallback(TrainerCallback):
    """
    With `disable_tqdm`, transformers' `PrinterCallback` prints the full metrics dict at every log; this prints one
    short line with the metrics of [`CompactProgressCallback`] instead.
    """

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_local_process_zero and logs:
            parts = [
                f"{name}={logs[key]:.4g}"
                for key, name in CompactProgressCallback.POSTFIX
                if isinstance(logs.get(key), (int, float))
            ]
            if parts:
                print(f"step {state.global_step}/{state.max_steps}: " + ", ".join(parts))
