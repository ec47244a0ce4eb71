"""hpt_trl.checkpoints on real trainer checkpoints, each broken the way a full disk or a kill breaks it."""

import json
import logging
import re
import shutil

import pytest
from hpt_testing import make_config, make_dataset, odd_prompts_wrong

from hpt_trl import HPTTrainer
from hpt_trl.checkpoints import (
    CheckpointError,
    check_requested_checkpoint,
    checkpoint_problem,
    checkpoint_step,
    find_resume_checkpoint,
    has_final_model,
    list_checkpoints,
)


@pytest.fixture(scope="module")
def trained_run(tiny_model_dir, tmp_path_factory):
    """A two-step run that saved checkpoint-1 and checkpoint-2 and its final model (built once, copied per test)."""
    out = tmp_path_factory.mktemp("run") / "out"
    args = make_config(out, save_strategy="steps", save_steps=1)
    trainer = HPTTrainer(tiny_model_dir, reward_funcs=[odd_prompts_wrong], args=args, train_dataset=make_dataset())
    trainer.train()
    trainer.save_model(str(out))
    return out


@pytest.fixture
def run(trained_run, tmp_path):
    return shutil.copytree(trained_run, tmp_path / "out")


def truncate(path, keep: int | None = None):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 if keep is None else keep])


def test_an_intact_run(run):
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-2", "checkpoint-1"]
    assert checkpoint_problem(run / "checkpoint-2") is None
    assert checkpoint_step(run / "checkpoint-2") == 2
    assert find_resume_checkpoint(run) == run / "checkpoint-2"
    assert has_final_model(run)
    truncate(run / "model.safetensors")
    assert not has_final_model(run)


@pytest.mark.parametrize(
    ("breakage", "problem"),
    [
        (lambda c: truncate(c / "model.safetensors"), r"model.safetensors is truncated \(\d+ bytes, its header says"),
        (lambda c: truncate(c / "model.safetensors", keep=4), "model.safetensors is truncated"),
        (lambda c: (c / "model.safetensors").unlink(), "no model weights"),
        (lambda c: truncate(c / "trainer_state.json"), "trainer_state.json is unreadable"),
        (lambda c: (c / "trainer_state.json").unlink(), "trainer_state.json is missing"),
        (lambda c: truncate(c / "optimizer.pt"), "optimizer.pt is truncated or corrupted"),
        (lambda c: (c / "optimizer.pt").unlink(), "optimizer.pt is missing"),
        (lambda c: truncate(c / "scheduler.pt"), "scheduler.pt is truncated or corrupted"),
        (lambda c: truncate(c / "rng_state.pth"), "rng_state.pth is truncated or corrupted"),
        (lambda c: truncate(c / "config.json"), "config.json is not valid JSON"),
    ],
)
def test_a_broken_newest_checkpoint_is_named_and_skipped(run, caplog, breakage, problem):
    breakage(run / "checkpoint-2")
    found = checkpoint_problem(run / "checkpoint-2")
    assert found is not None and re.search(problem, found), found
    with caplog.at_level(logging.WARNING, logger="hpt_trl.checkpoints"):
        assert find_resume_checkpoint(run, set_aside_broken=True) == run / "checkpoint-1"
    assert (
        f"Skipping checkpoint {run / 'checkpoint-2'}: " in caplog.text
        and "renamed to corrupt-checkpoint-2" in caplog.text
    )
    assert (run / "corrupt-checkpoint-2").is_dir() and not (run / "checkpoint-2").exists()
    with pytest.raises(
        CheckpointError,
        match=r"resume_from_checkpoint=.*corrupt-checkpoint-2.*newest intact checkpoint next to it is .*checkpoint-1",
    ):
        check_requested_checkpoint(run / "corrupt-checkpoint-2")


def test_a_checkpoint_saved_without_optimizer_state(run):
    (run / "checkpoint-2" / "optimizer.pt").unlink()
    assert checkpoint_problem(run / "checkpoint-2", require_optimizer=False) is None


def test_no_intact_checkpoint_is_an_error_not_a_fresh_start(run):
    for checkpoint in list_checkpoints(run):
        truncate(checkpoint / "model.safetensors")
    with pytest.raises(
        CheckpointError, match="No checkpoint in output_dir=.* is intact.*Starting over would overwrite"
    ):
        find_resume_checkpoint(run)
    assert find_resume_checkpoint(run.parent / "empty") is None


def test_a_missing_requested_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match=r"'.*checkpoint-7' cannot be resumed from: the folder does not exist"):
        check_requested_checkpoint(tmp_path / "checkpoint-7")


def test_a_sharded_checkpoint_checks_every_shard(run):
    checkpoint = run / "checkpoint-2"
    (checkpoint / "model.safetensors").rename(checkpoint / "model-00001-of-00002.safetensors")
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (checkpoint / "model.safetensors.index.json").write_text(json.dumps(index))
    assert "lists shards that are missing: ['model-00002-of-00002.safetensors']" in checkpoint_problem(checkpoint)
