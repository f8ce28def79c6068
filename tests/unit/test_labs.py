"""The labs without root: every lab folder is complete and its two READMEs hold the same steps;
finding a lab, choosing the language, reading README steps, and a check over a fake CLI."""

from __future__ import annotations

import json
import pathlib
import re
import subprocess

import pytest

from overlaynet.cli import main
from overlaynet.errors import InvalidInput, NotFoundError
from overlaynet.tools import labs

LABS_DIR = pathlib.Path(__file__).resolve().parents[2] / "labs"
LABS = labs.all_labs(LABS_DIR)
SECTIONS = {"README.md": ("## Concepts", "## Steps", "## Questions", "## What a real cluster does differently"),
            "README.es.md": ("## Conceptos", "## Pasos", "## Preguntas", "## Qué hace distinto un clúster real")}


def test_labs_are_found_in_the_checkout():
    assert labs.labs_dir() == LABS_DIR
    assert [lab.nn for lab in LABS] == sorted({lab.nn for lab in LABS})
    assert LABS, "no lab folder under labs/"


@pytest.mark.parametrize("lab", LABS, ids=[lab.folder.name for lab in LABS])
def test_both_readmes_hold_the_same_steps(lab):
    english, spanish = ((lab.folder / name).read_text() for name in ("README.md", "README.es.md"))
    assert labs.readme_steps(english) == labs.readme_steps(spanish)
    assert sum(block.decisive for block in labs.readme_steps(english)) == 1
    for name, text in (("README.md", english), ("README.es.md", spanish)):
        for heading in SECTIONS[name]:
            assert f"\n{heading}\n" in text, f"{lab.folder.name}/{name} lacks {heading}"
        assert text.count("<details>") >= 2 and text.count("<details>") == text.count("</details>")
        assert text.startswith(f"# Lab {lab.nn} — ")
    # what the learner types names this lab's cluster, never another one
    for block in labs.readme_steps(english):
        assert not re.search(r"--name (?!%s\b)" % lab.cluster, block.script), block.script


@pytest.mark.parametrize("lab", LABS, ids=[lab.folder.name for lab in LABS])
def test_the_cluster_document_is_the_labs(lab):
    import yaml

    document = yaml.safe_load(lab.cluster_file.read_text())
    assert document["kind"] == "Cluster" and document["metadata"]["name"] == lab.cluster


def test_a_lab_is_found_by_number_folder_or_the_folder_one_is_in(tmp_path):
    lab = LABS[0]
    assert labs.find_lab(LABS, str(lab.number), tmp_path) is lab
    assert labs.find_lab(LABS, lab.nn, tmp_path) is lab
    assert labs.find_lab(LABS, lab.folder.name, tmp_path) is lab
    assert labs.find_lab(LABS, None, lab.folder) is lab
    assert labs.find_lab(LABS, None, lab.folder / "sub") is lab
    with pytest.raises(InvalidInput, match="which lab"):
        labs.find_lab(LABS, None, tmp_path)
    with pytest.raises(NotFoundError, match='lab "99" does not exist'):
        labs.find_lab(LABS, "99", tmp_path)


def test_a_broken_lab_folder_is_named(tmp_path):
    folder = tmp_path / "05-x"
    folder.mkdir()
    (folder / "lab.yaml").write_text("title: {en: X, es: X}\ncluster: missing.yaml\n")
    (folder / "check.py").write_text("")
    with pytest.raises(InvalidInput, match="lab \"05-x\": lab.yaml cluster 'missing.yaml' is not a file"):
        labs.read_lab(folder)
    with pytest.raises(InvalidInput, match="must be named NN-topic"):
        labs.read_lab(tmp_path)


@pytest.mark.parametrize("flag, environ, expected", [
    (None, {}, "en"),
    (None, {"LANG": "es_ES.UTF-8"}, "es"),
    (None, {"LANG": "es_AR.UTF-8", "LC_ALL": "C.UTF-8"}, "en"),
    (None, {"LANG": "en_US.UTF-8", "LC_ALL": "es_ES.UTF-8"}, "es"),
    (None, {"LC_MESSAGES": "es_MX"}, "es"),
    ("en", {"LANG": "es_ES.UTF-8"}, "en"),
    ("es", {}, "es"),
])
def test_the_language(flag, environ, expected):
    assert labs.choose_language(flag, environ) == expected


def test_readme_steps_are_the_sh_blocks_of_the_steps_section():
    text = ("## Concepts\n```sh\nnot a step\n```\n## Steps\n### 1. a\n```sh\none\n```\n```text\nout\n```\n"
            "<!-- decisive -->\n```sh\ntwo\nthree\n```\n## Questions\n```sh\nnot either\n```\n")
    assert labs.readme_steps(text) == [labs.StepBlock("one\n", False), labs.StepBlock("two\nthree\n", True)]


class FakeCli:
    """Answers overlaynet commands from a table; records what was asked."""

    def __init__(self, answers: dict[tuple[str, ...], tuple[int, str, str]]):
        self.answers, self.asked = answers, []

    def __call__(self, argv):
        self.asked.append(tuple(argv))
        code, out, err = self.answers.get(tuple(argv), (1, "", "error: unexpected"))
        return subprocess.CompletedProcess(argv, code, out, err)


def _clusters(*names):
    return json.dumps({"kind": "List", "items": [{"metadata": {"name": n}} for n in names]})


def test_a_check_on_a_lab_whose_cluster_is_down_says_how_to_start_it():
    lab = LABS[0]
    state = labs.LabState(lab, FakeCli({("get", "clusters", "-o", "json"): (0, _clusters("other"), "")}))
    [item] = labs.run_check(lab, state)
    assert not item.ok and item.as_dict("en")["hint"] == f"start the lab: overlaynet lab start {lab.nn}"
    assert item.as_dict("es")["what"] == f"el clúster {lab.cluster} no está levantado"


def test_get_reads_lists_objects_and_a_missing_object():
    lab = LABS[0]
    pods = json.dumps({"kind": "List", "items": [{"metadata": {"name": "a"}}]})
    fake = FakeCli({("get", "pods", "-o", "json", "--name", lab.cluster): (0, pods, ""),
                    ("get", "svc", "web", "-o", "json", "--name", lab.cluster):
                        (1, "", 'error: service "web" not found in namespace "default"')})
    state = labs.LabState(lab, fake)
    assert list(state.pods()) == ["a"]
    assert state.get("svc", "web") == []


def test_lab_list_through_the_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OVERLAYNET_STATE_DIR", str(tmp_path))
    assert main(["lab", "list", "--lang", "es"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:2] == ["LAB", "TÍTULO"]
    for lab in LABS:
        assert f"{lab.nn}     {lab.title('es')}" in out


def test_every_lab_subcommand_has_an_example_in_its_help(capsys):
    for command in ("list", "start", "check", "reset"):
        assert main(["lab", command, "--help"]) == 0
        assert re.search(r"Example:\n +overlaynet lab " + command, capsys.readouterr().out)
