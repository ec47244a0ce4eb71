from dataclasses import dataclass, field

from trl import GRPOConfig


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
            Weight of the SFT term: the token-mean negative log-likelihood of the demonstration tokens in each
            micro-batch. The paper uses `1.0` for Qwen2.5-Math-7B and Llama-3.1-8B and `0.3` for Qwen2.5-Math-1.5B.
        rl_loss_coef (`float`, *optional*, defaults to `1.0`):
            Weight of the RL term: TRL's loss for `loss_type` on the micro-batch, in which only the rollouts of
            prompts that were not gated carry loss tokens. Token-normalised types (`"dapo"`, `"bnpo"`, `"cispo"`,
            `"vespo"`) average over those tokens; per-row ones (`"dr_grpo"`, `"grpo"`, `"luspo"`, `"sapo"`) keep
            TRL's constant denominator (rows per micro-batch times, for `"dr_grpo"`, `max_completion_length`).
            The authors' actor divides the token sum of the RL rows by the maximum length only, not by the number of
            rows, while the SFT term is a token mean in both. So with `"dr_grpo"`, `rl_loss_coef` equal to
            `per_device_train_batch_size` gives the authors' weighting of the RL term against the SFT term; `1.0`
            gives TRL's, in which RL weighs that many times less.
        demonstration_column (`str`, *optional*, defaults to `"demonstration"`):
            Dataset column holding each prompt's expert solution. A string, or (conversational datasets) a list holding
            one assistant message, as the `target` column of the authors' dataset `Elliott/Openr1-Math-46k-8192`.
            The trainer appends the tokenizer's EOS token to it.

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

    The authors also remove PPO's clipping. With TRL's defaults (`num_iterations=1` and `steps_per_generation` equal
    to `gradient_accumulation_steps`) every update is on-policy, the ratio is exactly 1 and the clip never acts, so
    `epsilon` is left at TRL's value; it only matters when you reuse rollouts across updates.
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
        metadata={"help": "Weight of the SFT term (token-mean NLL of the demonstration tokens of a micro-batch)."},
    )
    rl_loss_coef: float = field(
        default=1.0,
        metadata={
            "help": "Weight of the RL term (TRL's loss for `loss_type` over the rollouts of non-gated prompts)."
        },
    )
    demonstration_column: str = field(
        default="demonstration",
        metadata={"help": "Dataset column holding each prompt's expert solution (string or assistant message list)."},
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
        for name in ("sft_loss_coef", "rl_loss_coef"):
            value = getattr(self, name)
            if not value >= 0.0:  # also rejects NaN
                raise ValueError(f"{name} must be >= 0, got {value}.")
        if self.sft_loss_coef == 0.0 and self.rl_loss_coef == 0.0:
            raise ValueError("sft_loss_coef and rl_loss_coef are both 0: nothing would be trained. Set one above 0.")
        if not isinstance(self.demonstration_column, str) or not self.demonstration_column:
            raise ValueError("demonstration_column must name the dataset column with the expert solutions.")

        if self.skip_zero_advantage_rows:
            reasons = self.zero_advantage_gradient_terms()
            if reasons:
                raise ValueError(
                    f"skip_zero_advantage_rows=True would change the gradient here: {'; '.join(reasons)} give "
                    "zero-advantage rows a gradient or a weight. Leave skip_zero_advantage_rows unset (None) to skip "
                    "them only where that is exact, or set it to False."
                )

        super().__post_init__()

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
        return reasons
