"""The last test of the suite: whatever the tests did, the host is as it was before."""

import os

import pytest

from tests.conftest import agent_processes, host_snapshot


@pytest.mark.skipif(os.geteuid() != 0, reason="the leak check compares kernel state, which needs root")
def test_nothing_leaked(host_before):
    after = host_snapshot()
    assert after["netns"] - host_before["netns"] == set(), "network namespaces left behind"
    assert after["links"] - host_before["links"] == set(), "interfaces left behind in the host namespace"
    assert agent_processes() - host_before["agents"] == set(), "agent processes left behind"
    assert after["sysctls"] == host_before["sysctls"], "host-wide sysctls not restored"
    assert after["etc_netns"] - host_before["etc_netns"] == set(), "/etc/netns entries (pods' resolv.conf) left behind"
