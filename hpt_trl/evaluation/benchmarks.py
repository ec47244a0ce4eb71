"""
The paper's evaluation sets and their loaders.

Every benchmark can be read from a local file (a JSON list, JSONL or parquet in the schemas of the authors' files),
from the authors' public files (the exact sets the paper reports), or from a Hub dataset, all three with
`datasets.load_dataset`. All three give the same `Problem` records.
"""

import hashlib
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path


# The authors' test files (GitHub TsinghuaC3I/Unify-Post-Training, data/<name>/test.json) and LUFFY's ARC-c file, at
# the commits the paper's numbers come from, so a remote run scores exactly the same problems.
_AUTHORS_COMMIT = "ae332f5fa4dc8b4c3d3cd77ebc9cff3a3abab2d0"
_AUTHORS_DATA_URL = (
    f"https://raw.githubusercontent.com/TsinghuaC3I/Unify-Post-Training/{_AUTHORS_COMMIT}/data/{{name}}/test.json"
)
_LUFFY_COMMIT = "01f4ae066249e6965ce0d5512ccdf99a12895c74"
_LUFFY_ARC_C_URL = f"https://raw.githubusercontent.com/ElliottYan/LUFFY/{_LUFFY_COMMIT}/data/valid.arc_c.parquet"

SOURCES = ("auto", "local", "authors", "hub")

MATH = "math"
MULTIPLE_CHOICE = "multiple_choice"

# Field names other collections use for the same thing; the authors' names come first.
_PROMPT_KEYS = ("prompt", "problem", "question")
_ANSWER_KEYS = ("answer", "expected_answer", "final_answer", "solution", "ground_truth", "answerKey")
_ID_KEYS = ("id", "unique_id", "problem_id")


class BenchmarkError(ValueError):
    """Raised for an unknown benchmark name, a missing file or a record that lacks a field."""


@dataclass(frozen=True)
class Problem:
    """
    One evaluation problem.

    Args:
        benchmark (`str`):
            Display name of the benchmark, e.g. `"MATH-500"`.
        index (`int`):
            Position in the benchmark file; the key results are stored and resumed under.
        problem_id (`str`):
            The file's own id when it has one, else `str(index)`.
        prompt (`str`):
            The problem text, the content of the single user turn.
        answer (`str`):
            The gold answer with one surrounding `\\boxed{}` removed.
        kind (`str`):
            `"math"` (graded by the math verifier) or `"multiple_choice"` (graded by the chosen option label).
        system_prompt (`str`, *optional*):
            A system message stored with the problem (ARC-c's file has one). Not used unless asked for, because the
            authors drop it both when training and when evaluating.
    """

    benchmark: str
    index: int
    problem_id: str
    prompt: str
    answer: str
    kind: str
    system_prompt: str | None = None

    @property
    def fingerprint(self) -> str:
        """A short hash of the prompt and answer, so a resumed run can tell that a benchmark file changed."""
        digest = hashlib.sha256(f"{self.prompt}\x00{self.answer}".encode())
        return digest.hexdigest()[:16]


@dataclass(frozen=True)
class HubSource:
    """Where a benchmark lives on the Hugging Face Hub and which columns hold the problem and the answer."""

    path: str
    split: str
    prompt_key: str
    answer_key: str
    name: str | None = None
    choices_key: str | None = None


@dataclass(frozen=True)
class BenchmarkSpec:
    """
    A benchmark of the paper.

    Args:
        name (`str`):
            Display name, as in the paper's tables.
        key (`str`):
            Canonical command-line name.
        file_stem (`str`):
            Stem of the authors' file name (`"Olympiad-Bench"` for `Olympiad-Bench.json`); `--data_dir` is searched
            for it.
        kind (`str`):
            `"math"` or `"multiple_choice"`.
        num_problems (`int`):
            Size of the full set the paper evaluates.
        remote_url (`str`):
            The authors' public file.
        hub (`HubSource`):
            A public Hub copy of the same benchmark.
        aliases (`tuple[str, ...]`):
            Other accepted names.
    """

    name: str
    key: str
    file_stem: str
    kind: str
    num_problems: int
    remote_url: str
    hub: HubSource
    aliases: tuple[str, ...] = field(default=())


