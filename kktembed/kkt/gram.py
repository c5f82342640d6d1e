"""Per-constraint gradients g_c = ∇q_c(θ̂) and their Gram matrix K = GᵀG (MATH.md §3).

The ℓ2 multiplier problem only needs K (n_c × n_c). For Linear and Conv2d layers K is assembled
layerwise from one batched forward/backward per chunk of constraints, without forming G:
  - Linear weight:  ∇_W q_c = δ_c h_cᵀ, so K_ab += ⟨δ_a, δ_b⟩⟨h_a, h_b⟩   (MATH.md §3)
  - Linear bias:    ∇_b q_c = δ_c,      so K_ab += ⟨δ_a, δ_b⟩
  - Conv2d weight:  ∇_W q_c = Σ_s δ_{c,s} u_{c,s}ᵀ (u = unfolded input patches), formed per
    constraint (conv kernels are small) and K += G_conv G_convᵀ.
Any other parameter (a plugin's custom module) falls back to per-constraint gradients from
torch.func (vmap of grad), restricted to those parameters. G itself (p × n_c) is formed only by
``gradient_matrix``, for the ℓ1/ℓ∞ LPs.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from kktembed.kkt.margins import Constraints
from kktembed.network import Network

DEFAULT_CHUNK = 1024


def _chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def weighted_margin_gradient(
    network: Network, x: torch.Tensor, constraints: Constraints, weights: torch.Tensor, params: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Σ_c w_c ∇q_c(θ) = G w with one backward pass per chunk of samples (G is never formed).

    With w = λ this is the stationarity combination of MATH.md §2; with w_c = −ℓ'(q_c) it is
    −∇𝓛(θ) for the alignment β.
    """
    leaves = {key: value.detach().requires_grad_(True) for key, value in params.items()}
    total = {key: torch.zeros_like(value) for key, value in params.items()}
    n = x.shape[0]
    # Fold constraint weights into a per-sample output signal: Σ_c w_c ⟨s_c, Φ(x_{k_c})⟩.
    sample_signal = torch.zeros(n, constraints.signal.shape[1], dtype=torch.float64)
    sample_signal.index_add_(0, constraints.sample, constraints.signal * weights.reshape(-1, 1))
    active = torch.nonzero(sample_signal.abs().sum(dim=1) > 0).reshape(-1)
    for part in _chunks(len(active), DEFAULT_CHUNK * 4):
        rows = active[part]
        outputs = network.forward(x[rows], leaves)
        grads = torch.autograd.grad((outputs * sample_signal[rows]).sum(), list(leaves.values()), allow_unused=True)
        for key, grad in zip(leaves, grads):
            if grad is not None:
                total[key] += grad
    return total


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
    fixed = {key: value for key, value in params.items() if key not in keys}
    module = network.module  # built here, not lazily inside vmap

    def margin_of_one(free, x_one, signal_one):
        output = torch.func.functional_call(module, {**fixed, **free}, (x_one.unsqueeze(0),))
        return (output.reshape(-1) * signal_one).sum()

    per_constraint = torch.func.vmap(torch.func.grad(margin_of_one), in_dims=(None, 0, 0))
    free = {key: params[key].detach() for key in keys}
    for part in _chunks(len(constraints), chunk_size):
        grads = per_constraint(free, x[constraints.sample[part]], constraints.signal[part])
        yield part, torch.cat([grads[key].reshape(grads[key].shape[0], -1) for key in keys], dim=1)


def gradient_matrix(
    network: Network, x: torch.Tensor, constraints: Constraints, params: dict[str, torch.Tensor], chunk_size: int = DEFAULT_CHUNK
) -> torch.Tensor:
    """G = [g_1 … g_{n_c}] (p × n_c). Only for the ℓ1/ℓ∞ multiplier LPs (MATH.md §3)."""
    n_params = sum(value.numel() for value in params.values())
    matrix = torch.empty(n_params, len(constraints), dtype=torch.float64)
    for part, rows in constraint_gradients(network, x, constraints, params, chunk_size=chunk_size):
        matrix[:, part] = rows.T
    return matrix


