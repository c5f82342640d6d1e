"""The ``kktembed`` command line: one module per command, errors mapped to one ``Error:`` line.

Heavy libraries (torch, cvxpy) are imported inside command bodies only, so ``--help`` and
``plugins`` start fast.
"""

from __future__ import annotations

import os
import sys
import warnings

import typer

from kktembed.cli import check, convert, embed, inspect, plugins, reduce, split, trace
from kktembed.errors import KktembedError

app = typer.Typer(
    name="kktembed",
    help=(
        "KKT analysis and isometric embeddings of homogeneous neural network checkpoints.\n\n"
        "Examples:\n\n"
        "  kktembed check fixtures/mlp_gd_digits38.safetensors\n\n"
        "  kktembed check model.safetensors --dataset digits:3,8 --json\n\n"
        "  kktembed check 'run/ckpt_*.safetensors' --data train.safetensors --out run.csv --plot run.png\n\n"
        "  kktembed split model.safetensors -o wide.safetensors --copies 2\n\n"
        "  kktembed reduce wide.safetensors -o narrow.safetensors\n\n"
        "  kktembed inspect model.safetensors\n\n"
        "  kktembed convert plain.safetensors -o native.safetensors --data train.safetensors\n\n"
        "  kktembed plugins"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.command("check")(check.check)
app.command("inspect")(inspect.inspect)
app.command("split")(split.split)
app.command("embed")(embed.embed)
app.command("trace")(trace.trace)
app.command("reduce")(reduce.reduce)
app.command("convert")(convert.convert)
app.command("plugins")(plugins.plugins)


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"Warning: {message}", file=sys.stderr)


def _is_click(exc: Exception, name: str) -> bool:
    """Whether ``exc`` is click's exception class ``name`` or a subclass (recent typer versions
    vendor click as ``typer._click``, so the class is recognised by its module and name)."""
    return any(cls.__name__ == name and cls.__module__.endswith("click.exceptions") for cls in type(exc).__mro__)


def main() -> None:
    """Entry point: run the app, turn kktembed errors into ``Error: …`` and an exit code.

    Usage errors found while parsing the command line (click's: an unknown option, a value that is
    not a number) are one ``Error:`` line too, naming the command's --help (exit 2); typer.Exit
    carries --fail-above's status 3.
    """
    debug = os.environ.get("KKTEMBED_DEBUG") == "1"
    if not debug:
        warnings.showwarning = _show_warning
    from kktembed.outputs import command_scope
    from kktembed.resources import MEMORY_LIMIT_VARIABLE, memory_limit_bytes

    try:
        if os.environ.get(MEMORY_LIMIT_VARIABLE, "").strip():
            memory_limit_bytes()  # a malformed limit is refused before any command starts
        with command_scope():
            status = app(prog_name="kktembed", standalone_mode=False)
        if isinstance(status, int) and status:
            sys.exit(status)
    except KktembedError as exc:
        if debug:
            raise
        print(f"Error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except MemoryError:
        if debug:
            raise
        print("Error: out of memory (lower --active-tol or --max-candidates, or use smaller inputs)", file=sys.stderr)
        sys.exit(1)
    except Exception as exc:
        if _is_click(exc, "NoArgsIsHelpError"):  # `kktembed` alone: the help, as always
            exc.show()
            sys.exit(exc.exit_code)
        if _is_click(exc, "ClickException"):  # found while parsing the command line
            where = f" (see `{exc.ctx.command_path} --help`)" if getattr(exc, "ctx", None) is not None else ""
            print(f"Error: {exc.format_message()}{where}", file=sys.stderr)
            sys.exit(exc.exit_code)
        if debug:  # the safety net: reaching it is a bug in kktembed, and the message says so
            raise
        print(
            f"Error: internal error ({type(exc).__name__}: {exc}). This is a bug in kktembed, not in your input: please "
            "report it on the project's issue tracker with the command you ran and the traceback that "
            "KKTEMBED_DEBUG=1 prints",
            file=sys.stderr,
        )
        sys.exit(70)
