"""``embed``: is WIDE the isometric embedding Tθ of NARROW, and is the KKT quality preserved?
The error metrics of MATH.md §4, measured, plus the check of both sides (MATH.md §2–3)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import torch

from kktembed.data import Dataset
from kktembed.checkpoint import source_sha256
from kktembed.embedding import Embedding, EmbeddingRecord, same_architecture
from kktembed.errors import ArchitectureError, InputError, UsageError
from kktembed.loading import validate_data
from kktembed.kkt.analysis import CheckOptions, CheckResult, check_network
from kktembed.network import Network, safe_norm
from kktembed.reduction import match_embedding


@dataclass(frozen=True)
class EmbedResult:
    """The embedding errors of MATH.md §4 between NARROW and WIDE and both KKT checks; ``to_dict()``
    is ``kktembed embed --json``."""

    narrow: str | None  # the checkpoints and data, as given
    wide: str | None
    data: str
    verdict: str
    kkt_preserved: bool | None
    parent_hash_matches: bool | None
    embedding_source: str
    found_by_matching: bool
    n_splits: int
    strategies: list[str]
    embedding_error: float
    relative_embedding_error: float
    norm_narrow: float
    norm_wide: float
    norm_error: float
    coefficient_isometry_error: float
    output_error: float
    normalized_margin_error: float
    stationarity_residual_narrow: float | None
    stationarity_residual_wide: float | None
    stationarity_error: float | None
    complementarity_residual_narrow: float | None
    complementarity_residual_wide: float | None
    n_support_narrow: int | None
    n_support_wide: int | None
    multiplier_error: float | None
    relative_multiplier_error: float | None
    tol: float
    check_narrow: CheckResult = field(repr=False)
    check_wide: CheckResult = field(repr=False)

    def to_dict(self) -> dict:
        result = {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("check_")}
        for side in ("narrow", "wide"):
            check = getattr(self, f"check_{side}").to_dict()
            check.pop("profile")
            result[f"check_{side}"] = check
        return result


@dataclass
class ResolvedEmbedding:
    """T from NARROW to WIDE and where it came from: ``source`` is "wide_record" (a stage of WIDE's
    record starts at NARROW's architecture), "narrow_record" (NARROW's record maps into WIDE's
    architecture, as ``reduce`` writes it) or "matched" (no record fits: found by matching units).
    ``hash_matches``: the record names the other file by its sha256 (None when matched)."""

    embedding: Embedding
    source: str
    hash_matches: bool | None

    @property
    def found_by_matching(self) -> bool:
        return self.source == "matched"


def find_embedding(narrow: Network, wide: Network, tol: float = 1e-10) -> ResolvedEmbedding:
    """T from NARROW to WIDE: from a record whose file hash matches (WIDE's stages, then NARROW's
    ``embeds_into``), else from a record whose architecture matches, else by matching units
    (``kktembed.reduction.match_embedding`` at ``tol``). Raises a clear InputError when nothing fits."""
    if narrow.adapter.name != wide.adapter.name:
        raise ArchitectureError(f"NARROW uses adapter {narrow.adapter.name!r}, WIDE {wide.adapter.name!r}: they do not belong together")
    adapter = wide.adapter
    wide_record = EmbeddingRecord.from_metadata(wide.metadata)
    narrow_record = EmbeddingRecord.from_metadata(narrow.metadata)
    narrow_sha = source_sha256(narrow.path) if narrow.path else None
    wide_sha = source_sha256(wide.path) if wide.path else None
    candidates = []
    if wide_record is not None:
        found = wide_record.embedding_from(adapter, narrow.config, narrow_sha, wide.config)
        if found is not None:
            candidates.append(ResolvedEmbedding(found[0], "wide_record", found[1]["parent_sha256"] == narrow_sha))
    if narrow_record is not None:
        found = narrow_record.embedding_into(adapter, narrow.config, wide.config, wide_sha)
        if found is not None:
            candidates.append(ResolvedEmbedding(found[0], "narrow_record", found[1]["target_sha256"] == wide_sha))
    if candidates:
        return next((candidate for candidate in candidates if candidate.hash_matches), candidates[0])
    try:
        embedding = match_embedding(narrow, wide, tol)
    except (InputError, UsageError) as exc:
        recorded = "no recorded embedding fits NARROW" if wide_record or narrow_record else "no embedding recorded"
        raise InputError(
            f"{narrow.path} and {wide.path} do not belong together: {recorded}, and matching units found none ({exc.message})",
            hint="pass the checkpoint WIDE was split from (or one with the same architecture)",
        ) from exc
    if not same_architecture(adapter, embedding.wide_config, wide.config):
        raise InputError(f"{narrow.path} and {wide.path} do not belong together: matching units gives another architecture than WIDE's")
    return ResolvedEmbedding(embedding, "matched", None)


def resolve_embedding(narrow: Network, wide: Network, tol: float = 1e-10):
    """(T, whether the record names NARROW's file) as ``find_embedding`` finds it."""
    resolved = find_embedding(narrow, wide, tol)
    return resolved.embedding, resolved.hash_matches


def _difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else abs(a - b)


def output_difference(narrow: Network, wide: Network, x: torch.Tensor) -> float:
    """max_x |Φ̃(θ̃; x) − Φ(θ; x)|. Where the outputs overflow float64 it is taken at θ/s and θ̃/s
    (s = ‖θ‖) and scaled back by s^L (both networks have degree L), inf only if it is that large."""
    difference = float((wide.forward(x) - narrow.forward(x)).abs().max())
    scale = narrow.norm()
    if math.isfinite(difference) or not 0 < scale < math.inf:
        return difference
    scaled = float((wide.forward(x, {k: v / scale for k, v in wide.params.items()}) - narrow.forward(x, {k: v / scale for k, v in narrow.params.items()})).abs().max())
    for _ in range(narrow.degree):
        scaled *= scale
    return scaled


def embed_networks(
    narrow: Network, wide: Network, dataset: Dataset, options: CheckOptions | None = None, tol: float = 1e-10,
    on_step: Callable[[str], None] | None = None,
) -> EmbedResult:
    """The errors of MATH.md §4 for θ (NARROW) and θ̃ (WIDE), and both KKT checks side by side.

    Verdict: ``not_embedded`` if ‖θ̃ − Tθ‖/‖Tθ‖ > tol; ``not_isometric`` if θ̃ = Tθ but
    max|Σc_i² − 1| > tol (then norm and KKT numbers change); else ``isometric_embedding``.
    ``kkt_preserved`` (None when a side is not separable): |ε̃ − ε| ≤ max(tol, 1e-8)·‖θ̂‖,
    |δ̃ − δ| ≤ 1e-8·(1 + Σλ) and ‖λ̃ − λ‖ ≤ 1e-6·‖λ‖; the multipliers come from two independent
    solves, so their agreement is limited by solver accuracy, not by rounding."""
    step = on_step or (lambda message: None)
    resolved = find_embedding(narrow, wide, tol)
    embedding = resolved.embedding
    validate_data(narrow, dataset)
    validate_data(wide, dataset)
    mapped = embedding.apply(narrow.params)
    difference = {key: wide.params[key] - mapped[key] for key in mapped}
    mapped_norm = safe_norm(mapped)  # scaled: θ near the ends of float64 must not change the verdict
    embedding_error = safe_norm(difference)
    relative_embedding_error = safe_norm({key: value / mapped_norm for key, value in difference.items()}) if mapped_norm > 0 else math.inf
    output_error = output_difference(narrow, wide, dataset.x)
    step("checking NARROW")
    narrow_check = check_network(narrow, dataset, options, on_step)
    step("checking WIDE")
    wide_check = check_network(wide, dataset, options, on_step)
    multiplier_error = relative_multiplier_error = None
    if narrow_check.multipliers is not None and wide_check.multipliers is not None:
        multiplier_error = float((wide_check.multipliers - narrow_check.multipliers).norm())
        scale = float(narrow_check.multipliers.norm())
        relative_multiplier_error = multiplier_error / scale if scale > 0 else None
    if not relative_embedding_error <= tol:  # written so that a NaN error is never within the tolerance
        verdict = "not_embedded"
    elif not embedding.isometry_error <= tol:
        verdict = "not_isometric"
    else:
        verdict = "isometric_embedding"
    kkt_preserved = None
    stationarity_error = _difference(narrow_check.stationarity_residual, wide_check.stationarity_residual)
    if stationarity_error is not None:
        kkt_preserved = (
            stationarity_error <= max(tol, 1e-8) * narrow_check.theta_hat_norm
            and abs(wide_check.complementarity_residual - narrow_check.complementarity_residual) <= 1e-8 * (1 + narrow_check.multiplier_sum)
            and (relative_multiplier_error or 0.0) <= 1e-6
        )
    return EmbedResult(
        narrow=narrow_check.checkpoint,
        wide=wide_check.checkpoint,
        data=dataset.source,
        verdict=verdict,
        kkt_preserved=kkt_preserved,
        parent_hash_matches=resolved.hash_matches,
        embedding_source=resolved.source,
        found_by_matching=resolved.found_by_matching,
        n_splits=len(embedding.splits),
        strategies=embedding.strategies,
        embedding_error=embedding_error,
        relative_embedding_error=relative_embedding_error,
        norm_narrow=narrow.norm(),
        norm_wide=wide.norm(),
        norm_error=abs(wide.norm() - narrow.norm()),
        coefficient_isometry_error=embedding.isometry_error,
        output_error=output_error,
        normalized_margin_error=abs(wide_check.normalized_margin - narrow_check.normalized_margin),
        stationarity_residual_narrow=narrow_check.stationarity_residual,
        stationarity_residual_wide=wide_check.stationarity_residual,
        stationarity_error=stationarity_error,
        complementarity_residual_narrow=narrow_check.complementarity_residual,
        complementarity_residual_wide=wide_check.complementarity_residual,
        n_support_narrow=narrow_check.n_support,
        n_support_wide=wide_check.n_support,
        multiplier_error=multiplier_error,
        relative_multiplier_error=relative_multiplier_error,
        tol=tol,
        check_narrow=narrow_check,
        check_wide=wide_check,
    )
