"""``reduce``: the narrowest network that a checkpoint embeds, the inverse of splitting (MATH.md §4).

For a hidden layer, unit i has incoming parameters u_i (its rows / filters and first-layer bias
entry) and outgoing parameters v_i (its columns / input-channel slices / flatten blocks): the
slices of the adapter's unit description, so every architecture an adapter describes is covered.

* **Isometric merge.** Units whose pairs w_i = (u_i, v_i) are positive multiples of one direction,
  ‖w_i/‖w_i‖ − w_k/‖w_k‖‖ ≤ tol (single linkage), are copies of one isometric split. The group
  becomes the unit m = Σ_i c_i w_i with c_i = ‖w_i‖ / (Σ_k ‖w_k‖²)^½, so Σ c_i² = 1 and the map
  T(m) = (c_i m)_i is an isometry: θ = Tᵀθ̃, and θ̃ = Tθ exactly when the group is exactly collinear.
  Units with ‖w_i‖ ≤ tol·max_k ‖w_k‖ are zero and join the group of the largest unit as copies with
  share 0.
* **Function-preserving merge (inverse net2net).** Units with positively collinear u_i = a_i u but
  v_i not in the same proportion still merge without changing the output, since σ(a z) = a σ(z):
  the group becomes (s û, Σ_i a_i v_i / s) with s = (Σ a_i²)^½. No map of this kind is an isometry
  that preserves the output (Cauchy–Schwarz), so such groups are only reported, and merged only
  with ``allow_non_isometric``; the recorded T then copies u with a_i / s and fits the outgoing
  factors by least squares, and its isometry error and merge error say what it is.
* **Fixed point.** Merging layer l changes layer l+1's incoming and layer l−1's outgoing
  parameters, so the layers are swept until no layer shrinks; the per-layer maps compose.

``match_embedding`` finds T between a narrow and a wide file without a record: both are reduced,
the reduced units are matched layer by layer (the matched permutation of layer l is applied to
layer l+1's incoming slices before it is matched), and the copies of each unit are assigned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kktembed.adapters.base import Adapter, UnitLayer
from kktembed.checkpoint import source_sha256
from kktembed.embedding import (
    EMBEDDING_KEY,
    Embedding,
    EmbeddingRecord,
    UnitMap,
    adjoint_unit_map,
    apply_unit_map,
    same_architecture,
    unit_blocks,
    widths_of,
)
from kktembed.errors import ArchitectureError, InputError, UsageError
from kktembed.network import Network, safe_norm

DEFAULT_TOL = 1e-10
PROFILE_TOLERANCES = tuple(10.0**-exponent for exponent in range(12, 0, -1))  # 1e-12 … 1e-1
PROBES = 32  # random unit directions that pre-filter candidate pairs
GRAM_SPREAD = 1.0  # above tol·√d = GRAM_SPREAD, loose blocks are compared by their Gram matrix
CHUNK = 512  # rows compared at a time (bounds the temporaries to CHUNK × d)
SHARE_TOL = 1e-9  # shares c² of copies that must add up when copies are assigned


# -- grouping --------------------------------------------------------------------------------


def first_member_order(labels: np.ndarray) -> np.ndarray:
    """Renumber component labels 0, 1, … in the order of each component's first member."""
    count = int(labels.max()) + 1
    first = np.full(count, labels.size)
    np.minimum.at(first, labels, np.arange(labels.size))
    rank = np.empty(count, dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(count)
    return rank[labels]


def row_distances(vectors: torch.Tensor, norms: torch.Tensor, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """‖ŵ_a − ŵ_b‖ for the pairs (first[k], second[k]), from the differences (no cancellation),
    CHUNK pairs at a time."""
    distances = np.empty(len(first))
    for start in range(0, len(first), CHUNK):
        a = torch.from_numpy(first[start : start + CHUNK])
        b = torch.from_numpy(second[start : start + CHUNK])
        difference = vectors.index_select(0, a) / norms[a, None] - vectors.index_select(0, b) / norms[b, None]
        distances[start : start + CHUNK] = torch.linalg.vector_norm(difference, dim=1).numpy()
    return distances


def _gram_pairs(vectors: torch.Tensor, norms: torch.Tensor, members: np.ndarray, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of ``members`` with ‖ŵ_a − ŵ_b‖² = 2 − 2⟨ŵ_a, ŵ_b⟩ ≤ tol², by blocks of the Gram
    matrix. Used only where tol·√d > GRAM_SPREAD, so tol² ≫ the rounding of the inner products."""
    index = torch.from_numpy(members)
    directions = vectors.index_select(0, index) / norms[index, None]
    first, second = [], []
    for start in range(0, len(members), CHUNK):
        gram = directions[start : start + CHUNK] @ directions.T
        rows, columns = torch.nonzero(2.0 - 2.0 * gram <= tol * tol, as_tuple=True)
        above = columns > rows + start
        first.append(members[rows[above].numpy() + start])
        second.append(members[columns[above].numpy()])
    return np.concatenate(first), np.concatenate(second)


def direction_components(vectors: torch.Tensor, tol: float, seed: int = 0) -> np.ndarray:
    """Labels (numbered by first member) of the single-linkage components of the row directions
    ŵ_i = w_i/‖w_i‖ at distance ‖ŵ_i − ŵ_k‖ ≤ tol; rows must be nonzero.

    No loop over pairs: projections on PROBES random unit vectors g bound |⟨ŵ_i − ŵ_k, g⟩| ≤
    ‖ŵ_i − ŵ_k‖, so rows sorted by the first projection split into blocks at gaps > tol that no
    component crosses. A block whose members all lie within tol/2 of its first member is one
    component. In the other blocks, pairs within tol in every projection and not yet connected are
    measured in full (offset by offset in the sorted order); where tol·√d > GRAM_SPREAD the
    projections of random directions no longer separate, and the block is compared by its Gram
    matrix instead."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n, dimension = vectors.shape

    def components(first: list[np.ndarray], second: list[np.ndarray]) -> np.ndarray:
        rows, columns = np.concatenate(first), np.concatenate(second)
        return connected_components(coo_matrix((np.ones(rows.size), (rows, columns)), shape=(n, n)), directed=False)[1]

    if n == 1:
        return np.zeros(1, dtype=np.int64)
    norms = torch.linalg.vector_norm(vectors, dim=1)
    probes = torch.randn((dimension, PROBES), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    probes /= torch.linalg.vector_norm(probes, dim=0)
    keys = ((vectors @ probes) / norms[:, None]).numpy()
    order = np.argsort(keys[:, 0], kind="stable")
    keys = keys[order]
    starts_block = np.ones(n, dtype=bool)
    starts_block[1:] = np.diff(keys[:, 0]) > tol
    block = np.cumsum(starts_block) - 1
    starts = np.flatnonzero(starts_block)
    ends = np.append(starts[1:], n)
    shared = np.flatnonzero((ends - starts)[block] > 1)  # sorted positions in blocks of two or more
    leaders = starts[block[shared]]
    spread = np.zeros(starts.size)
    np.maximum.at(spread, block[shared], row_distances(vectors, norms, order[shared], order[leaders]))
    tight = spread <= tol / 2
    in_tight = tight[block[shared]]
    first, second = [order[shared[in_tight]]], [order[leaders[in_tight]]]
    loose = np.flatnonzero(~tight & (ends - starts > 1))
    if tol * math.sqrt(dimension) > GRAM_SPREAD:
        for index in loose:
            pairs = _gram_pairs(vectors, norms, order[starts[index] : ends[index]], tol)
            first.append(pairs[0])
            second.append(pairs[1])
    else:
        labels = components(first, second)
        active = shared[~in_tight]
        offset = 1
        while active.size:
            partner = active + offset
            inside = partner < n
            active, partner = active[inside], partner[inside]
            inside = (block[partner] == block[active]) & (keys[partner, 0] - keys[active, 0] <= tol)
            active, partner = active[inside], partner[inside]
            near = np.all(np.abs(keys[partner, 1:4] - keys[active, 1:4]) <= tol, axis=1)  # a few probes first,
            a, b = active[near], partner[near]
            near = np.all(np.abs(keys[b, 4:] - keys[a, 4:]) <= tol, axis=1)  # then the others on what is left
            a, b = order[a[near]], order[b[near]]
            apart = labels[a] != labels[b]  # pairs already connected need no measuring
            a, b = a[apart], b[apart]
            close = row_distances(vectors, norms, a, b) <= tol
            if close.any():
                first.append(a[close])
                second.append(b[close])
                labels = components(first, second)
            offset += 1
    return first_member_order(components(first, second))


def unit_rows(params: dict[str, torch.Tensor], unit_layer: UnitLayer, width: int) -> tuple[torch.Tensor, int]:
    """Row i is w_i = (u_i, v_i): every incoming, then every outgoing slice of unit i, flattened,
    copied once into one contiguous matrix; and the number of columns of u_i."""
    parts = [block.reshape(width, -1) for direction in ("incoming", "outgoing") for block in unit_blocks(params, unit_layer, width, direction)]
    rows = torch.empty((width, sum(part.shape[1] for part in parts)), dtype=torch.float64)
    column = 0
    incoming_columns = sum(part.shape[1] for part in parts[: len(unit_layer.incoming)])
    for part in parts:
        rows[:, column : column + part.shape[1]].copy_(part)
        column += part.shape[1]
    return rows, incoming_columns


@dataclass
class LayerMerge:
    """One merge of one layer: narrow unit ``labels[i]`` gets wide unit i; the parameters fold with
    ``fold`` (Tᵀ-like) on both sides; the recorded map has ``incoming`` and ``outgoing`` factors."""

    labels: np.ndarray
    fold: np.ndarray
    incoming: np.ndarray
    outgoing: np.ndarray
    isometric: bool

    @property
    def width(self) -> int:
        return int(self.labels.max()) + 1

    def fold_map(self, layer: str) -> UnitMap:
        """The map whose adjoint performs the merge."""
        return UnitMap(layer, self.width, tuple(self.labels.tolist()), tuple(self.fold.tolist()), tuple(self.fold.tolist()))

    def recorded_map(self, layer: str) -> UnitMap:
        """T on this layer: merged unit → the units it came from."""
        return UnitMap(layer, self.width, tuple(self.labels.tolist()), tuple(self.incoming.tolist()), tuple(self.outgoing.tolist()))


def _group_norm_shares(labels: np.ndarray, norms: np.ndarray) -> np.ndarray:
    """c_i = ‖w_i‖ / (Σ_{k in i's group} ‖w_k‖²)^½, exactly 1 for a unit alone in its group and for
    the first member of an all-zero group (whose other members get 0)."""
    totals = np.sqrt(np.bincount(labels, weights=norms * norms))
    sizes = np.bincount(labels)
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = np.where(totals[labels] > 0, norms / totals[labels], 0.0)
    alone = sizes[labels] == 1
    shares[alone] = 1.0
    empty = np.flatnonzero(totals == 0)
    if empty.size:
        _, first = np.unique(labels, return_index=True)
        shares[first[empty]] = 1.0
    return shares


def _components_of_nonzero(vectors: torch.Tensor, tol: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels of the rows that are not zero, or -1; which rows are not zero; the row norms).
    A row is zero when ‖w_i‖ ≤ tol·max_k ‖w_k‖."""
    norms = torch.linalg.vector_norm(vectors, dim=1).numpy()
    largest = float(norms.max())
    nonzero = norms > tol * largest if largest > 0 else np.zeros(norms.size, dtype=bool)
    labels = np.full(norms.size, -1, dtype=np.int64)
    if nonzero.all():
        labels = direction_components(vectors, tol)
    elif nonzero.any():
        labels[nonzero] = direction_components(vectors.index_select(0, torch.from_numpy(np.flatnonzero(nonzero))), tol)
    return labels, nonzero, norms


def isometric_merge(rows: torch.Tensor, incoming_columns: int, tol: float) -> LayerMerge:
    """Group units by the direction of w_i = (u_i, v_i); zero units (‖w_i‖ ≤ tol·max‖w_k‖) are
    share-0 copies of the largest unit. Fold and record with c_i = ‖w_i‖/(Σ_k ‖w_k‖²)^½ (MATH.md §4)."""
    labels, nonzero, norms = _components_of_nonzero(rows, tol)
    if nonzero.any():
        labels[~nonzero] = labels[int(np.argmax(norms))]
    else:
        labels[:] = 0
    shares = _group_norm_shares(labels, np.where(nonzero, norms, 0.0))
    return LayerMerge(labels, shares, shares, shares, True)


def incoming_merge(rows: torch.Tensor, incoming_columns: int, tol: float) -> LayerMerge:
    """Group units by the direction of u_i alone (units with u_i = 0 stay alone): the
    function-preserving merge. Fold with f_i = a_i/s (a_i = ‖u_i‖, s = (Σ a_k²)^½) on both sides;
    record incoming f_i and outgoing g_i = ⟨v_i, v⟩/‖v‖² for the merged v = Σ f_i v_i."""
    incoming, outgoing = rows[:, :incoming_columns], rows[:, incoming_columns:]
    labels, nonzero, norms = _components_of_nonzero(incoming.contiguous(), tol)
    count = int(labels.max()) + 1
    labels[~nonzero] = count + np.arange(int((~nonzero).sum()))
    labels = first_member_order(labels)
    fold = _group_norm_shares(labels, np.where(nonzero, norms, 0.0))
    index = torch.from_numpy(labels)
    merged = torch.zeros((int(labels.max()) + 1, outgoing.shape[1]), dtype=torch.float64)
    merged.index_add_(0, index, outgoing * torch.from_numpy(fold)[:, None])
    mine = merged.index_select(0, index)
    squared = (mine * mine).sum(dim=1).numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        fitted = np.where(squared > 0, (outgoing * mine).sum(dim=1).numpy() / squared, 0.0)
    fitted[np.bincount(labels)[labels] == 1] = 1.0
    return LayerMerge(labels, fold, fold, fitted, False)


def parameter_norm(params: dict[str, torch.Tensor]) -> float:
    """‖θ‖₂ over all tensors, without concatenating them (``safe_norm`` where the squares overflow
    or underflow float64)."""
    norms = [float(torch.linalg.vector_norm(value)) for value in params.values()]
    total = sum(norm * norm for norm in norms)  # a float product overflows to inf, not an exception
    if math.isfinite(total) and total > 0:
        return math.sqrt(total)
    return safe_norm(params)


# -- the fixed point over layers ---------------------------------------------------------------


@dataclass
class Reduction:
    """What the sweep over layers found: the reduced network's config and θ, and per layer the
    map narrow → wide and the groups merged without isometry (as wide units)."""

    layers: list[str]
    config: dict[str, Any]
    params: dict[str, torch.Tensor]
    maps: dict[str, UnitMap]
    non_isometric_groups: dict[str, list[list[int]]]
    rounds: int


def _selected_layers(adapter: Adapter, config: dict, params: dict, layers: list[str] | None) -> list[str]:
    hidden = [unit_layer.name for unit_layer in adapter.units(config)]
    if not layers:
        return hidden
    parameter_layers = {key.rpartition(".")[0] for key in params}
    for layer in layers:
        if layer not in hidden:
            known = f"hidden layers: {', '.join(hidden) or 'none'}"
            if layer in parameter_layers:
                raise UsageError(f"layer {layer!r} is the output layer, which has no units to merge", hint=known)
            raise UsageError(f"unknown layer {layer!r}", hint=known)
    return [name for name in hidden if name in layers]


def refuse_other_degrees(adapter: Adapter, config: dict, layers: list[str]) -> None:
    """Merging copies needs σ(cz) = c σ(z) for c ≥ 0 (MATH.md §4): refuse any other degree k."""
    for layer in layers:
        degree = adapter.activation_degree(config, layer)
        if degree != 1:
            raise UsageError(
                f"layer {layer!r} has σ(cz) = c^{degree} σ(z): merging copies preserves the output only for 1-homogeneous units (ReLU, leaky ReLU)",
                hint="reduce works for positively 1-homogeneous activations only",
            )


def _wide_groups(unit_map: UnitMap | None, groups: list[list[int]]) -> list[list[int]]:
    """Groups of current units as groups of the wide file's units."""
    if unit_map is None:
        return groups
    members = unit_map.groups()
    return [sorted(wide for unit in group for wide in members[unit]) for group in groups]


def reduce_layers(network: Network, tol: float, layers: list[str] | None = None, allow_non_isometric: bool = False) -> Reduction:
    """Sweep the chosen hidden layers, merging isometric groups (and, with ``allow_non_isometric``,
    groups of collinear incoming parameters), until a sweep merges nothing."""
    adapter, config, params = network.adapter, network.config, dict(network.params)
    selected = _selected_layers(adapter, config, params, layers)
    refuse_other_degrees(adapter, config, selected)
    maps: dict[str, UnitMap] = {}
    non_isometric: dict[str, list[list[int]]] = {name: [] for name in selected}
    rounds = 0
    while True:
        rounds += 1
        merged_any = False
        for name in selected:
            merges = [isometric_merge] + ([incoming_merge] if allow_non_isometric else [])
            for merge_function in merges:
                unit_layer = next(u for u in adapter.units(config) if u.name == name)
                merge = merge_function(*unit_rows(params, unit_layer, unit_layer.width), tol)
                if merge.width == unit_layer.width:
                    continue
                params = adjoint_unit_map(params, unit_layer, merge.fold_map(name))
                step = merge.recorded_map(name)
                if not merge.isometric:
                    groups = [group for group in step.groups() if len(group) > 1]
                    non_isometric[name] += _wide_groups(maps.get(name), groups)
                maps[name] = step.then(maps[name]) if name in maps else step
                config = adapter.widen(config, name, merge.width)
                merged_any = True
        if not merged_any:
            return Reduction(selected, config, params, maps, non_isometric, rounds)


def function_preserving_candidates(reduction: Reduction, adapter: Adapter, tol: float) -> dict[str, list[list[int]]]:
    """Per layer, the groups of the reduced network's units with positively collinear incoming
    parameters (as the wide file's units): merging them preserves the output but not the norm."""
    found = {}
    for unit_layer in adapter.units(reduction.config):
        if unit_layer.name not in reduction.layers:
            continue
        merge = incoming_merge(*unit_rows(reduction.params, unit_layer, unit_layer.width), tol)
        groups = [group for group in merge.recorded_map(unit_layer.name).groups() if len(group) > 1]
        found[unit_layer.name] = _wide_groups(reduction.maps.get(unit_layer.name), groups)
    return found


# -- the result --------------------------------------------------------------------------------


@dataclass
class LayerReduction:
    layer: str
    width_before: int
    width_after: int
    groups: list[list[int]]  # wide units of each narrow unit, in narrow order
    zero_copies: int  # wide units with both factors 0 (u_i = v_i = 0)
    non_isometric_groups: list[list[int]]  # merged only because allow_non_isometric was set
    function_preserving_groups: list[list[int]]  # collinear incoming parameters, not merged

    @property
    def group_sizes(self) -> list[int]:
        return [len(group) for group in self.groups]

    def to_dict(self) -> dict[str, Any]:
        sizes = self.group_sizes
        return {
            "layer": self.layer,
            "width_before": self.width_before,
            "width_after": self.width_after,
            "n_groups": self.width_after,
            "merged_groups": sum(1 for size in sizes if size > 1),
            "group_size_counts": {str(size): sizes.count(size) for size in sorted(set(sizes))},
            "group_sizes": sizes,
            "groups": self.groups,
            "zero_copies": self.zero_copies,
            "non_isometric_groups": self.non_isometric_groups,
            "function_preserving_groups": self.function_preserving_groups,
        }


@dataclass
class ReduceResult:
    """θ̃ (``wide``) = Tθ (``narrow``) up to ``merge_error``; T is ``embedding``."""

    wide: Network
    narrow: Network
    embedding: Embedding
    tol: float
    allow_non_isometric: bool
    layers: list[LayerReduction]
    rounds: int
    merge_error: float  # ‖θ̃ − Tθ‖ / ‖θ̃‖
    merge_error_absolute: float  # ‖θ̃ − Tθ‖
    coefficient_isometry_error: float  # max |Σ c_i² − 1|
    isometric: bool  # every merge was isometric: T is an isometry
    norm_wide: float
    norm_narrow: float
    profile: list[dict[str, Any]] = field(default_factory=list)

    def output_error(self, x: torch.Tensor) -> float:
        """max_x |Φ̃(θ̃; x) − Φ(θ; x)| on the inputs ``x``."""
        return float((self.wide.forward(x) - self.narrow.forward(x)).abs().max())

    def to_dict(self) -> dict[str, Any]:
        return {
            "tol": self.tol,
            "allow_non_isometric": self.allow_non_isometric,
            "isometric": self.isometric,
            "rounds": self.rounds,
            "widths_before": {layer.layer: layer.width_before for layer in self.layers},
            "widths_after": {layer.layer: layer.width_after for layer in self.layers},
            "merge_error": self.merge_error,
            "merge_error_absolute": self.merge_error_absolute,
            "coefficient_isometry_error": self.coefficient_isometry_error,
            "norm_wide": self.norm_wide,
            "norm_narrow": self.norm_narrow,
            "norm_error": abs(self.norm_wide - self.norm_narrow),
            "layers": [layer.to_dict() for layer in self.layers],
            "profile": self.profile,
        }


def tolerance_profile(
    wide: Network, tolerances: tuple[float, ...] = PROFILE_TOLERANCES, layers: list[str] | None = None, allow_non_isometric: bool = False
) -> list[dict[str, Any]]:
    """For each tolerance, the width of each chosen hidden layer after reducing at it:
    how the effective width collapses as the tolerance grows."""
    rows = []
    for tol in tolerances:
        reduction = reduce_layers(wide, tol, layers, allow_non_isometric)
        widths = widths_of(wide.adapter, reduction.config)
        rows.append({"tol": tol, "widths": {name: widths[name] for name in reduction.layers}})
    return rows


def reduce_network(
    wide: Network,
    tol: float = DEFAULT_TOL,
    layers: list[str] | None = None,
    allow_non_isometric: bool = False,
    profile: tuple[float, ...] | None = PROFILE_TOLERANCES,
) -> ReduceResult:
    """The narrowest network θ with θ̃ ≈ Tθ that merging copies finds (module docstring), T, and
    what was merged; ``profile`` (None to skip) gives the widths over a ladder of tolerances."""
    if not (tol >= 0 and math.isfinite(tol)):
        raise UsageError(f"--tol must be a finite number ≥ 0, got {tol}")
    reduction = reduce_layers(wide, tol, layers, allow_non_isometric)
    adapter = wide.adapter
    maps = tuple(unit_map for unit_map in reduction.maps.values() if not unit_map.is_identity)
    embedding = Embedding(adapter, reduction.config, layer_maps=maps, origin=("reduce",))
    narrow = Network(adapter, reduction.config, reduction.params)
    mapped = embedding.apply(narrow.params)
    absolute = parameter_norm({key: wide.params[key] - mapped[key] for key in wide.params})
    norm_wide = parameter_norm(wide.params)
    candidates = {} if allow_non_isometric else function_preserving_candidates(reduction, adapter, tol)
    before, after = widths_of(adapter, wide.config), widths_of(adapter, reduction.config)
    layer_results = []
    for name in reduction.layers:
        unit_map = reduction.maps.get(name) or UnitMap.identity(name, before[name])
        zero = sum(1 for a, b in zip(unit_map.incoming, unit_map.outgoing) if a == 0 and b == 0)
        layer_results.append(
            LayerReduction(name, before[name], after[name], unit_map.groups(), zero, reduction.non_isometric_groups[name], candidates.get(name, []))
        )
    return ReduceResult(
        wide=wide,
        narrow=narrow,
        embedding=embedding,
        tol=tol,
        allow_non_isometric=allow_non_isometric,
        layers=layer_results,
        rounds=reduction.rounds,
        merge_error=absolute / norm_wide if norm_wide > 0 else 0.0,
        merge_error_absolute=absolute,
        coefficient_isometry_error=embedding.isometry_error,
        isometric=not any(reduction.non_isometric_groups.values()),
        norm_wide=norm_wide,
        norm_narrow=parameter_norm(narrow.params),
        profile=tolerance_profile(wide, profile, layers, allow_non_isometric) if profile else [],
    )


def reduction_metadata(result: ReduceResult, data_reference: dict[str, str] | None = None) -> dict[str, str]:
    """Metadata for the NARROW file: the map into WIDE (record version 2, ``embeds_into``), so that
    ``kktembed embed NARROW WIDE`` rebuilds T; plus the data reference, if any."""
    wide = result.wide
    entry = {
        "target_sha256": source_sha256(wide.path) if wide.path else "",
        "target_name": wide.path.name if wide.path else "",
        "target_config": wide.config,
        "maps": [unit_map.to_dict() for unit_map in result.embedding.unit_maps],
        "origin": list(result.embedding.origin),
        "tol": result.tol,
    }
    return {EMBEDDING_KEY: EmbeddingRecord([], [entry]).to_json(), **(data_reference or {})}


def write_reduced_checkpoint(result: ReduceResult, output: str | Path, force: bool = False, data_reference: dict[str, str] | None = None) -> Path:
    """Write NARROW atomically with its map into WIDE (and a data reference, relative to NARROW);
    kktembed.outputs refuses to overwrite WIDE or any other file the command read."""
    from kktembed.checkpoint import save_checkpoint

    return save_checkpoint(output, result.narrow, reduction_metadata(result, data_reference), force=force)


# -- matching: T without a record -------------------------------------------------------------


def _matching_keys(params: dict[str, torch.Tensor], unit_layer: UnitLayer) -> np.ndarray:
    """Row i: u_i as it is (its input axes are already matched), then the entries of v_i sorted,
    which no permutation of the next layer's units changes."""
    rows, incoming_columns = unit_rows(params, unit_layer, unit_layer.width)
    rows[:, incoming_columns:] = rows[:, incoming_columns:].sort(dim=1).values
    return rows.numpy()


HUNGARIAN_LIMIT = 1000  # units left unpaired by sorting that are matched by linear_sum_assignment


def pair_rows(narrow_keys: np.ndarray, wide_keys: np.ndarray, seed: int = 0) -> np.ndarray:
    """A permutation p with wide_keys[p[k]] ≈ narrow_keys[k]: sort both by a random projection and
    pair in order; rows that this leaves apart (> 1e-8 relative) are paired by minimal total distance."""
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    probe = np.random.default_rng(seed).standard_normal(narrow_keys.shape[1])
    permutation = np.empty(narrow_keys.shape[0], dtype=np.int64)
    permutation[np.argsort(narrow_keys @ probe, kind="stable")] = np.argsort(wide_keys @ probe, kind="stable")
    scale = max(float(np.linalg.norm(narrow_keys, axis=1).max()), np.finfo(float).tiny)
    apart = np.flatnonzero(np.linalg.norm(narrow_keys - wide_keys[permutation], axis=1) > 1e-8 * scale)
    if 0 < apart.size <= HUNGARIAN_LIMIT:
        columns = permutation[apart]
        rows, chosen = linear_sum_assignment(cdist(narrow_keys[apart], wide_keys[columns]))
        permutation[apart[rows]] = columns[chosen]
    return permutation


def assign_copies(targets: list[float], items: list[float], tol: float = SHARE_TOL, budget: int = 100_000) -> list[int] | None:
    """Give each item (a wide copy's share d²) to a target (a narrow copy's share c²) so that each
    target's items add up to it; targets of share 0 need an item of share 0. None if impossible
    (or not found within ``budget`` steps)."""
    order = sorted(range(len(items)), key=lambda i: -items[i])
    remaining = list(targets)
    needs_item = [share <= tol for share in targets]
    assignment = [-1] * len(items)
    steps = 0

    def place(position: int) -> bool:
        nonlocal steps
        steps += 1
        if steps > budget:
            return False
        if position == len(order):
            return all(abs(rest) <= tol * len(items) for rest in remaining) and not any(needs_item)
        item = order[position]
        tried = set()
        for target in sorted(range(len(targets)), key=lambda t: (not needs_item[t], -remaining[t])):
            key = (round(remaining[target] / tol), needs_item[target])
            if key in tried or remaining[target] < items[item] - tol:
                continue
            tried.add(key)
            was_needed = needs_item[target]
            remaining[target] -= items[item]
            needs_item[target] = False
            assignment[item] = target
            if place(position + 1):
                return True
            remaining[target] += items[item]
            needs_item[target] = was_needed
        return False

    return assignment if place(0) else None


def _matched_layer_map(layer: str, narrow_map: UnitMap, wide_map: UnitMap, permutation: np.ndarray) -> UnitMap:
    """T on one layer from NARROW's units to WIDE's: both are copies of the reduced units
    (``narrow_map``: reduced → NARROW, ``wide_map``: reduced → WIDE, reduced unit k of NARROW is
    reduced unit permutation[k] of WIDE). Each wide copy goes to a narrow copy of the same reduced
    unit with factor d_u/c_j so that the shares add up; where they cannot, all copies go to the
    largest narrow copy (θ̃ = Tθ still holds, but the other narrow copies have no image)."""
    inverse = np.empty_like(permutation)
    inverse[permutation] = np.arange(permutation.size)
    narrow_members = narrow_map.groups()
    wide_members = [[] for _ in range(narrow_map.narrow_width)]
    for wide_unit, reduced in enumerate(wide_map.source):
        wide_members[int(inverse[reduced])].append(wide_unit)
    source = [0] * wide_map.wide_width
    incoming = [0.0] * wide_map.wide_width
    outgoing = [0.0] * wide_map.wide_width
    for group, copies in enumerate(wide_members):
        members = narrow_members[group]
        if len(members) == 1:
            targets = [0] * len(copies)
        else:
            shares = [narrow_map.incoming[j] * narrow_map.outgoing[j] for j in members]
            found = assign_copies(shares, [wide_map.incoming[u] * wide_map.outgoing[u] for u in copies])
            targets = found if found is not None else [int(np.argmax(shares))] * len(copies)
        taken = set()
        for wide_unit, target in zip(copies, targets):
            j = members[target]
            source[wide_unit] = j
            if narrow_map.incoming[j] == 0 or narrow_map.outgoing[j] == 0:  # a share-0 narrow copy: its first (share-0) wide copy takes it whole
                incoming[wide_unit] = outgoing[wide_unit] = 0.0 if j in taken else 1.0
                taken.add(j)
            else:
                incoming[wide_unit] = wide_map.incoming[wide_unit] / narrow_map.incoming[j]
                outgoing[wide_unit] = wide_map.outgoing[wide_unit] / narrow_map.outgoing[j]
    return UnitMap(layer, narrow_map.wide_width, tuple(source), tuple(incoming), tuple(outgoing))


def match_embedding(narrow: Network, wide: Network, tol: float = DEFAULT_TOL) -> Embedding:
    """T from NARROW to WIDE found without a record: reduce both at ``tol``, match the reduced
    units layer by layer, and assign the copies (``_matched_layer_map``). The result only claims
    what matching found; ``embed`` measures ‖θ̃ − Tθ‖ and the isometry error of it."""
    adapter = narrow.adapter
    if adapter.name != wide.adapter.name:
        raise ArchitectureError(f"NARROW uses adapter {adapter.name!r}, WIDE {wide.adapter.name!r}: they do not belong together")
    reduced_narrow = reduce_layers(narrow, tol)
    reduced_wide = reduce_layers(wide, tol)
    if not same_architecture(adapter, reduced_narrow.config, reduced_wide.config):
        narrow_widths, wide_widths = widths_of(adapter, reduced_narrow.config), widths_of(adapter, reduced_wide.config)
        raise InputError(
            f"no embedding of NARROW into WIDE: reduced at tolerance {tol:g}, NARROW has hidden widths {narrow_widths}, WIDE {wide_widths}"
            if narrow_widths != wide_widths
            else "no embedding of NARROW into WIDE: their architectures differ beyond the widths of hidden layers",
            hint="a recorded embedding (from `kktembed split`, `trace` or `reduce`) is not needed when WIDE reduces to NARROW",
        )
    params = dict(reduced_wide.params)
    maps = []
    for unit_layer in adapter.units(reduced_narrow.config):
        name, width = unit_layer.name, unit_layer.width
        permutation = pair_rows(_matching_keys(reduced_narrow.params, unit_layer), _matching_keys(params, unit_layer))
        params = apply_unit_map(params, unit_layer, UnitMap(name, width, tuple(int(v) for v in permutation), (1.0,) * width, (1.0,) * width))
        narrow_map = reduced_narrow.maps.get(name) or UnitMap.identity(name, width)
        wide_map = reduced_wide.maps.get(name) or UnitMap.identity(name, width)
        unit_map = _matched_layer_map(name, narrow_map, wide_map, permutation)
        if not unit_map.is_identity:
            maps.append(unit_map)
    return Embedding(adapter, narrow.config, layer_maps=tuple(maps), origin=("matched",))


__all__ = [
    "DEFAULT_TOL",
    "PROFILE_TOLERANCES",
    "LayerReduction",
    "ReduceResult",
    "match_embedding",
    "reduce_network",
    "reduction_metadata",
    "tolerance_profile",
    "write_reduced_checkpoint",
]
