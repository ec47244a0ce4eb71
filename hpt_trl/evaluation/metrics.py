"""Sample-based metrics: the unbiased pass@k estimator and per-benchmark aggregation of graded samples."""

import math
from collections.abc import Iterable, Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """
    Unbiased estimate of pass@k from `n` samples of which `c` are correct: `1 - C(n - c, k) / C(n, k)`.

    The binomial ratio is evaluated as a product of `min(k, c)` factors in `[0, 1]` instead of with factorials, so it
    neither overflows nor loses precision for large `n` (thousands of samples):
    `C(n - c, k) / C(n, k) = prod_{i=0}^{k-1} (n - c - i) / (n - i) = prod_{j=0}^{c-1} (n - k - j) / (n - j)`.

    Args:
        n (`int`):
            Number of samples drawn for the problem (`n >= 1`).
        c (`int`):
            Number of correct samples (`0 <= c <= n`).
        k (`int`):
            Sample budget (`1 <= k <= n`).

    Returns:
        `float`: The probability, in `[0, 1]`, that at least one of `k` samples drawn without replacement from the
        `n` is correct.
    """
    for name, value in (("n", n), ("c", c), ("k", k)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"pass_at_k: `{name}` must be an int, got {value!r} ({type(value).__name__}).")
    if n < 1:
        raise ValueError(f"pass_at_k: `n` must be >= 1, got {n}.")
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: `c` must be in [0, n] = [0, {n}], got {c}.")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: `k` must be in [1, n] = [1, {n}], got {k}.")
    if c == 0:
        return 0.0
    if n - c < k:
        # Every k-subset must contain a correct sample.
        return 1.0
    ratio = 1.0
    if k <= c:
        for i in range(k):
            ratio *= (n - c - i) / (n - i)
    else:
        for j in range(c):
            ratio *= (n - k - j) / (n - j)
    return min(1.0, max(0.0, 1.0 - ratio))


def pass_at_k_budgets(n: int) -> list[int]:
    """
    The k values reported for `n` samples: the powers of two up to `n`, plus `n` itself when it is not a power of two.

    Args:
        n (`int`):
            Number of samples per problem.

    Returns:
        `list[int]`: Increasing budgets, starting at 1 and ending at `n`.
    """
    if n < 1:
        raise ValueError(f"`n` must be >= 1, got {n}.")
    budgets = [1 << e for e in range(n.bit_length())]
    if budgets[-1] != n:
        budgets.append(n)
    return budgets


def summarize_records(records: Sequence[dict], num_problems: int | None = None) -> dict:
    """
    Aggregate per-problem records of one benchmark into its scores.

    Args:
        records (`Sequence[dict]`):
            Per-problem records with the keys `n`, `num_correct`, `response_lengths` and `truncated`, as written by
            the harness.
        num_problems (`int`, *optional*):
            Number of problems the benchmark has (after any `limit`); used to flag an incomplete evaluation.

    Returns:
        `dict`: `num_problems` (evaluated), `n`, `avg_at_n` (mean accuracy over all samples, the paper's score, as a
        fraction), `pass_at_k` (`{str(k): mean pass@k}`), `mean_response_length` (tokens), `truncated_rate`
        (fraction of samples that hit the token limit without EOS) and `complete`.
    """
    if not records:
        raise ValueError("Cannot summarize a benchmark with no evaluated problems.")
    sample_counts = {record["n"] for record in records}
    if len(sample_counts) != 1:
        raise ValueError(f"Records mix different sample counts {sorted(sample_counts)}; evaluate with one `n`.")
    (n,) = sample_counts
    budgets = pass_at_k_budgets(n)
    lengths = [length for record in records for length in record["response_lengths"]]
    truncated = [flag for record in records for flag in record["truncated"]]
    return {
        "num_problems": len(records),
        "n": n,
        "avg_at_n": _mean(record["num_correct"] / n for record in records),
        "pass_at_k": {str(k): _mean(pass_at_k(n, record["num_correct"], k) for record in records) for k in budgets},
        "mean_response_length": _mean(lengths),
        "truncated_rate": _mean(float(flag) for flag in truncated),
        "complete": num_problems is None or len(records) >= num_problems,
    }


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return math.fsum(values) / len(values) if values else 0.0
