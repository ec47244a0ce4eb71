"""
Checkpoints of a training run: which one a run resumes from, whether it is intact, and whether the run is finished.

transformers' `get_last_checkpoint` returns the newest `checkpoint-N` folder whatever it holds, so a checkpoint cut
short by a full disk or a kill ends the next run in a `SafetensorError`, `JSONDecodeError` or `PytorchStreamReader`
error that names no file. [`checkpoint_problem`] checks a checkpoint cheaply but for real (files present, JSON parses,
safetensors headers match the file sizes, torch files are complete archives) and [`find_resume_checkpoint`] skips
the broken ones, naming each and why.
"""

import json
import logging
import re
import struct
import zipfile
from pathlib import Path


logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE_NAME = "trainer_state.json"
# A broken checkpoint is renamed out of transformers' `checkpoint-*` glob, so `save_total_limit` rotation never keeps
# it in place of an intact one and a later resume never picks it again.
CORRUPT_PREFIX = "corrupt-"
# Archives up to this size also have every member's CRC checked; larger ones (optimizer states) only their index.
_CRC_CHECK_MAX_BYTES = 64 * 2**20
_WEIGHT_FILES = ("model.safetensors", "adapter_model.safetensors", "pytorch_model.bin", "adapter_model.bin")
_WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


class CheckpointError(ValueError):
    """A checkpoint that was asked for explicitly is missing or broken, or no checkpoint of a run is intact."""


