"""Rendering for the CLI: kubectl-shaped tables, lists and documents (pure)."""

from __future__ import annotations

import datetime
import json

import yaml
from tabulate import tabulate


def table(header: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns with three spaces between them, as kubectl prints."""
    if not rows:
        return ""
    text = tabulate(rows, headers=header, tablefmt="plain", disable_numparse=True, stralign="left")
    return "\n".join(line.rstrip() for line in text.splitlines())


def age(timestamp: str | None) -> str:
    if not timestamp:
        return "<unknown>"
    then = datetime.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    seconds = int((datetime.datetime.now(datetime.timezone.utc) - then).total_seconds())
    if seconds < 120:
        return f"{max(seconds, 0)}s"
    if seconds < 3 * 3600:
        return f"{seconds // 60}m"
    if seconds < 48 * 3600:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def document(objects: list[dict], fmt: str, single: bool) -> str:
    """``-o json|yaml``: one object as itself, several as a ``List`` with ``items``."""
    value = objects[0] if single else {"apiVersion": "v1", "kind": "List", "items": objects, "metadata": {}}
    if fmt == "json":
        return json.dumps(value, indent=4)
    return yaml.safe_dump(value, sort_keys=False, default_flow_style=False).rstrip()
