"""
HPT against the paper's baselines on a built-in task: premise checks, equal tuning, then seeds.

    OMP_NUM_THREADS=1 python benchmarks/compare_methods.py --seeds 0 1 2
    OMP_NUM_THREADS=1 python benchmarks/compare_methods.py --task builtin:rearrange --methods hpt sft grpo \
        --rates_from benchmarks/results/compare_methods.json --results benchmarks/results/compare_methods_rearrange.json

1. **The premise.** Before any method is compared, the base model's greedy accuracy on the held-out easy and hard
   problems is measured, and after the runs the SFT and GRPO rows are checked against what the paper's claim
   presupposes: the base solves some easy problems and almost no hard ones (easy >= 0.3, hard <= 0.05); SFT alone
   teaches the hard problems (hard +0.15 or more); RL alone improves what the base can sample (easy +0.05 or more)
   and not the problems it cannot (hard below +0.05). The checks are printed with the measured figures, PASS or
   FAIL, whatever they show.
2. **Equal tuning.** Every method, HPT included, gets the same budget: the three learning rates of `LEARNING_RATES`,
   each trained with the tuning seed (the first of `--seeds`) and scored on the validation split (greedy accuracy over
   easy and hard problems, a split disjoint from both the training and the held-out problems). The setting with
   the best validation accuracy is the method's; the table prints it. With `--rates_from`, each method keeps the rate
   it chose in another comparison's results (the second task takes the arithmetic task's), and nothing is tuned.
3. **The comparison.** The chosen setting of every method is trained with every seed and scored on the held-out
   split: greedy accuracy on `--num_eval` problems per level (easy, hard, and their mean), and pass@k for k = 1, 4, 16
   from 16 samples at temperature 1 on the first `--num_sampled` of them, as mean and standard deviation over seeds;
   with the training dynamics of the paper's figure (the share of prompts sent to SFT, policy entropy and response
   length, first and last tenth of training), and
   `accuracy_vs_step.png` (validation accuracy during training, mean over seeds).

Every run is `train.py`'s `main()` on `recipes/toy_hpt.yaml` with `--method` and the variant's settings: same task,
base model, data, seed and optimizer steps; only the gate, the demonstration's loss and the learning rate differ.
Results are written to `--results` after every run, and a rerun skips the runs already there, so a stopped
comparison resumes. The results file holds a hash of the base model's weights and refuses runs from another base
(another task, or a base pretrained with other settings or on another machine), and every run records the CPU it ran
on: the same seed rounds differently on another vector unit, so runs from two machines are two draws, not one. Not part
of CI: each run is several minutes on one CPU core (see the README for the measured time).
"""

import argparse
import hashlib
import json
import operator
import platform
import statistics
import sys
import time
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import train as train_script  # noqa: E402
from hpt_trl.builtin_task.arithmetic_task import (  # noqa: E402
    EASY_DIFFICULTY,
    HARD_DIFFICULTY,
    HELD_OUT_SPLIT,
    VALIDATION_SPLIT,
    evaluate_accuracy,
    generate_problems,
    problems_to_dataset,
)
from hpt_trl.builtin_task.demo import BUILTIN_TASKS  # noqa: E402
from hpt_trl.data import METHODS  # noqa: E402


PASS_AT = (1, 4, 16)
# The tuning budget of every method: one run per learning rate, chosen on the validation split. 1e-4 was in the first
# comparison's budget (another base): it lost on validation for five of the six methods that tried it, and SFT->GRPO
# took it by 0.004.
LEARNING_RATES = ("3e-4", "1e-3", "3e-3")
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
# What the paper's claim presupposes, as (row, level, comparison, threshold): the base row's accuracy, or a method's
# lift over the base (mean over seeds, held-out greedy).
PREMISE = (
    ("base", "easy", ">=", 0.30),
    ("base", "hard", "<=", 0.05),
    ("sft", "hard", ">=", 0.15),
    ("grpo", "easy", ">=", 0.05),
    ("grpo", "hard", "<", 0.05),
)
COMPARISONS = {">=": operator.ge, "<=": operator.le, "<": operator.lt}
LEVELS = {"easy": EASY_DIFFICULTY, "hard": HARD_DIFFICULTY}
# The built-in task a comparison runs on (a dataset name of `BUILTIN_TASKS`), and its base model.
DEFAULT_TASK = "builtin:arithmetic"


