"""The README's two set-up commands stay the ones CI and a newcomer run."""

import re
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]


def setup_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Set up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)\n```", section, flags=re.DOTALL)


def test_readme_has_exactly_two_setup_commands():
    commands = setup_commands()
    assert len(commands) == 2
    demo, tests = commands
    assert "pip install torch==2.13.0" in demo and "train.py" in demo
    assert ".[plot]" in demo, "the demo draws training_dynamics.png with matplotlib"
    assert "pytest" in tests


def test_ci_runs_the_readme_test_command():
    _, tests = setup_commands()
    assert tests in (ROOT / ".ci" / "run").read_text().splitlines()


def test_the_cpu_python_snippet_runs_as_written(tmp_path, monkeypatch):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Use it from Python", 1)[1].split("\n## ", 1)[0]
    snippet = re.findall(r"```python\n(.*?)\n```", section, flags=re.DOTALL)[0]
    assert "use_cpu=True" in snippet
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    namespace = {}
    exec(compile(snippet, "README.md", "exec"), namespace)
    trainer = namespace["trainer"]
    assert trainer.state.global_step == 2
    assert any("hpt/sft_prompt_ratio" in log for log in trainer.state.log_history)
