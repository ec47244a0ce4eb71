"""benchmarks/loss_weights.py: the 7B recipe's RL/SFT token weights are the authors', measured on the trainer."""

from pathlib import Path

import pytest
from hpt_testing import load_benchmark


ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("recipe", ["qwen2.5-math-7b/hpt.yaml", "qwen2.5-math-1.5b/hpt.yaml"])
def test_an_rl_token_weighs_the_authors_share_of_a_demonstration_token(recipe):
    benchmark = load_benchmark("loss_weights")
    result = benchmark.measure(str(ROOT / "recipes" / recipe))
    knobs = result["knobs"]
    length, rows = knobs["max_completion_length"], result["rows_per_update"]
    assert result["rl_weights"] and len(result["demo_weights"]) >= 2
    # Every RL token weighs |A| / (N * L): Dr. GRPO over the update's rows, whatever the micro-batch.
    for weights in result["rl_weights"]:
        assert (
            min(abs(abs(float(w)) * rows * length - abs(a)) for w in weights[:1] for a in result["advantages"]) < 1e-4
        )
    # A demonstration token weighs sft_loss_coef / (N * |d|): the ratio to an RL token is the authors' |d| / 8192.
    for weights in result["demo_weights"]:
        expected = knobs["sft_loss_coef"] / (rows * len(weights))
        assert float(weights.min()) == pytest.approx(expected, rel=1e-5)
        assert float(weights.max()) == pytest.approx(expected, rel=1e-5)
