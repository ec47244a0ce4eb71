"""
The built-in task behind the offline demo: multi-step arithmetic with worked demonstrations (`arithmetic_task`), a tiny
Qwen2 model and byte-level chat tokenizer built locally (`tiny_model`), its pretrained base model (`base_model`), and
the demo's recipe arguments, held-out accuracy callback and training-dynamics figure (`demo`).

`train.py`, the benchmarks, the tests and the notebook use it; the library (trainer, data, rewards, evaluation) never
imports it, so it can be left out or replaced without touching HPT.
"""
