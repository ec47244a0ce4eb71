"""Reports of evaluation results: markdown tables, side-by-side comparison of runs, and pass@k curves."""

import json
import math
import os
from pathlib import Path

from .benchmarks import BENCHMARKS, MATH
from .protocols import LEGACY_GRADING, LEGACY_PROTOCOL


_DISPLAY_ORDER = [spec.name for spec in BENCHMARKS.values()]
_MATH_NAMES = {spec.name for spec in BENCHMARKS.values() if spec.kind == MATH}


def model_label(model: str) -> str:
    """A short name for a model or checkpoint path: the folder, with the run's name before `checkpoint-N`."""
    path = Path(model.rstrip("/\\"))
    label = path.name if path.name not in ("", ".") else "model"
    # Checkpoint folders are usually `.../run_name/checkpoint-500`: keep the run's name too.
    if label.startswith("checkpoint-") and path.parent.name:
        label = f"{path.parent.name}-{label}"
    return label


def load_results(path: str | os.PathLike) -> dict:
    """
    Read a run's results.

    Args:
        path (`str` or `os.PathLike`):
            A `results.json` file, or the output folder that holds one.

    Returns:
        `dict`: The results.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"No results at {str(path)!r}: pass a results.json file or the --output_dir of a finished evaluation."
        )
    results = json.loads(path.read_text())
    if not isinstance(results, dict) or "scores" not in results:
        raise ValueError(f"{str(path)!r} is not an evaluation results file (it has no `scores`).")
    results.setdefault("_path", str(path))
    return results


def run_protocol(results: dict) -> tuple[str, str]:
    """
    The `(protocol, grading)` a run was evaluated under; a results file written before protocols existed used the
    `validation` protocol's grading (last boxed answer only).
    """
    config = results.get("config", {})
    return config.get("protocol", LEGACY_PROTOCOL), config.get("grading", LEGACY_GRADING)


def _ordered(names) -> list[str]:
    names = list(dict.fromkeys(names))
    known = [name for name in _DISPLAY_ORDER if name in names]
    return known + [name for name in names if name not in known]


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _row(cells) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def format_results_table(results: dict) -> str:
    """
    Render one run as a markdown table: per benchmark avg@n, pass@k, mean response length and truncated share.

    A closing row averages the math benchmarks (the paper's "Avg" column) when there are two or more.

    Args:
        results (`dict`):
            The content of `results.json`.

    Returns:
        `str`: The markdown.
    """
    config, scores = results.get("config", {}), results["scores"]
    names = _ordered(scores)
    protocol, grading = run_protocol(results)
    header = (
        f"Model: `{config.get('model')}` | backend: {config.get('backend')} | template: {config.get('template')} | "
        f"protocol: {protocol} (grading: {grading}) | n={config.get('n')}, temperature={config.get('temperature')}, "
        f"top_p={config.get('top_p')}, max_new_tokens={config.get('max_new_tokens')}"
    )
    if config.get("limit") is not None:
        header += f" | only the first {config['limit']} problems of each benchmark"
    if not names:
        return header + "\n\n(no benchmark evaluated yet)"
    budgets = sorted({int(k) for name in names for k in scores[name]["pass_at_k"]})
    ns = sorted({scores[name]["n"] for name in names})
    avg_label = f"avg@{ns[0]}" if len(ns) == 1 else "avg@n"
    lines = [
        header,
        "",
        _row(["Benchmark", "Problems", avg_label, *[f"pass@{k}" for k in budgets], "Mean length", "Truncated (%)"]),
        _row(["---", *["---:"] * (4 + len(budgets))]),
    ]
    for name in names:
        score = scores[name]
        problems = str(score["num_problems"])
        if not score.get("complete", True):
            problems += " (incomplete)"
        pass_cells = [_percent(score["pass_at_k"].get(str(k))) for k in budgets]
        lines.append(
            _row(
                [
                    name,
                    problems,
                    _percent(score["avg_at_n"]),
                    *pass_cells,
                    f"{score['mean_response_length']:.0f}",
                    _percent(score["truncated_rate"]),
                ]
            )
        )
    math_names = [name for name in names if name in _MATH_NAMES]
    if len(math_names) >= 2:
        mean = sum(scores[name]["avg_at_n"] for name in math_names) / len(math_names)
        pass_cells = []
        for k in budgets:
            values = [scores[name]["pass_at_k"].get(str(k)) for name in math_names]
            pass_cells.append(_percent(None if None in values else sum(values) / len(values)))
        lines.append(_row([f"Avg ({len(math_names)} math)", "", _percent(mean), *pass_cells, "", ""]))
    return "\n".join(lines)


def _metric_value(score: dict, metric: str) -> str:
    if metric == "avg":
        return _percent(score["avg_at_n"])
    if metric == "length":
        return f"{score['mean_response_length']:.0f}"
    if metric == "truncated":
        return _percent(score["truncated_rate"])
    k = metric.removeprefix("pass@")
    return _percent(score["pass_at_k"].get(k))


def _metric_number(score: dict, metric: str) -> float | None:
    if metric == "avg":
        return score["avg_at_n"]
    if metric == "length":
        return score["mean_response_length"]
    if metric == "truncated":
        return score["truncated_rate"]
    return score["pass_at_k"].get(metric.removeprefix("pass@"))


def run_labels(runs: list[dict]) -> list[str]:
    """Short names for runs: the model's folder name or Hub id, made unique with the output folder when needed."""

    labels = [model_label(str(run.get("config", {}).get("model", "run"))) for run in runs]
    if len(set(labels)) < len(labels):
        labels = [
            f"{label} ({Path(run['_path']).parent.name})" if "_path" in run else label
            for label, run in zip(labels, runs)
        ]
    if len(set(labels)) < len(labels):
        labels = [f"{label} #{i + 1}" for i, label in enumerate(labels)]
    return labels


def compare_results(
    runs: list[dict], metric: str = "avg", labels: list[str] | None = None, allow_mixed_protocols: bool = False
) -> str:
    """
    Render several runs side by side: one row per benchmark, one column per run.

    Runs evaluated under different protocols or gradings (see `hpt_trl.evaluation.protocols`) are not comparable
    score for score, so they are refused unless `allow_mixed_protocols=True`, which prints them with a warning line.

    Args:
        runs (`list[dict]`):
            Results of the runs (see `load_results`).
        metric (`str`, *optional*, defaults to `"avg"`):
            `"avg"` (avg@n), `"pass@<k>"`, `"length"` (mean response tokens) or `"truncated"` (%).
        labels (`list[str]`, *optional*):
            Column headers; by default derived from the model names.
        allow_mixed_protocols (`bool`, *optional*, defaults to `False`):
            Compare runs of different protocols or gradings anyway.

    Returns:
        `str`: The markdown table, with a closing average over the math benchmarks every run has.
    """
    if not runs:
        raise ValueError("Nothing to compare: pass two or more results.json files (or output folders).")
    labels = labels or run_labels(runs)
    protocols = [run_protocol(run) for run in runs]
    mixed = len(set(protocols)) > 1
    details = "; ".join(
        f"{label}: protocol {protocol}, grading {grading}" for label, (protocol, grading) in zip(labels, protocols)
    )
    if mixed and not allow_mixed_protocols:
        raise ValueError(
            f"Cannot compare runs evaluated under different protocols ({details}): their scores differ by protocol as "
            "well as by model. Evaluate them under one --protocol (and --grading), or pass --allow_mixed_protocols."
        )
    if metric not in ("avg", "length", "truncated") and not (
        metric.startswith("pass@") and metric.removeprefix("pass@").isdigit()
    ):
        raise ValueError(f"Unknown --metric {metric!r}; use avg, pass@<k> (e.g. pass@8), length or truncated.")
    names = _ordered(name for run in runs for name in run["scores"])
    title = {"avg": "avg@n (%)", "length": "mean response length (tokens)", "truncated": "truncated (%)"}.get(
        metric, f"{metric} (%)"
    )
    title += f" | protocol: {protocols[0][0]} (grading: {protocols[0][1]})" if not mixed else ""
    lines = [f"Comparison: {title}", ""]
    if mixed:
        lines += [f"Warning: mixed protocols ({details}).", ""]
    lines += [_row(["Benchmark", *labels]), _row(["---", *["---:"] * len(labels)])]
    for name in names:
        cells = [_metric_value(run["scores"][name], metric) if name in run["scores"] else "-" for run in runs]
        lines.append(_row([name, *cells]))
    shared_math = [name for name in names if name in _MATH_NAMES and all(name in run["scores"] for run in runs)]
    if len(shared_math) >= 2:
        cells = []
        for run in runs:
            values = [_metric_number(run["scores"][name], metric) for name in shared_math]
            if None in values:
                cells.append("-")
                continue
            mean = sum(values) / len(values)
            cells.append(f"{mean:.0f}" if metric == "length" else _percent(mean))
        lines.append(_row([f"Avg ({len(shared_math)} math)", *cells]))
    return "\n".join(lines)


def plot_pass_at_k(runs: list[dict], path: str | os.PathLike, labels: list[str] | None = None) -> Path:
    """
    Draw pass@k against k (log2 axis), one panel per benchmark and one curve per run, into a PNG.

    Uses matplotlib's object API with the Agg canvas, so it works without a display and leaves pyplot's global state
    alone.

    Args:
        runs (`list[dict]`):
            Results of the runs.
        path (`str` or `os.PathLike`):
            The PNG to write.
        labels (`list[str]`, *optional*):
            Curve labels; by default derived from the model names.

    Returns:
        `Path`: The written file.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError("The pass@k plot needs matplotlib: `pip install 'hpt-trl[plot]'`.") from error

    labels = labels or run_labels(runs)
    names = _ordered(name for run in runs for name in run["scores"])
    if not names:
        raise ValueError("No benchmark scores to plot.")
    columns = min(4, len(names))
    rows = math.ceil(len(names) / columns)
    figure = Figure(figsize=(4 * columns, 3.2 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False)
    for position, name in enumerate(names):
        ax = axes[position // columns][position % columns]
        all_budgets, highest = set(), 0.0
        for run, label in zip(runs, labels):
            score = run["scores"].get(name)
            if score is None:
                continue
            budgets = sorted(int(k) for k in score["pass_at_k"])
            all_budgets.update(budgets)
            values = [100 * score["pass_at_k"][str(k)] for k in budgets]
            highest = max(highest, *values)
            ax.plot(budgets, values, marker="o", label=label)
        ax.set_xscale("log", base=2)
        ticks = sorted(all_budgets)
        ax.set_xticks(ticks, [str(k) for k in ticks])
        ax.set_ylim(0, min(102.0, max(5.0, 1.1 * highest)))
        ax.set_title(name)
        ax.set_xlabel("k")
        ax.set_ylabel("pass@k (%)")
        ax.grid(True, alpha=0.3)
    for position in range(len(names), rows * columns):
        axes[position // columns][position % columns].set_visible(False)
    axes[0][0].legend(fontsize="small")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path
