"""The agent's guardian (``agent.guardian``): it waits for the agent's death, not a pid's, and
heals until a pass lands; its command line (``client.find_guardian_pids`` is exercised on real
clusters in tests/netns/test_self_heal.py)."""

from __future__ import annotations

import subprocess
import sys
import time

from overlaynet.agent import client, guardian


def test_the_guardian_waits_for_the_death_of_the_process_and_no_longer():
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3)"])
    started = time.monotonic()
    guardian.wait_for_death(sleeper.pid, lambda pid: True)
    assert 0.2 < time.monotonic() - started < 5
    sleeper.wait()


def test_a_process_that_is_not_the_agent_is_not_waited_for():
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        started = time.monotonic()
        guardian.wait_for_death(sleeper.pid, lambda pid: False)
        assert time.monotonic() - started < 1
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_gone_process_is_healed_at_once_and_busy_or_failed_passes_are_tried_again(monkeypatch):
    monkeypatch.setattr(guardian, "RETRY_FIRST", 0.01)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    answers = iter([None, RuntimeError("store locked"), None, ["agent: did not answer; started again"]])
    passes = []

    def heal() -> list[str] | None:
        passes.append(time.monotonic())
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert guardian.guard(dead.pid, lambda pid: True, heal) == 0
    assert len(passes) == 4


def test_the_guardians_command_line_names_the_agent_it_guards_and_ends_as_the_agents_does(tmp_path):
    socket_path = str(tmp_path / "c.sock")
    argv = client.guardian_argv("c", socket_path, 4242)
    assert argv[1:5] == ["-m", "overlaynet.agent", "--guard", "4242"]
    assert argv[5:] == client.agent_argv("c", socket_path)[3:] == ["--cluster", "c", "--socket", socket_path]
