"""The names HPT logs under, and which of TRL's metrics describe RL tokens (withdrawn or zero-filled without any)."""

import torch

from .gating import GateDecision


def rl_token_metric_keys(loss_type: str, beta: float) -> tuple[str, ...]:
    """The metrics TRL's loss measures over the RL tokens of a micro-batch, for this config."""
    keys = ["entropy"] + (["kl"] if beta != 0.0 else [])
    if loss_type in ("grpo", "bnpo", "dr_grpo", "dapo", "luspo"):
        keys += [f"clip_ratio/{name}" for name in ("low_mean", "high_mean", "region_mean", "low_min", "high_max")]
    elif loss_type == "cispo":
        keys.append("cispo_clip_ratio")
    elif loss_type == "vespo":
        keys.append("vespo/phi_seq_mean")
    return tuple(keys)


def loss_term_keys(uses_demonstrations: bool, demonstration_loss: str) -> tuple[str, ...]:
    """The loss terms HPT logs for this config."""
    terms = ["hpt/rl_loss"]
    if uses_demonstrations and demonstration_loss in ("sft", "srft"):
        terms.append("hpt/sft_loss")
    if uses_demonstrations and demonstration_loss in ("off_policy", "srft"):
        terms.append("hpt/off_policy_loss")
    return tuple(terms)


def log_gate(metrics: dict, gate: GateDecision, num_generations: int, strategy: str, num_truncated: int) -> None:
    """What the gate did to one generation batch: the SFT share, the group accuracy, truncations and gamma."""
    metrics["hpt/sft_prompt_ratio"].append((gate.demonstration_coef > 0).float().mean().item())
    metrics["hpt/group_accuracy"].append((gate.correct_counts.float() / num_generations).mean().item())
    metrics["hpt/demo_truncated"].append(float(num_truncated))
    if strategy in ("switch", "adaptive"):
        metrics["hpt/gamma"].append(float(gate.gamma))


def record_loss_terms(metrics: dict, sums: dict, accelerator, logged_before: dict, rl_token_keys) -> None:
    """
    Log each loss term of a micro-batch as its sum over processes divided by its count (`sums` maps a key to that
    pair; the keys are the same on every process). When no process forwarded an RL row, TRL's token metrics of this
    micro-batch (entropy, clip ratios, KL) describe no token: they are withdrawn rather than averaged in as zeros (a
    step with none logs 0, see [`zero_fill`]). The aux loss (it acts on the demonstrations too), policy_loss and
    entropy_coef stay.
    """
    totals = accelerator.reduce(torch.stack([v for pair in sums.values() for v in pair]), reduction="sum")
    totals = dict(zip(sums, totals.view(-1, 2), strict=True))
    if totals["hpt/rl_loss"][1] == 0:
        for key in rl_token_keys:
            if key in metrics:
                del metrics[key][logged_before.get(key, 0) :]
    for key, (total, count) in totals.items():
        if count > 0:
            metrics[key].append((total / count).item())


def zero_fill(metrics: dict, keys) -> None:
    """Give the keys a step did not log a 0, so that every key of the config is in every step's log."""
    for key in keys:
        if not metrics.get(key):
            metrics[key] = [0.0]
