"""
The terms a demonstration can enter the loss with, in the unified estimator's terms (arXiv 2509.04419, Table 1).

Each takes the per-token log-probabilities (temperature 1, with gradient) of the demonstration tokens of a micro-batch,
one 1-D tensor per demonstration row, and a per-row weight (the gate's demonstration coefficient).

- SFT: reference-policy denominator pi_theta, advantage 1: each demonstration's token-mean negative log-likelihood.
- Off-policy (LUFFY): denominator 1 with the shaping f(p) = p / (p + 0.1), the group's advantage, no clipping. As in
  the authors' runs (n = 8 = 7 rollouts + 1 demonstration), the demonstration takes the place of one rollout of its
  group, is scored by the reward functions (the verifier) and gets TRL's group advantage over the n rows
  (`hpt_trl.group_demonstrations`).
- SRFT: SFT weighted by 0.5 * exp(-H) with H the row's mean token entropy (detached), as the authors' SRFT code.
"""

import torch


OFF_POLICY_SHAPING = 0.1  # LUFFY's "p_div_p_0.1": p / (p + 0.1)
SRFT_SFT_SCALE = 0.5  # SRFT: sft weight 0.5 * exp(-H)
SRFT_RL_SCALE = 0.1  # SRFT: weight 0.1 * exp(H) on a correct rollout; a wrong one gets -1


def weighted_mean_nll(logps: list[torch.Tensor], weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """
    `(sum_i w_i * mean_t -log p_it, number of demonstrations)`: each demonstration weighs its own token-mean NLL, as
    in the authors' actor, whose dynamic micro-batches hold one demonstration in the common case.
    """
    if not logps:
        return weights.new_zeros(()), weights.new_zeros(())
    nll = torch.stack([-lp.mean() if len(lp) else lp.sum() for lp in logps])
    return (weights * nll).sum(), weights.new_tensor(float(len(logps)))


def off_policy_token_losses(logps: list[torch.Tensor], advantages: torch.Tensor) -> list[torch.Tensor]:
    """Per token `-A_i * p / (p + 0.1)` with `p = exp(log p)`: the gradient is `-A * 0.1 p / (p + 0.1)^2 * grad log p`."""
    losses = []
    for lp, advantage in zip(logps, advantages, strict=True):
        p = lp.exp()
        losses.append(-advantage * p / (p + OFF_POLICY_SHAPING))
    return losses


def row_mean_entropy(entropies: list[torch.Tensor]) -> torch.Tensor:
    """The mean token entropy of each row, detached (SRFT's H)."""
    return torch.stack([e.detach().mean() if len(e) else e.new_zeros(()) for e in entropies])


def srft_sft_weights(entropies: list[torch.Tensor]) -> torch.Tensor:
    return SRFT_SFT_SCALE * torch.exp(-row_mean_entropy(entropies))


def srft_rollout_weights(mean_entropy: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """SRFT's on-policy weight in place of the advantage: `0.1 * exp(H)` on a correct rollout, `-1` on a wrong one."""
    return torch.where(correct, SRFT_RL_SCALE * torch.exp(mean_entropy), -torch.ones_like(mean_entropy))


def sum_like_rl_term(
    token_losses: list[torch.Tensor],
    weights: torch.Tensor,
    anchor: torch.Tensor,
    loss_type: str,
    rows: int,
    max_completion_length: int,
) -> torch.Tensor:
    """
    Aggregate per-row token losses as TRL aggregates the RL term of a micro-batch of `rows` rows: `dr_grpo` sums over
    tokens and divides by `rows * max_completion_length`, the others average per row. `anchor` (a 0-dim tensor of
    the forward's graph) gives the zero when there is no row.
    """
    if not token_losses:
        return anchor * 0
    if loss_type == "dr_grpo":
        per_row = torch.stack([losses.sum() for losses in token_losses])
        return (weights * per_row).sum() / (rows * max_completion_length)
    per_row = torch.stack([losses.mean() if len(losses) else losses.sum() for losses in token_losses])
    return (weights * per_row).sum() / rows


def demonstration_terms(
    mode: str,
    logps: list[torch.Tensor],
    entropies: list[torch.Tensor] | None,
    weights: torch.Tensor,
    advantages: torch.Tensor | None,
    aggregate,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """
    The demonstrations' terms for `demonstration_loss=mode`: the weighted sum of their token-mean NLL (SRFT: weighted
    by `0.5 exp(-H)`), their number, and the off-policy term (LUFFY, SRFT; else `None`), aggregated by `aggregate`
    (a [`sum_like_rl_term`] with the trainer's settings) as the RL term is.
    """
    sft_weights = weights * srft_sft_weights(entropies) if mode == "srft" and logps else weights
    nll_sum, num_demonstrations = weighted_mean_nll(logps, sft_weights)
    off_policy_loss = None
    if mode in ("off_policy", "srft"):
        off_policy_loss = aggregate(off_policy_token_losses(logps, advantages), weights, nll_sum)
    return nll_sum, num_demonstrations, off_policy_loss


def srft_rollout_token_losses(
    row_logps: torch.Tensor, row_entropies: torch.Tensor, row_mask: torch.Tensor, correct: torch.Tensor, rl_weight
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """SRFT's on-policy term per rollout: token losses `-log p` and the row weight `w * rl_weight` (see above)."""
    mean_entropy = (row_entropies.detach() * row_mask).sum(1) / row_mask.sum(1).clamp(min=1)
    weights = srft_rollout_weights(mean_entropy, correct) * rl_weight
    return [-(lp * m)[m.bool()] for lp, m in zip(row_logps, row_mask)], weights
