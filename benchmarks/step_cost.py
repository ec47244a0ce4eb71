"""
Cost of an HPT step against a GRPO step: where the time goes, how many tokens are forwarded for how many the loss
needs, and the memory peak, for 0%, 50% and 100% of the prompts gated to SFT.

    OMP_NUM_THREADS=1 python benchmarks/step_cost.py --steps 4 --rounds 2
    python benchmarks/step_cost.py --model Qwen/Qwen2.5-0.5B-Instruct --bf16 --max_completion_length 512  # GPU
    # step time of HPT's code path alone: HPTTrainer at gamma=-1 is GRPO, beside gamma=0 and GRPOTrainer
    OMP_NUM_THREADS=1 python benchmarks/step_cost.py --steps 6 --rounds 3 --shares 50 --hpt_gammas -1 0

HPTTrainer (gamma=0, or each of `--hpt_gammas`) and trl.GRPOTrainer train the same model on the same data with the
same seed and config (loss_type "dr_grpo", scale_rewards "none", beta 0; extra `-- key=value` overrides go to all).
Every (gated share, trainer) configuration runs in a fresh subprocess, so memory peaks are its own; configurations are
interleaved round by round and averaged; the first step of each run is warm-up and dropped. The gated share is set by
the reward, which reads each rollout's index `i` in the generation batch (TRL scores the batch in one call with each
prompt's `num_generations` rollouts contiguous, so group = i // num_generations, rollout = i % num_generations): the
first `round(share * groups)` groups get 0 on every rollout (P = 0 <= gamma, so HPT at gamma >= 0 trains them with
SFT; at gamma=-1 nothing is gated); in the others rollout 0 gets 1 (P >= 1, so they stay in RL) and the rest get the
parity of their text length (spread, so the RL term is not zero). GRPO gets the very same rewards.

Columns, per optimizer step (means over the measured steps of all rounds):
    gen s        time in `_generate` (transformers or vLLM generation)
    reward s     time in `_calculate_rewards`
    ref/old s    time in `_get_per_token_logps_and_entropies` calls made without grad (reference / old log-probs)
    train s      time in `training_step` minus the `_prepare_inputs` inside it: the training forwards and backwards
    step s       whole optimizer step (callback `on_step_begin` to `on_step_end`: the above, optimizer and the rest)
    tok fwd      positions through the trained model in forwards with grad (`input_ids.numel()`, padding included)
    tok needed   real tokens (prompt + completion, or prompt + demonstration) of the rows whose loss weight is not
                 zero: rollouts with a completion and a non-zero advantage (beta is 0), and HPT's demonstration rows
    fwd/needed   tok fwd / tok needed: 1 means no compute goes to padding or to rows outside the loss
    loss tok     tokens that carry loss: the completion tokens of those rollouts plus the demonstration tokens
    act MiB      largest activation memory of a training micro-batch: the unique storages (parameters excluded) saved
                 for backward during its forward. With gradient checkpointing, only what is saved outside the
                 checkpointed layers is seen, so it is off by default here (`--gradient_checkpointing` turns it on)
    peak MiB     process peak: `torch.cuda.max_memory_allocated` on CUDA, peak RSS (`ru_maxrss`) on CPU
    SFT share    HPT's logged `hpt/sft_prompt_ratio` (checks that the reward gated what it should)
The second table gives HPT/GRPO ratios per gated share and HPT gamma (peak memory: CUDA peak on GPU, activation peak
on CPU).
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from tqdm import tqdm


GRPO = "GRPO"
TRI_STATE = {"auto": None, "true": True, "false": False}
TIME_KEYS = ("gen", "reward", "ref", "train", "step")
TOKEN_KEYS = ("tok_fwd", "tok_needed", "loss_tok")
MIB = 2**20


def hpt_label(gamma: int) -> str:
    """The table's name of HPTTrainer at `gamma`: plain `HPT` for the default gamma=0."""
    return "HPT" if gamma == 0 else f"HPT gamma={gamma}"


def make_reward(gated_share: float, num_generations: int):
    """The controlled reward of the module docstring: gates `gated_share` of each generation batch's prompts."""

    def controlled_reward(completions, **kwargs):
        gated_groups = round(gated_share * (len(completions) // num_generations))
        rewards = []
        for index, completion in enumerate(completions):
            group, rollout = divmod(index, num_generations)
            text = completion[0]["content"] if isinstance(completion, list) else completion
            rewards.append(0.0 if group < gated_groups else 1.0 if rollout == 0 else float(len(text) % 2))
        return rewards

    return controlled_reward


def make_dataset(num_prompts: int):
    from datasets import Dataset

    return Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": f"Compute {pid}+{pid}."}] for pid in range(num_prompts)],
            "demonstration": [f"{pid}+{pid}={2 * pid}, so \\boxed{{{2 * pid}}}." for pid in range(num_prompts)],
        }
    )