def _authors_spec(name: str, key: str, file_stem: str, kind: str, num_problems: int, hub: HubSource, aliases=()):
    return BenchmarkSpec(
        name=name,
        key=key,
        file_stem=file_stem,
        kind=kind,
        num_problems=num_problems,
        remote_url=_AUTHORS_DATA_URL.format(name=file_stem),
        hub=hub,
        aliases=tuple(aliases),
    )


# Hub copies: the ids the authors' evaluation scripts (DeepMath's `uni_eval.py`) read, and AllenAI's ARC.
BENCHMARKS: dict[str, BenchmarkSpec] = {
    spec.key: spec
    for spec in (
        _authors_spec(
            "AIME24", "aime24", "AIME24", MATH, 30,
            HubSource("zwhe99/aime90", "2024", "problem", "expected_answer"), ("aime2024",),
        ),
        _authors_spec(
            "AIME25", "aime25", "AIME25", MATH, 30,
            HubSource("math-ai/aime25", "test", "problem", "answer"), ("aime2025",),
        ),
        _authors_spec(
            "AMC23", "amc23", "AMC23", MATH, 40,
            HubSource("zwhe99/amc23", "test", "question", "answer"), ("amc", "amc2023"),
        ),
        _authors_spec(
            "MATH-500", "math500", "MATH-500", MATH, 500,
            HubSource("zwhe99/MATH", "math500", "problem", "expected_answer"),
        ),
        _authors_spec(
            "Minerva", "minerva", "Minerva", MATH, 272,
            HubSource("zwhe99/simplerl-minerva-math", "test", "problem", "answer"), ("minerva_math",),
        ),
        _authors_spec(
            "OlympiadBench", "olympiadbench", "Olympiad-Bench", MATH, 674,
            HubSource("zwhe99/simplerl-OlympiadBench", "test", "question", "final_answer"), ("olympiad",),
        ),
        _authors_spec(
            "GPQA-diamond", "gpqa_diamond", "GPQA", MULTIPLE_CHOICE, 198,
            HubSource("zwhe99/gpqa_diamond_mc", "test", "problem", "solution"), ("gpqa",),
        ),
        BenchmarkSpec(
            name="ARC-c",
            key="arc_c",
            file_stem="ARC-c",
            kind=MULTIPLE_CHOICE,
            num_problems=1172,
            remote_url=_LUFFY_ARC_C_URL,
            hub=HubSource("allenai/ai2_arc", "test", "question", "answerKey", "ARC-Challenge", "choices"),
            aliases=("arc", "arc_challenge"),
        ),
    )
}  # fmt: skip

MATH_BENCHMARKS = tuple(key for key, spec in BENCHMARKS.items() if spec.kind == MATH)
OOD_BENCHMARKS = tuple(key for key, spec in BENCHMARKS.items() if spec.kind == MULTIPLE_CHOICE)
BENCHMARK_GROUPS = {"math": MATH_BENCHMARKS, "ood": OOD_BENCHMARKS, "all": tuple(BENCHMARKS)}

_LOCAL_SUFFIXES = (".json", ".jsonl", ".parquet")
# Keys under which a JSON file may wrap its list of problems in an object.
_LIST_KEYS = ("data", "test", "problems")


def _normalize_name(name: str) -> str:
    return re.sub(r"[\s_\-.]", "", name).lower()


_NAME_INDEX: dict[str, str] = {}
for _spec in BENCHMARKS.values():
    for _alias in (_spec.key, _spec.name, _spec.file_stem, *_spec.aliases):
        _NAME_INDEX[_normalize_name(_alias)] = _spec.key


def get_benchmark(name: str) -> BenchmarkSpec:
    """
    Look a benchmark up by any of its names, ignoring case, spaces, dashes, dots and underscores.

    Args:
        name (`str`):
            E.g. `"math500"`, `"MATH-500"`, `"OlympiadBench"`, `"gpqa"`, `"ARC-c"`.

    Returns:
        `BenchmarkSpec`: The benchmark.
    """
    key = _NAME_INDEX.get(_normalize_name(name))
    if key is None:
        valid = ", ".join(BENCHMARKS) + " (groups: " + ", ".join(BENCHMARK_GROUPS) + ")"
        raise BenchmarkError(f"Unknown benchmark {name!r}. Valid names: {valid}.")
    return BENCHMARKS[key]


