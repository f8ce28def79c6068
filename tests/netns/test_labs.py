"""Every lab, run from a fresh cluster as a learner would: the ```sh blocks of its README's
steps, in order (so text and test cannot drift), with `overlaynet lab check` red (exit 1, a ✗
and a hint) before the block marked `<!-- decisive -->` and green (exit 0) after it, then
`overlaynet lab reset`. Each lab's check time is printed (pytest -s shows it)."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import pytest

from overlaynet.tools import labs
from tests.netns.clusters import REPO, agent_story, short_state_dir

LABS = labs.all_labs(pathlib.Path(REPO) / "labs")


@pytest.fixture
def learner_env(tmp_path):
    """A shell whose `overlaynet` is this checkout's, with its own state directory."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "overlaynet").write_text(f'#!/bin/sh\nexec {sys.executable} -m overlaynet "$@"\n')
    (bin_dir / "overlaynet").chmod(0o755)
    state_dir = short_state_dir()
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": REPO,
           "OVERLAYNET_STATE_DIR": state_dir, "LANG": "C.UTF-8"}
    env.pop("LC_ALL", None)
    yield env
    subprocess.run([sys.executable, "-m", "overlaynet", "down", "--all"], env=env, capture_output=True)
    for leftover in pathlib.Path("/tmp").glob("lab[0-9][0-9]-*"):  # the files a README's steps write
        shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()


def run_block(script: str, env: dict, cwd: pathlib.Path) -> None:
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], env=env, cwd=cwd,
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, f"{cwd.name}: this block exited {result.returncode}:\n{script}\n" \
                                   f"{result.stdout}\n{result.stderr}"


def lab_check(env: dict, cwd: pathlib.Path) -> tuple[int, dict, float]:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "overlaynet", "lab", "check", "-o", "json"], env=env, cwd=cwd,
                            capture_output=True, text=True, timeout=180)
    return result.returncode, json.loads(result.stdout), time.monotonic() - started


def red_items(report: dict) -> str:
    """What a failed check says, item by item (the whole report is cut short by pytest)."""
    return "; ".join(f'{item["what"]} (hint: {item["hint"]})' for item in report["items"] if not item["ok"])


@pytest.mark.parametrize("lab", LABS, ids=[lab.folder.name for lab in LABS])
def test_lab_as_a_learner(lab, learner_env):
    blocks = labs.readme_steps((lab.folder / "README.md").read_text())
    decisive = [i for i, block in enumerate(blocks) if block.decisive]
    assert len(decisive) == 1, f"{lab.folder.name}: README.md needs exactly one {labs.DECISIVE_MARKER}"
    try:
        started = time.monotonic()
        for index, block in enumerate(blocks):
            if index == decisive[0]:
                code, report, _ = lab_check(learner_env, lab.folder)
                assert code == 1 and not report["passed"], report
                missing = [item for item in report["items"] if not item["ok"]]
                assert missing and all(item["hint"] for item in missing), report
            run_block(block.script, learner_env, lab.folder)
            if index == decisive[0]:
                code, report, seconds = lab_check(learner_env, lab.folder)
                assert code == 0 and report["passed"], f"{red_items(report)}\n{agent_story(learner_env['OVERLAYNET_STATE_DIR'], lab.cluster)}"
                print(f"\nlab {lab.nn}: check green in {seconds:.2f}s")
        code, report, _ = lab_check(learner_env, lab.folder)
        assert code == 0, f"{lab.folder.name}: the last steps turned the check red again: {red_items(report)}"
    finally:  # a failed step must not leave the lab's cluster or its hand-made namespaces behind
        reset = subprocess.run([sys.executable, "-m", "overlaynet", "lab", "reset"], env=learner_env,
                               cwd=lab.folder, capture_output=True, text=True, timeout=120)
    assert reset.returncode == 0, reset.stderr
    listed = subprocess.run([sys.executable, "-m", "overlaynet", "get", "clusters", "-o", "json"], env=learner_env,
                            capture_output=True, text=True)
    assert lab.cluster not in labs.cluster_names(listed.stdout)
    print(f"lab {lab.nn}: all {len(blocks)} blocks in {time.monotonic() - started:.1f}s")
