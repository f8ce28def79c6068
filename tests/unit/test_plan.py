"""overlaynet.datapath.plan: the two ways a step is written out (pure)."""

from __future__ import annotations

from overlaynet.datapath import plan
from overlaynet.datapath.plan import Netns, Route, VethPair


def test_a_step_in_words_reads_as_the_ip_command():
    route = Route("lab.node.node-1", "10.244.2.0/24", gateway="10.244.2.0", dev="flannel.1", onlink=True)
    assert plan.words(route) == "route 10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink"
    veth = VethPair("lab.node.node-1", "veth1234abcd", "lab.pod.default.web", "eth0", master="cni0")
    assert plan.words(veth) == 'veth veth1234abcd (peer eth0 in netns "lab.pod.default.web", master cni0)'
    assert plan.words(Netns("lab.underlay")) == "create namespace"


def test_every_step_names_the_namespace_it_acts_in():
    assert plan.netns_of(Netns("lab.underlay")) == "lab.underlay"
    assert plan.netns_of(Route("lab.node.node-1", "default")) == "lab.node.node-1"
