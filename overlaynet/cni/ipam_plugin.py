"""``overlaynet-ipam``: the IPAM plugin, in one of two modes.

- ``"mode": "host-local"`` (the default): the reference host-local plugin's semantics
  (``overlaynet.ipam.hostlocal``: ranges of the configuration, state in ``dataDir``);
- ``"mode": "blocks"``: Calico-like blocks (``overlaynet.ipam.blocks.BlockIPAM``, state in
  the cluster store), one handle ``<containerID>.<ifname>`` per attachment.

What it never does: touch the kernel, or parse the CNI envelope (``invocation.answer`` hands
it the parsed configuration).
"""

from __future__ import annotations

import ipaddress
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

from overlaynet.cni import spec
from overlaynet.cni.invocation import Invocation
from overlaynet.cni.spec import CniEnv, IPConfig, Result
from overlaynet.datapath.modes import IPAM_BLOCKS, IPAM_HOST_LOCAL
from overlaynet.errors import CniError, OverlaynetError
from overlaynet.ipam import hostlocal

DEFAULT_BLOCK_SIZE = 26  # Calico's default IPv4 block (calico.md §2)
# The agent runs many plugins' IPAM in threads of one process: they queue here, and each goes
# the moment the one before is done, rather than on SQLite's busy handler, which sleeps 1 to
# 100 ms between tries of the store's write lock (still the lock between processes).
_BLOCKS_IN_PROCESS = threading.Lock()
# ... and use one store per state directory, kept open: opening and closing SQLite for each
# ADD was 1.3 ms of the 2.6 ms an allocation takes. {directory: (store, inode of its database)}
_AGENT_STORES: dict[str, tuple[Any, int]] = {}


def command(inv: Invocation, conf: dict) -> Result | None:
    """One command of ``overlaynet-ipam``: the ``ipam`` object's ``mode`` picks the allocator."""
    ipam = conf.get("ipam")
    if not isinstance(ipam, dict):
        raise CniError(spec.ERR_INVALID_CONFIG, f'network "{conf["name"]}": ipam must be an object')
    mode = ipam.get("mode", IPAM_HOST_LOCAL)
    cni_command = inv.env.command
    if mode == IPAM_HOST_LOCAL:
        if cni_command == "ADD":
            return hostlocal.cmd_add(conf, inv.env)
        if cni_command == "DEL":
            hostlocal.cmd_del(conf, inv.env)
        elif cni_command == "CHECK":
            hostlocal.cmd_check(conf, inv.env)
        elif cni_command == "GC":
            hostlocal.cmd_gc(conf, inv.env)
        elif cni_command == "STATUS":
            hostlocal.cmd_status(conf, inv.env)
        return None
    if mode == IPAM_BLOCKS:
        with _BLOCKS_IN_PROCESS:
            ipam_obj, node, close = open_block_ipam(conf, keep_store_open=inv.in_agent)
            try:
                return blocks_command(cni_command, conf, inv.env, ipam_obj, node)
            except BaseException:
                _drop_kept_stores()  # a failed write may leave one mid-transaction: the next opens anew
                raise
            finally:
                close()
    raise CniError(spec.ERR_UNSUPPORTED_FIELD, f'ipam.mode "{mode}" is not supported', "host-local or blocks")


def _object(value: object) -> dict:
    """``value`` if it is a JSON object, else an empty one (an optional section)."""
    return value if isinstance(value, dict) else {}


