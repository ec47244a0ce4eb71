"""
Evaluation protocols: named sets of sampling and grading settings, so a run states which protocol its scores follow.

- `paper` (the default): the protocol of the paper's table. The HPT authors' README sends readers to DeepMath's
  `uni_eval.py` (GitHub zwhe99/DeepMath), run as DeepMath's README shows it: 16 samples per problem at temperature
  0.6 and top-p 0.95, at most 32768 new tokens, graded with fallbacks (last `\\boxed{}` answer, else the text after
  "The answer is: ", else math-verify over the whole response).
- `validation`: the authors' in-training validation (`exp_scripts/train.sh`: `n_val=8`, `val_temperature=0.6`,
  `val_top_p=0.95`, responses up to `max_response_length=8192`), graded by the training reward (the last `\\boxed{}`
  answer only, `reward_impl_version=6`). This is what `hpt-eval` did before protocols existed.

Explicit settings (`--n`, `--max_new_tokens`, `--temperature`, `--top_p`, `--grading`) override the protocol's values;
`results.json` records the protocol, its values and which of them were overridden, and a run resumes only under the
same protocol and grading.
"""

from dataclasses import asdict, dataclass

from .grading import BOXED_ONLY, WITH_FALLBACKS


@dataclass(frozen=True)
class EvalProtocol:
    """
    One evaluation protocol.

    Args:
        name (`str`): Its name (`--protocol`).
        description (`str`): Where its values come from.
        n (`int`): Samples per problem.
        max_new_tokens (`int`): Response token limit.
        temperature (`float`): Sampling temperature.
        top_p (`float`): Nucleus sampling mass.
        grading (`str`): `"boxed_only"` or `"with_fallbacks"` (see `hpt_trl.evaluation.grading`).
    """

    name: str
    description: str
    n: int
    max_new_tokens: int
    temperature: float
    top_p: float
    grading: str

    def settings(self) -> dict:
        """The values a run takes from the protocol unless overridden."""
        return {key: value for key, value in asdict(self).items() if key in PROTOCOL_SETTINGS}


# The EvalConfig fields a protocol sets.
PROTOCOL_SETTINGS = ("n", "max_new_tokens", "temperature", "top_p", "grading")

PROTOCOLS = {
    "paper": EvalProtocol(
        name="paper",
        description=(
            "the paper's table: DeepMath's uni_eval.py, which the HPT authors evaluate with (16 samples, temperature "
            "0.6, top-p 0.95, 32768 new tokens; boxed answer, else 'The answer is:', else math-verify over the text)"
        ),
        n=16,
        max_new_tokens=32768,
        temperature=0.6,
        top_p=0.95,
        grading=WITH_FALLBACKS,
    ),
    "validation": EvalProtocol(
        name="validation",
        description=(
            "the authors' in-training validation (8 samples, temperature 0.6, top-p 0.95, 8192 new tokens), graded "
            "by the training reward (last boxed answer only)"
        ),
        n=8,
        max_new_tokens=8192,
        temperature=0.6,
        top_p=0.95,
        grading=BOXED_ONLY,
    ),
}
DEFAULT_PROTOCOL = "paper"

# What a run recorded before protocols existed used: the `validation` values were the harness's defaults, and it
# graded the last boxed answer only. Used to read old run_config.json / results.json files.
LEGACY_PROTOCOL = "validation"
LEGACY_GRADING = BOXED_ONLY


def get_protocol(name: str) -> EvalProtocol:
    """The protocol called `name`; a `ValueError` lists the valid names otherwise."""
    if name not in PROTOCOLS:
        raise ValueError(f"Unknown --protocol {name!r}; choose one of {', '.join(PROTOCOLS)}.")
    return PROTOCOLS[name]
