import json
import os
import textwrap
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate.logging import get_logger
from trl import GRPOConfig, GRPOTrainer
from trl.data_utils import is_conversational
from trl.import_utils import is_vllm_available
from trl.trainer.utils import get_config_model_id, pad, selective_log_softmax

from .demonstration_losses import (
    off_policy_token_losses,
    srft_rollout_weights,
    srft_sft_weights,
    weighted_mean_nll,
)
from .demonstrations import demonstration_text, tokenize_demonstrations, validate_demonstration_column
from .gating import (
    DEMONSTRATION_ROW,
    AdaptiveGamma,
    assign_rows,
    count_correct_rollouts,
    gate_coefficients,
    select_rows,
)
from .hpt_config import HPTConfig
from .input_checks import check_dataset_columns, resolve_gate_reward, reward_function_names
from .packing import Sequence, plan_forward, sequences_from_batch, split_scored, to_rectangle
from .sampler import EpochSeededRepeatSampler


logger = get_logger(__name__)


def _loss_mask(batch: dict) -> torch.Tensor:
    """The tokens TRL's loss counts: the completion mask, without tool-output tokens when there are any."""
    if "tool_mask" in batch:
        return batch["completion_mask"] * batch["tool_mask"]
    return batch["completion_mask"]


@dataclass
class _ForwardRequest:
    """What the next training forward must cover: rows of TRL's batch, and extra sequences (demonstrations)."""

    rows: list[int]
    extra: list[Sequence] = field(default_factory=list)
    # Filled by the forward: the extra sequences' log-probs and entropies, and the rows' (batch, completion) tensors.
    extra_logps: list[torch.Tensor] = field(default_factory=list)
    extra_entropies: list[torch.Tensor] = field(default_factory=list)
    row_logps: torch.Tensor | None = None
    row_entropies: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None  # MoE load-balancing loss of the forward, which TRL adds to its loss


