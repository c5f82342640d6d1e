"""Paired training: the narrow network from θ(0) and the wide one from η(0) = Tθ(0) (MATH.md §5).

Both take identical steps θ ← θ − lr ∇𝓛(θ) on 𝓛 = mean over the batch of ℓ(q_k) (ℓ(q) = e^{−q} or
log(1 + e^{−q}); multi-class: over the pairs (k, j) of the batch's samples), full-batch or with
identical seeded mini-batches. If T is an isometric split, ∇𝓛̃(Tθ) = T∇𝓛(θ), so η(t) = Tθ(t) up to
rounding (Thm 5.2); ``different_batches`` draws the wide network's batches from another stream,
the control that breaks it. Float64 throughout.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from kktembed.data import Dataset
from kktembed.embedding import Embedding
from kktembed.errors import UsageError
from kktembed.losses import get_loss
from kktembed.kkt.margins import build_constraints, margins_from_outputs, normalized_margin
from kktembed.network import Network, flatten_params


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

    def validate(self, n_samples: int) -> None:
        if self.steps < 1:
            raise UsageError(f"--steps must be a positive integer, got {self.steps}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UsageError(f"--lr must be a positive number, got {self.lr}")
        get_loss(self.loss)
        if self.batch is not None and not 1 <= self.batch <= n_samples:
            raise UsageError(f"--batch must lie in 1..{n_samples} (the number of samples), got {self.batch}")
        if self.different_batches and self.batch is None:
            raise UsageError("--different-batches needs --batch (full-batch steps are identical by definition)")
        if self.every < 1:
            raise UsageError(f"--every must be a positive integer, got {self.every}")
        if self.kkt_every < 0:
            raise UsageError("--kkt-every must be ≥ 0")


@dataclass
class TraceResult:
    records: list[dict] = field(default_factory=list)
    narrow: Network | None = None
    wide: Network | None = None

    @property
    def max_trajectory_error(self) -> float:
        return max(record["trajectory_error"] for record in self.records)

    def summary(self) -> dict:
        last = self.records[-1]
        return {
            "steps": last["step"],
            "max_trajectory_error": self.max_trajectory_error,
            "max_relative_trajectory_error": max(record["relative_trajectory_error"] for record in self.records),
            "final_trajectory_error": last["trajectory_error"],
            "final_relative_trajectory_error": last["relative_trajectory_error"],
            "final_loss_narrow": last["loss_narrow"],
            "final_loss_wide": last["loss_wide"],
            "final_normalized_margin_narrow": last["normalized_margin_narrow"],
            "final_normalized_margin_wide": last["normalized_margin_wide"],
            "final_stationarity_narrow": next((r["relative_stationarity_narrow"] for r in reversed(self.records) if "relative_stationarity_narrow" in r), None),
            "final_stationarity_wide": next((r["relative_stationarity_wide"] for r in reversed(self.records) if "relative_stationarity_wide" in r), None),
        }


class _Trainer:
    """One network's parameters and its gradient steps on batches of samples."""

    def __init__(self, network: Network, dataset: Dataset, loss: str):
        self.network, self.x, self.loss = network, dataset.x, get_loss(loss)
        self.constraints = build_constraints(dataset.y, network.output_dim)
        self.params = {key: value.clone().requires_grad_(True) for key, value in network.params.items()}
        self.pairs = len(self.constraints) // dataset.n_samples  # constraints per sample (1, or C − 1)

    def batch_loss(self, samples: torch.Tensor | None) -> torch.Tensor:
        if samples is None:
            outputs, constraints = self.network.forward(self.x, self.params), self.constraints
        else:
            # constraints are laid out sample-major, `pairs` per sample; renumber them to the batch
            rows = (samples.reshape(-1, 1) * self.pairs + torch.arange(self.pairs)).reshape(-1)
            constraints = self.constraints.subset(rows)
            constraints.sample = torch.arange(len(samples)).repeat_interleave(self.pairs)
            outputs = self.network.forward(self.x[samples], self.params)
        return self.loss.mean(margins_from_outputs(outputs, constraints))

    def step(self, samples: torch.Tensor | None, lr: float) -> None:
        gradients = torch.autograd.grad(self.batch_loss(samples), list(self.params.values()))
        with torch.no_grad():
            for value, gradient in zip(self.params.values(), gradients):
                value -= lr * gradient

    def snapshot(self) -> dict[str, torch.Tensor]:
        return {key: value.detach().clone() for key, value in self.params.items()}

    def full_loss_and_margin(self) -> tuple[float, float]:
        with torch.no_grad():
            q = margins_from_outputs(self.network.forward(self.x, self.params), self.constraints)
            norm = float(flatten_params(self.params).norm())
            return float(self.loss.mean(q)), normalized_margin(float(q.min()), norm, self.network.degree)


