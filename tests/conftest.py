"""Suite-wide fixtures: a snapshot of the host at the start, the ``netns`` marker on every test
that needs root (tests/netns/ and the leak check), and the ordering that makes the leak check
(tests/test_zz_leaks.py) the very last test of every run."""

from __future__ import annotations

import os
import pathlib
import subprocess

import pytest

from overlaynet.kernel import netns

TESTS = pathlib.Path(__file__).parent
ROOT_TESTS = (TESTS / "netns", TESTS / "test_zz_leaks.py")  # they need root and make kernel objects


def host_snapshot() -> dict:
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {
        "netns": set(netns.list_names()),
        "links": {line.split(":")[1].strip().split("@")[0] for line in links.splitlines()},
        "agents": agent_processes(),
        "sysctls": host_sysctls(),
        "etc_netns": set(os.listdir("/etc/netns")) if os.path.isdir("/etc/netns") else set(),  # pods' resolv.conf
    }


def host_sysctls() -> dict[str, str]:
    """Host-wide settings overlaynet may raise while a cluster exists, and must put back."""
    from overlaynet.kernel import host

    keys = list(host.NEIGHBOUR_TABLE_LIMITS) + ["net.ipv4.ip_forward"]
    return {key: open("/proc/sys/" + key.replace(".", "/")).read().strip() for key in keys}


def agent_processes() -> set[str]:
    found = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                argv = handle.read().split(b"\0")
        except OSError:
            continue
        if b"overlaynet.agent" in argv:
            found.add(f"{pid}: {b' '.join(argv).decode(errors='replace')}")
    return found


def pytest_sessionstart(session):
    session.config.host_before = host_snapshot() if os.geteuid() == 0 else None


def pytest_collection_modifyitems(config, items):
    for item in items:
        if any(item.path == root or root in item.path.parents for root in ROOT_TESTS):
            item.add_marker(pytest.mark.netns)
    items.sort(key=lambda item: item.nodeid.startswith("tests/test_zz_leaks.py"))


@pytest.fixture(scope="session")
def host_before(request):
    return request.config.host_before
