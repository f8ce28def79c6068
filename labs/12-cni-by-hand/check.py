"""Lab 12's check: the learner's ADD (its result saved in /tmp/lab12-add.json) gave an address
of node-1's pod CIDR, and the DELs undid everything: IPAM released the address, the host-side
veth is gone from node-1, and portmap's DNAT for port 8081 is gone from node-1's rules."""

import ipaddress
import json
import os

from overlaynet.tools.labs import Item, LabState

RESULT = "/tmp/lab12-add.json"


def check(lab: LabState):
    try:
        with open(RESULT) as handle:
            result = json.load(handle)
        address = ipaddress.ip_interface(result["ips"][0]["address"]).ip
        veth = result["interfaces"][0]["name"]
    except (OSError, ValueError, KeyError, IndexError):
        yield Item(False, (f"no ADD result in {RESULT}", f"no hay un resultado de ADD en {RESULT}"),
                   ("run step 3 (ADD) and save its result with tee", "ejecuta el paso 3 (ADD) y guarda su resultado con tee"))
        return
    [node] = [n for n in lab.get("nodes") if n["metadata"]["name"] == "node-1"]
    inside = address in ipaddress.ip_network(node["spec"]["podCIDR"])
    yield Item(inside,
               (f"the ADD gave {address}, from node-1's podCIDR {node['spec']['podCIDR']}",
                f"el ADD dio {address}, del podCIDR de node-1 {node['spec']['podCIDR']}"),
               ("run the ADD of step 3 again", "vuelve a ejecutar el ADD del paso 3"))
    state_dir = os.environ.get("OVERLAYNET_STATE_DIR", "/var/lib/overlaynet")
    reservation = os.path.join(state_dir, f"{lab.cluster}.cni", "node-1", "networks", "overlaynet", str(address))
    released = not os.path.exists(reservation)
    yield Item(released,
               (f"IPAM released {address}" if released else f"{address} is still reserved ({reservation})",
                f"el IPAM liberó {address}" if released else f"{address} sigue reservada ({reservation})"),
               ("call the plugin with CNI_COMMAND=DEL (step 7)", "llama al plugin con CNI_COMMAND=DEL (paso 7)"))
    gone = lab.exec("node/node-1", "ip", "link", "show", veth).returncode != 0
    yield Item(gone,
               (f"node-1 no longer has the veth {veth}" if gone else f"node-1 still has the veth {veth}",
                f"node-1 ya no tiene el veth {veth}" if gone else f"node-1 aún tiene el veth {veth}"),
               ("call the plugin with CNI_COMMAND=DEL (step 7)", "llama al plugin con CNI_COMMAND=DEL (paso 7)"))
    unmapped = "--dport 8081 -j DNAT" not in lab.rules("node-1")
    yield Item(unmapped,
               ("portmap's DNAT of port 8081 is gone from node-1" if unmapped else "node-1 still DNATs port 8081",
                "el DNAT del puerto 8081 de portmap ya no está en node-1" if unmapped else "node-1 aún hace DNAT del puerto 8081"),
               ("call portmap with CNI_COMMAND=DEL before the main plugin (step 7)",
                "llama a portmap con CNI_COMMAND=DEL antes que al plugin principal (paso 7)"))
