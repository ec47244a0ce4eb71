"""The HPT gate: which prompts of a generation batch are trained with SFT and which rows carry what."""

import json
import math
import os
from dataclasses import dataclass

import torch


# Kind of each row of a generation batch after gating.
RL_ROW = 0  # a rollout of a prompt that stays in RL
DEMONSTRATION_ROW = 1  # the one row of a gated prompt that carries its demonstration
DROPPED_ROW = 2  # any other rollout of a gated prompt: outside both losses


def count_correct_rollouts(gate_rewards: torch.Tensor, num_generations: int, correct_threshold: float) -> torch.Tensor:
    """
    Count the correct rollouts of every prompt group.

    Args:
        gate_rewards (`torch.Tensor` of shape `(num_prompts * num_generations,)`):
            The gate reward of every rollout of the generation batch, gathered from all processes, with each prompt's
            `num_generations` rollouts contiguous (TRL's `RepeatSampler` order). `NaN` (a reward function that
            returned `None`) counts as not correct.
        num_generations (`int`):
            Rollouts per prompt.
        correct_threshold (`float`):
            A rollout is correct when its gate reward is at least this value.

    Returns:
        `torch.LongTensor` of shape `(num_prompts,)`: the number `P` of correct rollouts of each prompt.
    """
    if gate_rewards.numel() % num_generations != 0:
        raise ValueError(
            f"{gate_rewards.numel()} rewards do not split into groups of num_generations={num_generations}."
        )
    correct = gate_rewards >= correct_threshold  # NaN compares False
    return correct.view(-1, num_generations).sum(dim=1)


# The authors' "soft" table (Unify-Post-Training, mix_trainer.py, soft_type 0) as (RL coefficient, demonstration
# coefficient), indexed by the number of correct rollouts P out of n = 8. Their P counts the demonstration among the
# 8 rows of a group (7 rollouts + 1 demonstration), so their P = k + 1 is our P = k; the last entry holds for every
# larger P.
SOFT_TABLE_RL = (0.0, 0.125, 0.25, 0.5, 1.0)
SOFT_TABLE_DEMONSTRATION = (1.0, 0.5, 0.25, 0.125, 0.0)


