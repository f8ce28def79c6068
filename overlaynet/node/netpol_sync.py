"""The policy agent of every node (Felix's policy half, kube-router's firewall): NetworkPolicies
into each node's ``filter`` table.

On every change that can alter a verdict (a policy or namespace applied or deleted, a pod
created, deleted or relabelled, a node added or removed) ``sync`` renders each node's chains
from the stored state (``policy.render``, pure) and loads them with one
``iptables-restore --noflush`` through the ``Iptables`` seam, after making sure the jump from
FORWARD (and INPUT) exists; the payload moves those jumps to the top (ahead of kube-proxy's ACCEPTs) and
deletes the chains no policy needs any more. Only ``cali-*`` chains are declared, so
kube-proxy's are never flushed. In the vxlan mode it sets ``net.bridge.bridge-nf-call-iptables
= 1`` in the node's namespace (per namespace on this kernel, so the host's value is not
touched), so that bridged same-node traffic crosses FORWARD.

A cluster that never had a policy is not touched. Which host interface a pod has is the
mode's naming (``pod_interface``); modes other than the built-in two are refused when a
policy is applied.
"""

from __future__ import annotations

import ipaddress

from overlaynet import names
from overlaynet.api.model import ClusterSpec
from overlaynet.control import policies
from overlaynet.control.records import CONTAINER_ANNOTATION
from overlaynet.control.seams import Runtime
from overlaynet.control.store import Store
from overlaynet.datapath.plan import Sysctl
from overlaynet.datapath.topology import PodInfo
from overlaynet.errors import HostError, InvalidInput, OverlaynetError
from overlaynet.policy.render import LocalPod, PolicyRuleset, render
from overlaynet.policy.semantics import PolicyView

ENFORCING_MODES = ("flannel", "calico")
SYNCED = "netpol-synced"
BRIDGE_SYSCTL = "net.bridge.bridge-nf-call-iptables"


def check_supported(spec: ClusterSpec) -> None:
    """Refuse policies on a cluster whose pods' interfaces we cannot name."""
    if spec.cni_config or spec.cni not in ENFORCING_MODES:
        raise InvalidInput(f'cluster "{spec.name}": NetworkPolicy is enforced in the vxlan (flannel) and routed '
                           f'(calico) modes only, not with cni "{spec.cni_config or spec.cni}"')


def pod_interface(spec: ClusterSpec, record: dict) -> str:
    """The host side of a pod's veth, as its mode named it at CNI ADD."""
    meta = record["metadata"]
    if spec.cni == "calico":
        from overlaynet.datapath.modes.calico import host_veth_name

        return host_veth_name(PodInfo(meta["namespace"], meta["name"], ipaddress.IPv4Address(0), "", "", ""))
    return names.pod_host_veth(f"{meta['annotations'][CONTAINER_ANNOTATION]}/{names.POD_INTERFACE}")


def local_pods(store: Store, spec: ClusterSpec, view: PolicyView, node: str) -> list[LocalPod]:
    records = {(r["metadata"]["namespace"], r["metadata"]["name"]): r for r in store.list(spec.name, "Pod")}
    return [LocalPod(pod, pod_interface(spec, records[(pod.namespace, pod.name)]))
            for pod in view.pods if pod.node == node and pod.ip is not None]


def render_node(store: Store, spec: ClusterSpec, node: str, view: PolicyView | None = None,
                existing_chains: list[str] | None = None) -> PolicyRuleset:
    """What ``node`` should hold now (pure over the store; ``describe`` and ``rules`` use it)."""
    view = view or policies.policy_view(store, spec.name)
    return render(view, local_pods(store, spec, view, node), spec.cni == "flannel", existing_chains or [])


def prepare_nodes(store: Store, runtime: Runtime, spec: ClusterSpec) -> None:
    """What the nodes need before a policy can be enforced: in the vxlan mode, bridged traffic
    through iptables (br_netfilter, a module on Debian: ``modprobe br_netfilter``)."""
    if spec.cni != "flannel":
        return
    for node in store.list(spec.name, "Node"):
        try:
            runtime.apply((Sysctl(names.node_netns(spec.name, node["metadata"]["name"]), BRIDGE_SYSCTL, "1"),))
        except OverlaynetError as exc:
            raise HostError(f'node "{node["metadata"]["name"]}": NetworkPolicy in the vxlan mode needs '
                            f"{BRIDGE_SYSCTL} = 1 in the node ({exc}); load br_netfilter: modprobe br_netfilter") \
                from None


def sync(store: Store, runtime: Runtime, spec: ClusterSpec) -> None:
    if store.get_meta(spec.name, SYNCED) is None:
        if not policies.has_policies(store, spec.name):
            return
        check_supported(spec)
    backend = (store.get_meta(spec.name, "kube-proxy-backend") or store.get_meta(spec.name, "netpol-backend")
               or runtime.iptables.backend())
    store.set_meta(spec.name, "netpol-backend", backend)
    view = policies.policy_view(store, spec.name)
    prepare_nodes(store, runtime, spec)  # a node added since the last sync needs it too
    for node in store.list(spec.name, "Node"):
        netns = names.node_netns(spec.name, node["metadata"]["name"])
        existing = runtime.iptables.chains(netns, backend, "filter")
        ruleset = render_node(store, spec, node["metadata"]["name"], view, existing)
        runtime.iptables.ensure_jumps(netns, ruleset.jumps, backend)
        runtime.iptables.restore(netns, ruleset.payload, backend)
        runtime.iptables.restore(netns, ruleset.moves, backend)
    store.set_meta(spec.name, SYNCED, "1")