def _factorizable_modules(network: Network) -> dict[str, nn.Module]:
    """Linear and (groups=1, zero-padded) Conv2d modules, by their state_dict prefix."""
    modules = {}
    for name, module in network.module.named_modules():
        if isinstance(module, nn.Linear) or (
            isinstance(module, nn.Conv2d)
            and module.groups == 1
            and module.padding_mode == "zeros"
            and not isinstance(module.padding, str)
        ):
            modules[name] = module
    return modules


def _conv_weight_gradients(module: nn.Conv2d, inputs: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
    """Per-constraint ∇_W q_c = Σ_s δ_{c,s} u_{c,s}ᵀ, flattened to (n_c, C_out·C_in·kh·kw)."""
    patches = F.unfold(inputs, module.kernel_size, dilation=module.dilation, padding=module.padding, stride=module.stride)
    deltas = deltas.reshape(deltas.shape[0], deltas.shape[1], -1)
    return torch.einsum("cos,cis->coi", deltas, patches).reshape(deltas.shape[0], -1)


def gram_matrix(
    network: Network, x: torch.Tensor, constraints: Constraints, params: dict[str, torch.Tensor], chunk_size: int = DEFAULT_CHUNK
) -> torch.Tensor:
    """K = GᵀG (n_c × n_c), K_ab = ⟨∇q_a(θ), ∇q_b(θ)⟩, assembled layerwise (module docstring)."""
    modules = _factorizable_modules(network)
    covered = {f"{name}.{leaf}" for name, module in modules.items() for leaf, _ in module.named_parameters(recurse=False)}
    covered &= set(params)
    leaves = {key: value.detach().requires_grad_(True) for key, value in params.items()}
    captured: dict[str, list] = {name: [] for name in modules}
    factors: dict[str, dict[str, list[torch.Tensor]]] = {name: {"h": [], "delta": [], "conv": []} for name in modules}
    shared: set[str] = set()

    def make_hook(name):
        def hook(module, inputs, output):
            captured[name].append((inputs[0].detach(), output))

        return hook

    handles = [module.register_forward_hook(make_hook(name)) for name, module in modules.items()]
    try:
        for part in _chunks(len(constraints), chunk_size):
            for calls in captured.values():
                calls.clear()
            outputs = network.forward(x[constraints.sample[part]], leaves)
            names = [name for name in modules if captured[name]]
            # A module called twice, or a Linear on non-flat inputs, is not one outer product per constraint.
            shared.update(
                name
                for name in names
                if len(captured[name]) > 1 or (isinstance(modules[name], nn.Linear) and captured[name][0][0].ndim != 2)
            )
            names = [name for name in names if name not in shared]
            deltas = torch.autograd.grad(
                (outputs * constraints.signal[part]).sum(), [captured[name][0][1] for name in names], allow_unused=True
            )
            for name, delta in zip(names, deltas):
                inputs, output = captured[name][0]
                delta = torch.zeros_like(output) if delta is None else delta
                if isinstance(modules[name], nn.Linear):
                    factors[name]["h"].append(inputs.reshape(inputs.shape[0], -1))
                    factors[name]["delta"].append(delta.reshape(delta.shape[0], -1))
                else:
                    factors[name]["conv"].append(_conv_weight_gradients(modules[name], inputs, delta))
                    factors[name]["delta"].append(delta.sum(dim=(2, 3)))
    finally:
        for handle in handles:
            handle.remove()

    n = len(constraints)
    gram = torch.zeros(n, n, dtype=torch.float64)
    for name, module in modules.items():
        if name in shared or not factors[name]["delta"]:
            covered -= {f"{name}.weight", f"{name}.bias"}
            continue
        delta = torch.cat(factors[name]["delta"])
        if isinstance(module, nn.Linear):
            inputs = torch.cat(factors[name]["h"])
            gram += (delta @ delta.T) * (inputs @ inputs.T)
        else:
            weight_grads = torch.cat(factors[name]["conv"])
            gram += weight_grads @ weight_grads.T
        if module.bias is not None:
            gram += delta @ delta.T
    rest = [key for key in params if key not in covered]
    if rest:
        rows = torch.empty(n, sum(params[key].numel() for key in rest), dtype=torch.float64)
        for part, chunk_rows in constraint_gradients(network, x, constraints, params, keys=rest, chunk_size=chunk_size):
            rows[part] = chunk_rows
        gram += rows @ rows.T
    return (gram + gram.T) / 2
