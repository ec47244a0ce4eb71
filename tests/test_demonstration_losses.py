"""The demonstration terms (`hpt_trl.demonstration_losses`) against formulas computed here."""

import torch

from hpt_trl.demonstration_losses import off_policy_token_losses


def test_luffy_weight_and_its_gradient():
    logp = torch.tensor([-0.1, -1.0, -3.0, -8.0], requires_grad=True)
    advantage = torch.tensor(0.75)
    (losses,) = off_policy_token_losses([logp], advantage.unsqueeze(0))
    p = logp.detach().exp()
    torch.testing.assert_close(losses, -advantage * p / (p + 0.1))
    losses.sum().backward()
    # d/dlogp of -A p/(p+0.1) = -A * 0.1 p / (p+0.1)^2: tokens the policy finds unlikely are not blown up (p -> 0).
    torch.testing.assert_close(logp.grad, -advantage * 0.1 * p / (p + 0.1) ** 2)
    # Unlike SFT's weight 1 on every token's grad log p, this weight is at most A/4 (at p = 0.1) and vanishes as p -> 0.
    assert (logp.grad.abs() <= 0.25 * advantage + 1e-7).all() and logp.grad[-1].abs() < 0.01
