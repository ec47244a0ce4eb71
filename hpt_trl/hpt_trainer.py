import os
import textwrap
from dataclasses import dataclass
from typing import Any

import torch
from accelerate.logging import get_logger
from trl import GRPOConfig, GRPOTrainer
from trl.trainer.utils import get_config_model_id

from .batch_rows import add_demonstration_rows
from .demonstration_losses import demonstration_terms, srft_rollout_token_losses, sum_like_rl_term, weighted_mean_nll
from .demonstrations import tokenize_batch_demonstrations
from .entropy_bonus import covered_entropy, entropy_coef_for_micro_batch
from .forward_planner import ForwardRequest, PlannedForward, loss_mask
from .gating import AdaptiveGamma, GateDecision, assign_rows, decide_gate
from .group_demonstrations import replace_rollouts_with_demonstrations, score_demonstrations_in_groups
from .hpt_config import HPTConfig
from .input_checks import check_trainer_inputs
from .logged_metrics import log_gate, loss_term_keys, record_loss_terms, rl_token_metric_keys, zero_fill
from .model_card import append_hpt_section
from .sampler import EpochSeededRepeatSampler
from .update_skip import skip_update_above


logger = get_logger(__name__)


@dataclass
class _BatchInProgress:
    """
    A generation batch between TRL's hooks: `_generate_and_score_completions` tokenizes its demonstrations before
    generating, TRL's `_calculate_rewards` (which HPT's hook cannot hand anything back through) gates it. Held only
    while TRL generates and scores that batch; afterwards the decision travels in the batch itself.
    """

    demonstrations: tuple[list[str], list[list[int]], list[bool]] | None
    gate: GateDecision | None = None


