"""One Output object: rich tables for people, or one JSON object for scripts (``--json``).

Data go to stdout; progress and warnings go to stderr.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from kktembed.resources import format_size
from rich.table import Table


def _plain(value: Any) -> Any:
    """JSON-safe: NaN becomes null, ±inf a string, tuples lists."""
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def fmt(value: Any, digits: int = 4) -> str:
    """Numbers for tables: scientific notation for small/large magnitudes."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}g}"
    return str(value)


NON_TERMINAL_WIDTH = 200
VERDICT_STYLE = {"kkt": "bold green", "approximate": "bold yellow", "not_kkt": "bold red", "not_separable": "bold red"}


class Output:
    def __init__(self, json_output: bool = False):
        self.json_output = json_output

    def _begin(self, payload: dict) -> Console | None:
        """Print ``payload`` as JSON and return None (``--json``), or return the console for tables."""
        if self.json_output:
            sys.stdout.write(json.dumps(_plain(payload), indent=2) + "\n")
            return None
        # a pipe or a log file gets tables as wide as they need (rich's default there is 80 columns)
        return Console() if sys.stdout.isatty() else Console(width=NON_TERMINAL_WIDTH)

    @staticmethod
    def _table(title: str, rows: list[tuple[str, str]]) -> Table:
        table = Table(title=title, show_header=False, title_justify="left")
        table.add_column("quantity", style="bold")
        table.add_column("value", justify="right")
        for name, value in rows:
            table.add_row(name, value)
        return table

    def check(self, result) -> None:
        """A ``CheckResult``: the quantities table, the τ profile, the verdict."""
        console = self._begin(result.to_dict())
        if console is None:
            return
        r = result
        rows = [
            ("checkpoint", r.checkpoint or "–"),
            ("data", r.data or "–"),
            ("adapter / activation", f"{r.adapter} / {r.activation or '–'}"),
            ("degree L (Euler error)", f"{r.degree} ({fmt(r.euler_error, 2)})"),
            ("parameters p", fmt(r.n_parameters)),
            ("stored as (precision floor L·u)", f"{r.storage_dtype} ({fmt(r.precision_floor, 2)})"),
            ("samples / constraints", f"{fmt(r.n_samples)} / {fmt(r.n_constraints)}"),
            ("training accuracy", f"{r.accuracy:.4f}"),
            ("q_min", fmt(r.q_min)),
            ("‖θ‖", fmt(r.theta_norm)),
            ("normalized margin γ̄ = q_min/‖θ‖^L", fmt(r.normalized_margin)),
            (f"alignment β ({r.loss} loss)", fmt(r.alignment, 6)),
        ]
        if r.verdict != "not_separable" or r.theta_hat_norm is not None:
            rows += [
                ("‖θ̂‖ (θ̂ = θ/q_min^{1/L})", fmt(r.theta_hat_norm)),
                (f"candidates (q ≤ 1 + {r.active_tol:g})", fmt(r.n_candidates)),
                ("support (λ > 0)", fmt(r.n_support)),
                ("stationarity ε", fmt(r.stationarity_residual)),
                ("ε / ‖θ̂‖", fmt(r.relative_stationarity_residual)),
                *([(f"‖θ̂ − Σλ∇q‖ in {r.norm}", fmt(r.norm_residual))] if r.norm != "l2" else []),
                ("complementarity δ = Σ λ(q−1)", fmt(r.complementarity_residual)),
                ("max λ(q−1)", fmt(r.max_complementarity_residual)),
                ("δ / Σλ", fmt(r.relative_complementarity_residual)),
                ("support constraints near a ReLU kink", f"{fmt(r.n_support_near_kink)} ({fmt(r.n_preactivations_near_kink)} pre-activations)"),
                (f"solver ({r.norm})", f"{r.solver} {r.solver_status}{', refined' if r.refined else ''}, {r.solver_seconds:.3f} s (Gram {r.gram_seconds:.3f} s, est. {format_size(r.gram_memory_estimate)})"),
            ]
        console.print(self._table("kktembed check", rows))
        if r.profile:
            table = Table(title="active-set profile (ℓ2)", title_justify="left")
            for column in ("τ", "candidates", "support", "ε/‖θ̂‖", "δ"):
                table.add_column(column, justify="right")
            for row in r.profile:
                if row.note:
                    table.add_row(f"{row.active_tol:g}", fmt(row.n_candidates), row.note, "", "")
                else:
                    table.add_row(
                        f"{row.active_tol:g}", fmt(row.n_candidates), fmt(row.n_support), fmt(row.relative_stationarity_residual), fmt(row.complementarity_residual)
                    )
            console.print(table)
        explanation = {
            "kkt": f"ε/‖θ̂‖ and δ/Σλ ≤ {r.kkt_tol:g}",
            "approximate": f"ε/‖θ̂‖ and δ/Σλ ≤ {r.approx_tol:g}",
            "not_kkt": f"ε/‖θ̂‖ or δ/Σλ > {r.approx_tol:g}",
            "not_separable": "q_min ≤ 0: the data are not separated, no KKT analysis is possible",
        }[r.verdict]
        console.print(f"verdict: [{VERDICT_STYLE[r.verdict]}]{r.verdict}[/] ({explanation})")
        if r.verdict_note:
            console.print(f"note: {r.verdict_note}")

    def check_run(self, result, out=None, plot=None) -> None:
        """A ``CheckRunResult``: one row per checkpoint, sorted by step."""
        payload = result.to_dict()
        payload.update({"out": str(out) if out is not None else None, "plot": str(plot) if plot is not None else None})
        console = self._begin(payload)
        if console is None:
            return
        table = Table(title=f"kktembed check: {len(result.rows)} checkpoints ({result.data or 'no data'})", title_justify="left")
        columns = ("step", "checkpoint", "accuracy", "q_min", "γ̄", "β", "candidates", "support", "ε/‖θ̂‖", "δ/Σλ", "verdict", "seconds")
        for column in columns:
            table.add_column(column, justify="left" if column in ("checkpoint", "verdict") else "right")
        for row in result.rows:
            name = Path(row.checkpoint).name
            if row.failed:
                table.add_row(str(row.step), name, "", "", "", "", "", "", "", "", f"[bold red]error[/]: {row.error}", fmt(row.seconds, 2))
                continue
            style = VERDICT_STYLE.get(row.verdict, "")
            table.add_row(
                str(row.step), name, f"{row.accuracy:.4f}", fmt(row.q_min), fmt(row.normalized_margin), fmt(row.alignment, 6),
                fmt(row.n_candidates), fmt(row.n_support), fmt(row.relative_stationarity_residual), fmt(row.relative_complementarity_residual),
                f"[{style}]{row.verdict}[/]", fmt(row.seconds, 2),
            )
        console.print(table)
        notes = [f"{result.n_failed} failed" if result.n_failed else "", f"{result.n_resumed} kept from {out}" if result.n_resumed else ""]
        notes += [f"rows written to {out}" if out is not None else "", f"plot {plot}" if plot is not None else ""]
        if any(notes):
            console.print("; ".join(note for note in notes if note))

    def inspect(self, result) -> None:
        """An ``InspectResult``."""
        summary = result.to_dict()
        console = self._begin(summary)
        if console is None:
            return
        load = summary["load"] or {}
        rows = [
            ("checkpoint", summary["checkpoint"]),
            ("adapter", summary["adapter"]),
            ("activation", str(summary["activation"])),
            ("input shape → outputs", f"{tuple(summary['input_shape'])} → {summary['output_dim']}"),
            ("parameters", fmt(summary["n_parameters"])),
            ("stored as (precision floor L·u)", f"{summary['storage_dtype']} ({fmt(summary['precision_floor'], 2)})"),
            ("‖θ‖", fmt(summary["theta_norm"])),
            ("degree L", str(summary["degree"])),
            ("scaling / Euler error", f"{fmt(summary['scaling_error'], 2)} / {fmt(summary['euler_error'], 2)}"),
            ("homogeneous", fmt(summary["homogeneous"])),
            ("hidden layers (units)", ", ".join(f"{h['name']}: {h['width']}" for h in summary["hidden_layers"]) or "none"),
        ]
        if load.get("stripped_prefixes"):
            rows.append(("wrapper prefixes stripped", " ".join(load["stripped_prefixes"])))
        if load and not load.get("native") and load.get("layer_order"):
            rows.append(("layer order (from names and shapes)", " → ".join(load["layer_order"])))
        if load.get("spec"):
            rows.append(("architecture spec", load["spec"]))
        if summary["data"]:
            data = summary["data"]
            rows.append(("data", f"{data['source']}: {data['n_samples']} samples, labels {data['labels']}"))
        console.print(self._table("kktembed inspect", rows))
        table = Table(title="layers", title_justify="left")
        for column in ("name", "kind", "parameters"):
            table.add_column(column)
        for layer in summary["layers"]:
            table.add_row(layer["name"], layer["kind"], fmt(layer["parameters"]))
        console.print(table)

    def convert(self, result) -> None:
        """A ``ConvertResult``."""
        console = self._begin(result.to_dict())
        if console is None:
            return
        load = result.load
        rows = [
            ("input", result.source),
            ("output", result.output),
            ("adapter / activation", f"{result.adapter} / {result.config.get('activation', '–')}"),
            ("degree L (Euler error)", f"{result.degree} ({fmt(result.euler_error, 2)})"),
            ("parameters", fmt(result.n_parameters)),
            ("stored as", result.storage_dtype),
            ("wrapper prefixes stripped", " ".join(load["stripped_prefixes"]) or "none"),
            ("layer order", " → ".join(load["layer_order"] or []) or "–"),
            ("data recorded", result.data or "none"),
            ("outputs verified against reference", fmt(result.reconstruction_verified)),
        ]
        console.print(self._table("kktembed convert", rows))

    def split(self, result) -> None:
        """A ``SplitResult``."""
        summary = result.to_dict()
        console = self._begin(summary)
        if console is None:
            return
        widths = ", ".join(
            f"{name}: {summary['widths_before'][name]} → {summary['widths_after'][name]}"
            for name in summary["widths_before"]
            if summary["widths_before"][name] != summary["widths_after"][name]
        )
        rows = [
            ("input", summary["checkpoint"]),
            ("output", summary["output"]),
            ("strategy", summary["strategy"]),
            ("split units", fmt(summary["n_split_units"])),
            ("hidden widths", widths),
            ("parameters", f"{fmt(summary['n_parameters_before'])} → {fmt(summary['n_parameters_after'])}"),
            ("‖θ‖ → ‖Tθ‖", f"{fmt(summary['norm_before'], 10)} → {fmt(summary['norm_after'], 10)}"),
            ("coefficient isometry error max|Σc²−1|", fmt(summary["coefficient_isometry_error"])),
            ("output error max|Φ̃ − Φ| on data", fmt(summary["output_error"]) + (f" ({summary['data']})" if summary["data"] else " (no data)")),
        ]
        console.print(self._table("kktembed split", rows))
        table = Table(title="splits", title_justify="left")
        for column in ("layer", "unit", "positions", "shares r_i", "incoming", "outgoing"):
            table.add_column(column)
        shown = summary["splits"][:20]
        for split in shown:
            table.add_row(
                split["layer"],
                str(split["unit"]),
                ", ".join(map(str, split["positions"])),
                ", ".join(f"{v:.4g}" for v in split["shares"]),
                ", ".join(f"{v:.4g}" for v in split["incoming"]),
                ", ".join(f"{v:.4g}" for v in split["outgoing"]),
            )
        if len(summary["splits"]) > len(shown):
            table.add_row("…", f"{len(summary['splits']) - len(shown)} more", "", "", "", "")
        console.print(table)

    def embed(self, result) -> None:
        """An ``EmbedResult``."""
        console = self._begin(result.to_dict())
        if console is None:
            return
        r = result
        source = {"wide_record": "WIDE's record", "narrow_record": "NARROW's record (written by reduce)", "matched": "found by matching units (no record)"}
        rows = [
            ("narrow → wide", f"{r.narrow} → {r.wide}"),
            ("data", r.data),
            ("map T", source.get(r.embedding_source, r.embedding_source)),
            ("splits (strategies)", f"{r.n_splits} ({', '.join(r.strategies)})"),
            ("the record names this very file", fmt(r.parent_hash_matches)),
            ("‖θ̃ − Tθ‖", fmt(r.embedding_error)),
            ("‖θ̃ − Tθ‖ / ‖Tθ‖", fmt(r.relative_embedding_error)),
            ("|‖θ̃‖ − ‖θ‖|", fmt(r.norm_error)),
            ("coefficient isometry error max|Σc²−1|", fmt(r.coefficient_isometry_error)),
            ("output error max|Φ̃(θ̃) − Φ(θ)|", fmt(r.output_error)),
            ("normalized margin error |γ̄̃ − γ̄|", fmt(r.normalized_margin_error)),
            ("multiplier error ‖λ̃ − λ‖", fmt(r.multiplier_error)),
        ]
        console.print(self._table("kktembed embed", rows))
        table = Table(title="KKT check, side by side", title_justify="left")
        for column in ("", "narrow", "wide", "|difference|"):
            table.add_column(column, justify="right")
        for label, attribute in (
            ("parameters", "n_parameters"),
            ("normalized margin γ̄", "normalized_margin"),
            ("‖θ̂‖", "theta_hat_norm"),
            ("support", "n_support"),
            ("ε", "stationarity_residual"),
            ("ε/‖θ̂‖", "relative_stationarity_residual"),
            ("δ", "complementarity_residual"),
        ):
            left, right = getattr(r.check_narrow, attribute), getattr(r.check_wide, attribute)
            difference = abs(right - left) if left is not None and right is not None else None
            table.add_row(label, fmt(left, 10), fmt(right, 10), fmt(difference))
        table.add_row("verdict", r.check_narrow.verdict, r.check_wide.verdict, "")
        console.print(table)
        style = "bold green" if r.verdict == "isometric_embedding" else "bold red"
        preserved = {True: "KKT quality preserved", False: "KKT quality NOT preserved", None: "no KKT comparison (not separable)"}[r.kkt_preserved]
        console.print(f"verdict: [{style}]{r.verdict}[/] (tol {r.tol:g}); {preserved}")

    def reduce(self, report) -> None:
        """A ``ReduceReport``."""
        payload = report.to_dict()
        console = self._begin(payload)
        if console is None:
            return
        widths = ", ".join(f"{name}: {before} → {payload['widths_after'][name]}" for name, before in payload["widths_before"].items())
        merged = sum(layer["merged_groups"] for layer in payload["layers"])
        zero = sum(layer["zero_copies"] for layer in payload["layers"])
        function_preserving = sum(len(layer["function_preserving_groups"]) for layer in payload["layers"])
        rows = [
            ("wide → narrow", f"{report.wide} → {report.output or '(not written: give -o)'}"),
            ("tolerance", f"{payload['tol']:g} ({payload['rounds']} sweeps)"),
            ("hidden widths", widths),
            ("groups of copies merged", fmt(merged)),
            ("zero units (copies with share 0)", fmt(zero)),
            ("merge error ‖θ̃ − Tθ‖/‖θ̃‖", fmt(payload["merge_error"])),
            ("coefficient isometry error max|Σc²−1|", fmt(payload["coefficient_isometry_error"])),
            ("|‖θ̃‖ − ‖θ‖|", fmt(payload["norm_error"])),
            ("T is an isometry", fmt(payload["isometric"])),
        ]
        if function_preserving:
            rows.append(("output-preserving groups, not merged", f"{function_preserving} (merge with --allow-non-isometric: not an isometry)"))
        if report.data is not None:
            rows.append(("output error max|Φ̃ − Φ| on data", f"{fmt(report.output_error)} ({report.data})"))
        console.print(self._table("kktembed reduce", rows))
        if report.check_wide is not None:
            table = Table(title="KKT check, side by side", title_justify="left")
            for column in ("", "wide", "narrow", "|difference|"):
                table.add_column(column, justify="right")
            for label, attribute in (("parameters", "n_parameters"), ("normalized margin γ̄", "normalized_margin"), ("support", "n_support"), ("ε/‖θ̂‖", "relative_stationarity_residual"), ("δ", "complementarity_residual")):
                left, right = getattr(report.check_wide, attribute), getattr(report.check_narrow, attribute)
                difference = abs(right - left) if left is not None and right is not None else None
                table.add_row(label, fmt(left, 10), fmt(right, 10), fmt(difference))
            table.add_row("verdict", report.check_wide.verdict, report.check_narrow.verdict, "")
            console.print(table)
        if payload["profile"]:
            title = "effective width against the tolerance"
            table = Table(title=title, title_justify="left", min_width=len(title) + 2)
            names = list(payload["widths_before"])
            table.add_column("tol", justify="right")
            for name in names:
                table.add_column(name, justify="right")
            for row in payload["profile"]:
                table.add_row(f"{row['tol']:g}", *(fmt(row["widths"].get(name)) for name in names))
            console.print(table)

    def trace(self, report) -> None:
        """A ``TraceReport``: summary table and a few rows of the series."""
        summary, records = report.to_dict(), report.records
        console = self._begin(summary)
        if console is None:
            return
        rows = [
            ("narrow", summary["narrow"]),
            ("data", summary["data"]),
            ("splits (strategies)", f"{summary['n_splits']} ({', '.join(summary['strategies'])})"),
            ("steps", fmt(summary["steps"])),
            ("max ‖η(t) − Tθ(t)‖", fmt(summary["max_trajectory_error"])),
            ("max relative error", fmt(summary["max_relative_trajectory_error"])),
            ("final ‖η − Tθ‖", fmt(summary["final_trajectory_error"])),
            ("final loss narrow / wide", f"{fmt(summary['final_loss_narrow'])} / {fmt(summary['final_loss_wide'])}"),
            ("final γ̄ narrow / wide", f"{fmt(summary['final_normalized_margin_narrow'], 8)} / {fmt(summary['final_normalized_margin_wide'], 8)}"),
        ]
        if summary.get("final_stationarity_narrow") is not None:
            rows.append(("final ε/‖θ̂‖ narrow / wide", f"{fmt(summary['final_stationarity_narrow'])} / {fmt(summary['final_stationarity_wide'])}"))
        for path in summary.get("outputs", []):
            rows.append(("wrote", path))
        if summary.get("plot"):
            rows.append(("plot", summary["plot"]))
        console.print(self._table("kktembed trace", rows))
        table = Table(title="series (first, a few in between, last)", title_justify="left")
        for column in ("step", "‖η − Tθ‖", "loss narrow", "loss wide", "γ̄ narrow", "γ̄ wide"):
            table.add_column(column, justify="right")
        picks = sorted({0, len(records) // 4, len(records) // 2, 3 * len(records) // 4, len(records) - 1})
        for index in picks:
            r = records[index]
            table.add_row(str(r["step"]), fmt(r["trajectory_error"]), fmt(r["loss_narrow"]), fmt(r["loss_wide"]), fmt(r["normalized_margin_narrow"]), fmt(r["normalized_margin_wide"]))
        console.print(table)

    def plugins(self, plugins) -> None:
        """The ``PluginInfo`` of every loaded plugin."""
        infos = [dict(info.__dict__) for info in plugins]
        console = self._begin({"plugins": infos})
        if console is None:
            return
        table = Table(title="kktembed plugins", title_justify="left")
        for column in ("plugin", "version", "registers", "description"):
            table.add_column(column)
        for info in infos:
            name = info["name"] + (" (built-in)" if info["builtin"] else "")
            entries = list(info["descriptions"].items()) or [("", "(registers nothing)")]
            for index, (key, description) in enumerate(entries):
                table.add_row(name if index == 0 else "", info["version"] if index == 0 else "", key, description)
        console.print(table)
