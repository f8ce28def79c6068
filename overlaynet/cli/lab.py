"""``overlaynet lab list|start|check|reset``: the course's labs from the command line (click).

An edge: it finds the lab (tools/labs.py), runs the overlaynet commands that bring its cluster
up or down, prints a check's items in the learner's language and sets the exit status.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

import click

from overlaynet.errors import OverlaynetError
from overlaynet.tools import labs

_LANG = click.option("--lang", type=click.Choice(labs.LANGUAGES),
                     help="Language of the messages (default: es when LANG or LC_ALL is Spanish, else en).")
_WHICH = click.argument("which", metavar="[NN]", required=False)


def _say(lang: str, english: str, spanish: str) -> str:
    return spanish if lang == "es" else english


def _lab(which: str | None) -> labs.Lab:
    return labs.find_lab(labs.all_labs(labs.labs_dir()), which, pathlib.Path.cwd().resolve())


def _overlaynet(*argv: str, quiet: bool = False) -> None:
    """Run an overlaynet command, its output shown (``quiet``: only if it fails, so that a
    break-it lab's fault stays the learner's to find); a failure stops the lab command."""
    done = subprocess.run([sys.executable, "-m", "overlaynet", *argv], capture_output=quiet, text=True)
    if done.returncode != 0:
        if quiet:
            click.echo(done.stdout + done.stderr, err=True, nl=False)
        raise OverlaynetError(f"overlaynet {' '.join(argv)} failed (see above)")


@click.group("lab")
def lab() -> None:
    """The course's labs, each on its own cluster (lab01, lab02, ...).

    \b
    Example:
      overlaynet lab list
      overlaynet lab start 03 && cd labs/03-pods-three-rules
    """


@lab.command("list")
@_LANG
def lab_list(lang):
    """Every lab: its number, title and whether its cluster is up.

    \b
    Example:
      overlaynet lab list --lang es
    """
    lang = labs.choose_language(lang, dict(os.environ))
    found = labs.all_labs(labs.labs_dir())
    listed = subprocess.run([sys.executable, "-m", "overlaynet", "get", "clusters", "-o", "json"],
                            capture_output=True, text=True)
    running = labs.cluster_names(listed.stdout) if listed.returncode == 0 else set()
    from overlaynet.cli.output import table

    up, down = _say(lang, "up", "levantado"), "-"
    click.echo(table(["LAB", _say(lang, "TITLE", "TÍTULO"), _say(lang, "CLUSTER", "CLÚSTER"), _say(lang, "STATUS", "ESTADO"),
                      _say(lang, "FOLDER", "CARPETA")],
                     [[lab.nn, lab.title(lang), lab.cluster, up if lab.cluster in running else down,
                       f"labs/{lab.folder.name}"] for lab in found]))


@lab.command("start")
@_WHICH
@_LANG
def lab_start(which, lang):
    """Bring up a lab's own cluster and apply what the lab begins with.

    NN is the lab's number (3 or 03) or its folder name; inside a lab's folder it may be left out.

    \b
    Example:
      overlaynet lab start 03
    """
    lang = labs.choose_language(lang, dict(os.environ))
    chosen = _lab(which)
    _overlaynet("up", "-f", str(chosen.cluster_file), "--name", chosen.cluster)
    for manifest in chosen.manifests:
        _overlaynet("apply", "-f", str(manifest), "--name", chosen.cluster)
    for command in chosen.after_start:
        _overlaynet(*command, "--name", chosen.cluster, quiet=True)
    click.echo(_say(lang, f"Lab {chosen.nn} ({chosen.title(lang)}) is ready on cluster {chosen.cluster}. "
                          f"Follow labs/{chosen.folder.name}/README.md, then: overlaynet lab check {chosen.nn}",
                    f"El lab {chosen.nn} ({chosen.title(lang)}) está listo en el clúster {chosen.cluster}. "
                    f"Sigue labs/{chosen.folder.name}/README.es.md y luego: overlaynet lab check {chosen.nn}"))


@lab.command("check")
@_WHICH
@_LANG
@click.option("-o", "--output", type=click.Choice(["json"]), help="json for scripts.")
@click.pass_context
def lab_check(ctx, which, lang, output):
    """Say, item by item, what is right and what is missing; exit 0 only when all is right.

    \b
    Example:
      overlaynet lab check 03
      cd labs/03-pods-three-rules && overlaynet lab check -o json
    """
    lang = labs.choose_language(lang, dict(os.environ))
    chosen = _lab(which)
    started = time.monotonic()
    items = labs.run_check(chosen, labs.LabState(chosen))
    seconds = time.monotonic() - started
    passed = all(item.ok for item in items)
    if output == "json":
        click.echo(json.dumps({"lab": chosen.nn, "cluster": chosen.cluster, "passed": passed,
                               "seconds": round(seconds, 3), "items": [i.as_dict(lang) for i in items]}, indent=2, ensure_ascii=False))
    else:
        click.echo(f"Lab {chosen.nn}: {chosen.title(lang)} ({_say(lang, 'cluster', 'clúster')} {chosen.cluster})")
        for item in items:
            shown = item.as_dict(lang)
            click.echo(f"{'✓' if item.ok else '✗'} {shown['what']}")
            if shown["hint"]:
                click.echo(f"  {_say(lang, 'hint', 'pista')}: {shown['hint']}")
        right = sum(item.ok for item in items)
        click.echo(_say(lang, f"{right} of {len(items)} right", f"{right} de {len(items)} correctos")
                   + f" ({seconds:.1f}s)")
    ctx.exit(0 if passed else 1)


@lab.command("reset")
@_WHICH
@_LANG
def lab_reset(which, lang):
    """Remove a lab's cluster and everything it made (nothing else), with the namespaces its
    steps make by hand (named after the cluster: lab12-byhand).

    \b
    Example:
      overlaynet lab reset 03
    """
    from overlaynet.kernel import netns

    lang = labs.choose_language(lang, dict(os.environ))
    chosen = _lab(which)
    for name in netns.list_names():
        if name.startswith(f"{chosen.cluster}-"):
            netns.delete(name)
            click.echo(_say(lang, f"namespace {name} removed", f"namespace {name} eliminado"))
    if not labs.LabState(chosen).is_up():
        click.echo(_say(lang, f"cluster {chosen.cluster} is not up: nothing to remove",
                        f"el clúster {chosen.cluster} no está levantado: no hay nada que quitar"))
        return
    _overlaynet("down", "--name", chosen.cluster)