class HPTTrainer(PlannedForward, GRPOTrainer):
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

    Generation, rewards, logging, PEFT, vLLM and checkpointing are [`~trl.GRPOTrainer`]'s. HPT changes three steps,
    in the order of the paper's algorithm box:

    1. gate (`_calculate_rewards`): count `P` per prompt from the gathered rewards and weigh its RL and demonstration
       terms ([`~hpt_trl.gating.decide_gate`]);
    2. rows (`_generate_and_score_completions`): write that decision into the generation batch, where it travels with
       its rows: the demonstration rows are added and every rollout that left RL is masked out of TRL's tensors
       ([`~hpt_trl.batch_rows.add_demonstration_rows`]);
    3. loss (`_compute_loss`): TRL's loss on the micro-batch as it is (only RL rows carry loss tokens), plus the
       demonstrations' term ([`~hpt_trl.demonstration_losses`]) and the entropy bonus ([`~hpt_trl.entropy_bonus`]).

    Which rows are forwarded, and how they are packed, is a cost layer behind one seam ([`PlannedForward`]): the loss
    is the same with it on or off. The constructor is [`~trl.GRPOTrainer`]'s, with an [`HPTConfig`] as `args`.

    With `demonstration_loss="off_policy"` (LUFFY) or `"srft"`, groups are the authors' 7 + 1: a group's demonstration
    takes the place of its first rollout, is scored by the reward functions before TRL turns the rewards into group
    advantages, and enters the loss with that row's advantage; the replaced rollout leaves RL
    ([`~hpt_trl.group_demonstrations`]).
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
        gate_reward_index = check_trainer_inputs(args, reward_funcs, train_dataset, kwargs.get("rollout_func"))

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
        self._batch_in_progress = None
        self._warned_truncation = False
        skip = args.skip_zero_advantage_rows
        self._setup_forward_planner(
            args.padding_free, not args.zero_advantage_gradient_terms() if skip is None else skip
        )
        # With demonstrations, or the authors' coverage, HPT adds the entropy bonus itself (normalised per update row);
        # TRL's is a token mean per micro-batch, whose weight would depend on how a batch is split.
        self._hpt_entropy_bonus = self._entropy_bonus_enabled and args.hpt_entropy_bonus
        if self._hpt_entropy_bonus:
            self._entropy_bonus_enabled = False

    # 1. Gate: P per prompt, from the rewards of every rollout of the generation batch.

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        # The gate needs every rollout of a group, and a group can straddle processes: TRL's rewards are gathered.
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        batch = self._batch_in_progress
        if not self.model.training or batch is None:
            return rewards_per_func
        args = self.args
        # Decided here, from the sampled rollouts, so that a demonstration that replaces a rollout (LUFFY, SRFT) is
        # scored before TRL turns the rewards into group advantages.
        batch.gate = decide_gate(
            rewards_per_func[:, self.gate_reward_index],
            self.num_generations,
            args.correct_threshold,
            args.gate_strategy,
            self.gamma,
            (tuple(args.soft_rl_coefs), tuple(args.soft_demonstration_coefs)),
            self.adaptive_gamma,
            self.uses_demonstrations,
        )
        if self.uses_demonstrations and args.demonstration_loss != "sft":
            rewards_per_func = score_demonstrations_in_groups(
                self, batch.gate, batch.demonstrations, inputs, prompts, completions, rewards_per_func
            )
        return rewards_per_func

    # 2. Rows: the gate's decision written into the generation batch, where it travels with the rows it is for.

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, torch.Tensor | Any]:
        if not self.model.training:
            return super()._generate_and_score_completions(inputs)
        demonstrations = None
        if self.uses_demonstrations:
            # Tokenized before generating, so a bad demonstration fails before any compute is spent on its batch.
            column = self.args.demonstration_column
            demonstrations = tokenize_batch_demonstrations(inputs, column, self._tokenizer, self.max_completion_length)
        self._batch_in_progress = batch = _BatchInProgress(demonstrations)
        try:
            output = super()._generate_and_score_completions(inputs)
        finally:
            self._batch_in_progress = None
        gate = batch.gate
        num_truncated = 0
        if self.uses_demonstrations:
            _, demo_ids, demo_truncated = demonstrations
            first_row = self.accelerator.process_index * len(inputs)
            kinds, rl_weight, demonstration_weight = assign_rows(
                gate.rl_coef.to(self.accelerator.device),
                gate.demonstration_coef.to(self.accelerator.device),
                self.num_generations,
                first_global_row=first_row,
                num_local_rows=len(inputs),
            )
            if self.args.demonstration_loss != "sft":
                kinds, rl_weight = replace_rollouts_with_demonstrations(output, kinds, rl_weight, demonstration_weight)
            add_demonstration_rows(
                output,
                kinds,
                rl_weight,
                demonstration_weight,
                demo_ids,
                any_demonstration=bool(gate.demonstration_coef.any()),
                pad_token_id=self._tokenizer.pad_token_id,
                pad_to_multiple_of=self.pad_to_multiple_of,
            )
            # dapo/cispo/vespo normalise by the loss tokens of the whole generation batch: count the RL rows' only.
            output["num_items_in_batch"] = self.accelerator.gather(loss_mask(output).sum()).sum()
            if self.args.demonstration_loss == "srft":
                correct = gate.gate_rewards[first_row : first_row + len(inputs)] >= self.args.correct_threshold
                output["hpt_correct"] = correct.to(self.accelerator.device)
            carried = (demonstration_weight > 0).tolist()
            local = sum(t for t, demo in zip(demo_truncated, carried, strict=True) if demo)
            num_truncated = int(self.accelerator.reduce(torch.tensor(local, device=kinds.device), "sum"))
            self._warn_truncation(num_truncated)
        log_gate(self._metrics["train"], gate, self.num_generations, self.args.gate_strategy, num_truncated)
        return output

    # 3. Loss: TRL's loss over the RL rows, plus the demonstrations' terms and the entropy bonus.

    def _compute_loss(self, model, inputs):
        if not self.model.training or self._is_vlm:  # evaluation, and VLMs (GRPO only): TRL's loss as is
            return super()._compute_loss(model, inputs)
        args = self.args
        has_gate = "hpt_row_kind" in inputs
        srft = has_gate and args.demonstration_loss == "srft"
        inputs, rl_rows = self.rows_to_forward(inputs, skip_zero_advantage=self.skip_zero_advantage_rows and not srft)
        if srft:
            # SRFT weighs rollouts by their entropy in place of the advantage: TRL's term is zeroed, ours is added.
            inputs = {**inputs, "advantages": torch.zeros_like(inputs["advantages"])}
        has_demonstrations = has_gate and bool(inputs["hpt_has_demonstrations"])
        # At temperature 1 the demonstrations share the RL rows' forward; otherwise TRL's head (which divides by the
        # sampling temperature) cannot score them and they get their own forward below.
        fused = self.temperature == 1.0
        demo_rows = (inputs["demonstration_weight"] > 0).nonzero().squeeze(1) if has_gate else None
        demonstrations = self._demonstration_sequences(inputs, demo_rows) if has_demonstrations and fused else []

        # The RL term is TRL's loss on the whole micro-batch, where only RL rows carry loss tokens (the others were
        # neutralised at generation, and are zeros in the forward's output). Keeping every row keeps TRL's per-row
        # metric gathers the same size on every process, and its per-row normalisers constant.
        metrics = self._metrics["train"]
        logged_before = {key: len(values) for key, values in metrics.items()}
        with self.planned_forward(
            ForwardRequest(rows=rl_rows.nonzero().squeeze(1).tolist(), extra=demonstrations)
        ) as request:
            rl_loss = super()._compute_loss(model, inputs)
        accumulation = self.current_gradient_accumulation_steps
        # Every HPT term is a sum over rows divided by the rows of the optimizer update, as TRL's dr_grpo term:
        # (rows of this micro-batch) x accumulation steps here, x processes through the gradient averaging.
        update_rows = inputs["prompt_ids"].size(0) * accumulation
        aux_term = 0.0
        if self.aux_loss_enabled and request.aux_loss is not None:
            aux_term = self.router_aux_loss_coef * request.aux_loss / accumulation  # TRL adds it to its loss
        loss = rl_loss
        if srft:
            rows = rl_rows.nonzero().squeeze(1)
            token_losses, weights = srft_rollout_token_losses(
                request.row_logps[rows],
                request.row_entropies[rows],
                loss_mask(inputs)[rows],
                inputs["hpt_correct"][rows],
                inputs["hpt_rl_weight"][rows],
            )
            loss = loss + self._sum_like_rl_term(token_losses, weights, request.row_logps.sum()) / accumulation
        policy_loss = loss - aux_term  # the RL term alone, which rl_loss_coef scales
        if args.rl_loss_coef != 1.0:
            loss = args.rl_loss_coef * policy_loss + aux_term

        has_rl = bool(rl_rows.any())
        device = rl_loss.device
        # Sums and counts for the logged terms, reduced over processes; the keys are the same on every process.
        sums = {
            "hpt/rl_loss": [policy_loss.detach() * accumulation * has_rl, torch.tensor(float(has_rl), device=device)]
        }
        demonstration_entropies = []
        if has_demonstrations:
            logps, entropies, graph_zero = self.scored_demonstrations(model, inputs, request, demo_rows, fused)
            if graph_zero is not None:
                loss = loss + graph_zero
            demonstration_entropies = entropies or []
            advantages = inputs.get("demonstration_advantage")
            nll_sum, num_demonstrations, off_policy_loss = demonstration_terms(
                args.demonstration_loss,
                logps,
                entropies,
                inputs["demonstration_weight"][demo_rows],
                advantages[demo_rows] if advantages is not None else None,
                self._sum_like_rl_term,
            )
            if args.demonstration_loss in ("sft", "srft"):
                loss = loss + args.sft_loss_coef * nll_sum / update_rows
                # Logged unweighted: the mean over demonstrations of their token-mean NLL.
                unweighted, _ = weighted_mean_nll([lp.detach() for lp in logps], torch.ones(len(logps), device=device))
                sums["hpt/sft_loss"] = [unweighted, num_demonstrations.float()]
            if off_policy_loss is not None:
                loss = loss + args.rl_loss_coef * off_policy_loss / accumulation
                has_demo = torch.tensor(float(demo_rows.numel() > 0), device=device)
                sums["hpt/off_policy_loss"] = [off_policy_loss.detach() * has_demo, has_demo]
        if self._hpt_entropy_bonus:
            entropy_sum, num_tokens = covered_entropy(
                loss_mask(inputs) * rl_rows.unsqueeze(1),
                request.row_entropies,
                demonstration_entropies,
                args.entropy_coverage,
            )
            coef = entropy_coef_for_micro_batch(self, entropy_sum, num_tokens)
            loss = loss - coef * entropy_sum / (update_rows * self.max_completion_length)
            # TRL logs its policy term beside the entropy bonus; HPT's bonus replaces TRL's, so it logs it here.
            metrics["policy_loss"].append(
                self.accelerator.gather(policy_loss.detach() * accumulation).nanmean().item()
            )

        record_loss_terms(
            metrics, sums, self.accelerator, logged_before, rl_token_metric_keys(self.loss_type, self.beta)
        )
        return loss

    def _sum_like_rl_term(self, token_losses, weights, anchor) -> torch.Tensor:
        rows = self.args.per_device_train_batch_size
        return sum_like_rl_term(token_losses, weights, anchor, self.loss_type, rows, self.max_completion_length)

    # Around the algorithm: logging, the model card, checkpointed gate state, the authors' update skip, data order.

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # A step where every prompt was gated trained no RL token: its RL token metrics and RL term are 0, not
        # missing (likewise the demonstration terms of a step without demonstrations), so that every key TRL and HPT
        # log for this config is in every step's log.
        metrics = self._metrics["train"]
        if self.model.training and any(metrics.values()):
            terms = loss_term_keys(self.uses_demonstrations, self.args.demonstration_loss)
            zero_fill(metrics, (*rl_token_metric_keys(self.loss_type, self.beta), *terms))
        super().log(logs, start_time)

    def _warn_truncation(self, num_truncated: int) -> None:
        if num_truncated and not self._warned_truncation:
            logger.warning(
                f"{num_truncated} demonstration(s) of this batch are longer than max_completion_length="
                f"{self.max_completion_length} tokens (EOS included) and were truncated; the count is logged "
                "as `hpt/demo_truncated`. Raise max_completion_length or filter long demonstrations.",
                main_process_only=True,
            )
            self._warned_truncation = True

    def create_model_card(self, model_name=None, dataset_name=None, tags=None):
        super().create_model_card(model_name=model_name, dataset_name=dataset_name, tags=tags)
        if self.is_world_process_zero():
            append_hpt_section(self.args, self.state, self.gamma)

    # The adaptive gate's running accuracy is training state: checkpoints carry it, as TRL's entropy controller.

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.adaptive_gamma is not None and self.args.should_save:
            folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
            self.adaptive_gamma.save(folder)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if self.adaptive_gamma is not None and checkpoint is not None:
            self.adaptive_gamma.load(checkpoint)

    def _get_grad_norm(self, model, grad_norm=None):
        # The transformers loop hands in the norm before clipping; the authors' Qwen scripts skip updates above a norm.
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        threshold = self.args.grad_norm_skip_threshold
        if threshold is not None:
            skipped = skip_update_above(model, float(grad_norm), threshold, step=self.state.global_step + 1)
            self._metrics["train"]["hpt/skipped_update"].append(float(skipped))
        return grad_norm

    def _set_signature_columns_if_needed(self):
        # With `remove_unused_columns=True`, the demonstrations must survive the column pruning.
        super()._set_signature_columns_if_needed()
        if self.args.demonstration_column not in self._signature_columns:
            self._signature_columns.append(self.args.demonstration_column)

    def _get_train_sampler(self, dataset=None):
        # TRL's sampler keeps its shuffle state in memory only: reseed per epoch so that resuming keeps the data order.
        return EpochSeededRepeatSampler.like(super()._get_train_sampler(dataset))