def paired_training(
    narrow: Network,
    embedding: Embedding,
    dataset: Dataset,
    options: TraceOptions,
    wide: Network | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> TraceResult:
    """Train θ from the narrow checkpoint and η from ``wide`` (default: η(0) = Tθ(0)) in lockstep;
    record every ``every`` steps (and at 0 and at the end)."""
    from kktembed.kkt.analysis import CheckOptions, check_network

    options.validate(dataset.n_samples)
    if wide is None:
        wide = Network(narrow.adapter, embedding.wide_config, embedding.apply(narrow.params))
    narrow_trainer, wide_trainer = _Trainer(narrow, dataset, options.loss), _Trainer(wide, dataset, options.loss)
    narrow_stream = torch.Generator().manual_seed(options.seed)
    wide_stream = torch.Generator().manual_seed(options.seed + 1) if options.different_batches else None
    result = TraceResult()

    def record(step: int) -> None:
        theta, eta = narrow_trainer.snapshot(), wide_trainer.snapshot()
        mapped = flatten_params(embedding.apply(theta))
        error = float((flatten_params(eta) - mapped).norm())
        loss_narrow, margin_narrow = narrow_trainer.full_loss_and_margin()
        loss_wide, margin_wide = wide_trainer.full_loss_and_margin()
        row = {
            "step": step,
            "trajectory_error": error,
            "relative_trajectory_error": error / float(mapped.norm()),
            "loss_narrow": loss_narrow,
            "loss_wide": loss_wide,
            "normalized_margin_narrow": margin_narrow,
            "normalized_margin_wide": margin_wide,
        }
        if options.kkt_every and step % options.kkt_every == 0 and margin_narrow > 0 and margin_wide > 0:
            check = CheckOptions(profile=False, loss=options.loss)
            row["relative_stationarity_narrow"] = check_network(narrow.with_params(theta), dataset, check).relative_stationarity_residual
            row["relative_stationarity_wide"] = check_network(wide.with_params(eta), dataset, check).relative_stationarity_residual
        result.records.append(row)

    def draw(stream: torch.Generator) -> torch.Tensor | None:
        if options.batch is None:
            return None
        return torch.randperm(dataset.n_samples, generator=stream)[: options.batch]

    record(0)
    for step in range(1, options.steps + 1):
        samples = draw(narrow_stream)
        narrow_trainer.step(samples, options.lr)
        wide_trainer.step(draw(wide_stream) if wide_stream is not None else samples, options.lr)
        if step % options.every == 0 or step == options.steps:
            record(step)
            if on_progress:
                on_progress(step)
    result.narrow = narrow.with_params(narrow_trainer.snapshot())
    result.wide = wide.with_params(wide_trainer.snapshot())
    return result


SERIES_FILES = ("series.csv", "series.json", "narrow_final.safetensors", "wide_final.safetensors")


def write_trace_outputs(result: TraceResult, embedding: Embedding, out_dir, data_reference: dict[str, str], force: bool = False) -> list:
    """Write the series (CSV, JSON) and both final checkpoints to ``out_dir``; the wide one records
    the embedding from the narrow one, so ``kktembed embed`` and ``check`` run on them."""
    import csv
    import io
    import json
    from pathlib import Path

    from kktembed.checkpoint import save_checkpoint, write_text_atomically
    from kktembed.embedding import EMBEDDING_KEY, EmbeddingRecord, file_sha256
    from kktembed.errors import OutputExistsError

    out_dir = Path(out_dir)
    paths = [out_dir / name for name in SERIES_FILES]
    existing = [path for path in paths if path.exists()]
    if existing and not force:
        raise OutputExistsError(f"{existing[0]} exists", hint="pass --force to overwrite, or choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(key for record in result.records for key in record))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(result.records)
    write_text_atomically(paths[0], buffer.getvalue())
    write_text_atomically(paths[1], json.dumps({"summary": result.summary(), "records": result.records}, indent=1))
    save_checkpoint(paths[2], result.narrow, data_reference, force=True)
    record = EmbeddingRecord([]).appended(file_sha256(paths[2]), paths[2].name, embedding)
    save_checkpoint(paths[3], result.wide, {**data_reference, EMBEDDING_KEY: record.to_json()}, force=True)
    return paths
