"""Two CPU processes (gloo): a prompt group straddling the processes is gated exactly as in one process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hpt_testing import NUM_GENERATIONS


SCRIPT = Path(__file__).parent / "scripts" / "gate_across_processes.py"


def run(command, tmp_path, name):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    log = tmp_path / f"{name}.log"
    with log.open("w") as out:
        result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=300)
    assert result.returncode == 0, log.read_text()[-4000:]
    return json.loads((tmp_path / f"{name}.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("demonstration_loss", ["sft", "off_policy"])
def test_two_processes_gate_like_one(tiny_model_dir, tmp_path, demonstration_loss):
    one = run(
        [sys.executable, str(SCRIPT), tiny_model_dir, str(tmp_path / "one.json"), demonstration_loss], tmp_path, "one"
    )
    two = run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
        + [str(SCRIPT), tiny_model_dir, str(tmp_path / "two.json"), demonstration_loss],
        tmp_path,
        "two",
    )
    # `accelerate launch --cpu --num_processes 2` and MULTI_CPU configs silently run one process: check it is two.
    assert one["world_size"] == 1 and two["world_size"] == 2
    (single,) = one["runs"]
    first, second = sorted(two["runs"], key=lambda run: run["process"])
    straddling_kinds = set()
    for whole, left, right in zip(single["batches"], first["batches"], second["batches"], strict=True):
        assert left["pids"] + right["pids"] == whole["pids"], "both runs must see the same rows in the same order"
        assert left["kinds"] + right["kinds"] == whole["kinds"]
        # LUFFY: the straddling group's demonstration, scored on the first process, sets the advantages of its
        # rollouts on the second; its advantage counts once, on the process that holds its row.
        for key in ("advantages", "demonstration_advantage"):
            assert left[key] + right[key] == pytest.approx(whole[key]), key
        straddler = left["pids"][-1]
        assert right["pids"][0] == straddler
        straddling_kinds.add("gated" if straddler % 2 else "rl")
    # A straddling all-correct group (P = 4 > gamma = 2) would be gated if each process counted only its own half;
    # a straddling all-wrong group must put its one demonstration on exactly one process. Both cases occur.
    assert straddling_kinds == {"gated", "rl"}
    if demonstration_loss == "off_policy":
        # The demonstration (always right) replaces rollout 0: in an odd, all-wrong group it is 1 - 1/4 above the
        # mean and the 3 rollouts 1/4 below; an even group is all right, all advantages 0.
        for batch in single["batches"]:
            for start in range(0, len(batch["pids"]), NUM_GENERATIONS):
                odd = batch["pids"][start] % 2
                assert batch["demonstration_advantage"][start] == pytest.approx(0.75 if odd else 0.0)
                rollouts = batch["advantages"][start : start + NUM_GENERATIONS]
                assert rollouts == pytest.approx([0.0] + [-0.25 if odd else 0.0] * (NUM_GENERATIONS - 1))


@pytest.mark.slow
def test_two_processes_give_the_update_of_one(tiny_model_dir, tmp_path):
    """The same generation batch on 2 processes x 16 rows gives the update of 1 process x 32 rows, for every mode."""
    import torch
    from hpt_testing import LAYOUT_MODES, one_step_update

    script = Path(__file__).parent / "scripts" / "one_step_update.py"
    output = tmp_path / "two.pt"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "TRL_EXPERIMENTAL_SILENCE": "1"}
    log = tmp_path / "two.log"
    with log.open("w") as out:
        result = subprocess.run(
            command + [str(script), tiny_model_dir, str(output), "16", "1"],
            stdout=out,
            stderr=out,
            env=env,
            timeout=600,
        )
    assert result.returncode == 0, log.read_text()[-4000:]
    two = torch.load(output)
    assert two["world_size"] == 2
    for mode in LAYOUT_MODES:
        whole = one_step_update(tiny_model_dir, tmp_path / mode, mode, 32, 1)
        scale = max(delta.abs().max() for delta in whole.values())
        for name, delta in whole.items():
            torch.testing.assert_close(
                two["updates"][mode][name], delta, rtol=0, atol=2e-6 * scale, msg=f"{mode} {name}"
            )
