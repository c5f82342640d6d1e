"""Paired training: the narrow network from θ(0) and the wide one from η(0) = Tθ(0) (MATH.md §5).

Both take identical steps on 𝓛 = mean over the batch of ℓ(q_k) (ℓ(q) = e^{−q} or log(1 + e^{−q});
multi-class: over the pairs (k, j) of the batch's samples), full-batch or with identical seeded
mini-batches; ``different_batches`` draws the wide network's batches from another stream, the
control that breaks the relation. Two update rules (``TraceOptions.optimizer``):

  gd          θ ← θ − lr ∇𝓛(θ)                                   constant rate (GD, or SGD with a batch)
  normalized  θ ← θ − (lr / 𝓛(θ)) ∇𝓛(θ) = θ − lr ∇log 𝓛(θ)        Lyu & Li's loss-based rate

"normalized" is the loss-based learning rate of Lyu & Li (2020, arXiv 1906.05890): the rate
α/𝓛(θ_t), under which the normalized margin grows quickly. Here α = lr is constant; their
experiments also adapt α between epochs (their code, LossBasedLRv1: ×2^{1/5} after an epoch whose
loss did not rise, ÷2^{1/10} with the epoch redone otherwise). With a mini-batch, 𝓛 is the batch's
loss, the one whose gradient is taken. Each network divides by its own 𝓛; under an isometric T,
𝓛̃(Tθ) = 𝓛(θ), so the two rates agree to rounding and the updates stay identical. The step is taken
as lr ∇log 𝓛, with log 𝓛 = logsumexp_k log ℓ(q_k) − log n evaluated stably, so it stays finite
after ℓ(q_k) underflows (q > 745). With α constant the iteration becomes unstable once lr exceeds
2 / (the curvature of log 𝓛), and for L ≥ 2 that curvature grows with ‖θ‖: from then on rounding is
amplified step by step, in each network and in ‖η − Tθ‖ alike (paper CNN, lr 1e-2: after about 370
steps, ×3 per step). A smaller lr postpones it.

If T is an isometric split, ∇𝓛̃(Tθ) = T∇𝓛(θ), so η(t) = Tθ(t) up to rounding (Thm 5.2).

The step is fused: θ and η are the parameters of two float64 modules; one graph holds the sum of
both objectives, one backward pass gives both gradients (the two terms share no parameter, so each
gradient is exactly its own network's) and one multi-tensor update moves every parameter of both.
Tiny problems run on one thread (``threads_for``): intra-op synchronisation would cost more than the
arithmetic, and on a busy machine far more. Float64 throughout, on the CPU or a CUDA device.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kktembed.data import Dataset
from kktembed.embedding import Embedding
from kktembed.errors import ArchitectureError, InputError, KktembedError, UsageError
from kktembed.kkt.margins import build_constraints, normalized_margin
from kktembed.losses import MarginLoss, get_loss
from kktembed.network import Network, flatten_params, safe_norm, unflatten_params
from kktembed.resources import resolve_device, torch_threads  # noqa: F401  (part of this module's interface)
from kktembed.training_options import DEVICES, OPTIMIZERS, TraceOptions  # noqa: F401  (kktembed.dynamics.TraceOptions)

# Below this many floating-point operations per step (forward and backward of both networks, as
# estimated by step_flops), training runs on one thread. Measured on a 2-core machine with
# benchmarks/bench_trace.py --threads (MLPs 64→h→1, split to 2h): without added load, two threads
# gain under 15% below 5e6 flops and 25–40% from 2e7 on; with one busy-loop process added they lose
# 1.1–3.8× at every size, and 4× or more on the paper's networks (~1e4 flops). Above the threshold
# all threads are used (TraceOptions.threads overrides the choice).
SINGLE_THREAD_FLOPS = 1e7


TRAINING_COPIES = 6  # θ and η each live as module parameters, gradients, flat copies and snapshots
PROGRESS_SECONDS = 0.5  # on_progress is called at least this often (and at every record)


class TrainingDiverged(KktembedError):
    """Parameters or losses became NaN or infinite."""


def ensure_training_fits(narrow: Network, wide_config: dict, samples_per_step: int) -> None:
    """Refuse (UsageError with the estimate and the limit) paired training whose two networks and
    one step's forward and backward passes would not fit in memory, before either is built."""
    from kktembed.network import FLOAT64_BYTES, forward_memory_bytes
    from kktembed.resources import ensure_fits

    wide_parameters = sum(math.prod(shape) for shape in narrow.adapter.parameter_shapes(wide_config).values())
    passes = sum(forward_memory_bytes(narrow.adapter, config, samples_per_step) or 0 for config in (narrow.config, wide_config))
    needed = FLOAT64_BYTES * TRAINING_COPIES * (narrow.n_parameters + wide_parameters) + passes
    ensure_fits(needed, f"training the narrow and the wide network ({narrow.n_parameters:,} and {wide_parameters:,} parameters, {samples_per_step:,} samples per step)", hint="split into fewer copies or use a smaller --batch")


