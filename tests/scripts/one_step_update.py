"""Write the parameter change of one HPT step per gate/demonstration loss, trained on this launch's processes.

Run with `torchrun --nproc_per_node 2`: the test compares it with one process on the same generation batch.
Usage: one_step_update.py MODEL_DIR OUTPUT_PT ROWS_PER_MICRO_BATCH ACCUMULATION_STEPS
"""

import os
import sys
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hpt_testing import LAYOUT_MODES, one_step_update  # noqa: E402


def main(model_dir: str, output: str, rows: str, accumulation: str) -> None:
    updates = {}
    for mode in LAYOUT_MODES:
        updates[mode] = one_step_update(model_dir, Path(output).parent / mode, mode, int(rows), int(accumulation))
    world_size = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    if int(os.environ.get("RANK", "0")) == 0:
        torch.save({"world_size": world_size, "updates": updates}, output)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
    sys.stdout.flush()
    os._exit(0)  # gloo's threads can abort a normal interpreter exit after all work is done
