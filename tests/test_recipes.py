import functools
import json
from pathlib import Path

import pytest
import yaml
from hpt_testing import load_benchmark


ROOT = Path(__file__).resolve().parents[1]
TOY_RECIPES = sorted((ROOT / "recipes").glob("toy_*.yaml"))
RECIPES = sorted(set((ROOT / "recipes").rglob("*.yaml")) - set(TOY_RECIPES))
ACCELERATE_CONFIGS = ROOT / "accelerate_configs"
PAPER_MODELS = {
    # model directory: (gamma of the HPT recipe, sft_loss_coef, prompt_template), from the paper's scripts
    "qwen2.5-math-7b": (0, 1.0, "chat"),
    "qwen2.5-math-1.5b": (0, 0.3, "chat"),
    "llama-3.1-8b": (2, 1.0, "llama"),
}
VARIANT_GAMMA = {"sft": 8, "grpo": -1, "sft_then_grpo_stage1_sft": 8, "sft_then_grpo_stage2_grpo": -1}
# The toolkit's recipes for Qwen2.5-Math-7B: (gate_strategy, demonstration_loss, learning rate of the authors' script).
TOOLKIT_RECIPES = {
    "luffy": ("always", "off_policy", 1e-6),
    "srft": ("always", "srft", 1e-6),
    "hpt_soft": ("soft", "sft", 5e-6),
    "hpt_adaptive": ("adaptive", "sft", 5e-6),
}
NUM_PAPER_GPUS = 8


@functools.cache
def _compare_methods():
    """benchmarks/compare_methods.py, loaded once as a module."""
    return load_benchmark("compare_methods")


@functools.cache
def _committed_comparison_runs() -> list[dict]:
    """The runs of benchmarks/results/compare_methods.json, the comparison the README's table prints."""
    return json.loads((ROOT / "benchmarks" / "results" / "compare_methods.json").read_text())["runs"]


def _toolkit_variants() -> dict:
    """benchmarks/compare_methods.py's TOOLKIT_VARIANTS: the toolkit's methods as HPTConfig settings."""
    return _compare_methods().TOOLKIT_VARIANTS


def _parse(path: Path):
    import sys

    sys.path.insert(0, str(ROOT))
    from train import make_parser

    # The recipes ask for bf16, which TrainingArguments refuses on a machine without a GPU unless use_cpu is set; the
    # override changes nothing else, so every other value is validated as a GPU run would validate it. The parser is
    # train.py's own, so a recipe that parses here is one train.py accepts.
    return make_parser().parse_args_and_config(args=["--config", str(path), "--use_cpu", "true"])[:3]


def test_recipes_exist():
    names = {str(path.relative_to(ROOT / "recipes")) for path in RECIPES}
    for model in PAPER_MODELS:
        for variant in ["hpt", *VARIANT_GAMMA]:
            assert f"{model}/{variant}.yaml" in names
    assert any(path.parent.name == "lora" for path in RECIPES)
    assert {f"qwen2.5-math-7b/{name}.yaml" for name in TOOLKIT_RECIPES} <= names
    # The paper reports LUFFY on every model (SRFT on the 7B only).
    assert {f"{model}/luffy.yaml" for model in PAPER_MODELS} <= names


BOOKKEEPING = {"output_dir", "run_name"}  # per-run names, not knobs


def _table_rows(markdown: str, heading: str) -> list[list[str]]:
    """The rows of the first markdown table after `heading`, as lists of cell texts without backticks."""
    section = markdown.split(heading, 1)[1]
    rows = []
    for line in section.splitlines():
        if line.startswith("|"):
            rows.append([cell.strip().strip("`") for cell in line.strip().strip("|").split("|")])
        elif rows:
            break
    return [rows[0]] + rows[2:]  # the header, then the body (the separator row dropped)


