"""
Make a local copy of a checkpoint with a longer RoPE context, for the Qwen2.5-Math-7B recipes.

The paper (after LUFFY) trains Qwen2.5-Math-7B with `rope_theta=40000` and `max_position_embeddings=16384` instead of
the released 10000 / 4096, so that a 1024-token prompt plus an 8192-token response fits. Both the trained model and the
colocated vLLM engine read these values from the checkpoint's `config.json`, so the override is written there once:

    python recipes/prepare_long_context_model.py --model Qwen/Qwen2.5-Math-7B --output models/Qwen2.5-Math-7B-16k \
        --rope_theta 40000 --max_position_embeddings 16384
"""

import argparse
import json
from pathlib import Path


def patch_config(config_path: Path, rope_theta: float, max_position_embeddings: int) -> dict:
    """Set the RoPE base and the context length in `config.json` and return the new config."""
    config = json.loads(config_path.read_text())
    config["rope_theta"] = rope_theta
    config["max_position_embeddings"] = max_position_embeddings
    # Checkpoints saved by transformers >= 5 keep the RoPE base in `rope_parameters`; keep both spellings in step.
    if isinstance(config.get("rope_parameters"), dict):
        config["rope_parameters"]["rope_theta"] = rope_theta
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="Hub id or local directory of the source checkpoint.")
    parser.add_argument("--output", required=True, help="Directory of the patched copy (model_name_or_path).")
    parser.add_argument("--rope_theta", type=float, default=40000.0)
    parser.add_argument("--max_position_embeddings", type=int, default=16384)
    parser.add_argument("--revision", default=None)
    args = parser.parse_args()

    output = Path(args.output)
    if Path(args.model).is_dir():
        import shutil

        shutil.copytree(args.model, output, dirs_exist_ok=True)
    else:
        from huggingface_hub import snapshot_download

        snapshot_download(args.model, revision=args.revision, local_dir=output)
    config = patch_config(output / "config.json", args.rope_theta, args.max_position_embeddings)
    print(
        f"Wrote {output}: rope_theta={config['rope_theta']}, "
        f"max_position_embeddings={config['max_position_embeddings']}"
    )


if __name__ == "__main__":
    main()