def parse_benchmark_args(items: Iterable[str]) -> list[tuple[BenchmarkSpec, Path | None]]:
    """
    Resolve command-line benchmark arguments into specs, each with an explicit file when given as `name=path`.

    Args:
        items (`Iterable[str]`):
            Benchmark names, group names (`math`, `ood`, `all`) or `name=path/to/file` pairs.

    Returns:
        `list[tuple[BenchmarkSpec, Path | None]]`: Benchmarks in the given order, without duplicates.
    """
    resolved: dict[str, tuple[BenchmarkSpec, Path | None]] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if sep and not path:
            raise BenchmarkError(f"Benchmark argument {item!r} has an empty path; write it as `name=path/to/file`.")
        group = BENCHMARK_GROUPS.get(_normalize_name(name)) if not sep else None
        if group is not None:
            for key in group:
                resolved.setdefault(key, (BENCHMARKS[key], None))
            continue
        spec = get_benchmark(name)
        resolved[spec.key] = (spec, Path(path) if sep else None)
    if not resolved:
        raise BenchmarkError(f"No benchmark given. Valid names: {', '.join(BENCHMARKS)}.")
    return list(resolved.values())


def find_local_file(spec: BenchmarkSpec, data_dir: str | os.PathLike) -> Path:
    """
    Find a benchmark's file in `data_dir`, named like the authors' files.

    `<file_stem>.json`, `.jsonl` or `.parquet` (e.g. `Olympiad-Bench.json`, `ARC-c.parquet`) are looked for first, then
    the authors' repository layout `<file_stem>/test.json`.

    Args:
        spec (`BenchmarkSpec`):
            The benchmark.
        data_dir (`str` or `os.PathLike`):
            The folder to search.

    Returns:
        `Path`: The file.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise BenchmarkError(
            f"--data_dir {str(data_dir)!r} is not a folder; point it at the folder of benchmark files."
        )
    candidates = [data_dir / f"{spec.file_stem}{suffix}" for suffix in _LOCAL_SUFFIXES]
    candidates += [data_dir / spec.file_stem / f"test{suffix}" for suffix in _LOCAL_SUFFIXES]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    names = ", ".join(str(c.relative_to(data_dir)) for c in candidates[: len(_LOCAL_SUFFIXES)])
    raise BenchmarkError(
        f"No file for benchmark {spec.name} in {str(data_dir)!r}: expected one of {names} "
        f"(or {spec.file_stem}/test.json). "
        f"Pass the file explicitly as `{spec.key}=path/to/file`, or drop --data_dir to download the authors' file."
    )


def _builder_for(data_file: str) -> str:
    """The `datasets` builder for a benchmark file: `parquet` by its suffix, else `json` (a JSON list or JSONL)."""
    return "parquet" if data_file.lower().endswith(".parquet") else "json"


def read_records(path: str | os.PathLike) -> list[dict]:
    """
    Read a local benchmark file with `datasets`: a JSON list (or an object with a `data`/`test`/`problems` list),
    JSONL, or parquet.

    Args:
        path (`str` or `os.PathLike`):
            The file.

    Returns:
        `list[dict]`: One dict per row (a field some rows lack is `None` in them).
    """
    import datasets

    path = Path(path)
    if not path.is_file():
        raise BenchmarkError(f"Benchmark file {str(path)!r} does not exist.")
    builder = _builder_for(path.name)
    # No "Generating train split" bar for a file of a few hundred rows; the caller's own setting is restored after.
    bars_were_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    # A throwaway cache: the file is read afresh every time (a resumed run must see an edited file as edited), and
    # reading a local file leaves nothing behind in the datasets cache.
    try:
        with tempfile.TemporaryDirectory() as cache_dir:
            rows = datasets.load_dataset(
                builder, data_files=str(path), split="train", cache_dir=cache_dir, keep_in_memory=True
            ).to_list()
    except Exception as error:
        cause = error.__cause__ or error  # datasets wraps the parser's own error in a DatasetGenerationError
        raise BenchmarkError(
            f"{str(path)!r} could not be read as a benchmark file ({type(cause).__name__}: {cause}); expected a "
            "non-empty JSON list of problems, JSONL (one problem per line) or parquet."
        ) from error
    finally:
        if not bars_were_disabled:
            datasets.enable_progress_bars()
    if builder == "json" and len(rows) == 1:
        # datasets reads a JSON object as one row: a file that wraps its problems in one, under one of these keys.
        for key in _LIST_KEYS:
            if isinstance(rows[0].get(key), list):
                return rows[0][key]
    return rows


def strip_boxed_answer(answer: str) -> str:
    """Remove one surrounding `\\boxed{}` from a gold answer, with the project's verifier helper."""
    from hpt_trl.answer_extraction import strip_boxed

    return strip_boxed(answer).strip()


