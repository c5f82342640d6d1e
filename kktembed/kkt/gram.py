"""Per-constraint gradients g_c = ∇q_c(θ̂) and their Gram matrix K = GᵀG (MATH.md §3).

The ℓ2 multiplier problem only needs K (n_c × n_c). It is assembled in tiles K[I, J] of chunks
I ≤ J of constraints from per-chunk *factors*, without forming G:
  - Linear weight:  ∇_W q_c = δ_c h_cᵀ, so K_ab += ⟨δ_a, δ_b⟩⟨h_a, h_b⟩, i.e. K[I, J] += (Δ_I Δ_Jᵀ) ⊙ (H_I H_Jᵀ)
    (δ_c = ∂q_c/∂(layer output), h_c = layer input; MATH.md §3). A first-layer bias is a weight on a
    constant input: h_c gains an entry 1, which adds ⟨δ_a, δ_b⟩.
  - Conv2d weight:  ∇_W q_c = Σ_s δ_{c,s} u_{c,s}ᵀ (u = unfolded input patches), one batched matmul per
    chunk; these rows R (and the bias gradients Σ_s δ_{c,s}) add R_I R_Jᵀ.
  - any other parameter (a plugin's custom module): rows of per-constraint gradients from torch.func
    (vmap of grad), restricted to those parameters, also added as R_I R_Jᵀ.
Δ and H come from one forward/backward per chunk of constraints (its rows are the constraints'
samples, the backward seed is each constraint's output signal s_c, so multi-class pairs need nothing
special). Peak memory is K (n_c² × 8 bytes) plus the factors (all chunks' when they fit under the
memory limit, else two chunks', recomputed per tile) plus four tile buffers; it is estimated and
checked before K is allocated. G itself (p × n_c) is formed only by ``gradient_matrix``, for the
ℓ1/ℓ∞ LPs.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kktembed.kkt.margins import Constraints
from kktembed.network import Network
from kktembed.resources import ensure_fits, intra_op_threads, memory_limit_bytes, resolve_device

DEFAULT_CHUNK = 1024
GRAM_HINT = "lower --active-tol or --max-candidates"
BYTES = 8  # float64
FORWARD_BACKWARD_FLOPS = 6  # per sample and parameter: a multiply-add forward, two backward


def _chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def _on_device(network: Network, params: dict[str, torch.Tensor], device: torch.device):
    """(module, float64 parameters) on ``device``; the network's own module is used on the CPU."""
    module = network.module if device.type == "cpu" else copy.deepcopy(network.module).to(device)
    return module, {key: value.detach().to(device=device, dtype=torch.float64) for key, value in params.items()}