def _recipe_table() -> dict[str, dict]:
    """The knobs of every paper recipe as recipes/README.md lists them: the shared table plus the recipe's row."""
    markdown = (ROOT / "recipes" / "README.md").read_text()
    shared = {row[0]: yaml.safe_load(row[1]) for row in _table_rows(markdown, "## Shared by every paper recipe")[1:]}
    header, *rows = _table_rows(markdown, "## Per recipe")
    table = {}
    for row in rows:
        knobs = {
            name: yaml.safe_load(value) for name, value in zip(header[1:-1], row[1:-1], strict=True) if value != "-"
        }
        absent = {name for name, value in zip(header[1:-1], row[1:-1], strict=True) if value == "-"}
        table[row[0]] = {"knobs": {**shared, **knobs}, "absent": absent, "script": row[-1]}
    return table


def test_the_table_lists_every_paper_recipe():
    assert sorted(_recipe_table()) == sorted(
        str(p.relative_to(ROOT / "recipes")) for p in RECIPES if p.parent.name != "lora"
    )


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(ROOT / "recipes")))
def test_recipe_parses_and_validates(path):
    text = path.read_text()
    assert "accelerate launch --config_file accelerate_configs/" in text
    assert f"--config recipes/{path.relative_to(ROOT / 'recipes')}" in text
    launch_config = text.split("--config_file accelerate_configs/")[1].split()[0]
    assert (ACCELERATE_CONFIGS / launch_config).is_file()

    script_args, args, model_args = _parse(path)
    assert script_args.reward_funcs == ["accuracy"]
    assert args.gate_reward == 0 and args.num_generations == 8
    assert args.bf16 and args.use_vllm and args.vllm_mode == "colocate"
    assert model_args.dtype == "bfloat16"

    if path.parent.name == "lora":
        assert model_args.use_peft
        assert args.gradient_checkpointing
        assert args.vllm_tensor_parallel_size == 1
        assert "single_gpu.yaml" in text
        return

    name = str(path.relative_to(ROOT / "recipes"))
    expected = _recipe_table()[name]
    recipe = yaml.safe_load(text)
    assert set(recipe) - BOOKKEEPING <= set(expected["knobs"]), "a knob the table does not list"
    assert not set(recipe) & expected["absent"], "a knob the table says is not set"
    for knob, value in expected["knobs"].items():
        parsed = next(getattr(obj, knob) for obj in (args, script_args, model_args) if hasattr(obj, knob))
        assert parsed == value, f"{knob}: recipe {parsed!r}, table {value!r}"
    # The table's values are the authors' (tests/test_recipes.py keeps the paper's per-model settings too).
    gamma, sft_loss_coef, template = PAPER_MODELS[path.parent.name]
    strategy, demonstration_loss, learning_rate = TOOLKIT_RECIPES.get(path.stem, ("switch", "sft", 5e-6))
    if strategy != "always":  # gamma is not used under "always"
        assert args.gamma == VARIANT_GAMMA.get(path.stem, gamma)
    assert (args.gate_strategy, args.demonstration_loss) == (strategy, demonstration_loss)
    assert args.sft_loss_coef == sft_loss_coef and args.learning_rate == learning_rate
    assert script_args.prompt_template == template and not script_args.keep_system_prompt
    # Two updates of 64 prompts x 8 per rollout batch of 128 x 8, on the paper's 8 GPUs; the second unclipped.
    update = args.per_device_train_batch_size * NUM_PAPER_GPUS * args.gradient_accumulation_steps
    assert update == 64 * args.num_generations
    assert args.steps_per_generation == 2 * args.gradient_accumulation_steps and args.max_steps == 2 * 500
    assert args.epsilon == 1.0 and args.epsilon_high == float("inf") and not args.vllm_importance_sampling_correction
    # The authors' loss is 64 times this one (recipes/README.md): their clip 1.0, Adam eps 1e-8 and skip at 80.
    assert args.max_grad_norm == 1.0 / 64 and args.adam_epsilon == 1e-8 / 64
    skips = expected["script"] == "train.sh"  # only the Qwen HPT script sets MAX_GRAD_NORM=80
    assert args.grad_norm_skip_threshold == (80.0 / 64 if skips else None)
    assert launch_config == "fsdp2.yaml" or not skips  # DeepSpeed cannot skip an update
    if path.parent.name == "qwen2.5-math-7b" and path.stem != "sft_then_grpo_stage2_grpo":
        # rope_theta 40000 / 16384 positions live in the patched local copy (see the recipe's header).
        assert model_args.model_name_or_path == "models/Qwen2.5-Math-7B-16k"
        assert "--rope_theta 40000 --max_position_embeddings 16384" in text
    if path.stem == "sft_then_grpo_stage2_grpo":
        stage1 = yaml.safe_load((path.parent / "sft_then_grpo_stage1_sft.yaml").read_text())
        assert model_args.model_name_or_path == stage1["output_dir"]