def evaluation_sets(split: str, num_per_level: int, task: str = DEFAULT_TASK) -> dict[str, object]:
    """
    The fixed evaluation problems of a built-in task's split, per level, drawn with seed 0 (the same for every method
    and run).
    """
    return {
        name: problems_to_dataset(generate_problems(num_per_level, level, split=split, task=BUILTIN_TASKS[task]))
        for name, level in LEVELS.items()
    }


def score(
    model_dir: str | Path, split: str, num_per_level: int, seed: int, num_sampled: int = 0, task: str = DEFAULT_TASK
) -> dict[str, float]:
    """
    Greedy accuracy per level (and their mean) of a saved model on `num_per_level` problems per level of the built-in
    task `task`, and with `num_sampled` pass@k on the first `num_sampled` of them (16 samples each at temperature 1).
    """
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    scores, sampled = {}, []
    for name, dataset in evaluation_sets(split, num_per_level, task).items():
        scores[name] = evaluate_accuracy(model, tokenizer, dataset).accuracy
        if num_sampled:
            subset = dataset.select(range(min(num_sampled, len(dataset))))
            sampled.append(
                evaluate_accuracy(model, tokenizer, subset, num_samples=max(PASS_AT), do_sample=True, seed=seed)
            )
    scores["greedy"] = statistics.mean(scores[name] for name in LEVELS)
    for k in PASS_AT if sampled else ():
        scores[f"pass@{k}"] = statistics.mean(result.pass_at_k(k) for result in sampled)
    return scores


