import torch

from hpt_trl.rng import private_rng


def test_private_rng_is_seeded_and_restores_the_callers_stream():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    with private_rng(7):
        first = torch.rand(4)
    with private_rng(7):
        second = torch.rand(4)
    assert torch.equal(first, second)
    assert torch.equal(torch.rand(3), expected_next)  # the caller's stream did not move


def test_private_rng_does_not_reseed_cuda_it_cannot_restore(monkeypatch):
    # `torch.manual_seed` reseeds every CUDA generator; with no started CUDA runtime to fork, that seed could not be
    # undone and would reset the trainer's CUDA stream.
    seeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", seeded.append)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    with private_rng(7):
        torch.rand(1)
    assert seeded == []
