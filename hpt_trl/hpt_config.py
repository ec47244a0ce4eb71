import math
import os
from dataclasses import dataclass, field

from trl import GRPOConfig

from .demonstrations import DEMONSTRATION_COLUMN
from .gating import SOFT_TABLE_DEMONSTRATION, SOFT_TABLE_RL


GATE_STRATEGIES = ("switch", "soft", "adaptive", "always")
DEMONSTRATION_LOSSES = ("sft", "off_policy", "srft")
ENTROPY_COVERAGES = ("rollouts", "rollouts_and_demonstrations")


@dataclass
class HPTConfig(GRPOConfig):
    r"""
    Configuration class for the [`HPTTrainer`].

    Hybrid Post-Training (HPT), from [Towards a Unified View of Large Language Model
    Post-Training](https://huggingface.co/papers/2509.04419), samples `num_generations` rollouts per prompt, counts the
    correct ones `P`, and trains each prompt with supervised fine-tuning on its expert demonstration when `P <= gamma`,
    or with the RL (GRPO) loss otherwise. [`HPTConfig`] inherits every parameter of [`~trl.GRPOConfig`] and adds the
    gate and the weights of the two terms.

    Parameters:
        > Parameters that control the gate

        gamma (`int`, *optional*, defaults to `0`):
            A prompt with at most `gamma` correct rollouts out of `num_generations` is trained with SFT on its
            demonstration instead of RL. It is a count, not a fraction: the paper uses `0` for Qwen2.5-Math and `2`
            for Llama-3.1-8B (of 8 rollouts). `-1` disables SFT (the trainer is then GRPO); `gamma >= num_generations`
            sends every prompt to SFT.
        gate_reward (`str` or `int`, *optional*, defaults to `"0"`):
            The reward function that decides whether a rollout is correct: its name (as in the `rewards/<name>/mean`
            metric, e.g. the function's `__name__`) or its index in `reward_funcs`. The other reward functions still
            shape the RL advantages but do not affect the gate.
        correct_threshold (`float`, *optional*, defaults to `1.0`):
            A rollout counts as correct when the `gate_reward` function returns at least this value. A rollout that
            function returns `None` for is not correct.

        > Parameters that control the loss

        sft_loss_coef (`float`, *optional*, defaults to `1.0`):
            Weight of the SFT term (see "The loss of an update" below). The paper uses `1.0` for Qwen2.5-Math-7B and
            Llama-3.1-8B and `0.3` for Qwen2.5-Math-1.5B.
        rl_loss_coef (`float`, *optional*, defaults to `1.0`):
            A plain multiplier of the RL term (TRL's loss for `loss_type` over the rollouts of prompts that were not
            gated) and of the off-policy demonstration term; `1.0` is the authors' weighting, no recipe changes it.
            With `gamma=-1` it multiplies TRL's whole loss.
        demonstration_column (`str`, *optional*, defaults to `"demonstration"`):
            Dataset column holding each prompt's expert solution. A string, or (conversational datasets) a list holding
            one assistant message, as the `target` column of the authors' dataset `Elliott/Openr1-Math-46k-8192`.
            The trainer appends the tokenizer's EOS token to it. This is the column the trainer reads: after
            [`~hpt_trl.data.load_hpt_dataset`] it is `"demonstration"`, whatever the source column was (the loader's
            `demonstration_column`, `dataset_demonstration_column` in `train.py` and recipes).

        > Parameters that choose the method: the gate and how a demonstration enters the loss

        gate_strategy (`str`, *optional*, defaults to `"switch"`):
            How `P` sets each prompt's weights `(RL, demonstration)`. `"switch"`: the paper's HPT, `(0, 1)` when
            `P <= gamma`, else `(1, 0)`. `"soft"`: looked up in `soft_rl_coefs` / `soft_demonstration_coefs` by `P`.
            `"adaptive"`: the switch with a gamma that follows the running accuracy (see
            `adaptive_target_accuracy`; the gamma in use is logged as `hpt/gamma`). `"always"`: `(1, 1)` for every
            prompt, as LUFFY and SRFT (no gate). A prompt with RL weight 0 drops its rollouts; one with demonstration
            weight above 0 gets one demonstration row.
        soft_rl_coefs (`list[float]`, *optional*, defaults to `[0.0, 0.125, 0.25, 0.5, 1.0]`):
            `"soft"` only: the RL weight of a prompt with `P = 0, 1, 2, ...` correct rollouts; the last entry holds
            for every larger `P`. The RL weight scales the prompt's advantages. The default is the authors' table
            (their `P` counts the demonstration among the 8 rows, so their `P = k + 1` is this `P = k`).
        soft_demonstration_coefs (`list[float]`, *optional*, defaults to `[1.0, 0.5, 0.25, 0.125, 0.0]`):
            `"soft"` only: the demonstration weight by `P`, as `soft_rl_coefs`.
        adaptive_target_accuracy (`float`, *optional*, defaults to `0.25`):
            `"adaptive"` only: with `a` the moving average of the fraction of correct rollouts,
            `gamma = clamp(round(num_generations * (adaptive_target_accuracy - a)), 0, num_generations)`: the
            paper's 2 of 8 for a policy at 0 accuracy, 0 once it reaches the target.
        adaptive_accuracy_decay (`float`, *optional*, defaults to `0.9`):
            `"adaptive"` only: decay of that moving average, per generation batch.
        demonstration_loss (`str`, *optional*, defaults to `"sft"`):
            The term of a demonstration row. `"sft"`: token-mean NLL (weighted by the demonstration weight) times
            `sft_loss_coef`. `"off_policy"` (LUFFY): as in the authors' runs (8 = 7 rollouts + 1 demonstration), the
            demonstration takes the place of its group's first rollout, which leaves the RL term (the group's RL term
            has `num_generations - 1` rows). The reward functions score the demonstration as that row's completion
            (so a demonstration the verifier rejects gets its low reward), and the group advantage is TRL's over the
            `num_generations - 1` rollouts and the demonstration. Each demonstration token adds `-A * p / (p + 0.1)`
            (A the demonstration's advantage, p its probability under the policy, no clipping), summed like the RL
            term (`"dr_grpo"`: divided by rows x `max_completion_length`) and weighted by `rl_loss_coef`. `P` (the
            gate's count) is taken over the `num_generations` sampled rollouts, the replaced one included: it decides
            whether a group gets a demonstration, so it does not count the demonstration (the authors' `P`, whose
            rows always hold one, does); with `gate_strategy="always"` (LUFFY, SRFT) it only feeds the logged
            `hpt/group_accuracy`. A group without a demonstration keeps its `num_generations` rollouts. `"srft"`:
            the authors' SRFT, with LUFFY's group: the off-policy term, plus SFT weighted by `0.5 * exp(-H)` (H the
            demonstration's mean token entropy, detached), and rollouts weighted by `0.1 * exp(H)` when correct and
            `-1` when wrong in place of their advantage.

        > Parameters that control the cost of a training step

        padding_free (`bool` or `None`, *optional*, defaults to `None`):
            Pack the sequences of each training forward (the rollouts that carry loss and the demonstrations) into one
            row without padding, with `position_ids` restarting at each sequence. `None` packs when the model's
            attention is a flash-attention implementation (its varlen kernel keeps attention per sequence); `sdpa` and
            `eager` would build a dense block-diagonal mask over the whole pack, so they get a right-padded batch of the
            same sequences instead, trimmed to the longest. Either way, rows without loss tokens are not forwarded.
        skip_zero_advantage_rows (`bool` or `None`, *optional*, defaults to `None`):
            Leave rollouts whose advantage is exactly 0 (e.g. every rollout of the group correct) out of the training
            forward and backward. Their loss is 0 and, with `beta=0`, no entropy bonus, `top_entropy_quantile=1.0`
            and a `loss_type` other than `"bnpo"`, leaving them out does not change the gradient, so `None` turns it
            on exactly then. The `entropy` and `clip_ratio` metrics then describe the rows that were trained.

        > Parameters of the authors' recipes

        entropy_coverage (`str`, *optional*, defaults to `"rollouts"`):
            With an entropy bonus (`entropy_coef` or `use_adaptive_entropy`), the tokens it covers: `"rollouts"` (the
            RL rows' loss tokens, as TRL) or `"rollouts_and_demonstrations"` (the authors': their bonus is the entropy
            of every row of a micro-batch). With demonstrations, and with `"rollouts_and_demonstrations"` also at
            `gamma=-1` (the paper's GRPO baseline, whose rows are all rollouts), the bonus is HPT's, weighed as in the
            loss formula below; at `gamma=-1` with `"rollouts"` it is TRL's (a token mean per micro-batch).
        grad_norm_skip_threshold (`float` or `None`, *optional*, defaults to `None`):
            Skip the optimizer update (no parameter, moment or step-count change) when the gradient norm before
            clipping exceeds this value or is not finite, as the authors' Qwen scripts (`MAX_GRAD_NORM=80`, on their
            loss scale; see the loss formula). Logged as `hpt/skipped_update`. Not with DeepSpeed, which steps inside
            its backward.

        > Defaults changed from [`~trl.GRPOConfig`] so that the RL term is the authors'

        loss_type (`str`, *optional*, defaults to `"dr_grpo"`):
            The authors sum the per-token loss of each sequence and divide by a constant (the maximum response length)
            rather than by the sequence length or the token count; TRL's `"dr_grpo"` does exactly that, with
            `max_completion_length` as the constant.
        scale_rewards (`str`, *optional*, defaults to `"none"`):
            The authors' advantage is the reward minus the group mean, without dividing by the group standard
            deviation.
        beta (`float`, *optional*, defaults to `0.0`):
            No KL term, as in the authors' runs (and TRL's default).

    The loss of an update. With `N` the rollout rows of one optimizer update (`per_device_train_batch_size x
    gradient_accumulation_steps x processes`, i.e. `num_generations` x its prompts) and `L = max_completion_length`,
    the update minimises

        (1 / N) * [ rl_loss_coef * sum_{rollouts i} a_i * sum_t l_it / L          (RL, TRL's `dr_grpo`)
                  + sft_loss_coef * sum_{demonstrations d} w_d * mean_t(-log pi(y_dt))     (SFT)
                  - entropy_coef * sum_{covered tokens} H_t / L ]                   (entropy bonus)

    where `l_it` is TRL's per-token policy loss, `a_i` the gate's RL weight of the rollout's prompt and `w_d` its
    demonstration weight (both 1 for the switch). Every term is a sum over rows of the update divided by the constant
    `N`, so the same generation batch split into other micro-batches, accumulation steps or processes gives the same
    update. One RL token weighs `|d| / (L * sft_loss_coef)` of one token of a demonstration of `|d|` tokens: the
    authors' actor divides its RL token sum by the maximum response length (8192) and takes the token mean of the
    demonstrations of a dynamic micro-batch, which holds one demonstration in the common case, which gives the same
    ratio. Their loss is `N / 8` times this one (they average 8 ranks' sums; here the `N = 512` rows of an update are
    averaged), which matters only for the thresholds `max_grad_norm` and `grad_norm_skip_threshold`: the recipes
    divide the authors' values by 64. Other `loss_type`s replace the first line by TRL's loss for that type.
    `"bnpo"` is a token mean per micro-batch in TRL, so its weight depends on the split; `"dapo"` is not. With
    `gamma=-1` (no demonstrations) the trainer is [`~trl.GRPOTrainer`], and so is its entropy bonus unless
    `entropy_coverage="rollouts_and_demonstrations"` asks for the authors' (see there).

    PPO's clipping, which the authors remove: with `steps_per_generation` equal to `gradient_accumulation_steps` and
    `num_iterations=1` every update is on-policy, the ratio is exactly 1 and the clip never acts. The authors make two
    updates per rollout batch (`steps_per_generation = 2 x gradient_accumulation_steps`), the second off-policy and
    unclipped: `epsilon: 1.0` with `epsilon_high: .inf` removes the clip (`clamp(ratio, 0, inf) = ratio`).
    """

    gamma: int = field(
        default=0,
        metadata={
            "help": "A prompt with at most `gamma` correct rollouts (out of `num_generations`) is trained with SFT on "
            "its demonstration instead of RL. `-1` disables SFT (GRPO); `gamma >= num_generations` makes every prompt "
            "SFT."
        },
    )
    # Annotated `str` so that YAML and the command line accept a name; `__post_init__` turns a digit string into an
    # index, and Python callers may pass an int.
    gate_reward: str = field(
        default="0",
        metadata={"help": "Name or index of the reward function that decides whether a rollout is correct."},
    )
    correct_threshold: float = field(
        default=1.0,
        metadata={"help": "A rollout is correct when the `gate_reward` function returns at least this value."},
    )
    sft_loss_coef: float = field(
        default=1.0,
        metadata={
            "help": "Weight of the SFT term (each demonstration's token-mean NLL, over the update's rollout rows)."
        },
    )
    rl_loss_coef: float = field(
        default=1.0,
        metadata={
            "help": "Weight of the RL term (TRL's loss for `loss_type` over the rollouts of non-gated prompts)."
        },
    )
    demonstration_column: str = field(
        default=DEMONSTRATION_COLUMN,
        metadata={"help": "Dataset column holding each prompt's expert solution (string or assistant message list)."},
    )

    gate_strategy: str = field(
        default="switch",
        metadata={"help": "How P sets each prompt's (RL, demonstration) weights.", "choices": list(GATE_STRATEGIES)},
    )
    soft_rl_coefs: list[float] = field(
        default_factory=lambda: list(SOFT_TABLE_RL),
        metadata={"help": "soft gate: RL weight for P = 0, 1, 2, ... (the last entry for every larger P)."},
    )
    soft_demonstration_coefs: list[float] = field(
        default_factory=lambda: list(SOFT_TABLE_DEMONSTRATION),
        metadata={"help": "soft gate: demonstration weight for P = 0, 1, 2, ... (the last entry for larger P)."},
    )
    adaptive_target_accuracy: float = field(
        default=0.25,
        metadata={"help": "adaptive gate: gamma = round(n * (target - running accuracy)), clamped to [0, n]."},
    )
    adaptive_accuracy_decay: float = field(
        default=0.9, metadata={"help": "adaptive gate: decay of the running accuracy per generation batch."}
    )
    demonstration_loss: str = field(
        default="sft",
        metadata={"help": "Loss of a demonstration row.", "choices": list(DEMONSTRATION_LOSSES)},
    )
    padding_free: bool | None = field(
        default=None,
        metadata={
            "help": "Pack each training forward's sequences into one row without padding. None: only with a "
            "flash-attention implementation (sdpa/eager get a trimmed right-padded batch instead)."
        },
    )
    skip_zero_advantage_rows: bool | None = field(
        default=None,
        metadata={
            "help": "Skip the forward/backward of rollouts with zero advantage. None: on where this leaves the "
            "gradient unchanged (beta=0, no entropy bonus, top_entropy_quantile=1, loss_type other than bnpo)."
        },
    )

    entropy_coverage: str = field(
        default="rollouts",
        metadata={
            "help": "Tokens the entropy bonus covers: 'rollouts' (TRL's) or 'rollouts_and_demonstrations' (the "
            "authors', which also selects HPT's per-row bonus at gamma=-1).",
            "choices": list(ENTROPY_COVERAGES),
        },
    )
    grad_norm_skip_threshold: float | None = field(
        default=None,
        metadata={
            "help": "Skip the optimizer update when the gradient norm (before clipping) exceeds this value (the "
            "authors' MAX_GRAD_NORM, on this loss's scale)."
        },
    )

    # Authors' RL term: Dr. GRPO aggregation and mean-centred advantages without std scaling.
    loss_type: str = field(
        default="dr_grpo",
        metadata={"help": "Loss formulation; HPT defaults to 'dr_grpo', the authors' aggregation. See GRPOConfig."},
    )
    scale_rewards: str = field(
        default="none",
        metadata={"help": "Reward scaling; HPT defaults to 'none' (mean-centred advantages). See GRPOConfig."},
    )

    def __post_init__(self):
        # The command line hands `gate_reward` over as a string; an all-digit string means an index.
        if isinstance(self.gate_reward, str) and self.gate_reward.strip().isdigit():
            self.gate_reward = int(self.gate_reward)
        if isinstance(self.gamma, float) and self.gamma.is_integer():
            self.gamma = int(self.gamma)

        if not isinstance(self.gamma, int) or isinstance(self.gamma, bool) or self.gamma < -1:
            raise ValueError(
                f"gamma must be an integer >= -1 (a count of correct rollouts, not a fraction), got {self.gamma!r}. "
                "Use -1 to disable SFT, 0 to use SFT only on prompts with no correct rollout."
            )
        if isinstance(self.gate_reward, bool) or not isinstance(self.gate_reward, (int, str)):
            raise ValueError(f"gate_reward must be a reward function name or index, got {self.gate_reward!r}.")
        if isinstance(self.gate_reward, int) and self.gate_reward < 0:
            raise ValueError(f"gate_reward must be a non-negative index into reward_funcs, got {self.gate_reward}.")
        if isinstance(self.gate_reward, str) and not self.gate_reward.strip():
            raise ValueError("gate_reward is empty: set it to a reward function's name or index (default 0).")
        if not math.isfinite(self.correct_threshold):
            raise ValueError(
                f"correct_threshold must be a finite number (the gate reward a correct rollout reaches, e.g. 1.0), got "
                f"{self.correct_threshold}: with NaN no rollout would count as correct and every prompt would go to SFT."
            )
        for name in ("sft_loss_coef", "rl_loss_coef"):
            value = getattr(self, name)
            if not value >= 0.0:  # also rejects NaN
                raise ValueError(f"{name} must be >= 0, got {value}.")
        if self.sft_loss_coef == 0.0 and self.rl_loss_coef == 0.0:
            raise ValueError("sft_loss_coef and rl_loss_coef are both 0: nothing would be trained. Set one above 0.")
        if not isinstance(self.demonstration_column, str) or not self.demonstration_column:
            raise ValueError("demonstration_column must name the dataset column with the expert solutions.")

        if self.gate_strategy not in GATE_STRATEGIES:
            raise ValueError(f"gate_strategy must be one of {GATE_STRATEGIES}, got {self.gate_strategy!r}.")
        if self.demonstration_loss not in DEMONSTRATION_LOSSES:
            raise ValueError(
                f"demonstration_loss must be one of {DEMONSTRATION_LOSSES}, got {self.demonstration_loss!r}."
            )
        for name in ("soft_rl_coefs", "soft_demonstration_coefs"):
            table = getattr(self, name)
            if not table or not all(isinstance(x, (int, float)) and math.isfinite(x) and x >= 0 for x in table):
                raise ValueError(f"{name} must be a non-empty list of finite weights >= 0 (index = P), got {table!r}.")
        if self.gate_strategy == "soft" and not any(self.soft_demonstration_coefs):
            raise ValueError("soft_demonstration_coefs are all 0: no demonstration would be used. Use gamma=-1.")
        if not 0.0 < self.adaptive_target_accuracy <= 1.0:
            raise ValueError(f"adaptive_target_accuracy must be in (0, 1], got {self.adaptive_target_accuracy}.")
        if not 0.0 <= self.adaptive_accuracy_decay < 1.0:
            raise ValueError(f"adaptive_accuracy_decay must be in [0, 1), got {self.adaptive_accuracy_decay}.")
        if self.gamma == -1 and self.gate_strategy != "switch":
            raise ValueError(
                f"gamma=-1 (GRPO, no demonstrations) contradicts gate_strategy={self.gate_strategy!r}: leave gamma "
                "at its default, or use gate_strategy='switch'."
            )
        if self.demonstration_loss in ("off_policy", "srft"):
            where = f"demonstration_loss={self.demonstration_loss!r}"
            if self.loss_type not in ("dr_grpo", "grpo"):
                raise ValueError(
                    f"{where} sums the demonstration's tokens like the RL term, which is defined for loss_type "
                    f"'dr_grpo' (the authors') and 'grpo'; got loss_type={self.loss_type!r}."
                )
            if self.scale_rewards not in ("none", "group"):
                raise ValueError(f"{where} recomputes group advantages: scale_rewards must be 'none' or 'group'.")
            if self.multi_objective_aggregation != "sum_then_normalize":
                raise ValueError(f"{where} needs multi_objective_aggregation='sum_then_normalize'.")
        if self.demonstration_loss == "srft" and self.temperature != 1.0:
            raise ValueError(
                "demonstration_loss='srft' weighs rows by their entropy at temperature 1 (the authors' setting): "
                f"set temperature=1.0 (got {self.temperature})."
            )

        if self.entropy_coverage not in ENTROPY_COVERAGES:
            raise ValueError(f"entropy_coverage must be one of {ENTROPY_COVERAGES}, got {self.entropy_coverage!r}.")
        if self.hpt_entropy_bonus and (self.entropy_coef != 0.0 or self.use_adaptive_entropy):
            if self.top_entropy_quantile < 1.0:
                raise ValueError(
                    f"top_entropy_quantile={self.top_entropy_quantile} with HPT's entropy bonus (demonstrations, or "
                    "entropy_coverage='rollouts_and_demonstrations'): the quantile mask is taken per micro-batch, so "
                    "the bonus would depend on how a batch is split. Set top_entropy_quantile=1.0 or entropy_coef=0."
                )
            if (
                self.uses_demonstrations
                and self.entropy_coverage == "rollouts_and_demonstrations"
                and self.temperature != 1.0
            ):
                raise ValueError(
                    "entropy_coverage='rollouts_and_demonstrations' measures the demonstrations' entropy at "
                    f"temperature 1, the rollouts' at the sampling temperature ({self.temperature}): set "
                    "temperature=1.0 (the authors') or entropy_coverage='rollouts'."
                )
        threshold = self.grad_norm_skip_threshold
        if threshold is not None and not threshold > 0:  # also rejects NaN
            raise ValueError(f"grad_norm_skip_threshold must be > 0 or None (no skipping), got {threshold}.")

        if self.skip_zero_advantage_rows:
            reasons = self.zero_advantage_gradient_terms()
            if reasons:
                raise ValueError(
                    f"skip_zero_advantage_rows=True would change the gradient here: {'; '.join(reasons)} give "
                    "zero-advantage rows a gradient or a weight. Leave skip_zero_advantage_rows unset (None) to skip "
                    "them only where that is exact, or set it to False."
                )

        super().__post_init__()

        uses_deepspeed = self.deepspeed or os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
        if threshold is not None and uses_deepspeed:
            raise ValueError(
                f"grad_norm_skip_threshold={threshold} cannot act under DeepSpeed, which takes the optimizer step inside "
                "its backward, before the norm is known here. Launch with accelerate_configs/fsdp2.yaml (or DDP), or "
                "unset grad_norm_skip_threshold."
            )

    def zero_advantage_gradient_terms(self) -> list[str]:
        """The settings under which a rollout with zero advantage still shapes the gradient (empty: it does not)."""
        reasons = []
        if self.beta != 0.0:
            reasons.append(f"beta={self.beta} (the KL term)")
        if self.entropy_coef != 0.0 or self.use_adaptive_entropy:
            reasons.append("the entropy bonus (entropy_coef / use_adaptive_entropy)")
        if self.top_entropy_quantile < 1.0:
            reasons.append(
                f"top_entropy_quantile={self.top_entropy_quantile} (the mask is a quantile over all tokens)"
            )
        if self.loss_type == "bnpo":
            reasons.append("loss_type='bnpo' (it averages over every token of the micro-batch)")
        if self.demonstration_loss == "srft":
            reasons.append("demonstration_loss='srft' (it replaces the rollouts' advantages)")
        return reasons

    @property
    def hpt_entropy_bonus(self) -> bool:
        """Whether an entropy bonus is HPT's (per update row, over `entropy_coverage`) rather than TRL's."""
        return self.uses_demonstrations or self.entropy_coverage == "rollouts_and_demonstrations"

    @property
    def uses_demonstrations(self) -> bool:
        """Whether any prompt can get a demonstration: every setting but the switch with gamma = -1 (GRPO)."""
        return not (self.gate_strategy == "switch" and self.gamma == -1)

    @property
    def upge_parts(self) -> dict[str, str]:
        """The four parts of the unified policy gradient estimator this configuration trains with, by row kind."""
        reuses_rollouts = self.num_iterations > 1 or self.steps_per_generation != self.gradient_accumulation_steps
        clip = "PPO clip" if reuses_rollouts else "PPO clip (inactive: one on-policy update per batch)"
        advantage = f"group reward minus mean ({'std-scaled' if self.scale_rewards != 'none' else 'not std-scaled'})"
        rollouts = {
            "stabilization_mask": clip,
            "reference_denominator": "pi_old (importance ratio)",
            "advantage": advantage if self.demonstration_loss != "srft" else "0.1*exp(H) if correct else -1",
            "likelihood_gradient": "grad pi_theta",
        }
        demonstration = {
            "sft": {"stabilization_mask": "none", "reference_denominator": "pi_theta", "advantage": "1"},
            "off_policy": {
                "stabilization_mask": "none",
                "reference_denominator": "1, shaped p/(p+0.1)",
                "advantage": "group advantage, the verifier-scored demonstration in place of one rollout",
            },
            "srft": {
                "stabilization_mask": "none",
                "reference_denominator": "pi_theta (SFT, weight 0.5*exp(-H)) and 1 shaped p/(p+0.1)",
                "advantage": "1 (SFT) and the group advantage (off-policy)",
            },
        }[self.demonstration_loss]
        parts = {f"rollouts/{key}": value for key, value in rollouts.items()}
        if self.uses_demonstrations:
            parts.update({f"demonstrations/{key}": value for key, value in demonstration.items()})
            parts["demonstrations/likelihood_gradient"] = "grad pi_theta"
            parts["gate"] = self.gate_strategy
        return parts
