"""
The built-in tasks behind the offline demo: multi-step arithmetic with worked demonstrations (`arithmetic_task`, the
demo's), rearranging digits by named moves (`rearrange_task`, the comparison's second skill) and pointer following
through a table (`lookup_task`, a candidate whose base never learned its skill), a tiny Qwen2 model and byte-level chat
tokenizer built locally (`tiny_model`), their pretrained base models (`base_model`; the arithmetic and rearrangement
ones ship in `pretrained_base/` and `pretrained_base_rearrange/`), and the demo's recipe arguments, held-out accuracy
callback and training-dynamics figure (`demo`).

`train.py`, the benchmarks, the tests and the notebook use it; the library (trainer, data, rewards, evaluation) never
imports it, so it can be left out or replaced without touching HPT.
"""
