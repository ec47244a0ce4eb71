"""
HPT's entropy bonus: `entropy_coef * (sum of the covered tokens' entropy) / (update rows * max_completion_length)`.

Each covered token weighs what one Dr. GRPO token weighs, whatever the micro-batch it lands in (TRL's own bonus is a
token mean per micro-batch, whose weight depends on how a batch is split). Covered are the RL rows' loss tokens, and
with `entropy_coverage="rollouts_and_demonstrations"` the demonstration tokens too, as in the authors' actor.
"""

import torch
from trl import GRPOTrainer


def covered_entropy(
    token_mask: torch.Tensor,
    row_entropies: torch.Tensor,
    demonstration_entropies: list[torch.Tensor],
    coverage: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The sum of the covered tokens' entropy and their number, for one micro-batch."""
    entropy_sum = (row_entropies * token_mask).sum()
    num_tokens = token_mask.sum().float()
    if coverage == "rollouts_and_demonstrations" and demonstration_entropies:
        entropy_sum = entropy_sum + sum(e.sum() for e in demonstration_entropies)
        num_tokens = num_tokens + sum(e.numel() for e in demonstration_entropies)
    return entropy_sum, num_tokens


def entropy_coef_for_micro_batch(trainer: GRPOTrainer, entropy_sum: torch.Tensor, num_tokens) -> float:
    """
    The coefficient this micro-batch's bonus uses. With `use_adaptive_entropy`, TRL's controller on TRL's state
    (`entropy_coef`, `_last_world_entropy`, `_entropy_window_stats`, which TRL checkpoints), with TRL's rule: the
    coefficient of the previous step applies to every micro-batch of this one, and at the step's last micro-batch the
    world's mean entropy of the covered tokens moves it by `entropy_coef_delta` towards `entropy_target`.
    """
    args = trainer.args
    coef = trainer.entropy_coef
    if trainer.use_adaptive_entropy:
        coef = trainer.entropy_coef if trainer._last_world_entropy <= args.entropy_target else 0.0
        stats = torch.stack([entropy_sum.detach(), torch.as_tensor(num_tokens, device=entropy_sum.device)])
        window = trainer._entropy_window_stats
        trainer._entropy_window_stats = stats if window is None else window + stats
        if trainer.accelerator.sync_gradients:
            totals = trainer.accelerator.reduce(trainer._entropy_window_stats, reduction="sum")
            trainer._last_world_entropy = (totals[0] / totals[1].clamp(min=1.0)).item()
            if trainer._last_world_entropy <= args.entropy_target:
                trainer.entropy_coef = min(trainer.entropy_coef + args.entropy_coef_delta, args.entropy_coef_max)
            else:
                trainer.entropy_coef = max(trainer.entropy_coef - args.entropy_coef_delta, args.entropy_coef_min)
            trainer._entropy_window_stats = None
    if trainer.accelerator.sync_gradients:
        trainer._metrics["train"]["entropy_coef"].append(trainer.entropy_coef)
    return coef
