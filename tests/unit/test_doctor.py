"""overlaynet.tools.doctor: each check judged from facts, with its fix; no root."""

from __future__ import annotations

import dataclasses

import pytest

from overlaynet.kernel.host import NEIGHBOUR_TABLE_LIMITS
from overlaynet.tools import doctor
from overlaynet.tools.doctor import FAIL, OK, WARN


def healthy(**changes) -> doctor.HostFacts:
    facts = doctor.HostFacts(
        euid=0,
        capabilities=frozenset({"CAP_SYS_ADMIN", "CAP_NET_ADMIN"}),
        kernel={feature: None for feature in doctor.KERNEL_FEATURES},
        iptables_version="iptables v1.8.9 (nf_tables)",
        legacy_rules=0,
        nft_rules=12,
        forward_policies={"nf_tables": "ACCEPT"},
        docker_chains=False,
        ip_forward="1",
        bridge_nf_call_iptables="1",
        neighbour_limits=dict(NEIGHBOUR_TABLE_LIMITS),
        neighbour_limits_writable=True,
        programs={name: f"/usr/bin/{name}" for p in doctor.PROGRAMS for name in p.names},
        cni_plugins={p: True for p in doctor.CNI_PLUGINS},
    )
    return dataclasses.replace(facts, **changes)


def check(report: doctor.Report, name: str) -> doctor.Check:
    return next(c for c in report.checks if c.name == name)


def test_a_healthy_host_passes_every_check():
    report = doctor.judge(healthy())
    assert report.passed and {c.status for c in report.checks} == {OK}
    assert report.summary() == f"all {len(report.checks)} checks passed: ready for overlaynet and its labs"


def test_without_root_the_root_check_fails_and_names_the_missing_capability():
    report = doctor.judge(healthy(capabilities=frozenset({"CAP_NET_ADMIN"}), kernel={}))
    root = check(report, "root")
    assert root.status == FAIL and "missing CAP_SYS_ADMIN" in root.detail and root.fix.startswith("sudo ")
    assert check(report, "vxlan").status == WARN and "not probed" in check(report, "vxlan").detail
    assert not report.passed


def test_a_kernel_without_vxlan_fails_with_modprobe_as_the_fix():
    report = doctor.judge(healthy(kernel={**healthy().kernel, "vxlan": "Operation not supported"}))
    vxlan = check(report, "vxlan")
    assert (vxlan.status, vxlan.fix) == (FAIL, "modprobe vxlan") and "Operation not supported" in vxlan.detail
    assert not report.passed


def test_rules_in_both_iptables_backends_warn():
    mixed = check(doctor.judge(healthy(legacy_rules=3, nft_rules=40)), "iptables backend")
    assert mixed.status == WARN and "3 legacy, 40 nf_tables" in mixed.detail and "iptables-legacy-save" in mixed.fix
    assert check(doctor.judge(healthy(legacy_rules=3, nft_rules=0)), "iptables backend").status == OK


def test_missing_iptables_fails():
    result = check(doctor.judge(healthy(iptables_version=None)), "iptables backend")
    assert (result.status, result.fix) == (FAIL, "apt-get install -y iptables")


def test_dockers_forward_drop_warns_with_the_docker_user_fix():
    facts = healthy(forward_policies={"legacy": "DROP", "nf_tables": "ACCEPT"}, docker_chains=True)
    result = check(doctor.judge(facts), "FORWARD policy")
    assert result.status == WARN and "Docker set it, legacy" in result.detail
    assert result.fix == "iptables -I DOCKER-USER -j ACCEPT"
    plain = check(doctor.judge(healthy(forward_policies={"nf_tables": "DROP"})), "FORWARD policy")
    assert plain.fix == "iptables -P FORWARD ACCEPT"
    unread = check(doctor.judge(healthy(forward_policies=None)), "FORWARD policy")
    assert unread.status == WARN and "needs root" in unread.detail


def test_sysctls_warn_with_their_sysctl_fix():
    assert check(doctor.judge(healthy(ip_forward="0")), "ip_forward").fix == "sysctl -w net.ipv4.ip_forward=1"
    unloaded = check(doctor.judge(healthy(bridge_nf_call_iptables=None)), "br_netfilter")
    assert (unloaded.status, unloaded.fix) == (WARN, "modprobe br_netfilter")
    off = check(doctor.judge(healthy(bridge_nf_call_iptables="0")), "br_netfilter")
    assert off.fix == "sysctl -w net.bridge.bridge-nf-call-iptables=1"


def test_low_arp_limits_are_fine_when_up_can_raise_them_and_a_warning_when_it_cannot():
    low = {key: 128 for key in NEIGHBOUR_TABLE_LIMITS}
    raisable = check(doctor.judge(healthy(neighbour_limits=low)), "ARP table limits")
    assert raisable.status == OK and "`up` raises them to 4096/16384/32768" in raisable.detail
    stuck = check(doctor.judge(healthy(neighbour_limits=low, neighbour_limits_writable=False)), "ARP table limits")
    assert stuck.status == WARN and "sysctl -w net.ipv4.neigh.default.gc_thresh3=32768" in stuck.fix


@pytest.mark.parametrize("program, label, status, package", [
    ("ip", "ip, bridge", FAIL, "iproute2"),
    ("iptables-restore", "iptables-save", FAIL, "iptables"),
    ("nsenter", "nsenter", FAIL, "util-linux"),
    ("tcpdump", "tcpdump", WARN, "tcpdump"),
    ("birdc", "bird, birdc", WARN, "bird2"),
    ("conntrack", "conntrack", WARN, "conntrack"),
    ("dot", "dot", WARN, "graphviz"),
])
def test_a_missing_program_names_its_package(program, label, status, package):
    facts = healthy(programs={**healthy().programs, program: None})
    report = doctor.judge(facts)
    result = check(report, label)
    assert (result.status, result.fix) == (status, f"apt-get install -y {package}")
    assert f"{program} not found" in result.detail
    assert report.passed == (status != FAIL)


def test_missing_cni_plugins_warn():
    result = check(doctor.judge(healthy(cni_plugins={"bridge": True})), "CNI plugins")
    assert result.status == WARN and "host-local, loopback, portmap not in /usr/lib/cni" in result.detail
    assert result.fix == "apt-get install -y containernetworking-plugins"


def test_warnings_alone_pass_and_the_summary_counts_them():
    report = doctor.judge(healthy(ip_forward="0", bridge_nf_call_iptables=None))
    assert report.passed
    assert report.summary() == f"2 warnings of {len(report.checks)} checks: ready (the warnings concern some labs)"
