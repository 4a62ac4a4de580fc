"""The ``sims`` command line: a root app that only wires command groups together.

Each package registers its own group under the ``sims.commands`` entry point (see
pyproject.toml), so this root never imports the packages that build on memory_bank.
No error prints a traceback unless ``SIMS_DEBUG=1``: a :class:`~memory_bank.errors.SimsError` or a
bad input (an unreadable file, a value of the wrong type) prints one line and exits 2; anything
else prints one line and exits 1.
"""

from __future__ import annotations

import logging
import os
import sys
from importlib.metadata import PackageNotFoundError, entry_points, version
from typing import Annotated

import typer
from pydantic import ValidationError

# typer >= 0.20 vendors click and exports only some of its exception types: these two it does not.
from typer._click.exceptions import ClickException, NoArgsIsHelpError

from memory_bank.errors import SimsError

ENTRY_POINT_GROUP = "sims.commands"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"sims {package_version()}")
        raise typer.Exit()


def _root(
    show_version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.", is_eager=True, callback=_print_version)
    ] = False,
) -> None:
    """SIMS: semi-parametric image synthesis from a memory bank of real photo segments."""


def build_app() -> typer.Typer:
    """The root app with every installed command group attached."""
    app = typer.Typer(
        name="sims",
        help="SIMS: semi-parametric image synthesis from a memory bank of real photo segments.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    app.callback()(_root)

    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        app.add_typer(ep.load(), name=ep.name)
    return app


def package_version() -> str:
    """The installed ``sims`` distribution's version (``unknown`` when run from a bare checkout)."""
    try:
        return version("sims")
    except PackageNotFoundError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (2 for a known SIMS error)."""
    debug = os.environ.get("SIMS_DEBUG", "") not in ("", "0")
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("faiss.loader", "distributed", "asyncio", "botocore", "aiobotocore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    command = typer.main.get_command(build_app())
    try:
        # Not standalone: usage errors come back here, to be printed on one line.
        code = command.main(args=argv, prog_name="sims", standalone_mode=False)
    except NoArgsIsHelpError as e:  # `sims` or `sims index` alone: the help
        e.show()
        return e.exit_code
    except ClickException as e:  # a usage error (unknown option, bad value) or an unreadable file argument
        ctx = getattr(e, "ctx", None)
        print(
            f"error: {_one_line_text(e.format_message())} (see '{ctx.command_path if ctx else 'sims'} --help')",
            file=sys.stderr,
        )
        return e.exit_code
    except typer.Abort:  # Ctrl-C at a prompt
        print("aborted", file=sys.stderr)
        return 1
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except (SimsError, OSError, ValueError, TypeError) as e:
        # Known errors and bad inputs (a missing file, a config value of the wrong type): one line.
        if debug:
            raise
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:  # a bug: still one line, with where to get the traceback
        if debug:
            raise
        print(f"error: {type(e).__name__}: {_one_line(e)} (set SIMS_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1
    return code if isinstance(code, int) else 0


def _one_line(e: BaseException) -> str:
    """An exception's message on one line (OSErrors without one say their errno and file; a settings
    validation error names each bad setting and what it should be, without pydantic's links or the
    value, which may be a key)."""
    if isinstance(e, ValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in x['loc']) or 'value'}: {x['msg']}" for x in e.errors())
        return _one_line_text(f"invalid {e.title}: {problems}")
    return _one_line_text(str(e) or type(e).__name__)


def _one_line_text(text: str) -> str:
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
