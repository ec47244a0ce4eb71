"""`HPTConfig`: its validation names the field and the fix, its defaults are the authors', the command line maps onto it."""

import pytest
from hpt_testing import (
    make_config,
)

from hpt_trl import HPTConfig


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("gamma", -2, "gamma must be an integer >= -1"),
        ("gamma", 0.5, "not a fraction"),
        ("sft_loss_coef", -0.1, "sft_loss_coef must be >= 0"),
        ("gate_reward", "", "gate_reward is empty"),
        ("demonstration_column", "", "demonstration_column must name"),
    ],
)
def test_config_rejects_bad_values(tmp_path, field, value, message):
    with pytest.raises(ValueError, match=message):
        make_config(tmp_path, **{field: value})


def test_config_reads_gate_reward_index_from_the_command_line(tmp_path):
    assert make_config(tmp_path, gate_reward="1").gate_reward == 1


def test_nan_correct_threshold_is_refused(tmp_path):
    with pytest.raises(ValueError, match="correct_threshold must be a finite number"):
        make_config(tmp_path, correct_threshold=float("nan"))


def test_hpt_config_defaults_are_the_authors_rl_term(tmp_path):
    args = HPTConfig(output_dir=str(tmp_path), per_device_train_batch_size=8, num_generations=4, use_cpu=True)
    assert (args.loss_type, args.scale_rewards, args.beta, args.gamma) == ("dr_grpo", "none", 0.0, 0)


def test_vllm_arguments_map_from_the_command_line(tmp_path):
    """The vLLM options of a recipe reach HPTConfig unchanged (server mode, colocate sizing)."""
    from trl import ModelConfig, TrlParser

    from hpt_trl.data import HPTScriptArguments

    parser = TrlParser((HPTScriptArguments, HPTConfig, ModelConfig))
    _, args, _ = parser.parse_args_and_config(
        args=[
            "--output_dir",
            str(tmp_path),
            "--use_cpu",
            "true",
            "--per_device_train_batch_size",
            "8",
            "--num_generations",
            "8",
            "--use_vllm",
            "true",
            "--vllm_mode",
            "server",
            "--vllm_server_base_url",
            "http://127.0.0.1:8000",
            "--vllm_tensor_parallel_size",
            "2",
            "--vllm_gpu_memory_utilization",
            "0.3",
            "--vllm_importance_sampling_correction",
            "true",
        ]
    )
    assert args.use_vllm is True and args.vllm_mode == "server"
    assert args.vllm_server_base_url == "http://127.0.0.1:8000"
    assert args.vllm_tensor_parallel_size == 2 and args.vllm_gpu_memory_utilization == 0.3
    assert args.vllm_importance_sampling_correction is True


def test_toolkit_options_are_validated(tmp_path):
    with pytest.raises(ValueError, match="gate_strategy must be one of"):
        make_config(tmp_path, gate_strategy="hard")
    with pytest.raises(ValueError, match="soft_rl_coefs must be a non-empty list"):
        make_config(tmp_path, gate_strategy="soft", soft_rl_coefs=[0.5, -1.0])
    with pytest.raises(ValueError, match="loss_type='dapo'"):
        make_config(tmp_path, demonstration_loss="off_policy", loss_type="dapo")
    with pytest.raises(ValueError, match="temperature=1.0"):
        make_config(tmp_path, demonstration_loss="srft", temperature=0.7)
    with pytest.raises(ValueError, match="gamma=-1"):
        make_config(tmp_path, gamma=-1, gate_strategy="soft")
    parts = make_config(tmp_path, gate_strategy="always", demonstration_loss="off_policy").upge_parts
    assert parts["demonstrations/reference_denominator"] == "1, shaped p/(p+0.1)"
    assert "demonstrations/advantage" not in make_config(tmp_path, gamma=-1).upge_parts