def parse_overrides(extras: list[str]) -> dict:
    overrides = {}
    for item in extras:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"Overrides after `--` are key=value, got {item!r}.")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def build_trainer(spec: dict, output_dir: Path):
    from trl import GRPOConfig, GRPOTrainer

    from hpt_trl import HPTConfig, HPTTrainer

    rows = spec["num_prompts"] * spec["num_generations"]
    kwargs = dict(
        output_dir=str(output_dir),
        num_generations=spec["num_generations"],
        generation_batch_size=rows,
        per_device_train_batch_size=spec["per_device_train_batch_size"],
        gradient_accumulation_steps=spec["gradient_accumulation_steps"],
        max_completion_length=spec["max_completion_length"],
        max_steps=spec["steps"],
        learning_rate=1e-6,  # the policy barely moves, so both trainers keep generating alike
        loss_type="dr_grpo",
        scale_rewards="none",
        beta=0.0,
        gradient_checkpointing=spec["gradient_checkpointing"],
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=not torch.cuda.is_available(),
        bf16=spec["bf16"],
        seed=spec["seed"],
        disable_tqdm=True,
    )
    if spec["attn_implementation"]:
        kwargs["model_init_kwargs"] = {"attn_implementation": spec["attn_implementation"]}
    if spec["use_liger_kernel"]:
        kwargs["use_liger_kernel"] = True
    kwargs.update(spec["overrides"])
    config_class, trainer_class = (GRPOConfig, GRPOTrainer) if spec["trainer"] == GRPO else (HPTConfig, HPTTrainer)
    if spec["trainer"] != GRPO:
        kwargs["gamma"] = spec["gamma"]
        for name in ("padding_free", "skip_zero_advantage_rows"):
            value = TRI_STATE[spec[name]]
            if value is not None:
                kwargs[name] = value
    reward = make_reward(spec["share"] / 100, spec["num_generations"])
    dataset = make_dataset(spec["num_prompts"] * spec["steps"])
    return trainer_class(spec["model"], reward, args=config_class(**kwargs), train_dataset=dataset)