def _first_key(row: Mapping, keys: Iterable[str]):
    for key in keys:
        if key in row and row[key] is not None:
            return key
    return None


def _message_content(messages, role: str) -> str | None:
    # Hub parquet rows hold messages as plain dicts; a numpy-backed reader may hand back arrays.
    for message in messages:
        if isinstance(message, Mapping) and message.get("role") == role:
            return message.get("content")
    return None


def format_choices(question: str, labels: Iterable[str], texts: Iterable[str]) -> str:
    """Lay out a multiple-choice question like LUFFY's ARC-c file: the question, a blank line, `X) text` lines."""
    lines = [f"{label}) {text}" for label, text in zip(labels, texts)]
    return question.strip() + "\n\n" + "\n".join(lines) + "\n"


def row_to_problem(row: Mapping, spec: BenchmarkSpec, index: int, origin: str) -> Problem:
    """
    Turn one row of a benchmark file into a `Problem`.

    Accepted shapes: the authors' `{"prompt": str, "answer": str}` (optional `id`), the verl/LUFFY schema with `prompt`
    as chat messages and `reward_model.ground_truth`, and the common Hub column names (`problem`/`question`,
    `expected_answer`/`final_answer`/`solution`, ARC's `choices` + `answerKey`).

    Args:
        row (`Mapping`):
            The row.
        spec (`BenchmarkSpec`):
            Its benchmark.
        index (`int`):
            Its position in the file.
        origin (`str`):
            Where the row comes from, for error messages.

    Returns:
        `Problem`: The problem.
    """
    if not isinstance(row, Mapping):
        raise BenchmarkError(f"{origin}: row {index} is a {type(row).__name__}, expected an object with a prompt.")
    where = f"{origin}: row {index}"

    prompt_key = _first_key(row, _PROMPT_KEYS)
    if prompt_key is None:
        raise BenchmarkError(f"{where} has no problem text: expected a field named one of {', '.join(_PROMPT_KEYS)}.")
    prompt = row[prompt_key]
    system_prompt = None
    if not isinstance(prompt, str):
        messages = list(prompt)
        prompt = _message_content(messages, "user")
        system_prompt = _message_content(messages, "system")
        if prompt is None:
            raise BenchmarkError(f"{where}: `{prompt_key}` is a message list without a `user` message.")
    choices = row.get("choices")
    if isinstance(choices, Mapping) and "text" in choices and "label" in choices:
        prompt = format_choices(prompt, choices["label"], choices["text"])

    reward_model = row.get("reward_model")
    if isinstance(reward_model, Mapping) and reward_model.get("ground_truth") is not None:
        answer = reward_model["ground_truth"]
    else:
        answer_key = _first_key(row, _ANSWER_KEYS)
        if answer_key is None:
            raise BenchmarkError(
                f"{where} has no gold answer: expected `reward_model.ground_truth` or a field named one of "
                f"{', '.join(_ANSWER_KEYS)}."
            )
        answer = row[answer_key]
    if isinstance(answer, (list, tuple)):
        # OlympiadBench on the Hub stores final answers as one-element lists.
        if len(answer) != 1:
            raise BenchmarkError(f"{where}: the gold answer is a list of {len(answer)} items, expected exactly one.")
        answer = answer[0]
    answer = strip_boxed_answer(str(answer))
    if not answer:
        raise BenchmarkError(f"{where}: the gold answer is empty.")
    if spec.kind == MULTIPLE_CHOICE:
        answer = answer.strip().strip("()").strip()

    id_key = _first_key(row, _ID_KEYS)
    problem_id = str(row[id_key]) if id_key is not None else str(index)
    return Problem(spec.name, index, problem_id, str(prompt), answer, spec.kind, system_prompt)


