"""PNG figures (matplotlib, Agg backend, imported only when a plot is asked for)."""

from __future__ import annotations

from pathlib import Path

from kktembed.outputs import atomic_path

# Exact zeros cannot be drawn on a log scale; the trajectory error draws them here.
ZERO_FLOOR = 1e-18


def trace_figure(records: list[dict], title: str = ""):
    """The figure of a ``trace`` run in the style of the paper's Fig. (MATH.md §5), against the step:
    ‖η(t) − Tθ(t)‖₂ on a log scale, the losses 𝓛 of both networks (log scale), their normalized
    margins γ̄, and, when the records carry them (``kkt_every``), the relative KKT residuals ε/‖θ̂‖ of
    both on a log scale in a fourth panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stationarity = [r for r in records if "relative_stationarity_narrow" in r]
    figure, axes = plt.subplots(1, 4 if stationarity else 3, figsize=(17 if stationarity else 13, 3.8))
    steps = [record["step"] for record in records]
    axes[0].semilogy(steps, [max(record["trajectory_error"], ZERO_FLOOR) for record in records], color="tab:red")
    axes[0].set_title(f"trajectory error (exact zeros at {ZERO_FLOOR:g})")
    axes[0].set_ylabel(r"$\|\eta(t) - T\theta(t)\|_2$")
    axes[1].semilogy(steps, [r["loss_narrow"] for r in records], label=r"narrow $\theta(t)$")
    axes[1].semilogy(steps, [r["loss_wide"] for r in records], "--", label=r"wide $\eta(t)$")
    axes[1].set_title("training loss")
    axes[1].set_ylabel(r"loss $\mathcal{L}$")
    axes[2].plot(steps, [r["normalized_margin_narrow"] for r in records], label=r"narrow $\theta(t)$")
    axes[2].plot(steps, [r["normalized_margin_wide"] for r in records], "--", label=r"wide $\eta(t)$")
    axes[2].set_title("normalized margin")
    axes[2].set_ylabel(r"$\bar\gamma = q_{\min} / \|\theta\|^L$")
    if stationarity:
        kkt_steps = [r["step"] for r in stationarity]
        axes[3].semilogy(kkt_steps, [r["relative_stationarity_narrow"] for r in stationarity], "o-", label=r"narrow $\theta(t)$")
        axes[3].semilogy(kkt_steps, [r["relative_stationarity_wide"] for r in stationarity], "x--", label=r"wide $\eta(t)$")
        axes[3].set_title("relative KKT residual")
        axes[3].set_ylabel(r"$\varepsilon / \|\hat\theta\|$")
    for axis in axes:
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    for axis in axes[1:]:
        axis.legend()
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure


def plot_trace(records: list[dict], path: str | Path, title: str = "") -> Path:
    """Write ``trace_figure(records, title)`` as a PNG to ``path`` (atomically)."""
    import matplotlib.pyplot as plt

    figure = trace_figure(records, title)
    try:
        with atomic_path(path, suffix=".png") as temporary:
            figure.savefig(temporary, dpi=120)
    finally:
        plt.close(figure)
    return Path(path)


def plot_check_run(rows, path: str | Path) -> Path:
    """Four panels against the training step, the picture of Lyu & Li's theorem: the normalized
    margin γ̄ (rising), the relative stationarity residual ε/‖θ̂‖ and the relative complementarity
    residual δ/Σλ (falling, log scales), and the alignment β = cos∠(θ, −∇𝓛) (towards 1).
    Failed or non-separated checkpoints leave gaps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    analysed = [row for row in rows if not row.failed]
    steps = [row.step for row in analysed]
    figure, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    panels = (
        ("normalized margin γ̄ = q_min/‖θ‖^L", "normalized_margin", False, "γ̄"),
        ("relative stationarity residual", "relative_stationarity_residual", True, "ε/‖θ̂‖ (log)"),
        ("relative complementarity residual", "relative_complementarity_residual", True, "δ/Σλ (log)"),
        ("alignment β = cos∠(θ, −∇𝓛)", "alignment", False, "β"),
    )
    for axis, (title, field, logarithmic, label) in zip(axes, panels):
        values = [getattr(row, field) for row in analysed]
        points = [(step, value) for step, value in zip(steps, values) if value is not None and (value > 0 or not logarithmic)]
        if points:
            axis.plot(*zip(*points), marker="o", markersize=3)
        if logarithmic:
            axis.set_yscale("log")
        axis.set_title(title)
        axis.set_ylabel(label)
        axis.set_xlabel("training step")
        axis.grid(alpha=0.3)
    figure.tight_layout()
    try:
        with atomic_path(path, suffix=".png") as temporary:
            figure.savefig(temporary, dpi=120)
    finally:
        plt.close(figure)
    return Path(path)
