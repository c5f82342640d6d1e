"""The margin losses (kktembed.losses) against their formulas written out."""

import pytest
import torch

from kktembed.errors import UsageError
from kktembed.losses import LOSSES, get_loss

# ℓ(q) and ℓ'(q) written out, for q where they are representable
LOSS_AND_DERIVATIVE = {
    "exp": lambda q: (torch.exp(-q), -torch.exp(-q)),
    "logistic": lambda q: (torch.log1p(torch.exp(-q)), -torch.sigmoid(-q)),
}


def test_every_loss_matches_its_formula():
    assert set(LOSSES) == set(LOSS_AND_DERIVATIVE)
    q = torch.linspace(-30, 30, 241, dtype=torch.float64, requires_grad=True)
    for name, loss in LOSSES.items():
        value, derivative = (t.detach() for t in LOSS_AND_DERIVATIVE[name](q))
        torch.testing.assert_close(loss.value(q.detach()), value, rtol=1e-14, atol=0)
        torch.testing.assert_close(loss.log_negative_derivative(q.detach()), torch.log(-derivative), rtol=1e-14, atol=1e-14)
        log_values = loss.log_value(q)
        (gradient,) = torch.autograd.grad(log_values.sum(), q)
        torch.testing.assert_close(log_values.detach(), torch.log(value), rtol=1e-14, atol=1e-14)
        torch.testing.assert_close(gradient, derivative / value, rtol=1e-13, atol=1e-15)  # (log ℓ)' = ℓ'/ℓ
        weights = loss.descent_weights(q.detach())
        torch.testing.assert_close(weights, -derivative / (-derivative).max(), rtol=1e-13, atol=0)


def test_logistic_far_out():
    """Where log(1 + e^{−q}) underflows, log ℓ(q) = −q + log(log1p(u)/u) → −q with slope −1; for
    very negative q, ℓ(q) = −q + log1p(e^{q}) to the last digit."""
    logistic = get_loss("logistic")
    q = torch.tensor([700.0, 745.5, 800.0, 1e5], dtype=torch.float64, requires_grad=True)
    values = logistic.log_value(q)
    torch.testing.assert_close(values, -q.detach(), rtol=1e-15, atol=0)
    (gradient,) = torch.autograd.grad(values.sum(), q)
    torch.testing.assert_close(gradient, -torch.ones_like(gradient), rtol=1e-15, atol=0)
    negative = torch.tensor([-25.0, -35.0], dtype=torch.float64)
    torch.testing.assert_close(logistic.value(negative), -negative + torch.log1p(torch.exp(negative)), rtol=1e-16, atol=0)


def test_unknown_loss_is_refused():
    with pytest.raises(UsageError, match="unknown loss"):
        get_loss("hinge")
