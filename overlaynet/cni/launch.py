"""How an overlaynet CNI executable gets the Python interpreter overlaynet is installed in.

A container runtime execs a plugin by its type name with an environment of its own choosing,
so a plugin cannot count on the ``python3`` it finds on ``PATH``: on plain Debian 12 that is
the externally managed system Python, without pyroute2 or click, while overlaynet lives in a
virtual environment. This module owns the two ways a plugin reaches the right interpreter:

- **in a checkout** (``cni_plugins/overlaynet-*``, what the kubelet side execs and a learner
  runs by hand): the file starts under any ``python3 -S`` and ``main`` re-executes it, before
  reading stdin, under ``$OVERLAYNET_PYTHON`` when that is set, else the checkout's
  ``.venv/bin/python`` when ``scripts/setup`` made one; otherwise it stays where it is, which
  on a host whose ``python3`` has the dependencies (a pyenv or source-built Python) is right;
- **installed elsewhere** (``overlaynet cni install --dir /opt/cni/bin``, for another runtime or
  ``cnitool``): ``render_installed_plugin`` writes a launcher whose ``#!`` line names the
  interpreter that ran the install, and ``install_plugins`` puts the three into a directory.

Either way the plugin's work is ``skel.main``; a plugin whose interpreter cannot import
overlaynet's dependencies answers with a CNI error saying so and how to fix it (``skel``).
Only the standard library is imported here: this is on the start-up path of every pod.
"""

from __future__ import annotations

import os
import sys

PLUGINS = ("overlaynet-flannel", "overlaynet-calico", "overlaynet-ipam")
SHIM = "overlaynet-cni-shim"  # the compiled front scripts/setup builds into cni_plugins/bin
PYTHON_ENV = "OVERLAYNET_PYTHON"  # the interpreter to run the plugins under, when set
_CHOSEN_ENV = "OVERLAYNET_PLUGIN_PYTHON"  # set on the re-exec: never re-execute twice
CHECKOUT_VENV = ".venv"
FIX = ("run scripts/setup in the overlaynet checkout (it installs the dependencies), set "
       f"{PYTHON_ENV} to the Python overlaynet is installed in, or write plugins for that Python "
       "with: overlaynet cni install --dir DIR")


def import_root() -> str:
    """The directory that holds the ``overlaynet`` package: a checkout's root when it is
    installed editable, else the site-packages it was installed into."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def own_plugin_dir() -> str:
    """The one place overlaynet's own plugin executables are: a checkout's ``cni_plugins/``,
    else (a non-editable install) ``<prefix>/lib/overlaynet/cni``, where ``ensure_plugin_dir``
    writes the launchers for this interpreter."""
    checkout = os.path.join(import_root(), "cni_plugins")
    if os.path.isdir(checkout):
        return checkout
    return os.path.join(sys.prefix, "lib", "overlaynet", "cni")


def compiled_plugin_dir() -> str | None:
    """A checkout's ``cni_plugins/bin``, when ``scripts/setup`` built the plugins' compiled front
    there (``cni_plugins/shim``: the thin path in C, the Python plugin for everything else) and
    it is not older than its source; else None, and the Python plugins answer alone."""
    checkout = os.path.join(import_root(), "cni_plugins")
    built = os.path.join(checkout, "bin")
    try:
        stale = os.stat(os.path.join(built, SHIM)).st_mtime < os.stat(os.path.join(checkout, "shim", f"{SHIM}.c")).st_mtime
    except OSError:
        return None
    if stale or not all(os.access(os.path.join(built, plugin), os.X_OK) for plugin in PLUGINS):
        return None
    return built


def ensure_plugin_dir() -> str:
    """``own_plugin_dir()``, with the launchers written there first when they are missing."""
    directory = own_plugin_dir()
    if not all(os.access(os.path.join(directory, plugin), os.X_OK) for plugin in PLUGINS):
        install_plugins(directory)
    return directory


def choose_interpreter(environ: dict[str, str], root: str) -> str | None:
    """The interpreter to re-execute under, or None to stay in this one."""
    if environ.get(_CHOSEN_ENV):
        return None
    wanted = environ.get(PYTHON_ENV)
    if wanted:
        return None if os.path.abspath(wanted) == os.path.abspath(sys.executable) else wanted
    venv = os.path.join(root, CHECKOUT_VENV)
    python = os.path.join(venv, "bin", "python")
    if os.access(python, os.X_OK) and os.path.realpath(sys.prefix) != os.path.realpath(venv):
        return python
    return None


def main(plugin: str) -> int:
    """The body of a checkout's plugin executable: the right interpreter, then ``skel.main``."""
    python = choose_interpreter(dict(os.environ), import_root())
    if python is not None:
        os.environ[_CHOSEN_ENV] = python
        try:
            os.execv(python, [python, "-S", sys.argv[0], *sys.argv[1:]])
        except OSError as exc:  # a broken OVERLAYNET_PYTHON or .venv: the plugin's error says so
            print(startup_error(plugin, f"cannot run {python} (from {PYTHON_ENV} or the checkout's "
                                f"{CHECKOUT_VENV}): {exc.strerror}"))
            return 1
    os.environ.pop(_CHOSEN_ENV, None)
    from overlaynet.cni import skel

    return skel.main(plugin)


def startup_error(plugin: str, msg: str, details: str = FIX) -> str:
    """The CNI error document a plugin prints when it cannot start its real work."""
    import json

    return json.dumps({"cniVersion": "1.0.0", "code": 999, "msg": f"{plugin}: {msg}", "details": details})


def render_installed_plugin(plugin: str, python: str, root: str) -> str:
    """The launcher ``overlaynet cni install`` writes: a POSIX shell script that runs the plugin
    under ``python`` (without site, as the checkout's plugins are) with overlaynet imported
    from ``root``, and answers with a CNI error when that interpreter or overlaynet is gone."""
    import json
    import shlex

    reinstall = ("install overlaynet again for that Python, then write the plugins again with it: "
                 "overlaynet cni install --dir DIR")
    literal = json.dumps  # a JSON string is a Python string literal, in double quotes
    code = (f"import sys\nsys.path.insert(0, {literal(root)})\n"
            "try:\n    from overlaynet.cni import skel\n"
            f"except ImportError:\n    print({literal(startup_error(plugin, f'overlaynet is not importable from {root}', reinstall))})\n"
            "    sys.exit(1)\n"
            f"sys.exit(skel.main({literal(plugin)}))\n")
    gone = startup_error(plugin, f"its Python {python} is not there", reinstall)
    return ("#!/bin/sh\n"
            f"# The CNI plugin {plugin}, written by `overlaynet cni install` for {python}.\n"
            f"[ -x {shlex.quote(python)} ] || {{ printf '%s\\n' {shlex.quote(gone)}; exit 1; }}\n"
            f"exec {shlex.quote(python)} -S -c {shlex.quote(code)} \"$@\"\n")


def install_plugins(directory: str, python: str | None = None) -> list[str]:
    """Write the three plugin launchers into ``directory`` (made if missing); their paths.

    Each file is written beside its final name and renamed over it, so a runtime that execs a
    plugin meanwhile runs the old or the new one, never half a file."""
    python = python or sys.executable
    os.makedirs(directory, exist_ok=True)
    written = []
    for plugin in PLUGINS:
        path = os.path.join(directory, plugin)
        partial = f"{path}.tmp-{os.getpid()}"
        with open(partial, "w", encoding="utf-8") as handle:
            handle.write(render_installed_plugin(plugin, python, import_root()))
        os.chmod(partial, 0o755)
        os.replace(partial, path)
        written.append(path)
    return written
