"""What the self-heal watcher (``agent.watcher``) takes for a change worth a pass: nf_tables
events as iptables-nft sends them (a datagram of netlink headers), and the rule lines the pass
compares (``proxy.rules.owned_rule_lines``)."""

from __future__ import annotations

import struct

from overlaynet.agent.watcher import NFNL_SUBSYS_NFTABLES, rules_touched
from overlaynet.proxy.rules import owned_rule_lines

NEWTABLE, DELTABLE, NEWCHAIN, DELCHAIN, NEWRULE, DELRULE, NEWGEN = 0, 2, 3, 5, 6, 8, 15


def datagram(*messages: int, payload: bytes = b"\0" * 6) -> bytes:
    """nf_tables event messages, each a header and a payload padded to 4 bytes, as the kernel sends."""
    out = b""
    for message in messages:
        length = 16 + len(payload)
        out += struct.pack("=IHHII", length, (NFNL_SUBSYS_NFTABLES << 8) | message, 0, 1, 0) + payload
        out += b"\0" * (-length % 4)
    return out


def test_a_deleted_table_chain_or_rule_or_an_added_rule_is_a_change():
    for message in (DELTABLE, DELCHAIN, NEWRULE, DELRULE):
        assert rules_touched(datagram(NEWGEN, message))


def test_new_tables_chains_and_generations_alone_are_not():
    assert not rules_touched(datagram(NEWTABLE, NEWCHAIN, NEWGEN))
    assert not rules_touched(b"")


def test_a_truncated_or_malformed_datagram_ends_the_look():
    assert not rules_touched(datagram(NEWGEN)[:10])
    assert not rules_touched(struct.pack("=IHHII", 0, NEWGEN, 0, 0, 0) + datagram(DELRULE))


def test_owned_rules_compare_as_the_kernel_prints_them_and_ignore_others():
    rendered = ("*nat\n:KUBE-SERVICES - [0:0]\n:OTHER - [0:0]\n"
                "-A KUBE-SERVICES -d 10.96.0.1 -p tcp -m tcp --dport 443 -j KUBE-SVC-X\n-A OTHER -j RETURN\nCOMMIT\n")
    saved = ("*nat\n:KUBE-SERVICES - [0:0]\n"
             "-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -m tcp --dport 443 -j KUBE-SVC-X\nCOMMIT\n")
    assert owned_rule_lines(rendered, ["nat"]) == owned_rule_lines(saved, ["nat"])
    assert len(owned_rule_lines(saved, ["nat"])) == 1
    assert owned_rule_lines(saved, ["filter"]) == []
    flushed = "*nat\n:KUBE-SERVICES - [0:0]\nCOMMIT\n"
    assert owned_rule_lines(flushed, ["nat"]) != owned_rule_lines(saved, ["nat"])