def dynamics(metrics_path: Path) -> dict:
    """The paper's training-dynamics figures from a run's metrics file: first and last tenth of the steps."""
    records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    summary = {}
    for key, name in (
        ("hpt/sft_prompt_ratio", "sft_ratio"),
        ("entropy", "entropy"),
        ("completions/mean_length", "length"),
    ):
        values = [record[key] for record in sorted(records, key=lambda r: r["step"]) if key in record]
        tenth = max(1, len(values) // 10)
        summary[name] = (statistics.mean(values[:tenth]), statistics.mean(values[-tenth:])) if values else None
    summary["curve"] = [(r["step"], r["heldout/accuracy"]) for r in records if "heldout/accuracy" in r]
    return summary


def base_fingerprint(model_dir: str | Path) -> str:
    """A hash of the base model's weights: runs of one comparison must all start from the same bits."""
    return hashlib.sha256((Path(model_dir) / "model.safetensors").read_bytes()).hexdigest()[:16]


def machine() -> str:
    """The CPU and its vector unit: the same seed and setting round differently on another one."""
    import torch

    return f"{platform.machine()} {torch.backends.cpu.get_cpu_capability()}, torch {torch.__version__}"


def train_run(
    variant: str, seed: int, learning_rate: str, output_dir: Path, extra: list[str], task: str = DEFAULT_TASK
) -> float:
    """
    Train one run through train.py's main(); returns its wall-clock seconds (only the remaining steps' when it resumed
    from a checkpoint, a few seconds when it had finished already).
    """
    method, settings = VARIANTS[variant]
    parser = train_script.make_parser()
    arguments = parser.parse_args_and_config(
        args=["--config", str(ROOT / "recipes" / "toy_hpt.yaml"), "--method", method, "--seed", str(seed)]
        + ["--dataset_name", task, "--model_name_or_path", f"{task}-base"]
        + ["--learning_rate", learning_rate, "--output_dir", str(output_dir), "--plot", "false"]
        # The curve during training is measured on the validation split: the held-out split is scored once, at the
        # end, by `score`.
        + ["--task_eval_split", VALIDATION_SPLIT, "--disable_tqdm", "true", *settings]
        # One torch thread a run: the comparison runs two at a time on two cores (and its runs were all made so).
        + ["--task_num_threads", "1", *extra]
    )
    start = time.perf_counter()
    train_script.main(*arguments)
    return time.perf_counter() - start


def run(variant: str, seed: int, learning_rate: str, output_dir: Path, args: argparse.Namespace) -> dict:
    seconds = train_run(variant, seed, learning_rate, output_dir, args.extra, args.task)
    return {
        "method": variant,
        "seed": seed,
        "learning_rate": learning_rate,
        "train_seconds": seconds,
        "machine": machine(),
        "validation": score(output_dir, VALIDATION_SPLIT, args.num_eval, seed, task=args.task),
        "held_out": score(output_dir, HELD_OUT_SPLIT, args.num_eval, seed, args.num_sampled, args.task),
        **dynamics(output_dir / "metrics.jsonl"),
    }


def tuning_scores(results: list[dict], method: str, tuning_seed: int) -> dict[str, float]:
    """Validation greedy accuracy of each learning rate `method` was run with at the tuning seed."""
    return {
        r["learning_rate"]: r["validation"]["greedy"]
        for r in results
        if (r["method"], r["seed"]) == (method, tuning_seed)
    }


def chosen_setting(
    results: list[dict], method: str, tuning_seed: int, learning_rates: tuple[str, ...] = LEARNING_RATES
) -> str | None:
    """The learning rate of `learning_rates` with the best validation accuracy at the tuning seed (None until all ran)."""
    tried = {
        rate: value for rate, value in tuning_scores(results, method, tuning_seed).items() if rate in learning_rates
    }
    if set(tried) != set(learning_rates):
        return None
    return max(learning_rates, key=lambda rate: (tried[rate], -learning_rates.index(rate)))


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def premise_checks(base: dict, final: dict[str, list[dict]]) -> list[tuple[str, float, bool]]:
    """Each premise as (description, measured value, holds), from the base scores and the chosen runs per method."""
    checks = []
    for row, level, comparison, threshold in PREMISE:
        if row == "base":
            value, name = base[level], f"{row} {level} {comparison} {threshold}"
        elif final.get(row):
            value = statistics.mean(r["held_out"][level] for r in final[row]) - base[level]
            name = f"{row} {level} lift {comparison} {threshold}"
        else:
            continue
        holds = COMPARISONS[comparison](value, threshold)
        checks.append((name, value, holds))
    return checks


def format_premise(checks) -> str:
    lines = [f"  {'PASS' if holds else 'FAIL'}  {name:<22} measured {value:+.3f}" for name, value, holds in checks]
    return "\n".join(lines)


def summarize(base: dict, final: dict[str, list[dict]], chosen: dict[str, str]) -> str:
    columns = ["greedy", "easy", "hard", *[f"pass@{k}" for k in PASS_AT]]
    lines = [
        "| method | learning rate | " + " | ".join(columns) + " | SFT share first -> last | entropy | length |",
        "| --- | --- | " + " | ".join("---" for _ in columns) + " | --- | --- | --- |",
        "| base | - | " + " | ".join(f"{base[c]:.3f}" if c in base else "-" for c in columns) + " | - | - | - |",
    ]
    for method, rows in final.items():
        cells = [f"{m:.3f} ± {s:.3f}" for m, s in (mean_std([r["held_out"][c] for r in rows]) for c in columns)]
        trends = []
        for key in ("sft_ratio", "entropy", "length"):
            pairs = [r[key] for r in rows if r[key] is not None]
            if pairs:
                trends.append(
                    f"{statistics.mean(p[0] for p in pairs):.2f} -> {statistics.mean(p[1] for p in pairs):.2f}"
                )
            else:
                trends.append("-")
        lines.append(f"| {method} | {chosen[method]} | " + " | ".join(cells + trends) + " |")
    return "\n".join(lines)


def tuning_table(results: list[dict], chosen: dict[str, str], tuning_seed: int, learning_rates: list[str]) -> str:
    """Validation greedy accuracy of every method and learning rate at the tuning seed, the chosen one in bold."""
    lines = ["| method | " + " | ".join(learning_rates) + " |", "| --- |" + " --- |" * len(learning_rates)]
    for method, rate_chosen in chosen.items():
        tried = tuning_scores(results, method, tuning_seed)
        cells = [
            "-" if rate not in tried else f"**{tried[rate]:.3f}**" if rate == rate_chosen else f"{tried[rate]:.3f}"
            for rate in learning_rates
        ]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(final: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for method, rows in final.items():
        steps = [step for step, _ in rows[0]["curve"]]
        means = [statistics.mean(row["curve"][i][1] for row in rows) for i in range(len(steps))]
        axis.plot(steps, means, marker="o", markersize=3, label=method)
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("validation greedy accuracy (mean over seeds)")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)  # a reprint from a results file trains nothing into it
    figure.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default=DEFAULT_TASK, choices=list(BUILTIN_TASKS), help="the built-in task")
    parser.add_argument("--methods", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument(
        "--learning_rates",
        nargs="+",
        default=list(LEARNING_RATES),
        help="the tuning budget of every method (a shorter list for a quick look, not for the table)",
    )
    parser.add_argument(
        "--rates_from",
        default=None,
        help="another comparison's results file: each method keeps the learning rate chosen there, no tuning here",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="the first one is the tuning seed")
    parser.add_argument("--num_eval", type=int, default=400, help="validation and held-out problems per level")
    parser.add_argument("--num_sampled", type=int, default=100, help="of them, problems per level for pass@k")
    parser.add_argument("--output_dir", default="outputs/compare", help="the runs' folders")
    parser.add_argument("--results", default=None, help="results file (default: OUTPUT_DIR/results.json)")
    parser.add_argument("extra", nargs="*", help="further train.py overrides, after --, e.g. -- --max_steps 100")
    args = parser.parse_args(argv)
    hf_logging.set_verbosity_error()
    output_dir = Path(args.output_dir)
    results_path = Path(args.results) if args.results else output_dir / "results.json"
    saved = json.loads(results_path.read_text()) if results_path.exists() else {}
    if saved.get("extra", args.extra) != args.extra:
        raise ValueError(
            f"{results_path} holds runs made with the overrides {saved['extra']}, not {args.extra}: pass the same "
            "overrides to resume, or another --results for a new comparison."
        )
    results = saved.get("runs", [])
    tuning_seed = args.seeds[0]

    def save():
        results_path.parent.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps({"extra": args.extra, "base": base, "runs": results}, indent=1))

    def ensure(method: str, seed: int, rate: str) -> None:
        if any((r["method"], r["seed"], r["learning_rate"]) == (method, seed, rate) for r in results):
            return
        print(f"== {method}, seed {seed}, learning rate {rate}", file=sys.stderr, flush=True)
        folder = output_dir / f"{method}-lr{rate}-seed{seed}"
        results.append(run(method, seed, rate, folder, args))
        save()

    # The base, scored first: the premise is checked before any method is trained on it.
    base_arguments = train_script.make_parser().parse_args_and_config(
        args=["--config", str(ROOT / "recipes" / "toy_hpt.yaml"), *args.extra]
    )
    base_dir = base_arguments[3].base_model(args.task)
    fingerprint = base_fingerprint(base_dir)
    base = saved.get("base")
    if base is not None and base.get("fingerprint") != fingerprint:
        raise ValueError(
            f"{results_path} holds runs from another base model (weights {base.get('fingerprint')}, this one "
            f"{fingerprint}): its rows would not be comparable with new ones. Pass another --results."
        )
    if base is None:
        base = score(base_dir, HELD_OUT_SPLIT, args.num_eval, tuning_seed, args.num_sampled, args.task)
        base |= {"task": args.task, "fingerprint": fingerprint, "machine": machine()}
        save()
    print("Premise, the base model (held-out greedy):")
    print(format_premise(premise_checks(base, {})), flush=True)

    # Transferred rates were chosen on the other comparison's validation split, at its tuning seed (the first of
    # --seeds here too).
    tuned = json.loads(Path(args.rates_from).read_text())["runs"] if args.rates_from else results
    chosen = {}
    for method in args.methods:
        for rate in args.learning_rates if not args.rates_from else ():
            ensure(method, tuning_seed, rate)
        chosen[method] = chosen_setting(tuned, method, tuning_seed, tuple(args.learning_rates))
        if chosen[method] is None:
            raise ValueError(
                f"{args.rates_from} has no run of {method} at seed {tuning_seed} for every learning rate of "
                f"{args.learning_rates}: tune it there first, or leave out --rates_from to tune on this task."
            )
        print(f"{method}: learning rate {chosen[method]} chosen on the validation split", file=sys.stderr)
    for seed in args.seeds:
        for method in args.methods:
            ensure(method, seed, chosen[method])
    final = {
        method: [
            r
            for r in results
            if r["method"] == method and r["learning_rate"] == chosen[method] and r["seed"] in args.seeds
        ]
        for method in args.methods
    }
    plot(final, output_dir / "accuracy_vs_step.png")
    checks = premise_checks(base, final)
    print(f"\nPremise checks (held-out greedy, mean over {len(args.seeds)} seeds):")
    print(format_premise(checks))
    source = f" of {args.rates_from}" if args.rates_from else ""
    print(f"\nTuning{source}: validation greedy accuracy at seed {tuning_seed} (the chosen learning rate in bold):\n")
    print(tuning_table(tuned, chosen, tuning_seed, args.learning_rates))
    print(f"\nHeld-out accuracy on {args.task}, {len(args.seeds)} seeds (mean ± std):\n")
    print(summarize(base, final, chosen))
    return {"base": base, "final": final, "chosen": chosen, "premise": checks}


if __name__ == "__main__":
    main()