def _forward(module: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Φ(θ; x) as an (n, C) tensor (as ``Network.forward``, for a module on any device)."""
    output = torch.func.functional_call(module, params, (x,))
    return output.reshape(output.shape[0], -1)


def weighted_margin_gradient(
    network: Network,
    x: torch.Tensor,
    constraints: Constraints,
    weights: torch.Tensor,
    params: dict[str, torch.Tensor],
    *,
    device: str | torch.device | None = None,
) -> dict[str, torch.Tensor]:
    """Σ_c w_c ∇q_c(θ) = G w with one backward pass per chunk of samples (G is never formed).

    With w = λ this is the stationarity combination of MATH.md §2; with w_c = −ℓ'(q_c) it is
    −∇𝓛(θ) for the alignment β. Computed in float64 on ``device`` (None/"cpu", "cuda", "auto");
    the result is on the CPU.
    """
    device = resolve_device(device)
    module, on_device = _on_device(network, params, device)
    leaves = {key: value.requires_grad_(True) for key, value in on_device.items()}
    total = {key: torch.zeros_like(value) for key, value in on_device.items()}
    n = x.shape[0]
    # Fold constraint weights into a per-sample output signal: Σ_c w_c ⟨s_c, Φ(x_{k_c})⟩.
    sample_signal = torch.zeros(n, constraints.signal.shape[1], dtype=torch.float64)
    sample_signal.index_add_(0, constraints.sample, constraints.signal * weights.to(torch.float64).reshape(-1, 1))
    active = torch.nonzero(sample_signal.abs().sum(dim=1) > 0).reshape(-1)
    with intra_op_threads(FORWARD_BACKWARD_FLOPS * len(active) * network.n_parameters):
        for part in _chunks(len(active), DEFAULT_CHUNK * 4):
            rows = active[part]
            outputs = _forward(module, leaves, x[rows].to(device=device, dtype=torch.float64))
            seed = sample_signal[rows].to(device)
            grads = torch.autograd.grad((outputs * seed).sum(), list(leaves.values()), allow_unused=True)
            for key, grad in zip(leaves, grads):
                if grad is not None:
                    total[key] += grad
    return {key: value.cpu() for key, value in total.items()}


def _per_constraint_gradient_function(module: nn.Module, params: dict[str, torch.Tensor], keys: list[str]) -> Callable:
    """rows(x, signal) → (n, Σ numel) per-constraint gradients of ⟨s_c, Φ(θ; x_c)⟩ with respect to
    the parameters ``keys`` (torch.func vmap of grad)."""
    fixed = {key: value for key, value in params.items() if key not in keys}
    free = {key: params[key].detach() for key in keys}

    def margin_of_one(free_params, x_one, signal_one):
        output = torch.func.functional_call(module, {**fixed, **free_params}, (x_one.unsqueeze(0),))
        return (output.reshape(-1) * signal_one).sum()

    per_constraint = torch.func.vmap(torch.func.grad(margin_of_one), in_dims=(None, 0, 0))

    def rows(x_rows: torch.Tensor, signal: torch.Tensor) -> torch.Tensor:
        grads = per_constraint(free, x_rows, signal)
        return torch.cat([grads[key].reshape(grads[key].shape[0], -1) for key in keys], dim=1)

    return rows


def constraint_gradients(
    network: Network,
    x: torch.Tensor,
    constraints: Constraints,
    params: dict[str, torch.Tensor],
    keys: list[str] | None = None,
    chunk_size: int = DEFAULT_CHUNK,
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield (constraint slice, rows g_cᵀ) for chunks of constraints, via torch.func vmap(grad).

    Only the parameters in ``keys`` (default: all, in ``params`` order) are differentiated.
    Memory is bounded by ``chunk_size`` × (number of those parameters).
    """
    keys = list(params) if keys is None else keys
    rows = _per_constraint_gradient_function(network.module, params, keys)  # module built here, not inside vmap
    for part in _chunks(len(constraints), chunk_size):
        yield part, rows(x[constraints.sample[part]], constraints.signal[part])


def gradient_matrix(
    network: Network, x: torch.Tensor, constraints: Constraints, params: dict[str, torch.Tensor], chunk_size: int = DEFAULT_CHUNK
) -> torch.Tensor:
    """G = [g_1 … g_{n_c}] (p × n_c). Only for the ℓ1/ℓ∞ multiplier LPs (MATH.md §3)."""
    n_params = sum(value.numel() for value in params.values())
    matrix = torch.empty(n_params, len(constraints), dtype=torch.float64)
    for part, rows in constraint_gradients(network, x, constraints, params, chunk_size=chunk_size):
        matrix[:, part] = rows.T
    return matrix


# -- the plan: which parameters are factorized, and the memory it needs ----------------------------


@dataclass(frozen=True)
class FactorLayer:
    """A Linear or Conv2d module called once per forward, whose ``weight`` / ``bias`` are in θ."""

    name: str
    module: nn.Module
    weight: bool
    bias: bool

    @property
    def is_linear(self) -> bool:
        return isinstance(self.module, nn.Linear)


@dataclass(frozen=True)
class GramPlan:
    """How K is assembled for one network and parameter set, and the sizes its memory depends on."""

    layers: tuple[FactorLayer, ...]
    fallback: tuple[str, ...]  # parameters differentiated per constraint by torch.func
    factor_floats: int  # factor entries per constraint (all layers and the fallback rows)
    workspace_floats: int  # forward/backward workspace per row of a chunk (estimate)

    def flops(self, n_constraints: int, n_parameters: int) -> float:
        """Work of the assembly (an upper bound): the tile products over the upper triangle of K
        and the forward/backward passes."""
        return n_constraints**2 * self.factor_floats + FORWARD_BACKWARD_FLOPS * n_constraints * n_parameters

    def bytes_needed(self, n_constraints: int, chunk_size: int, keep_factors: bool) -> int:
        """Peak bytes: K, the factors (all or two chunks'), four tile buffers, one chunk's workspace."""
        chunk = max(1, min(chunk_size, n_constraints))
        factor_rows = n_constraints if keep_factors else min(2 * chunk, n_constraints)
        floats = n_constraints**2 + factor_rows * self.factor_floats + 4 * chunk**2 + chunk * self.workspace_floats
        return floats * BYTES


def _is_factorizable(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (
        isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros" and not isinstance(module.padding, str)
    )


@contextmanager
def _recording(modules: dict[str, nn.Module]) -> Iterator[dict[str, list]]:
    """Record (input, output) of every call of each module while the context is open."""
    calls: dict[str, list] = {name: [] for name in modules}
    handles = [
        module.register_forward_hook(lambda module, inputs, output, name=name: calls[name].append((inputs[0], output)))
        for name, module in modules.items()
    ]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def _conv_patch_floats(module: nn.Conv2d, inputs: torch.Tensor, output: torch.Tensor) -> int:
    """Entries of the unfolded patches of one row: C_in·kh·kw × (output positions)."""
    kernel = module.weight.shape[1] * module.weight.shape[2] * module.weight.shape[3]
    return kernel * output.shape[2] * output.shape[3]


def gram_plan(network: Network, params: dict[str, torch.Tensor] | None = None) -> GramPlan:
    """Classify the parameters of ``network`` (default: ``network.params``) by one forward of an
    example input: Linear modules called once on flat inputs and Conv2d modules (groups 1, zero
    padding) called once are factorized; every other parameter falls back to torch.func."""
    params = network.params if params is None else params
    candidates = {name: module for name, module in network.module.named_modules() if _is_factorizable(module)}
    leaves = {name: module for name, module in network.module.named_modules() if not list(module.children())}
    with torch.no_grad(), _recording(candidates) as calls, _recording(leaves) as leaf_calls:
        _forward(network.module, params, network.example_input())
    layers, factor_floats, workspace = [], 0, 0
    for name, module in candidates.items():
        weight, bias = f"{name}.weight" in params, module.bias is not None and f"{name}.bias" in params
        once = len(calls[name]) == 1 and (weight or bias)
        if not once or (isinstance(module, nn.Linear) and calls[name][0][0].ndim != 2):
            continue
        layers.append(FactorLayer(name, module, weight, bias))
        inputs, output = calls[name][0]
        if isinstance(module, nn.Linear):
            factor_floats += output.shape[1] + weight * inputs.shape[1] + bias
        else:
            factor_floats += weight * module.weight.numel() + bias * output.shape[1]
            workspace += _conv_patch_floats(module, inputs, output) + module.weight.numel()
    covered = {f"{layer.name}.{leaf}" for layer in layers for leaf, used in (("weight", layer.weight), ("bias", layer.bias)) if used}
    fallback = tuple(key for key in params if key not in covered)
    fallback_floats = sum(params[key].numel() for key in fallback)
    # Autograd keeps each module's output and its gradient; vmap(grad) also holds a gradient copy.
    workspace += 2 * sum(output.numel() for calls_of in leaf_calls.values() for _, output in calls_of) + 2 * fallback_floats * bool(fallback)
    return GramPlan(tuple(layers), fallback, factor_floats + fallback_floats, workspace)


def estimate_gram_bytes(network: Network, n_constraints: int, chunk_size: int = DEFAULT_CHUNK) -> int:
    """Peak memory of ``gram_matrix`` with factors recomputed per tile (its least-memory plan): K
    (n_c² × 8 bytes), two chunks' factors, four chunk × chunk tile buffers and one chunk's
    forward/backward workspace (the last is an estimate)."""
    return gram_plan(network).bytes_needed(n_constraints, chunk_size, keep_factors=False)


# -- factors of one chunk and the tile products -------------------------------------------------


# A chunk keeps one row of H per distinct sample when that leaves at most this fraction of its rows:
# the layer-input products are then computed per pair of samples and gathered (MATH.md §1: the
# constraints (k, j) of one sample share its activations), which pays when (C − 1) > 1.
SHARED_INPUT_FRACTION = 0.7


@dataclass
class Factors:
    """Factors of one chunk of constraints: K[I, J] = Σ (Δ_I Δ_Jᵀ) ⊙ (H_I H_Jᵀ) + R_I R_Jᵀ.

    With ``expand`` set, each H holds one row per distinct sample of the chunk, and constraint c
    uses row ``expand[c]``."""

    size: int  # constraints in the chunk
    outer: list[tuple[torch.Tensor, torch.Tensor]]  # (Δ, H) of each Linear layer
    rows: torch.Tensor | None  # R: conv kernel and bias gradients, fallback gradients
    expand: torch.Tensor | None


def _linear_factors(layer: FactorLayer, inputs: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Δ, H) for a Linear layer: δ_c, and h_c with a trailing 1 for the bias (a weight on a constant input)."""
    columns = ([inputs] if layer.weight else []) + ([torch.ones_like(inputs[:, :1])] if layer.bias else [])
    return delta, torch.cat(columns, dim=1) if len(columns) > 1 else columns[0]


def _distinct_samples(sample_rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(first row of each distinct sample, row → its distinct sample) if sharing pays, else None."""
    distinct, inverse = torch.unique(sample_rows, return_inverse=True)
    if len(distinct) > SHARED_INPUT_FRACTION * len(sample_rows):
        return None
    positions = torch.arange(len(sample_rows), device=sample_rows.device)
    first = torch.full((len(distinct),), len(sample_rows), device=sample_rows.device).scatter_reduce_(0, inverse, positions, "amin")
    return first, inverse


def _conv_rows(layer: FactorLayer, inputs: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Per-constraint conv gradients: ∇_W q_c = Σ_s δ_{c,s} u_{c,s}ᵀ (one bmm over the chunk),
    flattened to C_out·C_in·kh·kw entries, then ∇_b q_c = Σ_s δ_{c,s} if the bias is in θ."""
    module = layer.module
    delta = delta.reshape(delta.shape[0], delta.shape[1], -1)  # (n, C_out, S)
    columns = []
    if layer.weight:
        patches = F.unfold(inputs, module.kernel_size, dilation=module.dilation, padding=module.padding, stride=module.stride)
        columns.append(torch.bmm(delta, patches.transpose(1, 2)).reshape(delta.shape[0], -1))  # (n, C_out·C_in·kh·kw)
    if layer.bias:
        columns.append(delta.sum(dim=2))
    return torch.cat(columns, dim=1) if len(columns) > 1 else columns[0]


def _factor_function(plan: GramPlan, module: nn.Module, params: dict[str, torch.Tensor]) -> Callable[..., Factors]:
    """factors(x_rows, signal, sample_rows): one forward/backward of ⟨s_c, Φ(θ; x_c)⟩ over a
    chunk, plus the torch.func rows of the fallback parameters."""
    leaves = {key: value.detach().requires_grad_(True) for key, value in params.items()}
    modules = {layer.name: dict(module.named_modules())[layer.name] for layer in plan.layers}
    fallback_rows = _per_constraint_gradient_function(module, params, list(plan.fallback)) if plan.fallback else None

    def factors(x_rows: torch.Tensor, signal: torch.Tensor, sample_rows: torch.Tensor) -> Factors:
        outer, rows = [], []
        shared = _distinct_samples(sample_rows) if any(layer.is_linear for layer in plan.layers) else None
        if plan.layers:
            with _recording(modules) as calls:
                outputs = _forward(module, leaves, x_rows)
            captured = [calls[layer.name][0] for layer in plan.layers]
            deltas = torch.autograd.grad((outputs * signal).sum(), [output for _, output in captured], allow_unused=True)
            for layer, (inputs, output), delta in zip(plan.layers, captured, deltas):
                delta = torch.zeros_like(output) if delta is None else delta
                inputs = inputs.detach()
                if layer.is_linear:
                    outer.append(_linear_factors(layer, inputs if shared is None else inputs[shared[0]], delta))
                else:
                    rows.append(_conv_rows(layer, inputs, delta))
        if fallback_rows is not None:
            rows.append(fallback_rows(x_rows, signal))
        return Factors(len(x_rows), outer, torch.cat(rows, dim=1) if rows else None, None if shared is None else shared[1])

    return factors


class TileBuffers:
    """Four chunk × chunk float64 buffers (a tile, two products, a transposed tile), reused for
    every tile as views of the needed size."""

    def __init__(self, chunk: int, device: torch.device):
        self.storage = [torch.empty(chunk * chunk, dtype=torch.float64, device=device) for _ in range(4)]

    def views(self, rows: int, columns: int) -> list[torch.Tensor]:
        return [buffer[: rows * columns].view(rows, columns) for buffer in self.storage]


def _input_products(first: Factors, second: Factors, input_i: torch.Tensor, input_j: torch.Tensor, out: torch.Tensor) -> None:
    """out = H_I H_Jᵀ over constraints, from per-sample rows where a chunk shares them."""
    if first.expand is None and second.expand is None:
        torch.mm(input_i, input_j.T, out=out)
        return
    products = input_i @ input_j.T
    if first.expand is not None:
        products = products.index_select(0, first.expand)
    if second.expand is not None:
        torch.index_select(products, 1, second.expand, out=out)
    else:
        out.copy_(products)


def tile_product(first: Factors, second: Factors, buffers: TileBuffers) -> torch.Tensor:
    """K[I, J] = Σ_layers (Δ_I Δ_Jᵀ) ⊙ (H_I H_Jᵀ) + R_I R_Jᵀ (a view into ``buffers``)."""
    tile, deltas, inputs, _ = buffers.views(first.size, second.size)
    if first.rows is not None:
        torch.mm(first.rows, second.rows.T, out=tile)
    else:
        tile.zero_()
    for (delta_i, input_i), (delta_j, input_j) in zip(first.outer, second.outer):
        torch.mm(delta_i, delta_j.T, out=deltas)
        _input_products(first, second, input_i, input_j, inputs)
        tile.addcmul_(deltas, inputs)
    return tile


def _keep_all_factors(plan: GramPlan, n: int, chunk_size: int, device: torch.device, what: str) -> bool:
    """Refuse (UsageError) if even the least-memory plan does not fit; otherwise say whether all
    chunks' factors fit as well (then they are computed once, not once per tile)."""
    least, most = (plan.bytes_needed(n, chunk_size, keep_factors=keep) for keep in (False, True))
    if device.type == "cpu":
        ensure_fits(least, what, GRAM_HINT)
        return most <= memory_limit_bytes()
    ensure_fits(n * n * BYTES, what, GRAM_HINT)  # K is copied back to the host
    free_on_device = torch.cuda.mem_get_info(device)[0]
    ensure_fits(least, f"{what} on {device}", GRAM_HINT, limit=free_on_device)
    return most <= free_on_device


def _assemble(parts: list[slice], factors: Callable[[int], Factors], device: torch.device) -> torch.Tensor:
    """K from the tiles I ≤ J; K[J, I] = K[I, J]ᵀ and diagonal tiles are symmetrized, so K = Kᵀ exactly."""
    n = parts[-1].stop if parts else 0
    gram = torch.empty(n, n, dtype=torch.float64, device=device)
    buffers = TileBuffers(parts[0].stop if parts else 0, device)
    for i, rows in enumerate(parts):
        first = factors(i)
        for j in range(i, len(parts)):
            columns = parts[j]
            tile = tile_product(first, first if j == i else factors(j), buffers)
            if i == j:
                gram[rows, rows].copy_(tile).add_(tile.T).mul_(0.5)
            else:
                gram[rows, columns] = tile
                # A transposed copy into a contiguous buffer is much faster than into a strided view of K.
                gram[columns, rows] = buffers.views(tile.shape[1], tile.shape[0])[3].copy_(tile.T)
    return gram


def gram_matrix(
    network: Network,
    x: torch.Tensor,
    constraints: Constraints,
    params: dict[str, torch.Tensor],
    chunk_size: int = DEFAULT_CHUNK,
    *,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """K = GᵀG (n_c × n_c, float64, exactly symmetric), K_ab = ⟨∇q_a(θ), ∇q_b(θ)⟩, assembled in
    tiles of ``chunk_size`` constraints (module docstring). Refuses with a UsageError when the
    estimated peak memory (``estimate_gram_bytes``) exceeds the limit of ``kktembed.resources``.
    Computed on ``device`` (None/"cpu", "cuda", "auto"); the result is on the CPU."""
    device = resolve_device(device)
    n = len(constraints)
    plan = gram_plan(network, params)
    what = f"the Gram matrix of {n:,} constraints ({network.n_parameters:,} parameters)"
    keep_factors = _keep_all_factors(plan, n, chunk_size, device, what)
    module, on_device = _on_device(network, params, device)
    factors_of_rows = _factor_function(plan, module, on_device)
    parts = list(_chunks(n, chunk_size))
    x_device, signal = x.to(device=device, dtype=torch.float64), constraints.signal.to(device=device, dtype=torch.float64)
    sample = constraints.sample.to(device)

    def compute(index: int) -> Factors:
        part = parts[index]
        return factors_of_rows(x_device[sample[part]], signal[part], sample[part])

    with intra_op_threads(plan.flops(n, network.n_parameters)):
        if keep_factors:
            stored = [compute(index) for index in range(len(parts))]
            gram = _assemble(parts, stored.__getitem__, device)
        else:
            gram = _assemble(parts, compute, device)
    return gram.cpu()