def gate_coefficients(
    correct_counts: torch.Tensor,
    strategy: str,
    gamma: int,
    soft_rl: tuple[float, ...] = SOFT_TABLE_RL,
    soft_demonstration: tuple[float, ...] = SOFT_TABLE_DEMONSTRATION,
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Per prompt, the weight of its rollouts' RL term and of its demonstration's term.

    Args:
        correct_counts (`torch.LongTensor` of shape `(num_prompts,)`):
            `P` of every prompt.
        strategy (`str`):
            `"switch"` (and `"adaptive"`, whose `gamma` moves): `(0, 1)` when `P <= gamma`, else `(1, 0)`.
            `"soft"`: the tables, indexed by `P` (the last entry for every larger `P`). `"always"`: `(1, 1)`, every
            prompt keeps its rollouts and adds its demonstration (LUFFY, SRFT).
        gamma (`int`):
            The switch threshold.
        soft_rl, soft_demonstration (`tuple[float, ...]`):
            The soft tables.

    Returns:
        Two float tensors of shape `(num_prompts,)`: the RL and the demonstration coefficients.
    """
    if strategy in ("switch", "adaptive"):
        gated = (correct_counts <= gamma).float()
        return 1.0 - gated, gated
    if strategy == "soft":
        index = correct_counts.clamp(max=len(soft_rl) - 1)
        rl = torch.tensor(soft_rl, dtype=torch.float, device=correct_counts.device)[index]
        index = correct_counts.clamp(max=len(soft_demonstration) - 1)
        demonstration = torch.tensor(soft_demonstration, dtype=torch.float, device=correct_counts.device)[index]
        return rl, demonstration
    if strategy == "always":
        ones = torch.ones(correct_counts.shape, dtype=torch.float, device=correct_counts.device)
        return ones, ones.clone()
    raise ValueError(f"Unknown gate strategy {strategy!r}: use 'switch', 'soft', 'adaptive' or 'always'.")


class AdaptiveGamma:
    """
    A gamma that follows the policy's running accuracy (a proposal for the paper's open question of learning gamma).

    The paper picks gamma by hand: 2 of 8 for the weaker Llama-3.1-8B, 0 for Qwen2.5-Math. This rule does the same
    from what the trainer measures. With `a` the exponential moving average (decay `decay`) of the fraction of correct
    rollouts per generation batch, and `a*` the target accuracy:

        gamma = clamp(round(n * (a* - a)), 0, n)

    A policy that solves less than `a*` of its rollouts gets SFT on the prompts it solves at most `gamma` times, more
    of them the further it is below the target; at or above `a*` only prompts it never solves (gamma = 0) go to SFT.
    The average is updated with each batch before that batch is gated, so the first batch is gated by its own
    accuracy. The state (the average and the batches seen) is saved in checkpoints.
    """

    def __init__(self, num_generations: int, target_accuracy: float, decay: float):
        self.num_generations = num_generations
        self.target_accuracy = target_accuracy
        self.decay = decay
        self.accuracy = None
        self.num_batches = 0

    def update(self, batch_accuracy: float) -> int:
        if self.accuracy is None:
            self.accuracy = batch_accuracy
        else:
            self.accuracy = self.decay * self.accuracy + (1.0 - self.decay) * batch_accuracy
        self.num_batches += 1
        return self.gamma

    @property
    def gamma(self) -> int:
        if self.accuracy is None:
            return 0
        # Round half up, so that the rule is easy to compute by hand.
        value = math.floor(self.num_generations * (self.target_accuracy - self.accuracy) + 0.5)
        return max(0, min(self.num_generations, value))

    STATE_FILE = "hpt_gate_state.json"  # in each checkpoint folder

    def save(self, checkpoint: str) -> None:
        with open(os.path.join(checkpoint, self.STATE_FILE), "w") as f:
            json.dump(self.state_dict(), f)

    def load(self, checkpoint: str) -> None:
        """Restore the state saved in `checkpoint`; a checkpoint written without it leaves the state as it is."""
        path = os.path.join(checkpoint, self.STATE_FILE)
        if os.path.isfile(path):
            with open(path) as f:
                self.load_state_dict(json.load(f))

    def state_dict(self) -> dict:
        return {"accuracy": self.accuracy, "num_batches": self.num_batches}

    def load_state_dict(self, state: dict) -> None:
        self.accuracy, self.num_batches = state["accuracy"], state["num_batches"]


@dataclass
class GateDecision:
    """What the gate decided for one generation batch, per prompt of the global batch (the same on every process)."""

    correct_counts: torch.Tensor  # P: correct rollouts among the num_generations sampled ones
    gamma: int  # the threshold in force (it moves with the adaptive gate)
    rl_coef: torch.Tensor  # weight of the prompt's RL term
    demonstration_coef: torch.Tensor  # weight of the prompt's demonstration term
    gate_rewards: torch.Tensor  # the gate reward of every rollout, gathered (SRFT's correct flags read it)


def decide_gate(
    gate_rewards: torch.Tensor,
    num_generations: int,
    correct_threshold: float,
    strategy: str,
    gamma: int,
    soft_tables: tuple[tuple[float, ...], tuple[float, ...]],
    adaptive_gamma: "AdaptiveGamma | None" = None,
    uses_demonstrations: bool = True,
) -> GateDecision:
    """
    The paper's gate for one generation batch: count `P` per prompt, then weigh its RL and demonstration terms.

    With LUFFY/SRFT, `P` includes the rollout that the demonstration then replaces and never the demonstration itself,
    whose presence is what `P` decides. Without demonstrations (`gamma=-1`) every prompt stays in RL.
    """
    correct_counts = count_correct_rollouts(gate_rewards, num_generations, correct_threshold)
    if adaptive_gamma is not None:
        gamma = adaptive_gamma.update((correct_counts.float() / num_generations).mean().item())
    if not uses_demonstrations:
        rl_coef, demonstration_coef = torch.ones(correct_counts.shape), torch.zeros(correct_counts.shape)
    else:
        rl_coef, demonstration_coef = gate_coefficients(correct_counts, strategy, gamma, *soft_tables)
    return GateDecision(correct_counts, gamma, rl_coef, demonstration_coef, gate_rewards)


def assign_rows(
    rl_coef: torch.Tensor,
    demonstration_coef: torch.Tensor,
    num_generations: int,
    first_global_row: int,
    num_local_rows: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    Decide what each local row of the generation batch carries.

    A prompt's demonstration must count once, however its rollouts are spread over processes and micro-batches, so it
    goes on the prompt's first rollout row (in global order), which lives on exactly one process. A prompt whose RL
    coefficient is 0 drops its rollouts.

    Args:
        rl_coef, demonstration_coef (`torch.Tensor` of shape `(num_prompts,)`):
            Per prompt of the global generation batch, from [`gate_coefficients`].
        num_generations (`int`):
            Rollouts per prompt.
        first_global_row (`int`):
            Global index of this process's first row (`process_index * num_local_rows` in TRL's layout).
        num_local_rows (`int`):
            Number of rows on this process.

    Returns:
        `(kinds, rl_weight, demonstration_weight)`, each of shape `(num_local_rows,)`: `RL_ROW` for a rollout that
        stays in RL (it may carry a demonstration too), `DEMONSTRATION_ROW` for a row that carries only a
        demonstration, `DROPPED_ROW` otherwise; the RL coefficient of each row's prompt; the demonstration
        coefficient on the row that carries the demonstration, 0 on the others.
    """
    global_rows = torch.arange(first_global_row, first_global_row + num_local_rows, device=rl_coef.device)
    prompt = global_rows // num_generations
    rl_weight = rl_coef[prompt]
    demonstration_weight = torch.where(global_rows % num_generations == 0, demonstration_coef[prompt], 0.0)
    kinds = torch.full((num_local_rows,), DROPPED_ROW, dtype=torch.long, device=rl_coef.device)
    kinds[demonstration_weight > 0] = DEMONSTRATION_ROW
    kinds[rl_weight > 0] = RL_ROW
    return kinds, rl_weight, demonstration_weight


def select_rows(batch: dict, rows: torch.Tensor, batch_size: int) -> dict:
    """
    Take the given rows of every per-row entry of a TRL batch dict.

    Per-row entries are tensors and lists whose first dimension is `batch_size`; anything else (e.g. the 0-dim
    `num_items_in_batch`) is shared by all rows and kept as is.
    """
    selected = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.size(0) == batch_size:
            selected[key] = value[rows]
        elif isinstance(value, list) and len(value) == batch_size:
            selected[key] = [value[i] for i in rows.tolist()]
        else:
            selected[key] = value
    return selected
