"""PNG figures (matplotlib, Agg backend, imported only when a plot is asked for)."""

from __future__ import annotations

from pathlib import Path

from kktembed.checkpoint import atomic_path


def plot_trace(records: list[dict], path: str | Path, title: str = "") -> Path:
    """Three panels in the style of the paper's Fig. (MATH.md §5): ‖η(t) − Tθ(t)‖ on a log scale,
    the losses of both networks, and their normalized margins, against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [record["step"] for record in records]
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    errors = [max(record["trajectory_error"], 1e-18) for record in records]
    axes[0].semilogy(steps, errors, color="tab:red")
    axes[0].set_title("trajectory error ‖η(t) − Tθ(t)‖")
    axes[0].set_ylabel("exact zeros drawn at 1e-18")
    axes[1].semilogy(steps, [r["loss_narrow"] for r in records], label="narrow θ(t)")
    axes[1].semilogy(steps, [r["loss_wide"] for r in records], "--", label="wide η(t)")
    axes[1].set_title("training loss")
    axes[1].legend()
    axes[2].plot(steps, [r["normalized_margin_narrow"] for r in records], label="narrow θ(t)")
    axes[2].plot(steps, [r["normalized_margin_wide"] for r in records], "--", label="wide η(t)")
    axes[2].set_title("normalized margin γ̄")
    axes[2].legend()
    for axis in axes:
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
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
