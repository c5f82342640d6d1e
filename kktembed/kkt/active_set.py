"""The ℓ2 multiplier problem on the Gram matrix solved exactly, without cvxpy (MATH.md §3).

    minimise  f(λ) = ½ λᵀKλ − cᵀλ   over λ ≥ 0,

with K = GᵀG (n_c × n_c) the Gram matrix of the candidate gradients g_k = ∇q_k(θ̂) and
c = b − (μ/2)(q − 1), where b = Gᵀθ̂ = L·q(θ̂) (Euler's identity) and μ ≥ 0 is the complementarity
weight. MATH.md §3 writes the objective as λᵀKλ − 2bᵀλ + μ(q − 1)ᵀλ (+ ‖θ̂‖²), which is 2f(λ) plus a
constant: the same minimisers.

Optimality (the KKT conditions of the QP), with the gradient ∇f(λ) = Kλ − c and S = {k : λ_k > 0}:
    λ ≥ 0,    (Kλ − c)_S = 0,    (Kλ − c)_k ≥ 0 for k ∉ S.

Method: Lawson and Hanson's primal active set (NNLS, here in Gram form). λ stays feasible and, after
every step, minimises f over its support S: K_SS λ_S = c_S, solved with a Cholesky factor
K_SS = RᵀR that is updated, never recomputed: an index t entering S appends one column to R
(Rᵀr = K_St, new pivot ρ = √(K_tt − rᵀr)); an index leaving S deletes its column and Givens
rotations restore the triangle. Entering index t (the largest violation (c − Kλ)_t² / K_tt, a steepest
edge) moves λ along d = (e_t − a), a = K_SS⁻¹K_St, on which f(λ + αd) = f(λ) − α(c − Kλ)_t + ½α²ρ²;
the step is α = (c − Kλ)_t / ρ² or less if an index of S reaches zero first, which then leaves. If
g_t lies in the span of the support (ρ ≈ 0), d is a direction of constant Kλ and the step runs until
an index of S reaches zero (g_t replaces it); if none does, f is unbounded below and K is not PSD.
Every step lowers f, so no support repeats and the method terminates.

For speed the iteration runs on a working set W (the support and the largest violators, enlarged
while violators remain outside it) with its block K_WW, and on K itself once W exceeds a quarter of
the indices: the optimum over W is the optimum over all indices as soon as no index outside W violates the
conditions, which is checked on the whole K. Only rows K_S· are read during the iteration; the
certificate on exit computes Kλ from the columns K_·S, so a non-symmetric K fails it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from kktembed.errors import SolverError

# A column whose squared distance to span(g_S), ρ², is below this fraction of ‖g_t‖² = K_tt counts as
# dependent (ρ is then rounding: about √(eps · cond K_SS)).
PIVOT_TOLERANCE = 1e-10
# An index enters S while its violation exceeds tolerance / ENTERING_MARGIN (times its scale s_k), so
# that the certificate (at ``tolerance``) is not decided by the rounding of Kλ.
ENTERING_MARGIN = 10.0
# Elements of K gathered at once when reading rows or columns (32 MiB of float64).
GATHER_ELEMENTS = 2**22
# Violators added to the working set per round: max(SMALLEST_BATCH, |S|); the iteration moves to K
# itself once |W| > WHOLE_FRACTION·n_c, so the block K_WW never exceeds 1/16 of K.
SMALLEST_BATCH = 128
WHOLE_FRACTION = 0.25


@dataclass
class ActiveSetSolution:
    multipliers: np.ndarray  # λ ≥ 0, one per candidate
    support: np.ndarray  # S = {k : λ_k > 0}, increasing
    iterations: int  # Lawson–Hanson steps: an index entering or leaving S
    kkt_violation: float  # max_k |Kλ − c|_k / s_k on S, (c − Kλ)_k⁺ / s_k off S; s_k = |c_k| + √K_kk Σ_j √K_jj λ_j
    objective: float  # f(λ) = ½λᵀKλ − cᵀλ
    seconds: float


class PackedCholesky:
    """Upper-triangular R with K_SS = RᵀR for an ordered support S, in LAPACK's packed column-major
    storage (column j holds R[0..j, j] at offset j(j+1)/2): appending an index writes one column at
    the end, and the triangular solves read the buffer in place, without copies."""

    def __init__(self, capacity: int = 64):
        self.slots: list[int] = []  # the positions of S in the matrix, in factor order
        self.packed = np.empty(capacity * (capacity + 1) // 2)

    @property
    def size(self) -> int:
        return len(self.slots)

    def used(self) -> np.ndarray:
        return self.packed[: self.size * (self.size + 1) // 2]

    def solve(self, rhs: np.ndarray) -> np.ndarray:
        """K_SS⁻¹ rhs = R⁻¹R⁻ᵀ rhs."""
        from scipy.linalg import lapack

        if self.size == 0:
            return np.empty(0)
        solution, info = lapack.dpptrs(self.size, self.used(), rhs.reshape(-1, 1).copy())
        if info != 0:
            raise SolverError(f"ℓ2 multiplier QP: the Cholesky solve failed (LAPACK info {info})")
        return solution.reshape(-1)

    def projection(self, column: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(r, a) with Rᵀr = K_St and a = R⁻¹r = K_SS⁻¹K_St, for ``column`` = K_St."""
        from scipy.linalg import blas

        if self.size == 0:
            return np.empty(0), np.empty(0)
        r = blas.dtpsv(self.size, self.used(), column, lower=0, trans=1)
        return r, blas.dtpsv(self.size, self.used(), r, lower=0, trans=0)

    def append(self, slot: int, r: np.ndarray, pivot: float) -> None:
        """Add the column (r, ρ) of a new index at the end: R ← [[R, r], [0, ρ]]."""
        m = self.size
        needed = (m + 1) * (m + 2) // 2
        if needed > len(self.packed):
            grown = np.empty(max(needed, 2 * len(self.packed)))
            grown[: len(self.used())] = self.used()
            self.packed = grown
        start = m * (m + 1) // 2
        self.packed[start : start + m] = r
        self.packed[start + m] = pivot
        self.slots.append(slot)

    def dense_columns(self, first: int) -> np.ndarray:
        """Columns first..m−1 of R as a dense m × (m − first) array."""
        m = self.size
        block = np.zeros((m, m - first))
        for k, column in enumerate(range(first, m)):
            start = column * (column + 1) // 2
            block[: column + 1, k] = self.packed[start : start + column + 1]
        return block

    def remove(self, position: int) -> None:
        """Delete the index at ``position`` of the factor order: drop its column of R, then Givens
        rotations on rows position..m−1 zero the subdiagonal that this leaves (K_S'S' = R'ᵀR')."""
        m = self.size
        trailing = self.dense_columns(position + 1)  # rows 0..m−1, upper Hessenberg from ``position``
        for k in range(m - 1 - position):
            row = position + k
            top, bottom = trailing[row, k], trailing[row + 1, k]
            radius = float(np.hypot(top, bottom))
            if radius > 0:
                cosine, sine = top / radius, bottom / radius
                upper = trailing[row, k:].copy()
                trailing[row, k:] = cosine * upper + sine * trailing[row + 1, k:]
                trailing[row + 1, k:] = -sine * upper + cosine * trailing[row + 1, k:]
                trailing[row + 1, k] = 0.0
        for k in range(m - 1 - position):
            column = position + k
            start = column * (column + 1) // 2
            self.packed[start : start + column + 1] = trailing[: column + 1, k]
        del self.slots[position]


