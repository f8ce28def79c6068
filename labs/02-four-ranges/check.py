"""Lab 02's check: node-2's pod subnet was freed and handed to node-3, and the four ranges still
hold together: every node's podCIDR inside the cluster CIDR, none overlapping another, the
service CIDR or the node network."""

import ipaddress

from overlaynet.tools.labs import Item, LabState


def check(lab: LabState):
    [cluster] = lab.get("clusters", lab.cluster)
    spec = cluster["spec"]
    cluster_cidr, service_cidr, node_network = (ipaddress.ip_network(spec[key])
                                                for key in ("clusterCIDR", "serviceCIDR", "nodeNetwork"))
    subnets = {node["metadata"]["name"]: ipaddress.ip_network(node["spec"]["podCIDR"])
               for node in lab.get("nodes") if node["spec"].get("podCIDR")}
    yield Item("node-3" in subnets,
               (f"node-3 has the pod CIDR {subnets['node-3']}" if "node-3" in subnets else "node-3 does not exist",
                f"node-3 tiene el pod CIDR {subnets['node-3']}" if "node-3" in subnets else "node-3 no existe"),
               ("the /23 is full: free a subnet with overlaynet delete node node-2 --name lab02, then add node-3",
                "el /23 está lleno: libera una subred con overlaynet delete node node-2 --name lab02 y añade node-3"))
    inside = all(subnet.subnet_of(cluster_cidr) for subnet in subnets.values())
    disjoint = all(not a.overlaps(b) for i, a in enumerate(subnets.values()) for b in list(subnets.values())[i + 1:])
    apart = not any(subnet.overlaps(other) for subnet in subnets.values() for other in (service_cidr, node_network))
    yield Item(inside and disjoint and apart,
               (f"{len(subnets)} node subnets inside {cluster_cidr}, disjoint, apart from {service_cidr} and {node_network}",
                f"{len(subnets)} subredes de nodo dentro de {cluster_cidr}, disjuntas, aparte de {service_cidr} y {node_network}"),
               ("compare them: overlaynet get nodes -o wide --name lab02", "compáralas: overlaynet get nodes -o wide --name lab02"))
