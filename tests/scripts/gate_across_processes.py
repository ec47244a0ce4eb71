"""Train a few HPT steps and write, per generation batch, which rows each process saw and what the gate made them.

Run once as a single process and once with `torchrun --nproc_per_node 2`: the test compares the two.
Usage: gate_across_processes.py MODEL_DIR OUTPUT_JSON [DEMONSTRATION_LOSS]
(`off_policy`: LUFFY, every group's demonstration replacing its first rollout; default `sft`: the HPT switch.)
"""

import json
import os
import re
import sys
from pathlib import Path

import torch
from accelerate.utils import gather_object


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hpt_testing import NUM_GENERATIONS, make_config, make_dataset  # noqa: E402

from hpt_trl import HPTTrainer  # noqa: E402


def even_prompts_right(completions, pid, **kwargs):
    """Rollouts of even prompts are right, of odd ones wrong; a demonstration (a boxed answer) is always right."""
    texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    return [float(p % 2 == 0 or re.search(r"\\boxed\{", text) is not None) for p, text in zip(pid, texts)]


def main(model_dir: str, output_json: str, demonstration_loss: str = "sft") -> None:
    global_batch = 3 * NUM_GENERATIONS  # three prompt groups: with two processes the middle one straddles them
    gate = dict(gate_strategy="always") if demonstration_loss == "off_policy" else dict(gamma=NUM_GENERATIONS // 2)
    args = make_config(
        Path(output_json).parent / "run",
        demonstration_loss=demonstration_loss,
        max_steps=4,
        max_completion_length=24 if demonstration_loss == "off_policy" else 8,  # room for the boxed answer
        **gate,
    )
    args.per_device_train_batch_size = global_batch // args.world_size
    trainer = HPTTrainer(model_dir, even_prompts_right, args=args, train_dataset=make_dataset(num_prompts=12))

    records = []
    generate = trainer._generate_and_score_completions

    def recording(inputs):
        output = generate(inputs)
        record = {"pids": [x["pid"] for x in inputs], "kinds": output["hpt_row_kind"].tolist()}
        record["advantages"] = output["advantages"].tolist()
        record["demonstration_advantage"] = output.get("demonstration_advantage", output["advantages"] * 0).tolist()
        records.append(record)
        return output

    trainer._generate_and_score_completions = recording
    trainer.train()
    per_process = gather_object([{"process": trainer.accelerator.process_index, "batches": records}])
    if trainer.accelerator.is_main_process:
        Path(output_json).write_text(
            json.dumps({"world_size": trainer.accelerator.num_processes, "runs": per_process})
        )
    # Without an explicit teardown, gloo's threads can abort the interpreter's exit ("terminate called ...").
    trainer.accelerator.end_training()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
    # Interpreter teardown with gloo's threads still around intermittently aborts ("terminate called without an
    # active exception") after all work is done; the results are written, so leave without it.
    sys.stdout.flush()
    os._exit(0)
