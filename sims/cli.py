"""The ``sims`` command line: a root app that only wires command groups together.

Each package registers its own group under the ``sims.commands`` entry point (see
pyproject.toml), so this root never imports the packages that build on memory_bank.
A :class:`~memory_bank.errors.SimsError` prints as one line; set ``SIMS_DEBUG=1`` for the
traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from importlib.metadata import entry_points

import typer

from memory_bank.errors import SimsError

ENTRY_POINT_GROUP = "sims.commands"


def build_app() -> typer.Typer:
    """The root app with every installed command group attached."""
    app = typer.Typer(
        name="sims",
        help="SIMS: semi-parametric image synthesis from a memory bank of real photo segments.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        app.add_typer(ep.load(), name=ep.name)
    return app


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (2 for a known SIMS error)."""
    debug = os.environ.get("SIMS_DEBUG", "") not in ("", "0")
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("faiss.loader", "distributed", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    command = typer.main.get_command(build_app())
    try:
        # Standalone mode: the CLI library prints usage errors itself and exits with its code
        # (typer >= 0.20 vendors click, so its exception types are not click's).
        command.main(args=argv, prog_name="sims", standalone_mode=True)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except SimsError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