def checkpoint_step(path: str | Path) -> int:
    """The optimizer step a checkpoint was saved at (`global_step` of its `trainer_state.json`)."""
    return int(json.loads((Path(path) / TRAINER_STATE_NAME).read_text())["global_step"])


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """The `checkpoint-N` folders of `output_dir`, newest (highest N) first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name))]
    return [path for _, path in sorted(found, reverse=True) if path.is_dir()]


def _safetensors_problem(path: Path) -> str | None:
    size = path.stat().st_size
    with path.open("rb") as file:
        head = file.read(8)
        if len(head) < 8:
            return f"{path.name} is truncated ({size} bytes, not even a header)"
        (header_len,) = struct.unpack("<Q", head)
        if 8 + header_len > size:
            return f"{path.name} is truncated ({size} bytes, its header alone needs {8 + header_len})"
        try:
            header = json.loads(file.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            return f"{path.name} has an unreadable header ({error})"
    if not isinstance(header, dict):
        return f"{path.name} has an unreadable header (not a JSON object)"
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    expected = 8 + header_len + end
    if size != expected:
        state = "truncated" if size < expected else "longer than its header says"
        return f"{path.name} is {state} ({size} bytes, its header says {expected})"
    return None


def _torch_file_problem(path: Path) -> str | None:
    """A torch.save file is a zip archive: a cut-off one has lost its central directory, which sits at the end."""
    size = path.stat().st_size
    if size == 0:
        return f"{path.name} is empty"
    with path.open("rb") as file:
        magic = file.read(4)
    if magic != b"PK\x03\x04":
        return None  # the legacy (pre-zip) format has no index to check
    try:
        with zipfile.ZipFile(path) as archive:
            if size <= _CRC_CHECK_MAX_BYTES and (bad := archive.testzip()) is not None:
                return f"{path.name} is corrupted (member {bad} fails its checksum)"
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        return f"{path.name} is truncated or corrupted ({size} bytes; {error})"
    return None


def _json_problem(path: Path) -> str | None:
    try:
        json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        return f"{path.name} is not valid JSON ({error})"
    return None


def checkpoint_problem(path: str | Path, require_optimizer: bool = True) -> str | None:
    """
    What is wrong with a checkpoint folder, or `None` when it looks intact.

    Checks, without loading the model: `trainer_state.json` is present and parses with a `global_step`; the model
    weights are present (a weights file, a complete shard index, or a DeepSpeed `latest` tag and its folder); every
    safetensors file's header matches its size; every torch file (`optimizer.pt`, `scheduler.pt`, `rng_state*.pth`,
    `training_args.bin`, DeepSpeed states) is a complete archive, small ones with their checksums; other JSON files
    parse. `require_optimizer=False` accepts a checkpoint without optimizer state (`save_only_model`).
    """
    path = Path(path)
    if not path.exists():
        return "the folder does not exist"
    if not path.is_dir():
        return "it is a file, not a checkpoint folder"
    state_file = path / TRAINER_STATE_NAME
    if not state_file.is_file():
        return f"{TRAINER_STATE_NAME} is missing (the save was cut short: transformers writes it last)"
    try:
        step = checkpoint_step(path)
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        return f"{TRAINER_STATE_NAME} is unreadable ({type(error).__name__}: {error})"
    if step < 0:
        return f"{TRAINER_STATE_NAME} has global_step {step}"

    files = [path / name for name in _WEIGHT_FILES if (path / name).is_file()]
    for index_name in _WEIGHT_INDEXES:
        index = path / index_name
        if index.is_file():
            if problem := _json_problem(index):
                return problem
            shards = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
            missing = [shard for shard in shards if not (path / shard).is_file()]
            if missing:
                return f"{index_name} lists shards that are missing: {missing}"
            files += [path / shard for shard in shards]
    deepspeed_dir = None
    if (path / "latest").is_file():
        tag = (path / "latest").read_text().strip()
        deepspeed_dir = path / tag
        if not deepspeed_dir.is_dir():
            return f"DeepSpeed's `latest` names {tag!r}, which is missing"
    fsdp = any(p.name.startswith(("pytorch_model_fsdp", "optimizer_")) for p in path.iterdir())
    if not files and deepspeed_dir is None and not fsdp:
        return "no model weights (model.safetensors or an equivalent) are in it"
    if require_optimizer and deepspeed_dir is None and not fsdp:
        if not any((path / name).is_file() for name in ("optimizer.pt", "optimizer.bin")):
            return "optimizer.pt is missing"

    candidates = set(files) | {p for p in path.iterdir() if p.is_file()}
    if deepspeed_dir is not None:
        candidates |= {p for p in deepspeed_dir.iterdir() if p.is_file()}
    for file in sorted(candidates):
        if file.suffix == ".safetensors":
            problem = _safetensors_problem(file)
        elif file.suffix in (".pt", ".pth", ".bin"):
            problem = _torch_file_problem(file)
        elif file.suffix == ".json" and file != state_file:
            problem = _json_problem(file)
        else:
            problem = None
        if problem:
            return problem
    return None


def set_aside(checkpoint: Path) -> Path | None:
    """Rename a broken checkpoint to `corrupt-checkpoint-N` (kept for inspection, out of the trainer's way)."""
    target = checkpoint.with_name(CORRUPT_PREFIX + checkpoint.name)
    suffix = 1
    while target.exists():
        suffix += 1
        target = checkpoint.with_name(f"{CORRUPT_PREFIX}{suffix}-{checkpoint.name}")
    try:
        checkpoint.rename(target)
    except OSError as error:
        logger.warning(f"Could not rename {checkpoint} to {target.name} ({error}); it stays where it is.")
        return None
    return target


def check_requested_checkpoint(path: str | Path, require_optimizer: bool = True) -> Path:
    """An explicitly requested checkpoint, or a `CheckpointError` naming it, what is wrong and the fix."""
    if problem := checkpoint_problem(path, require_optimizer=require_optimizer):
        intact = [p for p in list_checkpoints(Path(path).parent) if checkpoint_problem(p, require_optimizer) is None]
        hint = f" The newest intact checkpoint next to it is {intact[0]}." if intact else ""
        raise CheckpointError(
            f"resume_from_checkpoint={str(path)!r} cannot be resumed from: {problem}.{hint} Point "
            "--resume_from_checkpoint at an intact checkpoint-N folder, or leave it unset to resume from the newest "
            "intact checkpoint in output_dir."
        )
    return Path(path)


def find_resume_checkpoint(
    output_dir: str | Path, require_optimizer: bool = True, set_aside_broken: bool = False
) -> Path | None:
    """
    The newest intact checkpoint of `output_dir`, or `None` when it holds no checkpoint.

    Each broken checkpoint newer than it is named with what is wrong in a warning, and renamed to
    `corrupt-checkpoint-N` when `set_aside_broken` (on one process only). Raises a `CheckpointError` when there are
    checkpoints but none is intact: starting over would overwrite them.
    """
    checkpoints = list_checkpoints(output_dir)
    broken = []
    for checkpoint in checkpoints:
        problem = checkpoint_problem(checkpoint, require_optimizer=require_optimizer)
        if problem is None:
            return checkpoint
        broken.append(f"{checkpoint} ({problem})")
        moved = set_aside(checkpoint) if set_aside_broken else None
        where = f"; renamed to {moved.name}" if moved is not None else ""
        logger.warning(f"Skipping checkpoint {checkpoint}: {problem}{where}.")
    if broken:
        raise CheckpointError(
            f"No checkpoint in output_dir={str(output_dir)!r} is intact: {'; '.join(broken)}. Starting over would "
            "overwrite them: move them out of output_dir (or choose another output_dir) to train from the start, "
            "or point --resume_from_checkpoint at an intact copy."
        )
    return None


def has_final_model(output_dir: str | Path) -> bool:
    """Whether `output_dir` holds a saved model (what `trainer.save_model(output_dir)` writes), intact."""
    output_dir = Path(output_dir)
    weights = [output_dir / name for name in _WEIGHT_FILES if (output_dir / name).is_file()]
    for index_name in _WEIGHT_INDEXES:
        index = output_dir / index_name
        if index.is_file() and _json_problem(index) is None:
            shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
            if not shards or not all((output_dir / shard).is_file() for shard in shards):
                return False
            weights += [output_dir / shard for shard in sorted(shards)]
    if not weights:
        return False
    for file in weights:
        check = _safetensors_problem if file.suffix == ".safetensors" else _torch_file_problem
        if check(file) is not None:
            return False
    return True
