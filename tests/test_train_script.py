"""train.py end to end: a YAML recipe with command-line overrides, resume after a stop, and the Hub push."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hpt_testing import write_tiny_recipe
from safetensors.torch import load_file


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def recipe(tiny_model_dir, tmp_path) -> str:
    return write_tiny_recipe(tmp_path, tiny_model_dir, output_dir=tmp_path / "out", max_steps=4, use_cpu="true")


def train(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args], capture_output=True, text=True, env=env, timeout=600
    )
    if check:
        assert result.returncode == 0, result.stderr[-4000:]
    return result


def history(output_dir: Path, step: int) -> list[dict]:
    state = json.loads((output_dir / f"checkpoint-{step}" / "trainer_state.json").read_text())
    return [entry for entry in state["log_history"] if "loss" in entry]


def test_recipe_with_command_line_overrides(recipe, tmp_path):
    train("--config", recipe, "--gamma", "-1", "--max_steps", "2")
    out = tmp_path / "out"
    logs = history(out, 2)
    assert len(logs) == 2
    assert all(entry["hpt/sft_prompt_ratio"] == 0.0 for entry in logs), "--gamma -1 must override the recipe"
    assert (out / "model.safetensors").exists() and (out / "tokenizer_config.json").exists()
    card = (out / "README.md").read_text()
    assert "HPT" in card and "2509.04419" in card and "recipe.yaml" in card
    assert "## Final training metrics" in card and "`hpt/sft_prompt_ratio` | 0 |" in card


def test_resume_after_a_stop_matches_an_uninterrupted_run(recipe, tmp_path):
    train("--config", recipe, "--max_steps", "2")  # stops after checkpoint-2
    train("--config", recipe)  # picks up checkpoint-2 in output_dir by itself
    train("--config", recipe, "--output_dir", str(tmp_path / "straight"))
    resumed, straight = history(tmp_path / "out", 4), history(tmp_path / "straight", 4)
    assert [e["step"] for e in resumed] == [1, 2, 3, 4]
    keys = ("loss", "hpt/sft_prompt_ratio", "hpt/group_accuracy", "reward")
    assert [[e[k] for k in keys] for e in resumed] == [[e[k] for k in keys] for e in straight]
    a, b = load_file(tmp_path / "out" / "model.safetensors"), load_file(tmp_path / "straight" / "model.safetensors")
    assert all((a[name] == b[name]).all() for name in a)


def test_push_to_hub_uploads_the_model_and_card(recipe, tmp_path, monkeypatch):
    """Only the network calls are replaced: the repo creation and the folder upload."""

    from huggingface_hub import HfApi, RepoUrl
    from trl import TrlParser

    sys.path.insert(0, str(ROOT))
    import train as train_script

    uploads = []

    def create_repo(self, repo_id, **kwargs):
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, repo_id, folder_path, **kwargs):
        hub_copy = tmp_path / "hub" / repo_id
        shutil.copytree(folder_path, hub_copy, dirs_exist_ok=True, ignore=shutil.ignore_patterns("checkpoint-*"))
        uploads.append(repo_id)

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    parser: TrlParser = train_script.make_parser()
    args = parser.parse_args_and_config(
        args=["--config", recipe, "--max_steps", "1", "--push_to_hub", "true"]
        + ["--hub_model_id", "someone/tiny-hpt", "--hub_strategy", "end", "--save_strategy", "no"]
    )
    train_script.main(*args)
    assert uploads and uploads[-1] == "someone/tiny-hpt"
    pushed = tmp_path / "hub" / "someone" / "tiny-hpt"
    assert (pushed / "model.safetensors").exists()
    card = (pushed / "README.md").read_text()
    assert "HPT" in card and "2509.04419" in card and "someone/tiny-hpt" in card


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under `folder` with its content hash and modification time."""
    return {
        str(path.relative_to(folder)): (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_rerunning_a_finished_run_changes_nothing(recipe, tmp_path):
    """transformers stops only after a step, so a run resumed at max_steps trained step N+1 and overwrote the model."""
    out = tmp_path / "out"
    first = train("--config", recipe, "--max_steps", "3")
    before = snapshot(out)
    assert {"checkpoint-2/model.safetensors", "checkpoint-3/model.safetensors", "model.safetensors"} <= set(before)
    rerun = train("--config", recipe, "--max_steps", "3")
    assert snapshot(out) == before
    assert not (out / "checkpoint-4").exists()
    assert "is finished" in rerun.stderr and "Nothing to do" in rerun.stderr
    # The full metrics dict is no longer written under the progress bar at every step (it goes to metrics.jsonl).
    assert "'completions/mean_length'" not in first.stdout + first.stderr
    # Stopped while saving the final model: it is saved from checkpoint-3, and still no step 4 is trained.
    (out / "model.safetensors").unlink()
    finish = train("--config", recipe, "--max_steps", "3")
    assert "saving it from the checkpoint, without training" in finish.stderr
    assert not (out / "checkpoint-4").exists()
    final, last = load_file(out / "model.safetensors"), load_file(out / "checkpoint-3" / "model.safetensors")
    assert final.keys() == last.keys() and all((final[name] == last[name]).all() for name in final)


def test_a_corrupted_newest_checkpoint_is_named_and_skipped(recipe, tmp_path):
    """As if killed while saving checkpoint-3 (a full disk), after step 3 was logged: the run goes on from 2."""
    out = tmp_path / "out"
    train("--config", recipe, "--max_steps", "3")
    (out / "model.safetensors").unlink()
    weights = out / "checkpoint-3" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a full disk
    resumed = train("--config", recipe, "--max_steps", "4")
    assert "checkpoint-3: model.safetensors is truncated" in resumed.stderr
    assert "Resuming from checkpoint-2" in resumed.stderr
    assert (out / "corrupt-checkpoint-3" / "model.safetensors").stat().st_size == 1000  # kept, out of the way
    assert [e["step"] for e in history(out, 4)] == [1, 2, 3, 4]
    assert load_file(out / "model.safetensors")
    # metrics.jsonl held step 3 from the first attempt: the resumed run trains it again and logs each step once.
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in records] == sorted(r["step"] for r in records)


def parse(*args: str):
    sys.path.insert(0, str(ROOT))
    import train as train_script

    return train_script, train_script.make_parser().parse_args_and_config(args=list(args))


@pytest.mark.parametrize("corruption", ["missing", "trainer_state", "optimizer"])
def test_a_bad_requested_checkpoint_fails_before_the_model_loads(tiny_model_dir, tmp_path, corruption):
    import torch
    from safetensors.torch import save_file

    from hpt_trl.checkpoints import CheckpointError

    checkpoint = tmp_path / "out" / "checkpoint-2"
    if corruption != "missing":
        checkpoint.mkdir(parents=True)
        save_file({"w": torch.zeros(4)}, checkpoint / "model.safetensors")
        (checkpoint / "trainer_state.json").write_text(
            '{"global_step": 2' + ("" if corruption != "optimizer" else "}")
        )
        torch.save({"state": {}, "param_groups": []}, checkpoint / "optimizer.pt")
        if corruption == "optimizer":
            optimizer = checkpoint / "optimizer.pt"
            optimizer.write_bytes(optimizer.read_bytes()[:-30])
    # A model that does not exist: loading it first would fail with another error than the checkpoint's.
    recipe = write_tiny_recipe(tmp_path, str(tmp_path / "no-such-model"), output_dir=tmp_path / "out", use_cpu="true")
    script, args = parse("--config", recipe, "--resume_from_checkpoint", str(checkpoint))
    with pytest.raises(CheckpointError, match=rf"resume_from_checkpoint='{checkpoint}'.*--resume_from_checkpoint"):
        script.main(*args)


def test_a_recipe_without_model_name_or_path_names_the_field(tiny_model_dir, tmp_path):
    recipe = write_tiny_recipe(tmp_path, tiny_model_dir, output_dir=tmp_path / "out", use_cpu="true")
    Path(recipe).write_text("".join(line + "\n" for line in Path(recipe).read_text().splitlines()[1:]))
    script, args = parse("--config", recipe)
    with pytest.raises(ValueError, match="model_name_or_path is not set"):
        script.main(*args)
    script_args, _, model_args, _ = args
    script_args.dataset_name = "builtin:arithmetic"  # the built-in task brings its own base model
    assert script.check_model_name(script_args, model_args).model_name_or_path == "builtin:arithmetic-base"
    script_args.dataset_name = "builtin:lookup"
    assert script.check_model_name(script_args, model_args).model_name_or_path == "builtin:lookup-base"
    # A built-in base is pretrained for its own task: another task's base is refused, with the flag to pass.
    model_args.model_name_or_path = "builtin:arithmetic-base"
    with pytest.raises(ValueError, match="base model of the built-in task builtin:arithmetic.*builtin:lookup-base"):
        script.check_model_name(script_args, model_args)


def test_a_completion_budget_shorter_than_the_built_in_demonstrations_names_the_field(tmp_path, monkeypatch):
    # A rollout budget below the longest demonstration (a hard one, with EOS) cuts its boxed answer off: the run stops
    # before the trainer is built, naming the option and the length to pass.
    script, args = parse(
        "--config", str(ROOT / "recipes" / "toy_hpt.yaml"), "--output_dir", str(tmp_path / "out"),
        "--max_completion_length", "12", "--task_num_train", "200",
    )  # fmt: skip
    monkeypatch.setattr(script, "HPTTrainer", None)  # reaching the trainer would fail with another error
    with pytest.raises(ValueError, match=r"max_completion_length=12 is shorter .* of builtin:arithmetic") as error:
        script.main(*args)
    longest = int(re.search(r"\((\d+) tokens with EOS\)", str(error.value)).group(1))
    hard_demonstration = "37+8=45\n45-19=26\n\\boxed{26}"  # characters are tokens in the built-in tokenizer
    assert longest >= len(hard_demonstration) + 1
    assert f"Pass --max_completion_length {longest} or more" in str(error.value)
    args[1].max_completion_length = longest
    with pytest.raises(TypeError):  # past the check: the trainer (None here) is called
        script.main(*args)


@pytest.mark.parametrize(
    ("option", "flag"),
    [
        ("--dataset_prompt_column", "question"),
        ("--dataset_demonstration_column", "demo"),
        ("--dataset_solution_column", "answer"),
    ],
)
def test_a_missing_column_names_the_script_option(recipe, option, flag):
    script, args = parse("--config", recipe, option, flag)
    with pytest.raises(ValueError, match=rf"Column '{flag}' not found.*Set `{option}`"):
        script.main(*args)


def test_a_fractional_gamma_on_the_command_line_says_it_is_a_count(recipe, capsys):
    with pytest.raises(ValueError, match="a count of correct rollouts, not a fraction"):
        parse("--config", recipe, "--gamma", "0.5")
    assert parse("--config", recipe, "--gamma", "2")[1][1].gamma == 2
    with pytest.raises(SystemExit):
        parse("--config", recipe, "--gamma", "half")
    assert "gamma is a count of correct rollouts" in capsys.readouterr().err
