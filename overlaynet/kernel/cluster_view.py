"""The kernel state ``overlaynet graph`` draws, read from a cluster's namespaces.

What this module owns: ``observe_namespace`` (one namespace's links, addresses, routes, and
for each VXLAN device its neighbour and FDB entries, or ``exists=False`` when the namespace
is gone) and ``observe_pod_uplink`` (a pod's ``eth0``: up or not, and the ifindex of its
veth peer in the node, which is how a pod is tied to the node-side device whatever a mode
names it). Plain dicts, as ``kernel.observe`` shapes them.

What it never does: change anything, or decide what the state means (``tools.graph`` does).
"""

from __future__ import annotations

from overlaynet import names
from overlaynet.kernel import netns, observe


def observe_namespace(ns: str) -> dict:
    """``{"exists", "links", "addresses", "routes", "vxlan": {dev: {"neighbours", "fdb"}}}``."""
    if not netns.exists(ns):
        return {"exists": False, "links": [], "addresses": [], "routes": [], "vxlan": {}}
    links = observe.observe_links(ns)
    vxlan = {link["name"]: {"neighbours": observe.observe_neighbours(ns, link["name"]),
                            "fdb": observe.observe_fdb(ns, link["name"])}
             for link in links if link.get("kind") == "vxlan"}
    return {"exists": True, "links": links, "addresses": observe.observe_addresses(ns),
            "routes": observe.observe_routes(ns), "vxlan": vxlan}


def observe_pod_uplink(ns: str) -> dict | None:
    """A pod's ``eth0``: ``{"up", "peer_index"}`` (the peer's ifindex in the namespace on the
    other end), or None when the namespace or the device is gone."""
    if not netns.exists(ns):
        return None
    from pyroute2 import IPRoute

    with netns.inside(ns):
        ipr = IPRoute(groups=0)
    try:
        found = ipr.link_lookup(ifname=names.POD_INTERFACE)
        if not found:
            return None
        link = ipr.get_links(found[0])[0]
        return {"up": bool(link["flags"] & observe.IFF_UP), "peer_index": link.get("link")}
    finally:
        ipr.close()