def load_benchmark(
    name: str | BenchmarkSpec,
    path: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    source: str = "auto",
    limit: int | None = None,
) -> list[Problem]:
    """
    Load a benchmark's problems.

    Args:
        name (`str` or `BenchmarkSpec`):
            The benchmark (any accepted name).
        path (`str` or `os.PathLike`, *optional*):
            An explicit local file; overrides `data_dir` and `source`.
        data_dir (`str` or `os.PathLike`, *optional*):
            A folder of files named like the authors' (`AIME24.json`, ..., `ARC-c.parquet`).
        source (`str`, *optional*, defaults to `"auto"`):
            `"local"` (requires `path` or `data_dir`), `"authors"` (the authors' public files, the sets the paper
            reports), `"hub"` (a Hub copy) or `"auto"` (local when a path or folder is given, else the authors' files).
        limit (`int`, *optional*):
            Keep only the first `limit` problems.

    Returns:
        `list[Problem]`: The problems, in file order.
    """
    spec = name if isinstance(name, BenchmarkSpec) else get_benchmark(name)
    if source not in SOURCES:
        raise BenchmarkError(f"Unknown source {source!r}; choose one of {', '.join(SOURCES)}.")
    if limit is not None and limit < 1:
        raise BenchmarkError(f"`limit` must be >= 1 (or unset for the whole benchmark), got {limit}.")

    if path is not None or (source in ("auto", "local") and data_dir is not None):
        file = Path(path) if path is not None else find_local_file(spec, data_dir)
        if not file.is_file():
            raise BenchmarkError(f"Benchmark file {str(file)!r} for {spec.name} does not exist.")
        rows, origin = read_records(file), str(file)
    elif source == "local":
        raise BenchmarkError(f"--source local needs --data_dir (or `{spec.key}=path/to/file`) for {spec.name}.")
    elif source == "hub":
        rows, origin = _load_hub_rows(spec), f"hub:{spec.hub.path}"
    else:
        rows, origin = _load_remote_rows(spec), spec.remote_url

    if limit is not None:
        rows = rows[:limit]
    problems = [row_to_problem(row, spec, index, origin) for index, row in enumerate(rows)]
    if not problems:
        raise BenchmarkError(f"{origin} holds no problems for {spec.name}.")
    return problems


def _load_remote_rows(spec: BenchmarkSpec) -> list[dict]:
    import importlib.util

    from datasets import load_dataset

    try:
        dataset = load_dataset(_builder_for(spec.remote_url), data_files={"test": spec.remote_url}, split="test")
    except Exception as error:
        missing = [name for name in ("requests", "aiohttp") if importlib.util.find_spec(name) is None]
        if missing:  # datasets reads URLs through fsspec's HTTP filesystem, which needs both
            raise BenchmarkError(
                f"Downloading {spec.name} from {spec.remote_url} needs {' and '.join(missing)}: install them with "
                "`pip install 'hpt-trl[eval]'`, or pass --data_dir with local copies of the files."
            ) from error
        raise BenchmarkError(
            f"Could not download {spec.name} from {spec.remote_url} ({type(error).__name__}: {error}). Offline, pass "
            f"--data_dir with local copies of the files, or `{spec.key}=path/to/file`."
        ) from error
    return dataset.to_list()


def _load_hub_rows(spec: BenchmarkSpec) -> list[dict]:
    from datasets import load_dataset

    hub = spec.hub
    try:
        dataset = load_dataset(hub.path, hub.name, split=hub.split)
    except Exception as error:
        raise BenchmarkError(
            f"Could not load {spec.name} from the Hub dataset {hub.path} ({type(error).__name__}: {error}). Offline, "
            f"pass --data_dir with local copies of the files, or `{spec.key}=path/to/file`."
        ) from error
    rows = []
    for row in dataset:
        # Map the Hub columns onto the authors' names so `row_to_problem` sees one schema.
        mapped = {"prompt": row[hub.prompt_key], "answer": row[hub.answer_key]}
        if hub.choices_key is not None:
            mapped["choices"] = row[hub.choices_key]
        for key in _ID_KEYS:
            if key in row:
                mapped["id"] = row[key]
                break
        rows.append(mapped)
    return rows
