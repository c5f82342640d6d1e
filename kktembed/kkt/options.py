"""Options of ``check``, validated without importing torch or cvxpy (a bad option is refused at once)."""

from __future__ import annotations

from dataclasses import dataclass

from kktembed.errors import UsageError
from kktembed.kkt.norms import get_norm, solver_for
from kktembed.losses import get_loss
from kktembed.validation import require_integer, require_number

PROFILE_TOLS = (1e-6, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)


@dataclass
class CheckOptions:
    norm: str = "l2"
    active_tol: float = 0.1  # τ
    complementarity_weight: float = 0.0  # μ
    loss: str = "exp"  # for the alignment β
    kink_tol: float = 1e-6
    kkt_tol: float = 1e-6
    approx_tol: float = 0.1
    profile: bool = True
    max_candidates: int = 5000
    support_tol: float = 1e-8  # λ_k counts as support if λ_k > support_tol · max λ
    solver: str = "auto"  # ℓ2: active-set (default) or clarabel; ℓ1/ℓ∞: highs
    device: str | None = None  # where the Gram matrix and the gradients are computed (None: CPU)

    def validate(self) -> "CheckOptions":
        """Raise UsageError (exit 2) for an unknown name or an out-of-range number (NaN included)."""
        solver_for(get_norm(self.norm), self.solver)
        get_loss(self.loss)
        if self.device not in (None, "cpu", "auto") and not str(self.device).startswith("cuda"):
            raise UsageError(f"unknown device {self.device!r}", hint='use "cpu", "cuda" or "auto"')
        require_number(self.active_tol, "--active-tol", low=0.0)
        require_number(self.complementarity_weight, "--complementarity-weight", low=0.0)
        require_number(self.kink_tol, "--kink-tol", low=0.0, high=1.0)
        require_number(self.kkt_tol, "--kkt-tol", low=0.0, low_open=True)
        require_number(self.approx_tol, "--approx-tol", low=0.0, low_open=True)
        require_number(self.support_tol, "support tolerance", low=0.0, high=1.0)
        if not self.kkt_tol <= self.approx_tol:
            raise UsageError("need 0 < --kkt-tol ≤ --approx-tol")
        require_integer(self.max_candidates, "--max-candidates", low=1)
        return self
