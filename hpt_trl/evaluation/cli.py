"""
Command line: `python -m hpt_trl.evaluation` (or `hpt-eval`), parsed by `transformers.HfArgumentParser` from the fields
of `EvalConfig` and of the two option dataclasses below, with their `metadata` help texts.
"""

import argparse
import sys
from dataclasses import Field, dataclass, field, fields

from transformers import HfArgumentParser

from .benchmarks import BenchmarkError
from .config import COMMAND_LINE, EvalConfig, EvaluationError
from .harness import evaluate
from .report import compare_results, load_results, plot_pass_at_k


_EXAMPLES = """examples:
  # the paper's table on vLLM: 8 benchmarks, the default --protocol paper (DeepMath's uni_eval.py, which the authors
  # evaluate with: 16 samples at temperature 0.6, top-p 0.95, 32768 new tokens, grading with fallbacks)
  hpt-eval --model <org>/<hpt-checkpoint> --benchmarks all --tensor_parallel_size 2 --output_dir eval/hpt-7b

  # the authors' in-training validation (8 samples, 8192 new tokens, boxed answer only, as the training reward)
  hpt-eval --model out/checkpoint-500 --benchmarks aime24 amc23 math500 --protocol validation

  # pass@k up to k = 1024 on AIME24 / AIME25 from local files
  hpt-eval --model out/checkpoint-500 --benchmarks aime24 aime25 --n 1024 --data_dir ../shared/benchmarks

  # a quick CPU check with transformers
  hpt-eval --model out/checkpoint-500 --backend transformers --benchmarks amc23 --limit 4 --n 2 --max_new_tokens 256

  # two checkpoints side by side, plus their pass@k curves
  hpt-eval --compare eval/sft eval/hpt --plot eval/compare.png
"""


@dataclass
class OutputOptions:
    """
    What `hpt-eval` prints and keeps besides the scores; `--no_completions` and `--no_plot` set `EvalConfig`'s
    `save_completions` and `plot`.

    Args:
        no_completions (`bool`, *optional*, defaults to `False`):
            Do not store response texts in `records.jsonl`.
        no_plot (`bool`, *optional*, defaults to `False`):
            Do not draw `pass_at_k.png`.
        no_progress (`bool`, *optional*, defaults to `False`):
            Hide the progress bars.
    """

    _argument_group_name = "output"

    no_completions: bool = field(default=False, metadata={"help": "Do not store response texts in records.jsonl."})
    no_plot: bool = field(default=False, metadata={"help": "Do not draw pass_at_k.png."})
    no_progress: bool = field(default=False, metadata={"help": "Hide the progress bars."})


@dataclass
class CompareOptions:
    """
    `hpt-eval --compare`: print finished runs side by side instead of evaluating.

    Args:
        compare (`list[str]`, *optional*):
            Runs to compare: `results.json` files or output folders.
        metric (`str`, *optional*, defaults to `"avg"`):
            `avg`, `pass@<k>`, `length` or `truncated`.
        plot (`str`, *optional*):
            Also draw the runs' pass@k curves into this PNG file.
        allow_mixed_protocols (`bool`, *optional*, defaults to `False`):
            Print runs evaluated under different protocols or gradings (refused otherwise).
    """

    _argument_group_name = "comparison"

    compare: list[str] | None = field(
        default=None,
        metadata={"metavar": "RUN", "help": "Print runs side by side (results.json files or output folders)."},
    )
    metric: str = field(
        default="avg",
        metadata={"help": "With --compare: avg, pass@<k>, length or truncated (default: %(default)s)."},
    )
    plot: str | None = field(
        default=None, metadata={"metavar": "PNG", "help": "With --compare: also draw the runs' pass@k curves here."}
    )
    allow_mixed_protocols: bool = field(
        default=False,
        metadata={
            "help": "With --compare: print runs evaluated under different protocols or gradings (refused otherwise)."
        },
    )


def _is_flag(dataclass_field: Field) -> bool:
    return dataclass_field.init and dataclass_field.metadata.get(COMMAND_LINE, True)


class _EvalArgumentParser(HfArgumentParser):
    """
    `HfArgumentParser` that gives no flag to a field marked `metadata={COMMAND_LINE: False}`, and still takes a unique
    prefix of a flag (`--tensor 2`), as argparse does.
    """

    @staticmethod
    def _parse_dataclass_field(parser, dataclass_field):
        if _is_flag(dataclass_field):
            HfArgumentParser._parse_dataclass_field(parser, dataclass_field)

    def _get_option_tuples(self, option_string):
        # HfArgumentParser spells a flag twice (--output_dir, --output-dir); a prefix matching both names one flag.
        matches = {}
        for match in super()._get_option_tuples(option_string):
            matches.setdefault(match[0], match)
        return list(matches.values())


def build_parser() -> HfArgumentParser:
    """The `hpt-eval` parser: the flags of `EvalConfig`, `OutputOptions` and `CompareOptions`."""
    return _EvalArgumentParser(
        (EvalConfig, OutputOptions, CompareOptions),
        prog="hpt-eval",
        description=(
            "Evaluate a checkpoint on the HPT paper's benchmarks: n samples per problem, graded answers, avg@n (the "
            "paper's score), pass@k, mean response length and truncation. Interrupted runs resume from "
            "--output_dir."
        ),
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def main(argv: list[str] | None = None) -> int:
    """
    Entry point of `hpt-eval` / `python -m hpt_trl.evaluation`.

    Args:
        argv (`list[str]`, *optional*):
            Arguments; `sys.argv[1:]` by default.

    Returns:
        `int`: The exit status (bad input exits with status 2 and a message naming the field).
    """
    parser = build_parser()
    args = parser.parse_args(argv)

    if args.compare:
        try:
            runs = [load_results(path) for path in args.compare]
            print(compare_results(runs, metric=args.metric, allow_mixed_protocols=args.allow_mixed_protocols))
            if args.plot:
                print(f"pass@k curves: {plot_pass_at_k(runs, args.plot)}")
        except (FileNotFoundError, ValueError, ImportError) as error:
            parser.error(str(error))
        return 0

    if not args.model:
        parser.error("--model is required (a local checkpoint folder or a Hub id), unless you use --compare.")
    # The namespace holds every flag (CompareOptions' `plot` among them): EvalConfig takes its own.
    settings = {f.name: getattr(args, f.name) for f in fields(EvalConfig) if _is_flag(f)}
    try:
        config = EvalConfig(**settings, save_completions=not args.no_completions, plot=not args.no_plot)
        evaluate(config, progress=not args.no_progress)
    except (EvaluationError, BenchmarkError, ImportError) as error:
        parser.error(str(error))
    print(f"Results: {config.output_dir}", file=sys.stderr)
    return 0
