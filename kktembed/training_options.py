"""Options of ``trace``, validated without importing torch (a bad option is refused at once)."""

from __future__ import annotations

from dataclasses import dataclass

from kktembed.errors import UsageError
from kktembed.losses import get_loss
from kktembed.validation import require_integer, require_number

OPTIMIZERS = {
    "gd": "constant rate: θ ← θ − lr ∇𝓛(θ)",
    "normalized": "loss-scaled rate (Lyu & Li): θ ← θ − (lr / 𝓛(θ)) ∇𝓛(θ)",
}
DEVICES = ("cpu", "cuda", "auto")
MAX_STEPS = 10**12
MAX_SEED = 2**63 - 1


@dataclass
class TraceOptions:
    steps: int = 1000
    lr: float = 0.1
    loss: str = "exp"
    batch: int | None = None  # None: full batch
    different_batches: bool = False
    seed: int = 0
    every: int = 10
    kkt_every: int = 0  # 0: never
    optimizer: str = "gd"  # a key of OPTIMIZERS
    save_every: int = 0  # 0: never; else on_snapshot every save_every steps and at the end
    device: str | None = None  # None or "cpu", "cuda", "auto" (the GPU if there is one)
    threads: int | None = None  # torch intra-op threads; None: chosen by problem size

    def validate(self, n_samples: int | None = None) -> "TraceOptions":
        """UsageError (exit 2) for an unknown name or an out-of-range number; ``n_samples`` (when the
        data are known) bounds --batch."""
        require_integer(self.steps, "--steps", low=1, high=MAX_STEPS)
        require_number(self.lr, "--lr", low=0.0, low_open=True)
        get_loss(self.loss)
        if self.batch is not None:
            require_integer(self.batch, "--batch", low=1, high=n_samples)
        if self.different_batches and self.batch is None:
            raise UsageError("--different-batches needs --batch (full-batch steps are identical by definition)")
        require_integer(self.seed, "--seed", low=0, high=MAX_SEED)
        require_integer(self.every, "--every", low=1)
        require_integer(self.kkt_every, "--kkt-every (0: never)", low=0)
        if self.optimizer not in OPTIMIZERS:
            raise UsageError(f"unknown optimizer {self.optimizer!r}", hint=f"use {' or '.join(OPTIMIZERS)}")
        require_integer(self.save_every, "--save-every (0: never)", low=0)
        if self.device is not None and self.device not in DEVICES:
            raise UsageError(f"unknown device {self.device!r}", hint=f"use {', '.join(DEVICES)}")
        if self.threads is not None:
            require_integer(self.threads, "--threads", low=1, high=1024)
        return self