def test_prepare_long_context_model(tmp_path):
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("prep", ROOT / "recipes" / "prepare_long_context_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps({"rope_theta": 10000.0, "max_position_embeddings": 4096}))
    config = module.patch_config(config_path, 40000.0, 16384)
    assert json.loads(config_path.read_text()) == config == {"rope_theta": 40000.0, "max_position_embeddings": 16384}


@pytest.mark.parametrize(
    ("name", "distributed_type", "num_processes", "zero_stage", "offload"),
    [
        ("single_gpu", "NO", 1, None, None),
        ("multi_gpu", "MULTI_GPU", 8, None, None),
        ("deepspeed_zero2", "DEEPSPEED", 8, 2, "none"),
        ("deepspeed_zero3", "DEEPSPEED", 8, 3, "none"),
        ("deepspeed_zero3_offload", "DEEPSPEED", 8, 3, "cpu"),
        ("fsdp2", "FSDP", 8, None, None),
        ("multi_node", "DEEPSPEED", 16, 3, "none"),
    ],
)
def test_accelerate_config(name, distributed_type, num_processes, zero_stage, offload):
    config = yaml.safe_load((ACCELERATE_CONFIGS / f"{name}.yaml").read_text())
    assert config["distributed_type"] == distributed_type
    assert config["num_processes"] == num_processes
    assert config["mixed_precision"] == "bf16" and config["use_cpu"] is False
    if zero_stage is None:
        assert "deepspeed_config" not in config
        if distributed_type == "FSDP":
            assert config["fsdp_config"]["fsdp_version"] == 2
    else:
        deepspeed = config["deepspeed_config"]
        assert deepspeed["zero_stage"] == zero_stage
        assert deepspeed["offload_optimizer_device"] == offload and deepspeed["offload_param_device"] == offload
        assert deepspeed["zero3_init_flag"] == (zero_stage == 3)
    if name == "multi_node":
        assert config["num_machines"] == 2 and config["machine_rank"] == 0
        assert {"main_process_ip", "main_process_port"} <= set(config)


@pytest.mark.parametrize("path", TOY_RECIPES, ids=lambda p: p.name)
def test_toy_recipes_are_the_cpu_demo_with_one_method_each(path):
    from hpt_trl.builtin_task.demo import BUILTIN_DATASET, BUILTIN_MODEL

    toolkit_variants = _toolkit_variants()
    script_args, args, model_args = _parse(path)
    name = path.stem.removeprefix("toy_")
    assert script_args.method == ("hpt" if name in toolkit_variants else name)
    for key, value in toolkit_variants.get(name, {}).items():
        assert getattr(args, key) == value
    assert script_args.dataset_name == BUILTIN_DATASET and model_args.model_name_or_path == BUILTIN_MODEL
    assert args.use_cpu and not args.bf16 and not args.use_vllm
    reference = _parse(TOY_RECIPES[0])[1]
    # The methods differ in the gate and in the learning rate each chose on the validation split from the same
    # budget (benchmarks/compare_methods.py): same steps, data, schedule, batch.
    for field in ("max_steps", "per_device_train_batch_size", "num_generations", "seed", "warmup_steps"):
        assert getattr(args, field) == getattr(reference, field), field
    assert args.lr_scheduler_type == reference.lr_scheduler_type
    # ... and the recipe carries the rate the committed comparison chose, so `recipes/toy_<method>.yaml` trains the
    # README table's row <method>.
    chosen = _compare_methods().chosen_setting(_committed_comparison_runs(), name, tuning_seed=0)
    assert args.learning_rate == float(chosen)


def test_every_demo_method_has_a_toy_recipe():
    from hpt_trl.data import METHODS

    toolkit_variants = _toolkit_variants()
    assert sorted(p.stem.removeprefix("toy_") for p in TOY_RECIPES) == sorted([*METHODS, *toolkit_variants])
