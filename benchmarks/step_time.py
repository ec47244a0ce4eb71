"""
Step time of HPTTrainer against GRPOTrainer on the tiny local model, same data, seed and config.

    OMP_NUM_THREADS=1 python benchmarks/step_time.py --rounds 3 --steps 6

Runs GRPOTrainer, HPTTrainer with gamma=-1 (GRPO through HPT's code path) and HPTTrainer with gamma=0, with a reward
that makes every rollout of half the prompts wrong (so gamma=0 gates half the prompts to SFT). Configurations are
interleaved round by round so machine noise hits them alike; the first step of each run (warm-up) is dropped. Prints
the mean optimizer-step time (TRL's `step_time`: generation, scoring and the update) and its ratio to GRPO's.
"""

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from datasets import Dataset
from transformers.utils import logging as hf_logging
from trl import GRPOConfig, GRPOTrainer

from hpt_trl import HPTConfig, HPTTrainer
from hpt_trl.builtin_task.tiny_model import save_tiny_model


def half_wrong(completions, pid, **kwargs):
    """Odd prompts: every rollout wrong (gated at gamma=0). Even prompts: reward spread by length parity."""
    texts = [c[0]["content"] for c in completions]
    return [0.0 if p % 2 else float(len(t) % 2) for p, t in zip(pid, texts, strict=True)]


def make_dataset(num_prompts: int) -> Dataset:
    return Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": f"Compute {pid}+{pid}."}] for pid in range(num_prompts)],
            "demonstration": [
                f"{pid}+{pid}={2 * pid}. The answer is \\boxed{{{2 * pid}}}." for pid in range(num_prompts)
            ],
            "pid": list(range(num_prompts)),
        }
    )


def run(kind: str, model_dir: str, steps: int, seed: int) -> list[float]:
    common = dict(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=16,
        gradient_accumulation_steps=2,
        num_generations=8,
        max_completion_length=48,
        max_steps=steps,
        learning_rate=1e-4,
        loss_type="dr_grpo",
        scale_rewards="none",
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        seed=seed,
        disable_tqdm=True,
    )
    dataset = make_dataset(64)
    if kind == "GRPO":
        trainer = GRPOTrainer(model_dir, half_wrong, args=GRPOConfig(**common), train_dataset=dataset)
    else:
        gamma = {"HPT gamma=-1": -1, "HPT gamma=0": 0}[kind]
        trainer = HPTTrainer(model_dir, half_wrong, args=HPTConfig(**common, gamma=gamma), train_dataset=dataset)
    trainer.train()
    return [log["step_time"] for log in trainer.state.log_history if "step_time" in log][1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--hidden_size", type=int, default=64)
    args = parser.parse_args()
    hf_logging.set_verbosity_error()

    model_dir = str(save_tiny_model(Path(tempfile.mkdtemp()) / "model", hidden_size=args.hidden_size))
    kinds = ["GRPO", "HPT gamma=-1", "HPT gamma=0"]
    times = {kind: [] for kind in kinds}
    for round_index in range(args.rounds):
        for kind in kinds:
            times[kind] += run(kind, model_dir, args.steps, seed=round_index)
            print(f"round {round_index + 1}/{args.rounds} {kind}: done", file=sys.stderr)

    grpo = statistics.mean(times["GRPO"])
    print("\n| trainer | steps | mean step time (s) | stdev (s) | ratio to GRPO |\n| --- | --- | --- | --- | --- |")
    for kind in kinds:
        mean, stdev = statistics.mean(times[kind]), statistics.stdev(times[kind])
        print(f"| {kind} | {len(times[kind])} | {mean:.3f} | {stdev:.3f} | {mean / grpo:.2f} |")


if __name__ == "__main__":
    main()