def instrument(trainer) -> list[dict]:
    """Wrap the trainer's methods and model to record, per optimizer step, the times, tokens and activation peak."""
    from transformers import TrainerCallback

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    steps, current = [], defaultdict(float)

    def timed(name: str, bucket: str, when=lambda: True):
        original = getattr(trainer, name)

        def wrapper(*args, **kwargs):
            if not when():
                return original(*args, **kwargs)
            sync()
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                sync()
                current[bucket] += time.perf_counter() - start

        setattr(trainer, name, wrapper)

    timed("_generate", "gen")
    timed("_calculate_rewards", "reward")
    timed("_get_per_token_logps_and_entropies", "ref", when=lambda: not torch.is_grad_enabled())
    timed("_prepare_inputs", "prepare")
    timed("training_step", "training_step")

    def count_forwarded(module, args, kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if torch.is_grad_enabled() and input_ids is not None:
            current["tok_fwd"] += input_ids.numel()

    trainer.model.register_forward_pre_hook(count_forwarded, with_kwargs=True)
    param_storages = {p.untyped_storage().data_ptr() for p in trainer.model.parameters()}
    compute_loss = trainer._compute_loss

    def measured_compute_loss(model, inputs):
        count_needed(inputs)
        saved = {}

        def pack(tensor):
            try:
                storage = tensor.untyped_storage()
            except (RuntimeError, NotImplementedError):
                return tensor
            if storage.data_ptr() not in param_storages:
                saved[storage.data_ptr()] = storage.nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            loss = compute_loss(model, inputs)
        current["act_peak"] = max(current["act_peak"], sum(saved.values()))
        return loss

    def count_needed(inputs):
        prompt_tokens, completion_mask = inputs["prompt_mask"].sum(1), inputs["completion_mask"]
        advantages = inputs["advantages"]
        advantages = advantages.abs().sum(1) if advantages.dim() > 1 else advantages
        rl = (completion_mask.sum(1) > 0) & (advantages != 0)
        loss_mask = completion_mask * inputs["tool_mask"] if "tool_mask" in inputs else completion_mask
        current["tok_needed"] += float((prompt_tokens + completion_mask.sum(1))[rl].sum())
        current["loss_tok"] += float(loss_mask.sum(1)[rl].sum())
        if "hpt_row_kind" in inputs:
            demo = inputs["hpt_row_kind"] == 1
            demo_tokens = inputs["demonstration_mask"].sum(1)
            current["tok_needed"] += float((prompt_tokens + demo_tokens)[demo].sum())
            current["loss_tok"] += float(demo_tokens[demo].sum())

    trainer._compute_loss = measured_compute_loss

    class StepClock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            sync()
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            sync()
            current["step"] = time.perf_counter() - self.start
            current["train"] = current.pop("training_step", 0.0) - current.pop("prepare", 0.0)
            steps.append({key: current.get(key, 0.0) for key in (*TIME_KEYS, *TOKEN_KEYS, "act_peak")})
            current.clear()

    trainer.add_callback(StepClock())
    return steps


def worker(run_dir: Path) -> None:
    import warnings

    from transformers.utils import logging as hf_logging

    warnings.filterwarnings("ignore")
    hf_logging.set_verbosity_error()
    spec = json.loads((run_dir / "spec.json").read_text())
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer = build_trainer(spec, run_dir / "output")
    steps = instrument(trainer)
    trainer.train()
    gated = [log["hpt/sft_prompt_ratio"] for log in trainer.state.log_history if "hpt/sft_prompt_ratio" in log]
    result = {
        "steps": steps[1:],
        "sft_prompt_ratio": gated[1:],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "cuda_peak_mib": torch.cuda.max_memory_allocated() / MIB if torch.cuda.is_available() else None,
    }
    (run_dir / "result.json").write_text(json.dumps(result))


def run_isolated(spec: dict) -> dict:
    with tempfile.TemporaryDirectory() as run_dir:
        (Path(run_dir) / "spec.json").write_text(json.dumps(spec))
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", run_dir]
        process = subprocess.run(command, capture_output=True, text=True)
        if process.returncode != 0:
            raise RuntimeError(f"{spec['trainer']} at {spec['share']}% gated failed:\n{process.stderr[-4000:]}")
        return json.loads((Path(run_dir) / "result.json").read_text())


def summarize(runs: list[dict]) -> dict:
    steps = [step for run in runs for step in run["steps"]]
    row = {key: statistics.mean(step[key] for step in steps) for key in (*TIME_KEYS, *TOKEN_KEYS)}
    row["ratio"] = row["tok_fwd"] / row["tok_needed"] if row["tok_needed"] else None  # nothing in the loss
    row["act_peak_mib"] = max(step["act_peak"] for step in steps) / MIB
    row["peak_rss_mib"] = max(run["peak_rss_mib"] for run in runs)
    cuda = [run["cuda_peak_mib"] for run in runs if run["cuda_peak_mib"] is not None]
    row["cuda_peak_mib"] = max(cuda) if cuda else None
    gated = [value for run in runs for value in run["sft_prompt_ratio"]]
    row["sft_prompt_ratio"] = statistics.mean(gated) if gated else None
    row["measured_steps"] = len(steps)
    return row


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def markdown(results: dict[str, dict[str, dict]], hpt_gammas: list[int]) -> str:
    cuda = any(row["cuda_peak_mib"] is not None for rows in results.values() for row in rows.values())
    peak = "CUDA peak MiB" if cuda else "peak RSS MiB"
    lines = [
        f"| gated | trainer | gen s | reward s | ref/old s | train s | step s | tok fwd | tok needed | fwd/needed "
        f"| loss tok | act MiB | {peak} | SFT share |",
        "| ---: | --- |" + " ---: |" * 12,
    ]
    for share, rows in results.items():
        for trainer, r in rows.items():
            lines.append(
                f"| {share}% | {trainer} | {r['gen']:.3f} | {r['reward']:.3f} | {r['ref']:.3f} | {r['train']:.3f} "
                f"| {r['step']:.3f} | {r['tok_fwd']:.0f} | {r['tok_needed']:.0f} | {fmt(r['ratio'])} "
                f"| {r['loss_tok']:.0f} | {r['act_peak_mib']:.2f} "
                f"| {r['cuda_peak_mib'] if cuda else r['peak_rss_mib']:.0f} | {fmt(r['sft_prompt_ratio'])} |"
            )
    memory = "CUDA peak" if cuda else "activation peak"
    lines += [
        "",
        f"| gated | HPT gamma | train time HPT/GRPO | step time HPT/GRPO | {memory} HPT/GRPO | tok fwd HPT/GRPO |",
    ]
    lines.append("| ---: | ---: | ---: | ---: | ---: | ---: |")
    mem_key = "cuda_peak_mib" if cuda else "act_peak_mib"
    for share, rows in results.items():
        grpo = rows[GRPO]
        for gamma in hpt_gammas:
            hpt = rows[hpt_label(gamma)]
            ratios = [hpt[k] / grpo[k] if grpo[k] else None for k in ("train", "step", mem_key, "tok_fwd")]
            lines.append(f"| {share}% | {gamma} | " + " | ".join(map(fmt, ratios)) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    own, extras = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help="'tiny' (a local tiny Qwen2), a path or a Hub id")
    parser.add_argument("--hidden_size", type=int, default=64, help="hidden size of the tiny model")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per run; the first is warm-up")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="seed of round 1; round r uses seed + r - 1")
    parser.add_argument("--num_prompts", type=int, default=8, help="prompts per optimizer step")
    parser.add_argument("--num_generations", type=int, default=8)
    parser.add_argument("--max_completion_length", type=int, default=48)
    parser.add_argument("--per_device_train_batch_size", type=int, help="default: the step's rows / accumulation")
    parser.add_argument("--gradient_accumulation_steps", type=int, default=2)
    parser.add_argument("--gradient_checkpointing", action="store_true")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--attn_implementation")
    parser.add_argument("--use_liger_kernel", action="store_true")
    parser.add_argument("--padding_free", choices=TRI_STATE, default="auto", help="HPTConfig.padding_free")
    parser.add_argument("--skip_zero_advantage_rows", choices=TRI_STATE, default="auto")
    parser.add_argument("--shares", type=int, nargs="+", default=[0, 50, 100], help="percent of prompts gated")
    parser.add_argument(
        "--hpt_gammas",
        type=int,
        nargs="+",
        default=[0],
        help="HPTTrainer runs once per gamma; -1 is GRPO through HPT's code path, which isolates that code's cost",
    )
    parser.add_argument("--json", help="save the results to this path")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(own)
    args.overrides = parse_overrides(extras)
    if args.worker:
        return args
    if len(set(args.hpt_gammas)) != len(args.hpt_gammas):
        parser.error(f"--hpt_gammas lists a gamma twice: {args.hpt_gammas}.")
    if args.steps < 2:
        parser.error("--steps must be at least 2: the first step of each run is warm-up and dropped.")
    rows = args.num_prompts * args.num_generations
    if args.per_device_train_batch_size is None:
        args.per_device_train_batch_size = rows // args.gradient_accumulation_steps
    if args.per_device_train_batch_size * args.gradient_accumulation_steps != rows:
        print(
            f"warning: one optimizer step ({args.per_device_train_batch_size} x {args.gradient_accumulation_steps} "
            f"rows) is not one generation batch ({rows} rows): some steps do not generate; TRL computes old log-probs.",
            file=sys.stderr,
        )
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.worker:
        worker(Path(args.worker))
        return {}
    with tempfile.TemporaryDirectory() as model_root:
        model = args.model
        if model == "tiny":
            from hpt_trl.builtin_task.tiny_model import save_tiny_model

            model = str(save_tiny_model(Path(model_root) / "model", hidden_size=args.hidden_size))
        excluded = ("json", "worker", "shares", "rounds", "seed", "hpt_gammas")
        base = {k: v for k, v in vars(args).items() if k not in excluded}
        trainers = [(GRPO, None), *((hpt_label(gamma), gamma) for gamma in args.hpt_gammas)]
        configs = [(share, trainer, gamma) for share in args.shares for trainer, gamma in trainers]
        runs = defaultdict(list)
        progress = tqdm(total=args.rounds * len(configs), desc="runs", file=sys.stderr)
        for round_index in range(args.rounds):
            for share, trainer, gamma in configs:
                progress.set_postfix_str(f"round {round_index + 1}: {trainer} at {share}% gated")
                spec = {**base, "model": model, "trainer": trainer, "gamma": gamma, "share": share}
                spec["seed"] = args.seed + round_index
                runs[share, trainer].append(run_isolated(spec))
                progress.update()
        progress.close()
    results = {share: {trainer: summarize(runs[share, trainer]) for trainer, _ in trainers} for share in args.shares}
    print(markdown(results, args.hpt_gammas))
    if args.json:
        options = {k: v for k, v in vars(args).items() if k != "worker"}
        flat = [{"share": share, "trainer": trainer, **run} for (share, trainer), rs in runs.items() for run in rs]
        Path(args.json).write_text(json.dumps({"options": options, "results": results, "runs": flat}))
    return results


if __name__ == "__main__":
    main()
