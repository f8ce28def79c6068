"""Every command of the CLI says how it is used with an example, and completes in a shell (no root)."""

from __future__ import annotations

import os
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from overlaynet.cli.commands import cli


def leaf_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            found += leaf_commands(command, (*prefix, name))
        else:
            found.append((*prefix, name))
    return found


@pytest.mark.parametrize("path", leaf_commands(cli), ids=" ".join)
def test_every_command_has_help_with_an_example(path):
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example:" in result.output, f"overlaynet {' '.join(path)} --help has no example"
    assert f"overlaynet {' '.join(path)}" in result.output.split("Example:", 1)[1]


def completions(words: str, cword: int) -> set[str]:
    """What bash completion offers (click answers one ``type,value`` line per candidate)."""
    env = {**os.environ, "_OVERLAYNET_COMPLETE": "bash_complete", "COMP_WORDS": words, "COMP_CWORD": str(cword)}
    out = subprocess.run([sys.executable, "-m", "overlaynet"], env=env, capture_output=True, text=True).stdout
    return {line.split(",", 1)[1] for line in out.splitlines() if "," in line}


def test_bash_completion_completes_commands_and_their_options():
    script = CliRunner().invoke(cli, ["completion", "bash"]).output
    assert "_OVERLAYNET_COMPLETE" in script and "complete " in script
    assert completions("overlaynet tr", 1) == {"trace"}
    assert {"wide", "json", "yaml"} <= completions("overlaynet get pods -o ", 4)


@pytest.mark.parametrize("args, message", [
    (["testserver", "serve"], "--netns is required"),
    (["testserver", "serve", "--netns", "../etc"], 'network namespace name "../etc" is not valid'),
    (["testserver", "serve", "--netns", "x", "--port", "80/sctp"], '--port "80/sctp"'),
    (["testserver", "serve", "--netns", "x", "--port", "0"], '--port "0"'),
    (["testserver", "serve", "web-1", "--netns", "x"], "takes --netns, not a pod"),
    (["testserver", "stop", "web-1", "--port", "80"], "are for `testserver serve`"),
])
def test_testserver_serve_refuses_bad_input_with_one_line(args, message):
    result = subprocess.run([sys.executable, "-m", "overlaynet", *args], capture_output=True, text=True)
    assert result.returncode != 0 and message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
