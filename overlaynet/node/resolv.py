"""The kubelet's DNS part: every pod's ``resolv.conf``, rendered (pure) and written where
``ip netns exec`` reads it.

What the kubelet does (``pkg/kubelet/network/dns``) and this module copies:

- ``ClusterFirst`` (and ``ClusterFirstWithHostNet``, every overlaynet pod being off the host
  network): ``nameserver <kube-dns ClusterIP>``, ``search <ns>.svc.<domain> svc.<domain>
  <domain>`` followed by the node's own search domains, ``options ndots:5``. Without a cluster
  DNS (``dns: false``) the kubelet falls back to ``Default``.
- ``Default``: the node's resolv.conf (here every node's is the host's ``/etc/resolv.conf``):
  its nameservers, search domains and options.
- ``None``: nothing but ``dnsConfig``.
- then ``dnsConfig`` is merged in: its nameservers and search domains appended (duplicates
  dropped; at most 3 nameservers and 32 search domains reach the file), its options replacing
  those of the same name. The lines are written in containerd's order: search, nameserver, options.

Where: ``ip netns exec <netns>`` bind-mounts every file of ``/etc/netns/<netns>/`` over
``/etc/``, so ``overlaynet exec POD -- getent hosts web`` (which runs ``ip netns exec``) reads
``/etc/netns/<pod netns>/resolv.conf``. The directory is recorded in the store (``PATH``)
before it is made and removed when the pod is deleted, and by ``down`` after any crash.
A pod whose file would be the node's own, verbatim (``Default`` without ``dnsConfig``, or any
pod of a cluster without DNS), gets no file: ``ip netns exec`` then shows the host's, which is
the same text.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from overlaynet import names
from overlaynet.api.model import ClusterSpec
from overlaynet.api.pod_dns import MAX_NAMESERVERS, MAX_SEARCHES, PodDns, parse_pod_dns
from overlaynet.control.ownership import PATH
from overlaynet.control.seams import Runtime
from overlaynet.control.store import Store

__all__ = ["ResolvConf", "etc_netns_dir", "parse_resolv_conf", "plan_resolv_conf", "remove_pod_files",
           "render_resolv_conf", "write_pod_files"]

ETC_NETNS = "/etc/netns"
CLUSTER_OPTIONS = (("ndots", "5"),)  # the kubelet's defaultDNSOptions


@dataclass(frozen=True)
class ResolvConf:
    nameservers: tuple[str, ...] = ()
    searches: tuple[str, ...] = ()
    options: tuple[tuple[str, str | None], ...] = ()  # (name, value or None)


def etc_netns_dir(netns: str) -> str:
    """Where ``ip netns exec`` finds the files it mounts over ``/etc`` for ``netns``."""
    return os.path.join(ETC_NETNS, names.check_netns_name(netns))


def parse_resolv_conf(text: str) -> ResolvConf:
    """The nameservers, search domains (the last ``search``/``domain`` line wins, as in glibc)
    and options of a resolv.conf."""
    nameservers: list[str] = []
    searches: list[str] = []
    options: list[tuple[str, str | None]] = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split(";", 1)[0].split()
        if not fields:
            continue
        keyword, values = fields[0], fields[1:]
        if keyword == "nameserver" and values:
            nameservers.append(values[0])
        elif keyword in ("search", "domain"):
            searches = list(values)
        elif keyword == "options":
            for value in values:
                name, _, option_value = value.partition(":")
                options.append((name, option_value or None))
    return ResolvConf(tuple(nameservers), tuple(searches), tuple(options))


def plan_resolv_conf(dns: PodDns, namespace: str, spec: ClusterSpec, node: ResolvConf) -> ResolvConf:
    """What the kubelet gives a pod of ``namespace`` with ``dns``, on a node whose resolv.conf is ``node``."""
    policy = dns.policy
    if policy in ("ClusterFirst", "ClusterFirstWithHostNet") and not spec.dns:
        policy = "Default"  # the kubelet's fallback when no cluster DNS is configured
    if policy in ("ClusterFirst", "ClusterFirstWithHostNet"):
        domain = spec.cluster_domain
        base = ResolvConf((str(spec.dns_service_ip),),
                          (f"{namespace}.svc.{domain}", f"svc.{domain}", domain, *node.searches), CLUSTER_OPTIONS)
    elif policy == "Default":
        base = node
    else:
        base = ResolvConf()
    options = dict(base.options)
    options.update(dns.options)
    return ResolvConf(_unique([*base.nameservers, *dns.nameservers])[:MAX_NAMESERVERS],
                      _unique([*base.searches, *dns.searches])[:MAX_SEARCHES], tuple(options.items()))


def render_resolv_conf(conf: ResolvConf) -> str:
    lines = []
    if conf.searches:
        lines.append("search " + " ".join(conf.searches))
    lines += [f"nameserver {server}" for server in conf.nameservers]
    if conf.options:
        lines.append("options " + " ".join(name if value is None else f"{name}:{value}" for name, value in conf.options))
    return "\n".join(lines) + "\n"


def _unique(items: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def write_pod_files(store: Store, runtime: Runtime, spec: ClusterSpec, pods: list[tuple[str, str, dict]]) -> None:
    """Write the resolv.conf of each ``(namespace, name, pod spec)`` (recorded first)."""
    if not pods:
        return
    host_text = runtime.host_resolv_conf()
    node = parse_resolv_conf(host_text)
    files = []
    for namespace, name, pod_spec in pods:
        text = render_resolv_conf(plan_resolv_conf(parse_pod_dns(pod_spec), namespace, spec, node))
        if text != render_resolv_conf(node):
            files.append((etc_netns_dir(names.pod_netns(spec.name, namespace, name)), text))
    with store.transaction():
        for directory, _ in files:
            store.record(spec.name, PATH, directory)
    for directory, text in files:
        runtime.write_file(os.path.join(directory, "resolv.conf"), text)


def remove_pod_files(store: Store, runtime: Runtime, cluster: str, pods: list[tuple[str, str]]) -> None:
    """Remove the ``/etc/netns`` directory of each ``(namespace, name)``; gone already is fine."""
    for namespace, name in pods:
        directory = etc_netns_dir(names.pod_netns(cluster, namespace, name))
        runtime.remove_path(directory)
        store.forget(cluster, PATH, directory)
