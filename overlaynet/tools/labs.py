"""The course's labs: the folders under ``labs/NN-topic/``, found, started, checked and reset.

Owns: finding the lab folders (a checkout's ``labs/``, or ``$OVERLAYNET_LABS_DIR``); a lab's
definition (``lab.yaml``: its titles, its Cluster document, the manifests and commands that
``start`` applies); the lab's own cluster name (``lab03``: labs never touch the learner's other
clusters); the language of the messages (English, or Spanish by locale or ``--lang es``); and
the API a lab's ``check.py`` is written against (``LabState``: real state read through the
overlaynet CLI, its ``-o json``, ``rules`` and ``exec``; ``Item``: one line of the verdict).

Never: touches the kernel itself (every read goes through the ``overlaynet`` command, as a
learner's would), prints or exits (``cli/lab.py`` does).

A ``lab.yaml``::

    title: {en: Pods and the three rules, es: Los pods y las tres reglas}
    cluster: cluster.yaml          # a Cluster document in the lab's folder
    apply: [server.yaml]           # optional: manifests ``start`` applies, in order
    after_start: [[testserver, stop, web-1]]   # optional: overlaynet commands, e.g. broken state

A ``check.py`` defines ``check(lab: LabState) -> Iterable[Item]``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence

import yaml

from overlaynet.errors import InvalidInput, NotFoundError, OverlaynetError

LANGUAGES = ("en", "es")
_FOLDER = re.compile(r"^(\d{2})-[a-z0-9-]+$")
Text = tuple[str, str]  # (English, Spanish)


def labs_dir() -> pathlib.Path:
    """``$OVERLAYNET_LABS_DIR``, else the ``labs/`` of the checkout this package runs from."""
    configured = os.environ.get("OVERLAYNET_LABS_DIR")
    directory = pathlib.Path(configured) if configured else pathlib.Path(__file__).resolve().parents[2] / "labs"
    if not directory.is_dir():
        raise NotFoundError(f"labs folder {directory} does not exist (set OVERLAYNET_LABS_DIR to a checkout's labs/)")
    return directory


def choose_language(flag: str | None, environ: dict[str, str]) -> str:
    """``--lang``, else the locale as POSIX ranks it (LC_ALL, LC_MESSAGES, LANG): ``es*`` is Spanish."""
    if flag:
        return flag
    for variable in ("LC_ALL", "LC_MESSAGES", "LANG"):
        value = environ.get(variable, "")
        if value:
            return "es" if value.lower().startswith("es") else "en"
    return "en"


@dataclasses.dataclass(frozen=True)
class Lab:
    number: int
    folder: pathlib.Path
    titles: dict[str, str]
    cluster_file: pathlib.Path
    manifests: tuple[pathlib.Path, ...]
    after_start: tuple[tuple[str, ...], ...]

    @property
    def nn(self) -> str:
        return f"{self.number:02d}"

    @property
    def cluster(self) -> str:
        return f"lab{self.nn}"

    def title(self, lang: str) -> str:
        return self.titles[lang]


def read_lab(folder: pathlib.Path) -> Lab:
    """One lab from its folder's ``lab.yaml``; every file it names must exist."""
    match = _FOLDER.match(folder.name)
    if not match:
        raise InvalidInput(f'lab folder "{folder.name}": must be named NN-topic (e.g. 03-pods)')
    where = f'lab "{folder.name}"'
    try:
        definition = yaml.safe_load((folder / "lab.yaml").read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidInput(f"{where}: lab.yaml: {exc}") from None
    if not isinstance(definition, dict):
        raise InvalidInput(f"{where}: lab.yaml must be a mapping")
    titles = definition.get("title")
    if not isinstance(titles, dict) or set(titles) != set(LANGUAGES):
        raise InvalidInput(f"{where}: lab.yaml title must have exactly the keys en and es")

    def existing(name: object, field: str) -> pathlib.Path:
        path = folder / str(name)
        if not isinstance(name, str) or not path.is_file():
            raise InvalidInput(f"{where}: lab.yaml {field} {name!r} is not a file in the lab's folder")
        return path

    after_start = definition.get("after_start", [])
    if not isinstance(after_start, list) or not all(isinstance(c, list) and c for c in after_start):
        raise InvalidInput(f"{where}: lab.yaml after_start must be a list of overlaynet commands (lists of words)")
    existing("check.py", "check")
    return Lab(number=int(match.group(1)), folder=folder, titles={k: str(v) for k, v in titles.items()},
               cluster_file=existing(definition.get("cluster"), "cluster"),
               manifests=tuple(existing(m, "apply") for m in definition.get("apply", [])),
               after_start=tuple(tuple(str(word) for word in command) for command in after_start))


def all_labs(directory: pathlib.Path) -> list[Lab]:
    return [read_lab(path) for path in sorted(directory.iterdir()) if path.is_dir() and _FOLDER.match(path.name)]


def find_lab(labs: Sequence[Lab], wanted: str | None, cwd: pathlib.Path) -> Lab:
    """A lab by number (``3``, ``03``) or folder name; without one, the lab whose folder ``cwd`` is in."""
    if wanted is None:
        for lab in labs:
            if cwd == lab.folder or lab.folder in cwd.parents:
                return lab
        raise InvalidInput("which lab? name one (overlaynet lab check 03) or run this inside a lab's folder")
    for lab in labs:
        if (wanted.isdigit() and int(wanted) == lab.number) or wanted == lab.folder.name:
            return lab
    known = ", ".join(lab.nn for lab in labs)
    raise NotFoundError(f'lab "{wanted}" does not exist (labs: {known})')


# -- the check API -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Item:
    """One line of a check: what is right (``ok``) or missing, and for a missing one a hint."""

    ok: bool
    what: Text
    hint: Text = ("", "")

    def as_dict(self, lang: str) -> dict:
        index = LANGUAGES.index(lang)
        return {"ok": self.ok, "what": self.what[index], "hint": "" if self.ok else self.hint[index]}


Runner = Callable[[Sequence[str]], subprocess.CompletedProcess]


def run_overlaynet(argv: Sequence[str]) -> subprocess.CompletedProcess:
    """The ``overlaynet`` command of this interpreter, as a learner would type it."""
    return subprocess.run([sys.executable, "-m", "overlaynet", *argv], capture_output=True, text=True, timeout=120)


class LabState:
    """What a lab's check reads: the lab's cluster through the overlaynet CLI."""

    def __init__(self, lab: Lab, run: Runner = run_overlaynet) -> None:
        self.lab = lab
        self.cluster = lab.cluster
        self._run = run

    def overlaynet(self, *argv: str) -> subprocess.CompletedProcess:
        """``overlaynet ARGV --name <the lab's cluster>``; the exit status is the caller's to judge."""
        return self._run([*argv, "--name", self.cluster])

    def get(self, resource: str, name: str | None = None) -> list[dict]:
        """``get RESOURCE [NAME] -o json`` as a list of objects (empty when the object does not exist)."""
        result = self.overlaynet("get", resource, *([name] if name else []), "-o", "json")
        if result.returncode != 0:
            if name and "not found" in result.stderr + result.stdout:
                return []
            raise OverlaynetError(f"overlaynet get {resource}: {(result.stderr or result.stdout).strip()}")
        document = json.loads(result.stdout)
        return document["items"] if document.get("kind") == "List" else [document]

    def pods(self) -> dict[str, dict]:
        return {pod["metadata"]["name"]: pod for pod in self.get("pods", None)}

    def exec(self, target: str, *argv: str) -> subprocess.CompletedProcess:
        """``exec TARGET -- ARGV`` inside a pod, ``node/NODE`` or ``external``."""
        return self._run(["exec", "--name", self.cluster, target, "--", *argv])

    def rules(self, node: str, table: str = "nat") -> str:
        result = self.overlaynet("rules", node, "--table", table)
        if result.returncode != 0:
            raise OverlaynetError(f"overlaynet rules {node}: {(result.stderr or result.stdout).strip()}")
        return result.stdout

    def is_up(self) -> bool:
        listed = self._run(["get", "clusters", "-o", "json"])
        return listed.returncode == 0 and self.cluster in cluster_names(listed.stdout)


def cluster_names(get_clusters_json: str) -> set[str]:
    return {item["metadata"]["name"] for item in json.loads(get_clusters_json)["items"]}


def load_check(lab: Lab) -> Callable[[LabState], Iterable[Item]]:
    spec = importlib.util.spec_from_file_location(f"overlaynet_lab_{lab.nn}_check", lab.folder / "check.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.check


def run_check(lab: Lab, state: LabState) -> list[Item]:
    """The lab's items, or the one item that says its cluster is not up."""
    if not state.is_up():
        return [Item(False, (f"cluster {lab.cluster} is not up", f"el clúster {lab.cluster} no está levantado"),
                     (f"start the lab: overlaynet lab start {lab.nn}", f"arranca el lab: overlaynet lab start {lab.nn}"))]
    return list(load_check(lab)(state))


# -- the README's steps, as a test reads them --------------------------------------------------

DECISIVE_MARKER = "<!-- decisive -->"
STEPS_HEADINGS = ("## Steps", "## Pasos")


@dataclasses.dataclass(frozen=True)
class StepBlock:
    """One ```sh block of a README's numbered steps; ``decisive`` when the check turns green after it."""

    script: str
    decisive: bool


def readme_steps(text: str) -> list[StepBlock]:
    """The ```sh blocks between the Steps (Pasos) heading and the next ``## `` heading, in order."""
    blocks: list[StepBlock] = []
    lines = text.splitlines()
    inside_steps = marked = False
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("## "):
            inside_steps = line.strip() in STEPS_HEADINGS
        elif inside_steps and line.strip() == DECISIVE_MARKER:
            marked = True
        elif inside_steps and line.strip() == "```sh":
            end = lines.index("```", index + 1)
            blocks.append(StepBlock("\n".join(lines[index + 1:end]) + "\n", marked))
            marked = False
            index = end
        index += 1
    return blocks
