"""The ``overlaynet`` command line: kubectl's verbs for an emulated cluster network.

This is an edge: it parses flags, calls the controller, prints tables and documents in
kubectl's shapes, and turns ``OverlaynetError`` into one line on stderr and an exit code.
No other module prints or exits. ``main(argv) -> int`` is the whole interface.
"""

from __future__ import annotations

import sys

import click

from overlaynet.errors import OverlaynetError

__all__ = ["entry", "main"]


def main(argv: list[str] | None = None) -> int:
    from overlaynet.cli.commands import cli

    try:
        returned = cli.main(args=argv, prog_name="overlaynet", standalone_mode=False)
    except OverlaynetError as exc:
        click.echo(f"error: {exc}", err=True)
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    return returned if isinstance(returned, int) else 0


def entry() -> None:
    sys.exit(main())