def open_block_ipam(conf: Mapping, keep_store_open: bool = False) -> tuple[Any, str, Callable[[], None]]:
    """``BlockIPAM`` for the request: ``ipam.{cluster,pool,blockSize,node,stateDir}``; all but
    ``stateDir`` default to the ``overlaynet`` object's cluster document and node, ``stateDir``
    to the store's (``$OVERLAYNET_STATE_DIR``). With ``keep_store_open`` (in the agent, under
    ``_BLOCKS_IN_PROCESS``) the store stays open for the next request; else ``close`` closes it."""
    ipam = conf["ipam"]
    top = _object(conf.get("overlaynet"))
    cluster_doc, node_doc = _object(top.get("cluster")), _object(top.get("node"))
    cluster = ipam.get("cluster") or (cluster_doc.get("metadata") or {}).get("name")
    pool = ipam.get("pool") or (cluster_doc.get("spec") or {}).get("clusterCIDR")
    node = ipam.get("node") or node_doc.get("name")
    missing = [k for k, v in (("cluster", cluster), ("pool", pool), ("node", node)) if not v]
    if missing:
        raise CniError(spec.ERR_INVALID_CONFIG,
                       f'network "{conf["name"]}": ipam (blocks) needs {", ".join(missing)}',
                       "set them in ipam, or give the overlaynet object (cluster document and node)")
    block_size = ipam.get("blockSize") or (cluster_doc.get("spec") or {}).get("blockSize") or DEFAULT_BLOCK_SIZE
    try:
        pool_net = ipaddress.IPv4Network(str(pool))
    except ValueError:
        raise CniError(spec.ERR_INVALID_CONFIG, f"ipam.pool {pool!r} is not an IPv4 CIDR") from None
    try:
        from overlaynet.ipam import blocks
    except ImportError as exc:
        raise CniError(spec.ERR_PLUGIN, "ipam mode blocks is not available: overlaynet.ipam.blocks cannot be imported",
                       str(exc)) from None
    from overlaynet.control.store import Store, state_dir

    directory = ipam.get("stateDir") or state_dir()
    try:
        store = _kept_store(directory) if keep_store_open else Store(directory)
    except Exception as exc:  # sqlite3 or OS errors: the state is unusable
        raise CniError(spec.ERR_IO, f"ipam (blocks): cannot open the store: {exc}") from exc
    close = (lambda: None) if keep_store_open else store.close
    try:
        ipam_obj = blocks.BlockIPAM(store, str(cluster), pool_net, block_size)
    except OverlaynetError as exc:
        close()
        raise CniError(spec.ERR_INVALID_CONFIG, f"ipam (blocks): {exc}") from None
    return ipam_obj, str(node), close


def _kept_store(directory: str) -> Any:
    """The agent's open store for ``directory``, opened again when its database is not the
    one it opened (removed and made anew by a later cluster's first write)."""
    from overlaynet.control.store import Store, database_path

    database = database_path(directory)
    try:
        inode = os.stat(database).st_ino
    except FileNotFoundError:
        inode = -1
    kept = _AGENT_STORES.get(directory)
    if kept is not None and kept[1] == inode:
        return kept[0]
    if kept is not None:
        kept[0].close()
    store = Store(directory, any_thread=True)
    _AGENT_STORES[directory] = (store, os.stat(database).st_ino)
    return store


def _drop_kept_stores() -> None:
    for store, _ in _AGENT_STORES.values():
        store.close()
    _AGENT_STORES.clear()


def blocks_command(command: str, conf: Mapping, env: CniEnv, ipam: Any, node: str) -> Result | None:
    """One command against a ``BlockIPAM``-like object (handle = ``<containerID>.<ifname>``)."""
    if command == "ADD":
        handle = f"{env.container_id}.{env.ifname}"
        try:
            ip = ipam.allocate(node, handle)
        except OverlaynetError as exc:
            raise CniError(spec.ERR_PLUGIN, str(exc)) from None
        return Result(ips=[IPConfig(address=f"{ip}/32")])
    if command == "DEL":
        ipam.release(f"{env.container_id}.{env.ifname}")
    elif command == "CHECK":
        handle = f"{env.container_id}.{env.ifname}"
        ip = ipam.lookup(handle)
        if ip is None:
            raise CniError(spec.ERR_PLUGIN, f"ipam (blocks): no address is allocated to handle {handle}")
        prev = conf.get("prevResult")
        if isinstance(prev, dict):
            listed = {ipaddress.ip_interface(i.address).ip for i in Result.from_dict(prev, "prevResult").ips}
            if listed and ip not in listed:
                shown = ", ".join(map(str, sorted(listed)))
                raise CniError(spec.ERR_PLUGIN, f"ipam (blocks): handle {handle} holds {ip}, prevResult lists {shown}")
    elif command == "GC":
        valid = {f"{cid}.{ifname}" for cid, ifname in spec.valid_attachments(conf)}
        errors = []
        for handle in sorted(ipam.handles(node)):  # this node's allocations only: GC is per node
            if handle not in valid:
                try:
                    ipam.release(handle)
                except OverlaynetError as exc:
                    errors.append(f"{handle}: {exc}")
        if errors:
            raise CniError(spec.ERR_PLUGIN, "ipam (blocks): GC could not release every handle", "; ".join(errors))
    elif command == "STATUS":
        used = len(ipam.handles())
        if used >= ipam.pool.num_addresses:
            raise CniError(spec.ERR_NOT_AVAILABLE, f"IP pool {ipam.pool} has no free address",
                           f"all {ipam.pool.num_addresses} addresses are allocated")
    return None