@dataclass
class TraceResult:
    records: list[dict] = field(default_factory=list)
    narrow: Network | None = None
    wide: Network | None = None
    device: str = "cpu"  # where the networks were trained
    threads: int = 0  # torch intra-op threads used for the steps

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


def threads_for(step_flops: float, available: int) -> int:
    """One thread below SINGLE_THREAD_FLOPS per step, else the ``available`` ones."""
    return 1 if step_flops < SINGLE_THREAD_FLOPS else available


def training_objective(loss: MarginLoss, optimizer: str, q: torch.Tensor) -> torch.Tensor:
    """The function whose gradient, times lr, is the step: 𝓛 = mean_k ℓ(q_k) for "gd";
    logsumexp_k log ℓ(q_k) = log 𝓛 + log n for "normalized" (∇ log 𝓛 = ∇𝓛 / 𝓛)."""
    if optimizer == "gd":
        return loss.mean(q)
    return torch.logsumexp(loss.log_value(q), dim=0)


class MarginData:
    """The training set on the device and the margins q_k of a module on a batch of it (MATH.md §1):
    binary q_k = y_k Φ(θ; x_k); multi-class q_{k,j} = ⟨e_{y_k} − e_j, Φ(θ; x_k)⟩, sample-major as in
    ``build_constraints``. Built once; a batch is a tensor of sample indices (None: all)."""

    def __init__(self, dataset: Dataset, n_outputs: int, device: torch.device):
        constraints = build_constraints(dataset.y, n_outputs)
        pairs = len(constraints) // dataset.n_samples  # constraints per sample: 1, or C − 1
        self.x = dataset.x.to(device)
        self.signal = constraints.signal.reshape(dataset.n_samples, pairs, n_outputs).to(device)
        self.labels = self.signal.reshape(-1) if pairs == n_outputs == 1 else None

    def margins(self, module: torch.nn.Module, samples: torch.Tensor | None = None) -> torch.Tensor:
        x = self.x if samples is None else self.x[samples]
        outputs = module(x)
        if self.labels is not None:
            return outputs.reshape(-1) * (self.labels if samples is None else self.labels[samples])
        signal = self.signal if samples is None else self.signal[samples]
        return (outputs.reshape(outputs.shape[0], 1, -1) * signal).sum(dim=-1).reshape(-1)


