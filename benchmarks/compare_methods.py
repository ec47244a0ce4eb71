"""
HPT against the paper's baselines (SFT, GRPO, SFT->GRPO) on the built-in arithmetic task, over several seeds.

    OMP_NUM_THREADS=2 python benchmarks/compare_methods.py --seeds 0 1 2 --output_dir outputs/compare

Every method trains through `train.py`'s `main()` from `recipes/toy_hpt.yaml`, with the same base model, data, seed
and number of optimizer steps; only the gate and the demonstration's loss differ (SFT: gamma = n, GRPO: gamma = -1,
SFT->GRPO: SFT for half the steps then GRPO; the toolkit's variants: see `VARIANTS`). Each trained model is then scored on the fixed held-out set: greedy accuracy (overall, easy, hard)
and pass@k for k = 1, 4, 16 from 16 samples per problem at temperature 1 (unbiased estimator). Prints a markdown table
(mean and standard deviation over seeds) and saves `accuracy_vs_step.png` and `results.json` in `output_dir`.
Not part of CI: about 30-60 minutes on 2 CPU cores.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import train as train_script  # noqa: E402
from hpt_trl.builtin_task.arithmetic_task import evaluate_accuracy  # noqa: E402
from hpt_trl.data import METHODS  # noqa: E402


PASS_AT = (1, 4, 16)
# The unified estimator's other methods, as HPTConfig settings on top of `method: hpt` (recipes/toy_<name>.yaml).
TOOLKIT_VARIANTS = {
    "hpt_soft": {"gate_strategy": "soft"},
    "hpt_adaptive": {"gate_strategy": "adaptive"},
    "luffy": {"gate_strategy": "always", "demonstration_loss": "off_policy"},
    "srft": {"gate_strategy": "always", "demonstration_loss": "srft"},
}
# Each compared run: a train.py method and the HPTConfig settings that make it (the README's method table).
VARIANTS = {
    **{method: (method, []) for method in METHODS},
    **{
        name: ("hpt", [arg for key, value in settings.items() for arg in (f"--{key}", value)])
        for name, settings in TOOLKIT_VARIANTS.items()
    },
}


def run(variant: str, seed: int, output_dir: Path, extra: list[str]) -> dict:
    method, settings = VARIANTS[variant]
    parser = train_script.make_parser()
    script_args, training_args, model_args, task_args = parser.parse_args_and_config(
        args=["--config", str(ROOT / "recipes" / "toy_hpt.yaml"), "--method", method, "--seed", str(seed)]
        + ["--output_dir", str(output_dir), "--plot", "false", "--disable_tqdm", "true", *settings, *extra]
    )
    start = time.perf_counter()
    train_script.main(script_args, training_args, model_args, task_args)
    train_seconds = time.perf_counter() - start

    _, eval_dataset = task_args.datasets(seed=seed)
    model = AutoModelForCausalLM.from_pretrained(training_args.output_dir)
    tokenizer = AutoTokenizer.from_pretrained(training_args.output_dir)
    greedy = evaluate_accuracy(model, tokenizer, eval_dataset)
    sampled = evaluate_accuracy(model, tokenizer, eval_dataset, num_samples=max(PASS_AT), do_sample=True, seed=seed)
    by_level = greedy.accuracy_by(list(eval_dataset["difficulty"]))
    # From the metrics file rather than the trainer: a run that had finished already returns no trainer.
    records = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    curve = [(record["step"], record["heldout/accuracy"]) for record in records if "heldout/accuracy" in record]
    ratios = [record["hpt/sft_prompt_ratio"] for record in records if "hpt/sft_prompt_ratio" in record]
    return {
        "method": variant,
        "seed": seed,
        "greedy": greedy.accuracy,
        "greedy_easy": by_level.get(1),
        "greedy_hard": by_level.get(2),
        **{f"pass@{k}": sampled.pass_at_k(k) for k in PASS_AT},
        "train_seconds": train_seconds,
        "curve": curve,
        "mean_sft_prompt_ratio": statistics.mean(ratios) if ratios else None,
    }


def summarize(results: list[dict]) -> str:
    columns = ["greedy", "greedy_easy", "greedy_hard", *[f"pass@{k}" for k in PASS_AT], "train_seconds"]
    lines = [
        "| method | " + " | ".join(columns) + " |",
        "| --- | " + " | ".join("---" for _ in columns) + " |",
    ]
    for method in dict.fromkeys(r["method"] for r in results):
        rows = [r for r in results if r["method"] == method]
        cells = []
        for column in columns:
            values = [r[column] for r in rows if r[column] is not None]
            mean = statistics.mean(values)
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{mean:.1f} ± {spread:.1f}" if column == "train_seconds" else f"{mean:.3f} ± {spread:.3f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for method in dict.fromkeys(r["method"] for r in results):
        curves = [r["curve"] for r in results if r["method"] == method]
        steps = [step for step, _ in curves[0]]
        means = [statistics.mean(curve[i][1] for curve in curves) for i in range(len(steps))]
        axis.plot(steps, means, marker="o", markersize=3, label=method)
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("held-out greedy accuracy (mean over seeds)")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--output_dir", default="outputs/compare")
    parser.add_argument("extra", nargs="*", help="further train.py overrides, after --, e.g. -- --max_steps 100")
    args = parser.parse_args()
    hf_logging.set_verbosity_error()
    output_dir = Path(args.output_dir)
    results_path = output_dir / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else []  # resume a stopped comparison
    for seed in args.seeds:
        for method in args.methods:
            if any(r["method"] == method and r["seed"] == seed for r in results):
                continue
            print(f"== {method}, seed {seed}", file=sys.stderr, flush=True)
            results.append(run(method, seed, output_dir / f"{method}-seed{seed}", args.extra))
            results_path.parent.mkdir(parents=True, exist_ok=True)
            results_path.write_text(json.dumps(results, indent=1))
    results = [r for r in results if r["method"] in args.methods and r["seed"] in args.seeds]
    plot(results, output_dir / "accuracy_vs_step.png")
    print(f"\nHeld-out accuracy on the built-in task, {len(args.seeds)} seeds (mean ± std):\n")
    print(summarize(results))


if __name__ == "__main__":
    main()
