"""train.py end to end: a YAML recipe with command-line overrides, resume after a stop, and the Hub push."""

import json
import os
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


def train(*args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]


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
    import shutil

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