class TrainedNetwork:
    """One network being trained: a float64 module on the device whose own parameters hold θ."""

    def __init__(self, network: Network, device: torch.device):
        module = network.adapter.build(network.config).to(device=device, dtype=torch.float64).eval()
        named = dict(module.named_parameters())
        if set(named) != set(network.params):
            raise ArchitectureError(
                f"the {network.adapter.name} module's parameters ({', '.join(sorted(named))}) are not the checkpoint's tensors "
                f"({', '.join(sorted(network.params))})",
                hint="trace trains every tensor of the checkpoint as a parameter",
            )
        self.network, self.module = network, module
        self.parameters = [named[key] for key in network.params]  # the checkpoint's order
        with torch.no_grad():
            for parameter, key in zip(self.parameters, network.params):
                parameter.copy_(network.params[key])

    def flat(self) -> torch.Tensor:
        """θ as one vector in the checkpoint's key order (on the device)."""
        return torch.cat([parameter.detach().reshape(-1) for parameter in self.parameters])

    def snapshot(self) -> dict[str, torch.Tensor]:
        """θ as a state_dict of CPU tensors, detached copies."""
        return {key: parameter.detach().to("cpu", copy=True) for key, parameter in zip(self.network.params, self.parameters)}


def step_flops(narrow: TrainedNetwork, wide: TrainedNetwork, data: MarginData, batch: int | None) -> float:
    """Floating-point operations of one training step of both networks, estimated from one forward
    pass on a batch of the step's size: a module with a weight (out, in, *kernel) does
    weight.numel()/out multiply-adds per output element, and the backward pass twice the forward's."""
    total = 0

    def count(module: torch.nn.Module, inputs, output) -> None:
        nonlocal total
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor) and isinstance(output, torch.Tensor):
            total += 2 * output.numel() * (weight.numel() // weight.shape[0])

    x = data.x if batch is None else data.x[:batch]
    for trained in (narrow, wide):
        handles = [module.register_forward_hook(count) for module in trained.module.modules()]
        try:
            with torch.no_grad():
                trained.module(x)
        finally:
            for handle in handles:
                handle.remove()
    return 3.0 * total


class FusedStep:
    """One update of θ and η together: the objective of both (``training_objective``) in one graph,
    one backward pass, one multi-tensor update θ ← θ − lr g of all parameters of both networks."""

    def __init__(self, narrow: TrainedNetwork, wide: TrainedNetwork, data: MarginData, loss: MarginLoss, optimizer: str, lr: float):
        self.narrow, self.wide, self.data = narrow.module, wide.module, data
        self.loss, self.optimizer, self.lr = loss, optimizer, lr
        self.parameters = narrow.parameters + wide.parameters

    def __call__(self, narrow_samples: torch.Tensor | None, wide_samples: torch.Tensor | None) -> None:
        objective = training_objective(self.loss, self.optimizer, self.data.margins(self.narrow, narrow_samples)) + training_objective(
            self.loss, self.optimizer, self.data.margins(self.wide, wide_samples)
        )
        gradients = torch.autograd.grad(objective, self.parameters)
        with torch.no_grad():
            torch._foreach_add_(self.parameters, gradients, alpha=-self.lr)  # the multi-tensor kernel torch.optim uses


def embedding_gather(embedding: Embedding, narrow_params: dict[str, torch.Tensor], wide_keys: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(index, scale) with Tθ = θ[index] · scale, for θ flattened in the key order of
    ``narrow_params`` and Tθ in ``wide_keys`` order. Every split copies one narrow entry times a
    factor (MATH.md §4), so T is a scaled selection: scale = T1 and index from T applied to the
    positions 1..p (exact: the quotient is an integer below 2^52 up to a few ulps)."""
    ones = {key: torch.ones_like(value, dtype=torch.float64) for key, value in narrow_params.items()}
    positions = unflatten_params(torch.arange(1, sum(v.numel() for v in ones.values()) + 1, dtype=torch.float64), ones)

    def wide_vector(params: dict[str, torch.Tensor]) -> torch.Tensor:
        mapped = embedding.apply(params)
        return flatten_params({key: mapped[key] for key in wide_keys})

    scale, labelled = wide_vector(ones), wide_vector(positions)
    index = torch.where(scale != 0, torch.round(labelled / scale) - 1, 0.0).to(torch.int64)
    return index, scale


def paired_training(
    narrow: Network,
    embedding: Embedding,
    dataset: Dataset,
    options: TraceOptions,
    wide: Network | None = None,
    on_progress: Callable[[int], None] | None = None,
    on_record: Callable[[dict], None] | None = None,
    on_snapshot: Callable[[int, dict[str, torch.Tensor], dict[str, torch.Tensor]], None] | None = None,
) -> TraceResult:
    """Train θ from the narrow checkpoint and η from ``wide`` (default: η(0) = Tθ(0)) in lockstep.

    A row is recorded at step 0, every ``every`` steps and at the end; ``on_record(row)`` receives
    each row as it is recorded and ``on_progress(step)`` the step (at every record and at least
    every PROGRESS_SECONDS, so that long runs with rare records still report). With ``save_every`` = K > 0,
    ``on_snapshot(step, θ, η)`` receives both state_dicts (CPU copies) at steps K, 2K, … and at the
    last step."""
    from kktembed.kkt.analysis import CheckOptions, check_network

    options.validate(dataset.n_samples)
    if narrow.norm() == 0:
        raise InputError("the network is zero (every parameter is 0): its normalized margin is undefined", hint="check that the right checkpoint was saved")
    device = resolve_device(options.device)
    if wide is None:
        wide = Network(narrow.adapter, embedding.wide_config, embedding.apply(narrow.params))
    narrow_net, wide_net = TrainedNetwork(narrow, device), TrainedNetwork(wide, device)
    data = MarginData(dataset, narrow.output_dim, device)
    loss = get_loss(options.loss)
    step = FusedStep(narrow_net, wide_net, data, loss, options.optimizer, options.lr)
    index, scale = (tensor.to(device) for tensor in embedding_gather(embedding, narrow.params, list(wide.params)))
    threads = options.threads or threads_for(step_flops(narrow_net, wide_net, data, options.batch), torch.get_num_threads())
    narrow_stream = torch.Generator().manual_seed(options.seed)
    wide_stream = torch.Generator().manual_seed(options.seed + 1) if options.different_batches else None
    result = TraceResult(device=str(device), threads=threads)

    def record(at: int) -> None:
        with torch.no_grad():
            theta, eta = narrow_net.flat(), wide_net.flat()
            mapped = theta[index] * scale
            q_narrow, q_wide = data.margins(narrow_net.module), data.margins(wide_net.module)
            values = torch.stack([loss.mean(q_narrow), loss.mean(q_wide), q_narrow.min(), q_wide.min()]).tolist()
            error, mapped_norm, norm_narrow, norm_wide = (safe_norm({"v": v}) for v in (eta - mapped, mapped, theta, eta))
        loss_narrow, loss_wide, q_min_narrow, q_min_wide = values
        relative = error / mapped_norm if mapped_norm > 0 else math.nan
        row = {
            "step": at,
            "trajectory_error": error,
            "relative_trajectory_error": relative,
            "loss_narrow": loss_narrow,
            "loss_wide": loss_wide,
            "normalized_margin_narrow": normalized_margin(q_min_narrow, norm_narrow, narrow.degree),
            "normalized_margin_wide": normalized_margin(q_min_wide, norm_wide, wide.degree),
        }
        if not all(math.isfinite(value) for value in row.values()):
            if at == 0:
                raise InputError(
                    f"the initial networks' numbers are not finite in float64 (‖θ‖ {norm_narrow:.3g}, loss {loss_narrow:.3g}, "
                    f"q_min {q_min_narrow:.3g}): their margins overflow or underflow",
                    hint="rescale the checkpoint (or the inputs) by a power of ten; nothing was written",
                )
            raise TrainingDiverged(
                f"training produced non-finite numbers by step {at} (loss narrow {loss_narrow:.3g}, wide {loss_wide:.3g}, ‖θ‖ {norm_narrow:.3g})",
                hint="lower --lr (or use --optimizer normalized with a smaller rate); nothing was written",
            )
        if options.kkt_every and at % options.kkt_every == 0 and row["normalized_margin_narrow"] > 0 and row["normalized_margin_wide"] > 0:
            check = CheckOptions(profile=False, loss=options.loss)
            row["relative_stationarity_narrow"] = check_network(narrow.with_params(narrow_net.snapshot()), dataset, check).relative_stationarity_residual
            row["relative_stationarity_wide"] = check_network(wide.with_params(wide_net.snapshot()), dataset, check).relative_stationarity_residual
        result.records.append(row)
        if on_record:
            on_record(row)

    def draw(stream: torch.Generator | None) -> torch.Tensor | None:
        if options.batch is None:
            return None
        return torch.randperm(dataset.n_samples, generator=stream)[: options.batch].to(device)

    with torch_threads(threads):
        record(0)
        reported = time.monotonic()
        for at in range(1, options.steps + 1):
            narrow_samples = draw(narrow_stream)
            step(narrow_samples, draw(wide_stream) if wide_stream is not None else narrow_samples)
            recorded = at % options.every == 0 or at == options.steps
            if recorded:
                record(at)
            if on_progress and (recorded or time.monotonic() - reported >= PROGRESS_SECONDS):
                on_progress(at)
                reported = time.monotonic()
            if options.save_every and (at % options.save_every == 0 or at == options.steps) and on_snapshot:
                on_snapshot(at, narrow_net.snapshot(), wide_net.snapshot())
    result.narrow = narrow.with_params(narrow_net.snapshot())
    result.wide = wide.with_params(wide_net.snapshot())
    return result


SERIES_FILES = ("series.csv", "series.json", "narrow_final.safetensors", "wide_final.safetensors")


def save_pair(folder: Path, names: tuple[str, str], narrow: Network, wide: Network, embedding: Embedding, extra: dict[str, str]) -> list[Path]:
    """Write θ and η side by side; η records the embedding from that very θ file, so that
    ``kktembed embed`` verifies the pair and ``kktembed check`` runs on either."""
    from kktembed.checkpoint import save_checkpoint, source_sha256
    from kktembed.embedding import EMBEDDING_KEY, EmbeddingRecord

    narrow_path, wide_path = folder / names[0], folder / names[1]
    save_checkpoint(narrow_path, narrow, extra, force=True)
    record = EmbeddingRecord([]).appended(source_sha256(narrow_path), narrow_path.name, embedding)
    save_checkpoint(wide_path, wide, {**extra, EMBEDDING_KEY: record.to_json()}, force=True)
    return [narrow_path, wide_path]


def snapshot_names(step: int, steps: int) -> tuple[str, str]:
    """``narrow_step_000100.safetensors`` / ``wide_step_000100.safetensors``, zero-padded to the run's length."""
    width = len(str(steps))
    return f"narrow_step_{step:0{width}d}.safetensors", f"wide_step_{step:0{width}d}.safetensors"


def write_trace_outputs(result: TraceResult, embedding: Embedding, folder, data_reference: dict[str, str]) -> list[Path]:
    """Write the series (CSV, JSON) and both final checkpoints into ``folder`` (the partial folder
    of ``kktembed.outputs.atomic_folder``: the set appears at once)."""
    import csv
    import io
    import json

    folder = Path(folder)
    columns = list(dict.fromkeys(key for record in result.records for key in record))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(result.records)
    (folder / SERIES_FILES[0]).write_text(buffer.getvalue())
    (folder / SERIES_FILES[1]).write_text(json.dumps({"summary": result.summary(), "records": result.records}, indent=1))
    return [folder / SERIES_FILES[0], folder / SERIES_FILES[1], *save_pair(folder, SERIES_FILES[2:], result.narrow, result.wide, embedding, data_reference)]
