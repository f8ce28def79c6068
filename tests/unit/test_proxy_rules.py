"""overlaynet.proxy.rules: reading rule text and the read-back normalisation of
reference/kube-proxy.md §8."""

import pytest

from overlaynet.errors import RuleError
from overlaynet.proxy.rules import (
    canonical_rule,
    canonical_tables,
    parse_rule,
    parse_tables,
    saved_chain_lines,
    tokenize,
)


def test_tokenize_keeps_quoted_comments_whole():
    assert tokenize('-A X -m comment --comment "a b:c" -j Y') == ["-A", "X", "-m", "comment", "--comment", "a b:c",
                                                                   "-j", "Y"]
    assert tokenize('-A X -m comment --comment "say \\"hi\\"" -j Y')[5] == 'say "hi"'


def test_parse_rule_attaches_options_to_the_last_match_and_reads_negation():
    rule = parse_rule('-A KUBE-SVC-X -m comment --comment "s cluster IP" -m tcp -p tcp -d 10.96.0.10 --dport 80 '
                      "! -s 10.244.0.0/16 -j KUBE-MARK-MASQ")
    assert rule.chain == "KUBE-SVC-X" and rule.target == "KUBE-MARK-MASQ" and rule.comment == "s cluster IP"
    assert rule.generic == (("proto", "tcp", False), ("dst", "10.96.0.10", False), ("src", "10.244.0.0/16", True))
    assert [m.name for m in rule.matches] == ["comment", "tcp"]
    assert rule.matches[1].get("--dport").values == ("80",)
    negated = parse_rule("-A F -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP")
    assert negated.matches[0].options[0].negated
    implicit = parse_rule("-A F -p udp --dport 53 -j ACCEPT")
    assert implicit.matches[0].name == "udp"
    with pytest.raises(RuleError):
        parse_rule("-A F --dport 53 -j ACCEPT")
    with pytest.raises(RuleError):
        parse_rule("-I F 1 -j ACCEPT")


def test_parse_tables_applies_noflush_semantics():
    base = parse_tables("*nat\n:A - [0:0]\n:B - [0:0]\n-A A -j B\n-A B -j RETURN\nCOMMIT\n")
    after = parse_tables("*nat\n:A - [0:0]\n:B - [0:0]\n-A A -j RETURN\n-X B\nCOMMIT\n", base=base)
    assert set(after.chains["nat"]) == {"A"} and [r.target for r in after.chains["nat"]["A"]] == ["RETURN"]
    kept = parse_tables("*nat\n:C - [0:0]\n-A A -j C\nCOMMIT\n", base=after)  # -A to an undeclared chain appends
    assert [r.target for r in kept.chains["nat"]["A"]] == ["RETURN", "C"]
    with pytest.raises(RuleError, match="not empty"):
        parse_tables("*nat\n-X A\nCOMMIT\n", base=kept)
    with pytest.raises(RuleError, match="was not declared"):
        parse_tables("*nat\n-A NOPE -j ACCEPT\nCOMMIT\n")


# --------------------------------------------------------------------------- §8 normalisation

READ_BACK = [
    # (as rendered, as iptables-save 1.8.9 prints it; both backends print the same)
    ('-A KUBE-SVC-X -m comment --comment "default/web:http cluster IP" -m tcp -p tcp -d 10.96.100.10 --dport 80 '
     "! -s 10.244.0.0/16 -j KUBE-MARK-MASQ",
     '-A KUBE-SVC-X ! -s 10.244.0.0/16 -d 10.96.100.10/32 -p tcp -m comment --comment "default/web:http cluster IP" '
     "-m tcp --dport 80 -j KUBE-MARK-MASQ"),
    ("-A KUBE-SEP-X -m comment --comment default/web:http -s 10.244.1.5 -j KUBE-MARK-MASQ",
     '-A KUBE-SEP-X -s 10.244.1.5/32 -m comment --comment "default/web:http" -j KUBE-MARK-MASQ'),
    ("-A KUBE-MARK-MASQ -j MARK --or-mark 0x00004000", "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000"),
    ("-A KUBE-POSTROUTING -j MARK --xor-mark 0x00004000", "-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0"),
    ("-A KUBE-POSTROUTING -m mark ! --mark 0x00004000/0x00004000 -j RETURN",
     "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN"),
    ("-A KUBE-SERVICES -m comment --comment x -m tcp -p tcp -d 10.96.0.14 --dport 80 -j REJECT",
     '-A KUBE-SERVICES -d 10.96.0.14/32 -p tcp -m comment --comment "x" -m tcp --dport 80 -j REJECT --reject-with '
     "icmp-port-unreachable"),
    ("-A KUBE-SVC-X -m statistic --mode random --probability 0.3333333333 -j KUBE-SEP-X",
     "-A KUBE-SVC-X -m statistic --mode random --probability 0.33333333349 -j KUBE-SEP-X"),
    ("-A KUBE-SVC-X -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-X",
     "-A KUBE-SVC-X -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-X"),
    ("-A KUBE-SEP-X -m recent --name KUBE-SEP-X --set -m tcp -p tcp -j DNAT --to-destination 10.244.1.5:8080",
     "-A KUBE-SEP-X -p tcp -m recent --set --name KUBE-SEP-X --mask 255.255.255.255 --rsource -m tcp -j DNAT "
     "--to-destination 10.244.1.5:8080"),
    ("-A KUBE-SVC-X -m recent --name KUBE-SEP-X --rcheck --seconds 10800 --reap -j KUBE-SEP-X",
     "-A KUBE-SVC-X -m recent --rcheck --seconds 10800 --reap --name KUBE-SEP-X --mask 255.255.255.255 --rsource "
     "-j KUBE-SEP-X"),
]


@pytest.mark.parametrize("rendered, saved", READ_BACK)
def test_read_back_normalisation(rendered, saved):
    assert canonical_rule(parse_rule(rendered)) == canonical_rule(parse_rule(saved))


def test_normalisation_still_tells_different_rules_apart():
    base = "-A KUBE-SVC-X -m statistic --mode random --probability 0.3333333333 -j KUBE-SEP-X"
    assert canonical_rule(parse_rule(base)) != canonical_rule(parse_rule(base.replace("0.3333333333", "0.25")))
    mark = "-A M -j MARK --or-mark 0x00004000"
    assert canonical_rule(parse_rule(mark)) != canonical_rule(parse_rule("-A M -j MARK --set-xmark 0x4000/0x0"))
    assert canonical_rule(parse_rule("-A S -s 10.0.0.1 -j A")) != canonical_rule(parse_rule("-A S ! -s 10.0.0.1 -j A"))


def test_canonical_tables_and_saved_lines():
    saved = "# Generated\n*nat\n:PREROUTING ACCEPT [0:0]\n:A - [0:0]\n-A A -s 1.2.3.4/32 -j RETURN\nCOMMIT\n"
    assert canonical_tables(saved, ["A"]) == canonical_tables("*nat\n:A - [0:0]\n-A A -s 1.2.3.4 -j RETURN\nCOMMIT\n")
    assert saved_chain_lines(saved) == {"nat": {"PREROUTING": [], "A": ["-A A -s 1.2.3.4/32 -j RETURN"]}}