@dataclass
class IterationState:
    """Lawson–Hanson on ``matrix`` (K itself or a block K_WW) with ``linear`` = c on the same indices."""

    matrix: np.ndarray
    linear: np.ndarray
    multipliers: np.ndarray
    factor: PackedCholesky
    in_support: np.ndarray = field(init=False)

    def __post_init__(self):
        self.in_support = np.zeros(len(self.linear), dtype=bool)
        self.in_support[self.factor.slots] = True

    def support_values(self) -> np.ndarray:
        return self.multipliers[self.factor.slots]


def rows_combination(matrix: np.ndarray, rows: list[int] | np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Σ_j w_j · matrix[rows_j, :] (= K_·S λ_S for a symmetric K), reading the rows in chunks."""
    total = np.zeros(matrix.shape[1])
    rows = np.asarray(rows, dtype=np.intp)
    chunk = max(1, GATHER_ELEMENTS // max(1, matrix.shape[1]))
    for start in range(0, len(rows), chunk):
        total += weights[start : start + chunk] @ matrix[rows[start : start + chunk]]
    return total


def columns_combination(matrix: np.ndarray, columns: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """matrix[:, columns] @ weights = Kλ for λ supported on ``columns``, reading row blocks in chunks."""
    total = np.empty(matrix.shape[0])
    chunk = max(1, GATHER_ELEMENTS // max(1, len(columns)))
    for start in range(0, matrix.shape[0], chunk):
        total[start : start + chunk] = matrix[start : start + chunk][:, columns] @ weights
    return total


def violation_scales(linear: np.ndarray, gradient_norms: np.ndarray, multipliers: np.ndarray) -> np.ndarray:
    """s_k = |c_k| + ‖g_k‖·Σ_j ‖g_j‖λ_j with ‖g_k‖ = √K_kk: bounds |c_k| and |(Kλ)_k| (|K_kj| ≤ ‖g_k‖‖g_j‖),
    and the rounding of (Kλ)_k is a few n_c·eps·s_k. Each violation is measured relative to its own s_k,
    so the conditions do not depend on how the constraints' gradients are scaled."""
    support = np.flatnonzero(multipliers)
    return np.abs(linear) + gradient_norms * float(gradient_norms[support] @ multipliers[support]) + 1e-300


def gradient_norms_of(matrix: np.ndarray) -> np.ndarray:
    """‖g_k‖ = √K_kk (0 where rounding makes K_kk negative)."""
    return np.sqrt(np.maximum(np.diagonal(matrix), 0.0))


def descent_gradient(state: IterationState) -> np.ndarray:
    """c − Kλ on the indices of ``state`` (the negative gradient of f)."""
    return state.linear - rows_combination(state.matrix, state.factor.slots, state.support_values())


def leave_support(state: IterationState, position: int) -> None:
    slot = state.factor.slots[position]
    state.multipliers[slot] = 0.0
    state.in_support[slot] = False
    state.factor.remove(position)


def minimise_on_support(state: IterationState) -> int:
    """Make λ the minimiser of f over its support with λ_S > 0: solve K_SS s = c_S; where some s_k ≤ 0,
    move from λ towards s until the first such λ_k reaches 0, remove it, and repeat.
    Returns the number of indices removed."""
    removed = 0
    while state.factor.size:
        target = state.factor.solve(state.linear[state.factor.slots])
        current = state.support_values()
        blocking = target <= 0
        if not blocking.any():
            state.multipliers[state.factor.slots] = target
            return removed
        ratios = current[blocking] / (current[blocking] - target[blocking])
        step = float(ratios.min())
        moved = current + step * (target - current)
        moved[np.flatnonzero(blocking)[int(np.argmin(ratios))]] = 0.0
        state.multipliers[state.factor.slots] = np.maximum(moved, 0.0)
        for position in reversed(np.flatnonzero(moved <= 0)):
            leave_support(state, int(position))
            removed += 1
    return removed


def enter_support(state: IterationState, slot: int, violation: float) -> int:
    """Move λ along d = e_t − a (a = K_SS⁻¹K_St, t = ``slot``, ``violation`` = (c − Kλ)_t > 0) by
    α = min(violation / ρ², the first λ_k / a_k over a_k > 0), then t joins S and a blocking index
    leaves it. Returns the number of indices that left S (0 or 1)."""
    factor = state.factor
    column = np.ascontiguousarray(state.matrix[slot, factor.slots], dtype=np.float64)
    diagonal = float(state.matrix[slot, slot])
    r, a = factor.projection(column)
    pivot_squared = diagonal - float(r @ r)
    full_step = violation / pivot_squared if pivot_squared > PIVOT_TOLERANCE * diagonal else np.inf
    current = state.support_values()
    shrinking = a > 0
    ratios = current[shrinking] / a[shrinking]
    blocked_step = float(ratios.min()) if len(ratios) else np.inf
    step = min(full_step, blocked_step)
    if not np.isfinite(step):
        raise SolverError(
            "ℓ2 multiplier QP is unbounded below: K is not positive semidefinite, or b is not Gᵀθ̂ (c leaves K's range)",
            hint="check that K = GᵀG and b = L·q(θ̂) come from the same θ̂, in float64",
        )
    state.multipliers[factor.slots] = np.maximum(current - step * a, 0.0)
    state.multipliers[slot] = step
    if full_step <= blocked_step:
        factor.append(slot, r, np.sqrt(pivot_squared))
        state.in_support[slot] = True
        return 0
    leave_support(state, int(np.flatnonzero(shrinking)[int(np.argmin(ratios))]))
    r, _ = factor.projection(np.ascontiguousarray(state.matrix[slot, factor.slots], dtype=np.float64))
    pivot_squared = diagonal - float(r @ r)
    if not pivot_squared > PIVOT_TOLERANCE * diagonal:
        raise SolverError("ℓ2 multiplier QP: an exchange of dependent constraints left a singular support", hint="KKTEMBED_DEBUG=1 for details")
    factor.append(slot, r, np.sqrt(pivot_squared))
    state.in_support[slot] = True
    return 1


def most_violated(descent: np.ndarray, diagonal: np.ndarray, excluded: np.ndarray, threshold: np.ndarray, count: int) -> np.ndarray:
    """Up to ``count`` indices outside ``excluded`` with (c − Kλ)_k > threshold_k, largest
    (c − Kλ)_k² / K_kk first (steepest edge: the decrease of f along e_k alone)."""
    candidates = np.flatnonzero((descent > threshold) & ~excluded)
    if len(candidates) == 0:
        return candidates
    with np.errstate(divide="ignore"):
        score = np.where(diagonal[candidates] > 0, descent[candidates] ** 2 / diagonal[candidates], np.inf)
    if len(candidates) > count:
        keep = np.argpartition(-score, count - 1)[:count]
        candidates, score = candidates[keep], score[keep]
    return candidates[np.argsort(-score, kind="stable")]


def lawson_hanson(state: IterationState, tolerance: float, budget: int) -> int:
    """Lawson–Hanson on the indices of ``state`` until no (c − Kλ)_k exceeds ``tolerance``·s_k
    (``violation_scales``); returns the steps taken (at most ``budget``, else SolverError)."""
    diagonal = np.diagonal(state.matrix)
    norms = gradient_norms_of(state.matrix)
    steps = minimise_on_support(state)
    while True:
        descent = descent_gradient(state)
        threshold = tolerance * violation_scales(state.linear, norms, state.multipliers)
        entering = most_violated(descent, diagonal, state.in_support, threshold, 1)
        if len(entering) == 0:
            return steps
        steps += 1 + enter_support(state, int(entering[0]), float(descent[entering[0]]))
        steps += minimise_on_support(state)
        if steps > budget:
            raise SolverError(
                f"ℓ2 multiplier QP: the active-set method did not settle in {budget} steps",
                hint="the Gram matrix may be far from positive semidefinite; try --solver clarabel",
            )


def factor_support(matrix: np.ndarray, multipliers: np.ndarray, slots: np.ndarray) -> PackedCholesky:
    """A fresh factor of K_SS for S = ``slots`` (the positive entries of λ = ``multipliers``): one
    blocked Cholesky if every pivot passes, ρ_j² > PIVOT_TOLERANCE·K_jj; otherwise appended one index at
    a time in order of decreasing λ, dropping (λ_k := 0) each index dependent on those before it."""
    factor = PackedCholesky(max(64, len(slots)))
    if len(slots) == 0:
        return factor
    block = matrix[np.ix_(slots, slots)]
    try:
        lower = np.linalg.cholesky(block)
    except np.linalg.LinAlgError:
        lower = None
    if lower is not None and (np.diagonal(lower) ** 2 > PIVOT_TOLERANCE * np.diagonal(block)).all():
        factor.packed[: len(slots) * (len(slots) + 1) // 2] = lower[np.tril_indices(len(slots))]  # = R = Lᵀ packed by columns
        factor.slots = [int(slot) for slot in slots]
        return factor
    for slot in slots[np.argsort(-multipliers[slots], kind="stable")]:
        diagonal = float(matrix[slot, slot])
        r, _ = factor.projection(np.ascontiguousarray(matrix[slot, factor.slots], dtype=np.float64))
        pivot_squared = diagonal - float(r @ r)
        if pivot_squared > PIVOT_TOLERANCE * diagonal:
            factor.append(int(slot), r, np.sqrt(pivot_squared))
        else:
            multipliers[slot] = 0.0
    return factor


def optimum_on_working_sets(gram: np.ndarray, linear: np.ndarray, multipliers: np.ndarray, tolerance: float, budget: int) -> tuple[np.ndarray, int]:
    """Lawson–Hanson on growing working sets W (module docstring): W starts as the support of λ and
    the largest violators, and gains the max(SMALLEST_BATCH, |S|) largest violators outside it each
    round until there are none; once |W| > WHOLE_FRACTION·n_c the iteration runs on K itself.
    Returns (λ, steps)."""
    n = len(linear)
    diagonal, norms = np.diagonal(gram), gradient_norms_of(gram)
    working = np.flatnonzero(multipliers > 0)
    steps, first = 0, True
    while True:
        support = np.flatnonzero(multipliers > 0)
        descent = linear - rows_combination(gram, support, multipliers[support])
        inside = np.zeros(n, dtype=bool)
        inside[working] = True
        threshold = tolerance * violation_scales(linear, norms, multipliers)
        extra = most_violated(descent, diagonal, inside, threshold, max(SMALLEST_BATCH, len(support)))
        if len(extra) == 0 and not first:
            return multipliers, steps
        first = False
        working = np.concatenate([working, extra])
        whole = len(working) > WHOLE_FRACTION * n
        if whole:
            working = np.arange(n)
        block = gram if whole else gram[np.ix_(working, working)]
        local = multipliers[working]
        state = IterationState(block, linear[working], local, factor_support(block, local, np.flatnonzero(local > 0)))
        steps += lawson_hanson(state, tolerance, budget - steps)
        multipliers = np.zeros(n)
        multipliers[working] = state.multipliers
        if whole:
            return multipliers, steps


def qp_gradient(gram: np.ndarray, linear: np.ndarray, multipliers: np.ndarray) -> np.ndarray:
    """∇f(λ) = Kλ − c, with Kλ from the columns K_·S of the support."""
    support = np.flatnonzero(multipliers > 0)
    return columns_combination(gram, support, multipliers[support]) - linear


def kkt_violation(gradient: np.ndarray, multipliers: np.ndarray, scales: np.ndarray) -> float:
    """max_k of |Kλ − c|_k / s_k on S and (c − Kλ)_k⁺ / s_k off S (``violation_scales``); λ ≥ 0 is
    required exactly (infinite violation otherwise)."""
    if (multipliers < 0).any():
        return np.inf
    on_support = multipliers > 0
    relative = np.where(on_support, np.abs(gradient), np.maximum(-gradient, 0.0)) / scales
    return float(relative.max(initial=0.0))


def validated_inputs(gram: np.ndarray, linear: np.ndarray, start: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(c, λ₀) as float64 vectors; λ₀ = max(start, 0) or zeros. Shapes are programming errors;
    non-finite values (a broken Gram computation) are a SolverError."""
    linear = np.asarray(linear, dtype=np.float64).reshape(-1)
    n = len(linear)
    if gram.ndim != 2 or gram.shape != (n, n):
        raise ValueError(f"gram must be {n} × {n} to match linear, got {gram.shape}")
    if gram.dtype != np.float64:
        raise ValueError(f"gram must be float64, got {gram.dtype}")
    if start is not None and np.shape(start) != (n,):
        raise ValueError(f"start must have shape ({n},), got {np.shape(start)}")
    if not (np.isfinite(linear).all() and np.isfinite(np.diagonal(gram)).all()):
        raise SolverError("ℓ2 multiplier QP: non-finite entries in K or b", hint="the network or its margins overflow in float64")
    multipliers = np.zeros(n) if start is None else np.maximum(np.asarray(start, dtype=np.float64), 0.0)
    if not np.isfinite(multipliers).all():
        raise ValueError("start must be finite")
    return linear, multipliers


def solve_nonnegative_qp(
    gram: np.ndarray,
    linear: np.ndarray,
    start: np.ndarray | None = None,
    tolerance: float = 1e-9,
    max_steps: int | None = None,
) -> ActiveSetSolution:
    """min_{λ≥0} f(λ) = ½λᵀKλ − cᵀλ with K = ``gram`` (symmetric PSD, possibly singular) and
    c = ``linear``, exactly, by Lawson–Hanson with Cholesky up- and down-dates (module docstring;
    MATH.md §3: with c = b − (μ/2)(q − 1) this is the ℓ2 multiplier QP). ``start``: a λ to start from
    (e.g. the optimum over a nested smaller candidate set, padded with zeros); it shortens the path,
    it does not change the answer.

    On exit the KKT conditions are certified with Kλ recomputed from K's columns: λ ≥ 0,
    |Kλ − c|_k ≤ ``tolerance``·s_k on S and (Kλ − c)_k ≥ −``tolerance``·s_k off S, with the scale of each
    constraint s_k = |c_k| + √K_kk·Σ_j √K_jj λ_j (a bound on |c_k| and |(Kλ)_k|, see ``violation_scales``);
    SolverError if they do not hold (after one restart from a fresh factor). K is never copied: the
    iteration reads rows K_S· (in chunks of 32 MiB) and copies the block K_WW of a working set W,
    |W| ≤ n_c/4, so memory beyond K is at most 1/16 of K plus O(|S|² + n_c)."""
    with single_threaded_blas():
        return certified_optimum(gram, linear, start, tolerance, max_steps)


def single_threaded_blas():
    """A context with one BLAS thread: the method is a sequence of small BLAS-2 operations, and on a
    busy 2-core machine two threads made the 16,173-constraint solve 3–4× slower than one (and the
    complementarity stage's eigenvalues of a 273 × 273 block took 0.9 s instead of 10 ms)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def certified_optimum(gram: np.ndarray, linear: np.ndarray, start: np.ndarray | None, tolerance: float, max_steps: int | None) -> ActiveSetSolution:
    """``solve_nonnegative_qp`` without the thread limit."""
    started = time.perf_counter()
    linear, multipliers = validated_inputs(gram, linear, start)
    budget = max_steps if max_steps is not None else 20 * len(linear) + 100
    steps = 0
    for _ in range(2):  # a failed certificate gets one more run, from fresh factors
        multipliers, taken = optimum_on_working_sets(gram, linear, multipliers, tolerance / ENTERING_MARGIN, budget - steps)
        steps += taken
        gradient = qp_gradient(gram, linear, multipliers)
        violation = kkt_violation(gradient, multipliers, violation_scales(linear, gradient_norms_of(gram), multipliers))
        if violation <= tolerance:
            objective = 0.5 * float(multipliers @ gradient) - 0.5 * float(linear @ multipliers)  # ½λᵀKλ − cᵀλ
            return ActiveSetSolution(multipliers, np.flatnonzero(multipliers > 0), steps, float(violation), objective, time.perf_counter() - started)
    raise SolverError(
        f"ℓ2 multiplier QP: the active-set solution fails its KKT check (relative violation {violation:.1e} > {tolerance:.0e})",
        hint="K must be symmetric positive semidefinite (float64); try --solver clarabel",
    )


def most_complementary_optimum(gram: np.ndarray, linear: np.ndarray, excess: np.ndarray, optimum: np.ndarray, relative_tol: float = 1e-9) -> np.ndarray | None:
    """Among all optimal λ of the QP, the one with the smallest δ = Σ_k λ_k (q_k − 1) (MATH.md §2–3):
    the lexicographic second stage of ``kktembed.kkt.solve.most_complementary_l2`` with the same
    tolerances, solved by scipy's HiGHS (``linprog``) instead of cvxpy. ``excess`` is q − 1.

    All optima share Gλ = Gλ*. By complementarity they vanish outside I = {i : |Kλ* − c|_i ≤
    ``relative_tol``·s}, s = max|c| + max|K|·Σλ* (max|K| = max_k K_kk for a PSD K), and on I,
    Gλ = Gλ* ⟺ K_II λ_I = K_II λ*_I. The optimal set {λ ≥ 0 on I, K_II λ_I = K_II λ*_I} is a single
    point when K_II has full rank (eigenvalues above ``relative_tol``·max|K_II|, the rank of
    ``numpy.linalg.matrix_rank`` for a symmetric K_II): then None, nothing to refine. Otherwise the LP
    min (q − 1)_Iᵀλ_I s.t. |K_II λ_I − K_II λ*_I| ≤ ``relative_tol``·(max|K_II λ*_I| + max|c|), λ_I ≥ 0;
    None if HiGHS does not report an optimum."""
    with single_threaded_blas():
        return most_complementary_on_active_set(gram, linear, excess, optimum, relative_tol)


def most_complementary_on_active_set(gram: np.ndarray, linear: np.ndarray, excess: np.ndarray, optimum: np.ndarray, relative_tol: float) -> np.ndarray | None:
    """``most_complementary_optimum`` without the thread limit."""
    from scipy.optimize import linprog

    linear = np.asarray(linear, dtype=np.float64)
    support = np.flatnonzero(optimum > 0)
    product = columns_combination(gram, support, optimum[support])  # Kλ*
    scale = float(np.abs(linear).max(initial=0.0)) + float(np.diagonal(gram).max(initial=0.0)) * float(optimum.sum())
    active = np.flatnonzero(np.abs(product - linear) <= relative_tol * scale)
    if len(active) == 0:
        return None
    block = gram[np.ix_(active, active)]
    eigenvalues = np.linalg.eigvalsh((block + block.T) / 2)
    if int((np.abs(eigenvalues) > relative_tol * float(np.abs(block).max())).sum()) == len(active):
        return None
    target = block @ optimum[active]
    tolerance = relative_tol * (float(np.abs(target).max()) + float(np.abs(linear).max()))
    result = linprog(
        excess[active],
        A_ub=np.vstack([block, -block]),
        b_ub=np.concatenate([target + tolerance, tolerance - target]),
        bounds=(0, None),
        method="highs",
    )
    if result.status != 0:
        return None
    refined = np.zeros(len(optimum))
    refined[active] = np.maximum(result.x, 0.0)
    return refined
