"""``overlaynet doctor``, ``graph`` and ``capture``: the host's readiness, a running cluster's
topology as a picture, and packets on the wire decoded layer by layer.

An edge: each command observes through ``overlaynet.kernel`` (``preflight``, ``topology``,
``capture``), hands the facts to the pure ``overlaynet.tools`` module that judges, lays out or
decodes them, and prints. Running Graphviz's ``dot`` (argv, never a shell) and writing the
files a user asked for also happen here. Colour only on a terminal (click strips it elsewhere).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import click

from overlaynet import names
from overlaynet.api.manifests import DEFAULT_NAMESPACE
from overlaynet.cli.commands import _manager, _resolve_cluster, cluster_option, require_privileges
from overlaynet.errors import HostError, InvalidInput, NotFoundError

_MARKS = {"ok": ("✓", "green"), "warn": ("!", "yellow"), "fail": ("✗", "red")}


# -- doctor ------------------------------------------------------------------------------------


@click.command()
@click.option("-o", "--output", type=click.Choice(["json"]), help="json for scripts.")
@click.pass_context
def doctor(ctx, output):
    """Check this host (or VM) for what overlaynet and its labs need, each failure with its fix.

    Exit status 0 when nothing failed (warnings allowed), 1 otherwise.

    \b
    Example:
      sudo overlaynet doctor
      sudo overlaynet doctor -o json | jq '.checks[] | select(.status != "ok")'
    """
    from overlaynet.kernel import preflight
    from overlaynet.tools import doctor as doctoring

    report = doctoring.judge(preflight.observe_host())
    if output == "json":
        click.echo(json.dumps({"passed": report.passed, "summary": report.summary(),
                               "checks": [c.as_dict() for c in report.checks]}, indent=2))
    else:
        width = max(len(c.name) for c in report.checks) + 2
        for check in report.checks:
            mark, colour = _MARKS[check.status]
            click.echo(f"{click.style(mark, fg=colour)} {check.name:<{width}}{check.detail}")
            if check.fix:
                click.echo(f"  {'':<{width}}fix: {click.style(check.fix, bold=True)}")
        click.echo(report.summary())
    ctx.exit(0 if report.passed else 1)