class HPTTrainer(GRPOTrainer):
    """
    Trainer for Hybrid Post-Training (HPT).

    HPT ([Towards a Unified View of Large Language Model Post-Training](https://huggingface.co/papers/2509.04419))
    samples `num_generations` rollouts per prompt and counts the correct ones, `P`. A prompt with `P <= gamma` leaves
    RL: its rollouts are dropped and one row holding its expert demonstration (the prompt's tokens, the demonstration,
    EOS) takes their place. The other prompts keep their rollouts and the GRPO loss. With `N` the rollout rows of an
    optimizer update, the update's loss is

        rl_loss_coef * (TRL's loss for `loss_type` over the RL rows)
        + sft_loss_coef * (sum over demonstrations of their token-mean NLL) / N
        - entropy_coef * (sum of the covered tokens' entropy) / (N * max_completion_length)

    a sum over rows divided by a constant, as TRL's `dr_grpo` term, so the split into micro-batches, accumulation
    steps and processes does not change it ([`HPTConfig`] writes it out).

    Generation, rewards, logging, PEFT, vLLM and checkpointing are [`~trl.GRPOTrainer`]'s. HPT changes two steps:
    after scoring (`_generate_and_score_completions`) it gates the prompts, adds the demonstration rows and masks
    every rollout that left RL out of TRL's tensors; in the loss (`_compute_loss`) TRL's loss runs on the micro-batch
    as it is (only RL rows carry loss tokens) and the demonstration rows add their terms. The constructor is
    [`~trl.GRPOTrainer`]'s, with an [`HPTConfig`] as `args`.

    With `demonstration_loss="off_policy"` (LUFFY) or `"srft"`, groups are the authors' 7 + 1: a group's demonstration
    takes the place of its first rollout, is scored by the reward functions (`_calculate_rewards`, before TRL turns
    the rewards into group advantages) and enters the loss with that row's advantage; the replaced rollout leaves RL.
    """

    _tag_names = ["trl", "hpt"]
    _name = "HPT"
    _paper = {
        "title": "Towards a Unified View of Large Language Model Post-Training",
        "id": "2509.04419",
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @article{lv2025towards,
                title        = {{Towards a Unified View of Large Language Model Post-Training}},
                author       = {Xingtai Lv and Yuxin Zuo and Youbang Sun and Hongyi Liu and Yuntian Wei and Zhekai Chen and Lixuan He and Xuekai Zhu and Kaiyan Zhang and Bingning Wang and Ning Ding and Bowen Zhou},
                year         = 2025,
                eprint       = {arXiv:2509.04419},
            }"""),
    }

    def __init__(self, model, reward_funcs=None, args: HPTConfig | None = None, train_dataset=None, **kwargs):
        if args is None:
            model_name = model if isinstance(model, str) else get_config_model_id(model.config)
            args = HPTConfig(f"{model_name.split('/')[-1]}-HPT")
        elif not isinstance(args, HPTConfig):
            kind = "GRPOConfig" if isinstance(args, GRPOConfig) else type(args).__name__
            raise TypeError(
                f"HPTTrainer needs an HPTConfig as `args`, got a {kind}. Build `HPTConfig(...)` with the same "
                "arguments: it accepts every GRPOConfig field and adds gamma, sft_loss_coef and the others."
            )
        # Cheap checks first, so bad input fails before the model is even loaded.
        if args.use_vllm and not is_vllm_available():
            raise ImportError(
                "use_vllm=True but vLLM is not installed. Install it on a CUDA machine with "
                "`pip install 'hpt-trl[vllm]'` (TRL's supported vLLM range), or set use_vllm=False to generate with "
                "transformers."
            )
        if args.uses_demonstrations and train_dataset is not None:
            validate_demonstration_column(train_dataset, args.demonstration_column)
        if train_dataset is not None and kwargs.get("rollout_func") is None:  # a rollout_func may add columns
            check_dataset_columns(train_dataset, reward_funcs)
        gate_reward_index = resolve_gate_reward(args.gate_reward, reward_function_names(reward_funcs))

        super().__init__(model, reward_funcs, args=args, train_dataset=train_dataset, **kwargs)

        self.gamma = args.gamma
        self.uses_demonstrations = args.uses_demonstrations
        self.gate_reward_index = gate_reward_index
        self.adaptive_gamma = None
        if args.gate_strategy == "adaptive":
            self.adaptive_gamma = AdaptiveGamma(
                self.num_generations, args.adaptive_target_accuracy, args.adaptive_accuracy_decay
            )
        if self.uses_demonstrations and self._is_vlm:
            raise NotImplementedError(
                "HPTTrainer does not support vision-language models yet: set gamma=-1 to train them with GRPO."
            )
        if self.uses_demonstrations and self._tokenizer.eos_token_id is None:
            raise ValueError("The tokenizer has no EOS token, which HPT appends to every demonstration: set one.")
        self._gate_rewards = None
        self._warned_truncation = False
        self._forward_request = None
        attention = str(getattr(self.model.config, "_attn_implementation", None) or "")
        flash = "flash" in attention
        self.padding_free = args.padding_free if args.padding_free is not None else flash
        # Flash-attention's varlen kernel takes one packed row; a dense mask (sdpa, eager) takes rows as wide as the
        # longest sequence, several sequences to a row, so attention costs what a padded batch costs.
        self._layout = ("packed" if flash else "bins") if self.padding_free else "padded"
        skip = args.skip_zero_advantage_rows
        self.skip_zero_advantage_rows = not args.zero_advantage_gradient_terms() if skip is None else skip
        # With demonstrations, or the authors' coverage, HPT adds the entropy bonus itself (normalised per update row);
        # TRL's is a token mean per micro-batch, whose weight would depend on how a batch is split.
        self._hpt_entropy_bonus = self._entropy_bonus_enabled and args.hpt_entropy_bonus
        if self._hpt_entropy_bonus:
            self._entropy_bonus_enabled = False

    # The metrics a reader of the model card wants first: what HPT did and how well the policy did at the end.
    _CARD_METRICS = (
        "reward",
        "hpt/group_accuracy",
        "hpt/sft_prompt_ratio",
        "hpt/sft_loss",
        "hpt/off_policy_loss",
        "hpt/rl_loss",
        "hpt/gamma",
        "completions/mean_length",
        "entropy",
        "train_loss",
    )

    def create_model_card(self, model_name=None, dataset_name=None, tags=None):
        super().create_model_card(model_name=model_name, dataset_name=dataset_name, tags=tags)
        if not self.is_world_process_zero():
            return
        last = {}
        for entry in self.state.log_history:
            last.update({key: entry[key] for key in self._CARD_METRICS if entry.get(key) is not None})
        if not last:
            return
        rows = "\n".join(f"| `{key}` | {last[key]:.4g} |" for key in self._CARD_METRICS if key in last)
        parts = "\n".join(f"| {key} | {value} |" for key, value in self.args.upge_parts.items())
        section = (
            f"\n\n## Final training metrics\n\nLast logged values at step {self.state.global_step}, gamma={self.gamma}, "
            f"sft_loss_coef={self.args.sft_loss_coef}.\n\n| metric | value |\n| --- | --- |\n{rows}\n"
            f"\n## Unified estimator parts\n\n| part | setting |\n| --- | --- |\n{parts}\n"
        )
        with open(os.path.join(self.args.output_dir, "README.md"), "a") as card:
            card.write(section)

    # The adaptive gate's running accuracy is training state: checkpoints carry it, as TRL's entropy controller.
    _GATE_STATE_FILE = "hpt_gate_state.json"

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.adaptive_gamma is not None and self.args.should_save:
            folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
            with open(os.path.join(folder, self._GATE_STATE_FILE), "w") as f:
                json.dump(self.adaptive_gamma.state_dict(), f)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if self.adaptive_gamma is not None and checkpoint is not None:
            path = os.path.join(checkpoint, self._GATE_STATE_FILE)
            if os.path.isfile(path):
                with open(path) as f:
                    self.adaptive_gamma.load_state_dict(json.load(f))

    def _get_grad_norm(self, model, grad_norm=None):
        # The transformers loop hands in the norm before clipping; the authors' Qwen scripts skip updates above a norm.
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        threshold = self.args.grad_norm_skip_threshold
        if threshold is not None:
            norm = float(grad_norm)
            skip = not norm <= threshold  # a non-finite norm is skipped too
            if skip:
                # An optimizer skips parameters without a gradient: no parameter, moment or step-count change.
                for parameter in model.parameters():
                    parameter.grad = None
                logger.warning(
                    f"Skipped the update of step {self.state.global_step + 1}: gradient norm {norm:.4g} > "
                    f"grad_norm_skip_threshold={threshold}."
                )
            self._metrics["train"]["hpt/skipped_update"].append(float(skip))
        return grad_norm

    def _set_signature_columns_if_needed(self):
        # With `remove_unused_columns=True`, the demonstrations must survive the column pruning.
        super()._set_signature_columns_if_needed()
        if self.args.demonstration_column not in self._signature_columns:
            self._signature_columns.append(self.args.demonstration_column)

    def _get_train_sampler(self, dataset=None):
        # TRL's sampler keeps its shuffle state in memory only: reseed per epoch so that resuming keeps the data order.
        return EpochSeededRepeatSampler.like(super()._get_train_sampler(dataset))

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        # The gate needs every rollout of a group, and a group can straddle processes: keep the gathered rewards.
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._gate_rewards = rewards_per_func[:, self.gate_reward_index]
        if not self.model.training:
            return rewards_per_func
        # The gate is decided here, from the sampled rollouts, so that a demonstration that replaces a rollout
        # (LUFFY, SRFT) is scored before TRL turns the rewards into group advantages.
        self._gate = self._decide_gate(self._gate_rewards)
        if self.uses_demonstrations and self.args.demonstration_loss != "sft":
            rewards_per_func = self._score_demonstrations_in_groups(inputs, prompts, completions, rewards_per_func)
        return rewards_per_func

    def _decide_gate(self, gate_rewards: torch.Tensor):
        """
        `(P, gamma, rl_coef, demonstration_coef)` per prompt of the global generation batch. `P` counts the correct
        rollouts among the `num_generations` sampled ones; with LUFFY/SRFT it includes the rollout that the
        demonstration then replaces and never the demonstration itself, whose presence is what `P` decides.
        """
        correct_counts = count_correct_rollouts(gate_rewards, self.num_generations, self.args.correct_threshold)
        gamma = self.gamma
        if self.adaptive_gamma is not None:
            gamma = self.adaptive_gamma.update((correct_counts.float() / self.num_generations).mean().item())
        if not self.uses_demonstrations:
            return correct_counts, gamma, torch.ones(correct_counts.shape), torch.zeros(correct_counts.shape)
        rl_coef, demonstration_coef = gate_coefficients(
            correct_counts,
            self.args.gate_strategy,
            gamma,
            tuple(self.args.soft_rl_coefs),
            tuple(self.args.soft_demonstration_coefs),
        )
        return correct_counts, gamma, rl_coef, demonstration_coef

    def _score_demonstrations_in_groups(self, inputs, prompts, completions, rewards_per_func) -> torch.Tensor:
        """
        LUFFY/SRFT, 7 + 1: in every group with a demonstration, the demonstration takes the place of the group's
        first rollout (the row that carries it). It is scored by the reward functions as that row's completion (TRL's
        `_calculate_rewards`, the row's dataset columns as kwargs), and its scores replace the rollout's in the
        gathered rewards, from which TRL computes the group advantages as for any row.

        Each process scores the demonstrations of its own rows: one call per reward function, one demonstration per
        group. Every process must gather the same number of rows, so the calls are padded to the largest count with
        copies of a local demonstration, whose scores are dropped. The gate is the same on every process, so each
        knows every process's count and all of them call (or skip) the gather together.
        """
        n = self.num_generations
        num_rows, world, rank = len(prompts), self.accelerator.num_processes, self.accelerator.process_index
        carrying = (self._gate[3] > 0).nonzero().squeeze(1)
        global_rows = (carrying * n).to(rewards_per_func.device)  # the first row of each group with a demonstration
        owner = global_rows // num_rows
        counts = torch.bincount(owner, minlength=world)
        slots = int(counts.max()) if global_rows.numel() else 0
        if slots == 0:
            return rewards_per_func
        local = (global_rows[owner == rank] - rank * num_rows).tolist()
        rows = local + [local[0] if local else 0] * (slots - len(local))
        texts, demo_ids, truncated = self._pending_demonstrations
        scored = [
            self._tokenizer.decode(demo_ids[row], skip_special_tokens=True) if truncated[row] else texts[row]
            for row in rows
        ]
        if is_conversational({"prompt": prompts[0]}):
            demo_completions = [[{"role": "assistant", "content": text}] for text in scored]
        else:
            demo_completions = scored
        environments = self.environments
        # Rows that stand in only to pad the call must not write to the completions table or the metrics.
        self._log_completion_extra = self._log_metric = lambda *args: None
        if environments is not None:
            self.environments = [environments[row] for row in rows]
        try:
            scores = super()._calculate_rewards(
                [inputs[row] for row in rows],
                [prompts[row] for row in rows],
                demo_completions,
                [demo_ids[row] for row in rows],
            )
        finally:
            del self._log_completion_extra, self._log_metric
            self.environments = environments
        # Process p's j-th scored row is the j-th demonstration row in its slice of the batch.
        slot = torch.arange(global_rows.numel(), device=owner.device) - (torch.cumsum(counts, 0) - counts)[owner]
        rewards_per_func = rewards_per_func.clone()
        rewards_per_func[global_rows] = scores.view(world, slots, -1)[owner, slot]
        # TRL logs `completions` with the rewards: the table then shows what was scored in that row.
        for j, row in enumerate(local):
            completions[row] = demo_completions[j]
        return rewards_per_func

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, torch.Tensor | Any]:
        gating = self.model.training and self.uses_demonstrations
        if gating:
            # Tokenize before generating, so a bad demonstration fails before any compute is spent on its batch.
            self._pending_demonstrations = self._tokenize_demonstrations(inputs)
            _, demo_ids, demo_truncated = self._pending_demonstrations
        output = super()._generate_and_score_completions(inputs)
        self._pending_demonstrations = None
        if not self.model.training:
            return output

        correct_counts, gamma, rl_coef, demonstration_coef = self._gate
        num_truncated = 0
        if gating:
            first_row = self.accelerator.process_index * len(inputs)
            kinds, rl_weight, demonstration_weight = assign_rows(
                rl_coef.to(self.accelerator.device),
                demonstration_coef.to(self.accelerator.device),
                self.num_generations,
                first_global_row=first_row,
                num_local_rows=len(inputs),
            )
            if self.args.demonstration_loss != "sft":
                kinds, rl_weight = self._replace_rollouts_with_demonstrations(
                    output, kinds, rl_weight, demonstration_weight
                )
            self._swap_in_demonstrations(
                output,
                kinds,
                rl_weight,
                demonstration_weight,
                demo_ids,
                any_demonstration=bool(demonstration_coef.any()),
            )
            if self.args.demonstration_loss == "srft":
                correct = self._gate_rewards[first_row : first_row + len(inputs)] >= self.args.correct_threshold
                output["hpt_correct"] = correct.to(self.accelerator.device)
            carried = (demonstration_weight > 0).tolist()
            local = sum(t for t, demo in zip(demo_truncated, carried, strict=True) if demo)
            num_truncated = int(self.accelerator.reduce(torch.tensor(local, device=kinds.device), "sum"))
            if num_truncated and not self._warned_truncation:
                logger.warning(
                    f"{num_truncated} demonstration(s) of this batch are longer than max_completion_length="
                    f"{self.max_completion_length} tokens (EOS included) and were truncated; the count is logged "
                    "as `hpt/demo_truncated`. Raise max_completion_length or filter long demonstrations.",
                    main_process_only=True,
                )
                self._warned_truncation = True
        self._log_gate(correct_counts, demonstration_coef, gamma, num_truncated)
        return output

    def _replace_rollouts_with_demonstrations(self, output, kinds, rl_weight, demonstration_weight):
        """
        LUFFY/SRFT: the row that carries a demonstration held the group's first rollout, whose place the demonstration
        took when the rewards were scored. TRL's advantage of that row is the demonstration's; the rollout leaves RL
        (RL weight 0, so `_swap_in_demonstrations` neutralises its tensors), and the RL term of the group has
        `num_generations - 1` rows.
        """
        carries = demonstration_weight > 0
        advantages = output["advantages"]
        output["demonstration_advantage"] = torch.where(carries.to(advantages.device), advantages, 0.0)
        kinds = torch.where(carries, DEMONSTRATION_ROW, kinds)
        return kinds, rl_weight.masked_fill(carries, 0.0)

    def _tokenize_demonstrations(self, inputs: list[dict[str, Any]]) -> tuple[list[str], list[list[int]], list[bool]]:
        column = self.args.demonstration_column
        texts = []
        for row, example in enumerate(inputs):
            if column not in example:
                raise ValueError(
                    f"A training example has no demonstration column '{column}' (keys: {list(example)}). Add it, "
                    "point `demonstration_column` at the column with the expert solutions, or set gamma=-1."
                )
            texts.append(demonstration_text(example[column], column, row))
        return texts, *tokenize_demonstrations(texts, self._tokenizer, self.max_completion_length, column=column)

    def _log_gate(self, correct_counts, demonstration_coef, gamma, num_truncated) -> None:
        metrics = self._metrics["train"]
        metrics["hpt/sft_prompt_ratio"].append((demonstration_coef > 0).float().mean().item())
        metrics["hpt/group_accuracy"].append((correct_counts.float() / self.num_generations).mean().item())
        metrics["hpt/demo_truncated"].append(float(num_truncated))
        if self.args.gate_strategy in ("switch", "adaptive"):
            metrics["hpt/gamma"].append(float(gamma))

    def _swap_in_demonstrations(
        self,
        output: dict,
        kinds: torch.Tensor,
        rl_weight: torch.Tensor,
        demonstration_weight: torch.Tensor,
        demo_ids: list[list[int]],
        any_demonstration: bool,
    ) -> None:
        """Add the demonstration tensors to the generation batch, weigh the rollouts, neutralise those that left RL."""
        device = kinds.device
        carries = (demonstration_weight > 0).tolist()
        left_rl = rl_weight == 0
        rows = [torch.tensor(ids if demo else [self._tokenizer.pad_token_id]) for ids, demo in zip(demo_ids, carries)]
        masks = [torch.full((len(ids),), int(demo), dtype=torch.long) for ids, demo in zip(rows, carries)]
        output["demonstration_ids"] = pad(
            rows, self._tokenizer.pad_token_id, padding_side="right", pad_to_multiple_of=self.pad_to_multiple_of
        ).to(device)
        output["demonstration_mask"] = pad(
            masks, 0, padding_side="right", pad_to_multiple_of=self.pad_to_multiple_of
        ).to(device)
        output["demonstration_weight"] = demonstration_weight
        output["hpt_row_kind"] = kinds
        output["hpt_rl_weight"] = rl_weight
        # 0-dim, so TRL's shuffle and split hand it to every micro-batch. The same on all processes, since the gate
        # is computed from gathered rewards: every process then runs the same forwards, which DDP and ZeRO-3 need.
        output["hpt_has_demonstrations"] = torch.tensor(any_demonstration)

        # The soft gate scales a prompt's RL term through its advantages (every TRL loss is linear in them).
        # (masked_fill rather than the product alone, so that a NaN advantage of a dropped row cannot leak.)
        output["advantages"] = (output["advantages"] * rl_weight).masked_fill(left_rl, 0.0)
        # Rows that left RL must weigh nothing in anything TRL computes from the batch (loss, KL, importance
        # sampling, metrics), whatever their rollout tensors held.
        output["completion_mask"] = output["completion_mask"].masked_fill(left_rl.unsqueeze(1), 0)
        if "tool_mask" in output:
            output["tool_mask"] = output["tool_mask"].masked_fill(left_rl.unsqueeze(1), 0)
        for key in ("old_per_token_logps", "ref_per_token_logps", "sampling_per_token_logps"):
            if output.get(key) is not None:
                output[key] = output[key].masked_fill(left_rl.unsqueeze(1), 0.0)
        if output.get("importance_sampling_ratio") is not None:
            output["importance_sampling_ratio"] = output["importance_sampling_ratio"].masked_fill(
                left_rl.unsqueeze(1), 1.0
            )
        # dapo/cispo/vespo normalise by the loss tokens of the whole generation batch: count the RL rows' only.
        output["num_items_in_batch"] = self.accelerator.gather(_loss_mask(output).sum()).sum()

    def _compute_loss(self, model, inputs):
        if not self.model.training or self._is_vlm:  # evaluation, and VLMs (GRPO only): TRL's loss as is
            return super()._compute_loss(model, inputs)

        has_gate = "hpt_row_kind" in inputs
        srft = has_gate and self.args.demonstration_loss == "srft"
        # Rows without loss tokens (the rollouts of gated prompts, masked truncations) are not forwarded at all.
        rl_rows = _loss_mask(inputs).sum(dim=1) > 0
        if srft:
            # SRFT weighs rollouts by their entropy in place of the advantage: TRL's term is zeroed, ours is added.
            inputs = {**inputs, "advantages": torch.zeros_like(inputs["advantages"])}
        elif self.skip_zero_advantage_rows:
            advantages = inputs["advantages"]
            zero = advantages == 0 if advantages.dim() == 1 else (advantages == 0).all(dim=1)
            idle = rl_rows & zero
            rl_rows = rl_rows & ~zero
            # Their loss is 0 either way; masking them keeps TRL's entropy and clip metrics to the forwarded rows.
            inputs = {**inputs, "completion_mask": inputs["completion_mask"].masked_fill(idle.unsqueeze(1), 0)}
        has_demonstrations = has_gate and bool(inputs["hpt_has_demonstrations"])
        # At temperature 1 the demonstrations share the RL rows' forward; otherwise TRL's head (which divides by the
        # sampling temperature) cannot score them and they get their own forward below.
        fused = self.temperature == 1.0
        demo_rows = (inputs["demonstration_weight"] > 0).nonzero().squeeze(1) if has_gate else None
        demonstrations = self._demonstration_sequences(inputs, demo_rows) if has_demonstrations and fused else []
        request = _ForwardRequest(rows=rl_rows.nonzero().squeeze(1).tolist(), extra=demonstrations)
        self._forward_request = request

        # The RL term is TRL's loss on the whole micro-batch, where only RL rows carry loss tokens (the others were
        # neutralised at generation, and are zeros in the forward's output). Keeping every row keeps TRL's per-row
        # metric gathers the same size on every process, and its per-row normalisers constant.
        metrics = self._metrics["train"]
        logged_before = {key: len(values) for key, values in metrics.items()}
        rl_loss = super()._compute_loss(model, inputs)
        self._forward_request = None
        accumulation = self.current_gradient_accumulation_steps
        # Every HPT term is a sum over rows divided by the rows of the optimizer update, as TRL's dr_grpo term:
        # (rows of this micro-batch) x accumulation steps here, x processes through the gradient averaging.
        update_rows = inputs["prompt_ids"].size(0) * accumulation
        aux_term = 0.0
        if self.aux_loss_enabled and request.aux_loss is not None:
            aux_term = self.router_aux_loss_coef * request.aux_loss / accumulation  # TRL adds it to its loss
        loss = rl_loss
        if srft:
            loss = loss + self._srft_rollout_loss(inputs, request, rl_rows) / accumulation
        policy_loss = loss - aux_term  # the RL term alone, which rl_loss_coef scales
        if self.args.rl_loss_coef != 1.0:
            loss = self.args.rl_loss_coef * policy_loss + aux_term

        has_rl = bool(rl_rows.any())
        device = rl_loss.device
        # Sums and counts for the logged terms, reduced over processes; the keys are the same on every process.
        sums = {
            "hpt/rl_loss": [policy_loss.detach() * accumulation * has_rl, torch.tensor(float(has_rl), device=device)]
        }
        demonstration_entropies = []
        if has_demonstrations:
            if fused:
                logps, entropies = request.extra_logps, request.extra_entropies
            else:
                # DDP broadcasts buffers and ZeRO-3 gathers parameters on every forward, so all processes must run
                # this one too: a micro-batch without demonstrations runs it on a fully masked row (zero loss).
                placeholder = demo_rows.numel() == 0
                rows = torch.zeros(1, dtype=torch.long, device=device) if placeholder else demo_rows
                logps = self._demonstration_logps(model, select_rows(inputs, rows, rl_rows.numel()))
                entropies = None
                if placeholder:  # its one row has no demonstration token: keep the forward in the graph, score none
                    loss = loss + sum(lp.sum() for lp in logps) * 0
                    logps = []
            demonstration_entropies = entropies or []
            nll_sum, num_demonstrations, off_policy_loss = self._demonstration_terms(
                inputs, demo_rows, logps, entropies
            )
            if self.args.demonstration_loss in ("sft", "srft"):
                loss = loss + self.args.sft_loss_coef * nll_sum / update_rows
                # Logged unweighted: the mean over demonstrations of their token-mean NLL.
                unweighted, _ = weighted_mean_nll([lp.detach() for lp in logps], torch.ones(len(logps), device=device))
                sums["hpt/sft_loss"] = [unweighted, num_demonstrations.float()]
            if off_policy_loss is not None:
                loss = loss + self.args.rl_loss_coef * off_policy_loss / accumulation
                has_demo = torch.tensor(float(demo_rows.numel() > 0), device=device)
                sums["hpt/off_policy_loss"] = [off_policy_loss.detach() * has_demo, has_demo]
        if self._hpt_entropy_bonus:
            loss = loss - self._entropy_bonus(inputs, request, rl_rows, demonstration_entropies, update_rows)
            self._log_policy_loss(policy_loss.detach() * accumulation)

        totals = self.accelerator.reduce(torch.stack([v for pair in sums.values() for v in pair]), reduction="sum")
        totals = dict(zip(sums, totals.view(-1, 2), strict=True))
        if totals["hpt/rl_loss"][1] == 0:
            # No process forwarded an RL row: TRL's token metrics of this micro-batch (entropy, clip ratios, KL)
            # describe no token, so they are withdrawn rather than averaged in as zeros; a step with none logs 0.
            # The aux loss (it acts on the demonstrations too), policy_loss and entropy_coef stay.
            for key in self._rl_token_metric_keys():
                if key in metrics:
                    del metrics[key][logged_before.get(key, 0) :]
        for key, (total, count) in totals.items():
            if count > 0:
                metrics[key].append((total / count).item())
        return loss

    def _rl_token_metric_keys(self) -> tuple[str, ...]:
        """The metrics TRL's loss measures over the RL tokens of a micro-batch, for this config."""
        keys = ["entropy"] + (["kl"] if self.beta != 0.0 else [])
        if self.loss_type in ("grpo", "bnpo", "dr_grpo", "dapo", "luspo"):
            keys += [f"clip_ratio/{name}" for name in ("low_mean", "high_mean", "region_mean", "low_min", "high_max")]
        elif self.loss_type == "cispo":
            keys.append("cispo_clip_ratio")
        elif self.loss_type == "vespo":
            keys.append("vespo/phi_seq_mean")
        return tuple(keys)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # A step where every prompt was gated trained no RL token: its RL token metrics and RL term are 0, not
        # missing (likewise the demonstration terms of a step without demonstrations), so that every key TRL and HPT
        # log for this config is in every step's log.
        metrics = self._metrics["train"]
        if self.model.training and any(metrics.values()):
            mode = self.args.demonstration_loss
            terms = ["hpt/rl_loss"]
            if self.uses_demonstrations and mode in ("sft", "srft"):
                terms.append("hpt/sft_loss")
            if self.uses_demonstrations and mode in ("off_policy", "srft"):
                terms.append("hpt/off_policy_loss")
            for key in (*self._rl_token_metric_keys(), *terms):
                if not metrics.get(key):
                    metrics[key] = [0.0]
        super().log(logs, start_time)

    def _entropy_bonus(self, inputs, request, rl_rows, demonstration_entropies, update_rows) -> torch.Tensor:
        """
        `entropy_coef * sum of the covered tokens' entropy / (update rows * max_completion_length)`: each covered token
        weighs what one Dr. GRPO token weighs, whatever the micro-batch it lands in. Covered are the RL rows' loss
        tokens, and with `entropy_coverage="rollouts_and_demonstrations"` the demonstration tokens too (the
        authors'). TRL's adaptive controller (`use_adaptive_entropy`) runs on the same tokens, with TRL's rule.
        """
        mask = _loss_mask(inputs) * rl_rows.unsqueeze(1)
        entropy_sum = (request.row_entropies * mask).sum()
        num_tokens = mask.sum().float()
        if self.args.entropy_coverage == "rollouts_and_demonstrations" and demonstration_entropies:
            entropy_sum = entropy_sum + sum(e.sum() for e in demonstration_entropies)
            num_tokens = num_tokens + sum(e.numel() for e in demonstration_entropies)
        coef = self.entropy_coef
        if self.use_adaptive_entropy:
            # TRL's controller: the coefficient of the previous step applies to every micro-batch of this one.
            coef = self.entropy_coef if self._last_world_entropy <= self.args.entropy_target else 0.0
            stats = torch.stack([entropy_sum.detach(), torch.as_tensor(num_tokens, device=entropy_sum.device)])
            window = self._entropy_window_stats
            self._entropy_window_stats = stats if window is None else window + stats
            if self.accelerator.sync_gradients:
                totals = self.accelerator.reduce(self._entropy_window_stats, reduction="sum")
                self._last_world_entropy = (totals[0] / totals[1].clamp(min=1.0)).item()
                delta = self.args.entropy_coef_delta
                if self._last_world_entropy <= self.args.entropy_target:
                    self.entropy_coef = min(self.entropy_coef + delta, self.args.entropy_coef_max)
                else:
                    self.entropy_coef = max(self.entropy_coef - delta, self.args.entropy_coef_min)
                self._entropy_window_stats = None
        if self.accelerator.sync_gradients:
            self._metrics["train"]["entropy_coef"].append(self.entropy_coef)
        return coef * entropy_sum / (update_rows * self.max_completion_length)

    def _log_policy_loss(self, policy_loss: torch.Tensor) -> None:
        # TRL logs its policy term beside the entropy bonus; HPT's bonus replaces TRL's, so it logs it here.
        self._metrics["train"]["policy_loss"].append(self.accelerator.gather(policy_loss).nanmean().item())

    def _demonstration_terms(self, inputs, demo_rows, logps, entropies):
        """The weighted sum of the demonstrations' token-mean NLL, their number, and the off-policy term (or None)."""
        weights = inputs["demonstration_weight"][demo_rows]
        mode = self.args.demonstration_loss
        sft_weights = weights * srft_sft_weights(entropies) if mode == "srft" and logps else weights
        nll_sum, num_demonstrations = weighted_mean_nll(logps, sft_weights)
        off_policy_loss = None
        if mode in ("off_policy", "srft"):
            token_losses = off_policy_token_losses(logps, inputs["demonstration_advantage"][demo_rows])
            off_policy_loss = self._sum_like_rl_term(token_losses, weights, nll_sum)
        return nll_sum, num_demonstrations, off_policy_loss

    def _sum_like_rl_term(self, token_losses: list[torch.Tensor], weights: torch.Tensor, anchor) -> torch.Tensor:
        """Aggregate per-row token losses as TRL aggregates the RL term: dr_grpo sums, grpo averages per row."""
        if not token_losses:
            return anchor * 0
        rows = self.args.per_device_train_batch_size
        if self.loss_type == "dr_grpo":
            per_row = torch.stack([losses.sum() for losses in token_losses])
            return (weights * per_row).sum() / (rows * self.max_completion_length)
        per_row = torch.stack([losses.mean() if len(losses) else losses.sum() for losses in token_losses])
        return (weights * per_row).sum() / rows

    def _srft_rollout_loss(self, inputs, request, rl_rows) -> torch.Tensor:
        """SRFT's on-policy term: `-w * log p` per token, w = 0.1 exp(H) (correct rollout) or -1 (wrong)."""
        rows = rl_rows.nonzero().squeeze(1)
        logps, entropies = request.row_logps[rows], request.row_entropies[rows]
        row_mask = _loss_mask(inputs)[rows]
        mean_entropy = (entropies.detach() * row_mask).sum(1) / row_mask.sum(1).clamp(min=1)
        weights = srft_rollout_weights(mean_entropy, inputs["hpt_correct"][rows]) * inputs["hpt_rl_weight"][rows]
        token_losses = [-(lp * m)[m.bool()] for lp, m in zip(logps, row_mask)]
        return self._sum_like_rl_term(token_losses, weights, request.row_logps.sum())

    def _demonstration_sequences(self, inputs, rows: torch.Tensor) -> list[Sequence]:
        sequences = []
        for row in rows.tolist():
            num_tokens = int(inputs["demonstration_mask"][row].sum())
            sequences.append(
                Sequence(
                    context=inputs["prompt_ids"][row][inputs["prompt_mask"][row].bool()],
                    scored=inputs["demonstration_ids"][row, :num_tokens],
                )
            )
        return sequences

    def _get_per_token_logps_and_entropies(
        self,
        model,
        input_ids,
        attention_mask,
        logits_to_keep,
        batch_size=None,
        compute_entropy=False,
        compute_aux_loss=False,
        **multimodal_inputs,
    ):
        # Only the training loss names the rows to forward; reference/old log-probs are packed when padding-free.
        request, self._forward_request = self._forward_request, None
        num_rows = input_ids.size(0)
        rows = request.rows if request is not None else list(range(num_rows))
        sequences = None
        if not any(value is not None for value in multimodal_inputs.values()) and (request or self.padding_free):
            sequences = sequences_from_batch(input_ids, attention_mask, logits_to_keep, rows)
        if request is not None and request.extra and sequences is None:
            raise RuntimeError(
                "HPT could not cut this batch into prompt and completion sequences (an empty prompt, or a completion "
                "mask with holes) to score the demonstrations in the same forward: report this with your data."
            )
        keeps_everything = request is not None and not request.extra and len(rows) == num_rows
        if sequences is None or (keeps_everything and not self.padding_free):
            # TRL's own rectangle: nothing to leave out, nothing to pack (or a batch that is not TRL's layout).
            logps, entropies, aux = super()._get_per_token_logps_and_entropies(
                model,
                input_ids,
                attention_mask,
                logits_to_keep,
                batch_size=batch_size,
                compute_entropy=compute_entropy,
                compute_aux_loss=compute_aux_loss,
                **multimodal_inputs,
            )
            if request is not None:
                request.row_logps, request.row_entropies, request.aux_loss = logps, entropies, aux
            return logps, entropies, aux

        extra = request.extra if request is not None else []
        # One forward per chunk of `batch_size` rows, as in TRL: every process then runs the same number of forwards.
        chunk = len(rows) if request is not None else (batch_size or num_rows)
        starts = range(0, max(len(rows), 1), max(chunk, 1))
        logps, entropies, aux_losses = [], [], []
        for start in starts:
            chunk_sequences = sequences[start : start + chunk] + (extra if start == starts[-1] else [])
            chunk_logps, chunk_entropies, aux_loss, anchor = self._forward_sequences(
                model, chunk_sequences, input_ids, compute_entropy, compute_aux_loss
            )
            logps += chunk_logps
            entropies += chunk_entropies
            aux_losses.append(aux_loss)
        if request is not None:
            request.extra_logps = logps[len(rows) :]
            request.extra_entropies = entropies[len(rows) :]
        out_logps = to_rectangle(logps[: len(rows)], rows, num_rows, logits_to_keep, like=anchor)
        out_entropies = None
        if compute_entropy:
            out_entropies = to_rectangle(entropies[: len(rows)], rows, num_rows, logits_to_keep, like=anchor.detach())
        aux = torch.stack(aux_losses).mean() if compute_aux_loss else None
        if request is not None:
            request.row_logps, request.row_entropies, request.aux_loss = out_logps, out_entropies, aux
        return out_logps, out_entropies, aux

    def _forward_sequences(self, model, sequences, input_ids, compute_entropy, compute_aux_loss):
        """
        Log-probs (and entropies) of the scored tokens of each sequence, from one forward, and a 0-dim zero of that
        forward's graph that keeps the caller's output connected to it even when no sequence was scored.
        """
        placeholder = not sequences
        if placeholder:
            # Every process must forward (DDP, ZeRO-3): two tokens, nothing scored but the placeholder itself.
            sequences = [Sequence(context=input_ids[0, -2:-1], scored=input_ids[0, -1:])]
        plan = plan_forward(sequences, layout=self._layout, pad_token_id=self._tokenizer.pad_token_id)
        model_inputs = {"input_ids": plan.input_ids, "labels": plan.labels}
        if plan.attention_mask is not None:
            model_inputs["attention_mask"] = plan.attention_mask
        if plan.position_ids is not None:
            model_inputs["position_ids"] = plan.position_ids
        if compute_aux_loss:
            model_inputs["output_router_logits"] = True
        with self.accelerator.autocast():
            outputs = model(**model_inputs, fused_lm_head=True)
        logps = split_scored(outputs.log_probs, plan)
        entropies = split_scored(outputs.entropy, plan) if compute_entropy else []
        anchor = outputs.log_probs.sum() * 0
        if placeholder:
            logps, entropies = [], []
        return logps, entropies, outputs.aux_loss if compute_aux_loss else None, anchor

    def _demonstration_logps(self, model, batch: dict) -> list[torch.Tensor]:
        """Per row of `batch`, the log-probs (at temperature 1) of its demonstration tokens."""
        prompt_ids, prompt_mask = batch["prompt_ids"], batch["prompt_mask"]
        demo_ids, demo_mask = batch["demonstration_ids"], batch["demonstration_mask"]
        # Drop the padding columns these rows share, so a short demonstration batch does not pay for long rollouts.
        first_prompt_column = int(prompt_mask.any(dim=0).int().argmax())
        demo_width = max(int(demo_mask.sum(dim=1).max()), 1)
        prompt_ids, prompt_mask = prompt_ids[:, first_prompt_column:], prompt_mask[:, first_prompt_column:]
        demo_ids, demo_mask = demo_ids[:, :demo_width], demo_mask[:, :demo_width]

        input_ids = torch.cat([prompt_ids, demo_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, demo_mask], dim=1)
        # Only used at a sampling temperature other than 1, where TRL's fused head (which divides by it) cannot score
        # the demonstrations: SFT is the NLL of the model's own distribution.
        with self.accelerator.autocast():
            logits = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=demo_width + 1).logits
        logps = selective_log_softmax(logits[:, :-1].float(), input_ids[:, -demo_width:])
        return [lp[: int(m.sum())] for lp, m in zip(logps, demo_mask)]
