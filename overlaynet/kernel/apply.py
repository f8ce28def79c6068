"""Make a plan true in the kernel, and undo it.

What this module owns: the translation of each ``overlaynet.datapath.plan`` step into netlink requests
(pyroute2), made from the calling thread while it is inside the step's namespace
(``netns.inside``). ``apply(plan)`` makes every step true, in order; ``remove(plan)`` undoes
the steps in reverse order. Each step has an ``ensure_*`` function (idempotent: a second run is
a no-op) and a ``delete_*`` function (succeeds when the object is already gone).

How it stays fast (bring-up is measured against raw ``ip -batch`` by ``bench/floor.py``):
- one ``IPRoute`` per namespace per call, opened while the thread is inside it (a netlink
  socket stays bound to the namespace it was opened in), never pyroute2's forking
  ``IPRoute(netns=...)``; sockets subscribe to no multicast groups and are closed at the end;
- the requests on every pod's path (read a link, set one, add an address, replace a route) go
  through a bare netlink socket (``BareRtnl``: pyroute2 encodes and parses, no event loop); a
  pod's sandbox needs no ``IPRoute`` at all;
- ifindexes are looked up by name without netlink (``netns.ifindex``) once per call and
  cached; links are created, configured, enslaved and brought up in one request, and changed
  by name rather than by a looked-up index;
- ``ensure_*`` tries the create first and inspects only when the kernel says "exists", so a
  fresh bring-up pays no read before each write;
- ``remove`` does not take apart what lives in a namespace the same plan deletes.

Callers may be plain threads or asyncio code: pyroute2's synchronous API cannot run inside a
running event loop, so ``apply``/``remove`` then do their work on a helper thread.

What it never does: spawn ``ip``/``bridge`` processes; touch a namespace the plan does not
name; guess — a kernel refusal becomes ``KernelError`` naming the namespace and the step in
words (``netns "demo.node.node-1": route 10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink:
No such device``), and a kernel without VXLAN becomes ``HostError``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import functools
import ipaddress
import os
import socket
from collections.abc import Callable
from typing import Any

from overlaynet.datapath.plan import (
    Address,
    Bridge,
    FdbEntry,
    Neighbour,
    Netns,
    Plan,
    ProxyNeighbour,
    Route,
    Step,
    Sysctl,
    VethPair,
    Vxlan,
    netns_of,
    words,
)
from overlaynet.errors import HostError, InvalidInput, KernelError
from overlaynet.kernel import arp, netns

NUD_PERMANENT = 0x80
NUD_NOARP = 0x40
NTF_SELF = 0x02  # NTF_SELF (linux/neighbour.h): the entry is the device's own (a VXLAN FDB), not a bridge's
_NTF_PROXY = 0x08  # NTF_PROXY (linux/neighbour.h): a proxy ARP entry
RTNH_F_ONLINK = 0x4
RT_SCOPE_NOWHERE = 255
RT_TABLE_MAIN = 254
_IFF_UP = 0x1
_SOL_NETLINK = 270
_NETLINK_EXT_ACK = 11  # the kernel says why it refused, as `ip` shows it
RTPROT_BOOT = 3  # what `ip route add` uses; `ip route` does not print it
BRPORT_HAIRPIN = "IFLA_BRPORT_MODE"  # the kernel's name for the hairpin flag of a bridge port

_SCOPES = {"universe": 0, "site": 200, "link": 253, "host": 254}
_ROUTE_TYPES = {"unicast": 1, "blackhole": 6, "unreachable": 7, "prohibit": 8}
_GONE = (errno.ENODEV, errno.ENOENT, errno.ESRCH, errno.EADDRNOTAVAIL, errno.ENXIO)
_NO_VXLAN = (errno.EOPNOTSUPP, errno.ENOTSUP)
_NO_VXLAN_TEXT = ("unknown device type", "unknown kind")


def off_event_loop(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``fn`` in a helper thread when the caller's thread runs an asyncio loop.

    pyroute2's synchronous ``IPRoute`` drives an event loop of its own and fails inside a
    running one ("This event loop is already running"); a namespace switch is per thread,
    so a helper thread is as good a place to work as any.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return fn(*args, **kwargs)
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(fn, *args, **kwargs).result()

    return wrapper


class _Refused(Exception):
    """A refusal we word ourselves (not an errno from the kernel)."""


class _Malformed(_Refused):
    """A step whose own fields are wrong (a planner's bug): InvalidInput, not KernelError."""


def _error(step: Step, exc: BaseException) -> KernelError | InvalidInput:
    if isinstance(exc, _Malformed):
        return InvalidInput(f'netns "{netns_of(step)}": {words(step)}: {exc}')
    code = _code(exc)
    if isinstance(exc, _Refused) or not code:
        reason = str(exc)
    else:
        reason = os.strerror(code)
        detail = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], str) else ""
        if detail and detail.lower() != reason.lower():
            reason += f" ({detail})"  # the kernel's extended ack, e.g. "Unknown device type"
    return KernelError(f'netns "{netns_of(step)}": {words(step)}: {reason}')


# --------------------------------------------------------------------------- the session


class BareRtnl:
    """A bare rtnetlink socket bound to one namespace, for the requests on every pod's path
    (read a link, set one up, add an address, replace a route): pyroute2's message classes
    encode each request and parse the answer, without its event loop (~0.05 ms a request
    against ~0.2, and no ~0.4 ms ``IPRoute`` to open). Errors are pyroute2's ``NetlinkError``."""

    def __init__(self, ns: str) -> None:
        from pyroute2.netlink.rtnl.marshal import MarshalRtnl

        with netns.inside(ns):
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                       socket.NETLINK_ROUTE)
        self._sock.setsockopt(_SOL_NETLINK, _NETLINK_EXT_ACK, 1)
        self._marshal = MarshalRtnl()
        self._sequence = 0

    def request(self, msg: Any, msg_type: int, flags: int = 0) -> list[Any]:
        """Send ``msg`` as ``msg_type`` and wait for the kernel's ack; the messages it answered."""
        from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST, NLMSG_ERROR

        self._sequence += 1
        msg["header"]["type"] = msg_type
        msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_ACK | flags
        msg["header"]["sequence_number"] = self._sequence
        msg.encode()
        self._sock.send(msg.data)
        answers: list[Any] = []
        while True:
            for reply in self._marshal.parse(self._sock.recv(1 << 16)):
                if reply["header"]["sequence_number"] != self._sequence:
                    continue
                error = reply["header"].get("error")
                if error is not None:
                    raise error
                if reply["header"]["type"] == NLMSG_ERROR:  # the ack
                    return answers
                answers.append(reply)

    def close(self) -> None:
        self._sock.close()


class NetlinkSession:
    """Netlink sockets and ifindexes for one ``apply``/``remove`` call.

    ``ipr(ns)`` opens (once) an ``IPRoute`` bound to namespace ``ns``, ``rtnl(ns)`` a
    ``BareRtnl`` for the simple requests; ``index(ns, ifname)`` caches lookups. Use as a context manager: every socket is closed on the way out, which
    matters — an open socket keeps its namespace alive after ``ip netns del``.
    """

    def __init__(self) -> None:
        netns.load_pyroute2()
        self._sockets: dict[str, Any] = {}
        self._bare: dict[str, BareRtnl] = {}
        self._index: dict[tuple[str, str], int] = {}

    def __enter__(self) -> NetlinkSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ipr(self, ns: str) -> Any:
        sock = self._sockets.get(ns)
        if sock is None:
            from pyroute2 import IPRoute  # lazy: ~0.1 s, not on the path of pure callers

            if not netns.exists(ns):
                raise _Refused(f'netns "{ns}" does not exist')
            with netns.inside(ns):
                sock = IPRoute(groups=0, ext_ack=True)
            self._sockets[ns] = sock
        return sock

    def rtnl(self, ns: str) -> BareRtnl:
        sock = self._bare.get(ns)
        if sock is None:
            if not netns.exists(ns):
                raise _Refused(f'netns "{ns}" does not exist')
            sock = self._bare[ns] = BareRtnl(ns)
        return sock

    def index(self, ns: str, ifname: str) -> int:
        key = (ns, ifname)
        idx = self._index.get(key)
        if idx is None:
            if not netns.exists(ns):
                raise _Refused(f'netns "{ns}" does not exist')
            idx = netns.ifindex(ns, ifname)
            if idx is None:
                raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))
            self._index[key] = idx
        return idx

    def remember(self, ns: str, ifname: str, idx: int) -> None:
        self._index[(ns, ifname)] = idx

    def forget(self, ns: str, ifname: str | None = None) -> None:
        if ifname is not None:
            self._index.pop((ns, ifname), None)
            return
        for key in [k for k in self._index if k[0] == ns]:
            del self._index[key]

    def drop(self, ns: str) -> None:
        """Forget namespace ``ns`` (before deleting it): close its socket, drop its indexes."""
        self.forget(ns)
        for sockets in (self._sockets, self._bare):
            sock = sockets.pop(ns, None)
            if sock is not None:
                sock.close()

    def close(self) -> None:
        for ns in {*self._sockets, *self._bare}:
            self.drop(ns)
        self._index.clear()


# --------------------------------------------------------------------------- helpers


def _code(exc: BaseException) -> int | None:
    return getattr(exc, "code", None) or getattr(exc, "errno", None)


def _netlink_error() -> type[BaseException]:
    from pyroute2.netlink.exceptions import NetlinkError

    return NetlinkError


def _get_link(s: NetlinkSession, ns: str, ifname: str) -> Any | None:
    from pyroute2.netlink.rtnl import RTM_GETLINK
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    request = ifinfmsg()
    request["attrs"] = [("IFLA_IFNAME", ifname)]
    try:
        msg = s.rtnl(ns).request(request, RTM_GETLINK)[0]
    except _netlink_error() as exc:
        if exc.code in _GONE:
            return None
        raise
    s.remember(ns, ifname, msg["index"])
    return msg


def _kind(link: Any) -> str | None:
    return link.get(("linkinfo", "kind"))


_LINK_ATTRS = {"mtu": "IFLA_MTU", "address": "IFLA_ADDRESS", "master": "IFLA_MASTER"}


def _set_link(s: NetlinkSession, ns: str, ifname: str, **attrs: Any) -> None:
    """``ip link set``, by name: ``state`` ("up"/"down"), ``mtu``, ``address``, ``master``."""
    from pyroute2.netlink.rtnl import RTM_NEWLINK
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    msg = ifinfmsg()
    state = attrs.pop("state", None)
    if state is not None:
        msg["change"] = _IFF_UP
        msg["flags"] = _IFF_UP if state == "up" else 0
    msg["attrs"] = [("IFLA_IFNAME", ifname)] + [(_LINK_ATTRS[key], value) for key, value in attrs.items()
                                               if value is not None]
    s.rtnl(ns).request(msg, RTM_NEWLINK)


def _set_hairpin(s: NetlinkSession, ns: str, ifname: str, on: bool) -> None:
    linkinfo = {"attrs": [
        ("IFLA_INFO_SLAVE_KIND", "bridge"),
        ("IFLA_INFO_SLAVE_DATA", {"attrs": [(BRPORT_HAIRPIN, 1 if on else 0)]}),
    ]}
    from pyroute2.netlink.rtnl import RTM_NEWLINK
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    msg = ifinfmsg()
    msg["attrs"] = [("IFLA_IFNAME", ifname), ("IFLA_LINKINFO", linkinfo)]
    s.rtnl(ns).request(msg, RTM_NEWLINK)


def _mac(value: str | None) -> str | None:
    return value.lower() if value else None


def _split_cidr(cidr: str) -> tuple[str, int]:
    if cidr == "default":
        return "0.0.0.0", 0
    try:
        net = ipaddress.ip_interface(cidr)
    except ValueError:
        raise _Malformed(f"{cidr!r} is not an address with a prefix length") from None
    return str(net.ip), net.network.prefixlen


def _create_link(s: NetlinkSession, ns: str, ifname: str, **attrs: Any) -> bool:
    """Create a link; False if one of that name exists already (the caller converges it)."""
    try:
        s.ipr(ns).link("add", ifname=ifname, **attrs)
    except _netlink_error() as exc:
        if exc.code == errno.EEXIST:
            return False
        raise
    return True


# --------------------------------------------------------------------------- ensure_*


def ensure_netns(s: NetlinkSession, step: Netns) -> None:
    netns.ensure(step.name)
    _set_link(s, step.name, "lo", state="up")


def _sysctl_path(key: str) -> str:
    """``net.ipv4.ip_forward`` -> /proc/sys/net/ipv4/ip_forward; a key with ``/`` is a path
    already (``net/ipv6/conf/flannel.1/accept_ra``: interface names may contain dots)."""
    rel = key if "/" in key else key.replace(".", "/")
    parts = rel.strip("/").split("/")
    if not rel or any(part in ("", ".", "..") for part in parts):
        raise _Malformed(f"{key!r} is not a sysctl key")
    return "/proc/sys/" + "/".join(parts)


def ensure_sysctl(s: NetlinkSession, step: Sysctl) -> None:
    path = _sysctl_path(step.key)
    if not netns.exists(step.netns):
        raise _Refused(f'netns "{step.netns}" does not exist')
    # /proc/sys/net resolves against the namespace of the thread that opens the file.
    with netns.inside(step.netns):
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, step.value.encode())
        finally:
            os.close(fd)


def _bridge_is_converged(step: Bridge, link: Any) -> bool:
    """Whether an existing bridge already is what ``step`` asks: up, with its MTU and MAC."""
    return (
        _kind(link) == "bridge"
        and bool(link["flags"] & _IFF_UP)
        and link.get("mtu") == step.mtu
        and (not step.mac or _mac(link.get("address")) == _mac(step.mac))
    )


def ensure_bridge(s: NetlinkSession, step: Bridge) -> None:
    # Read first, unlike the other ensure_*: a bridge is a prerequisite every pod's ADD
    # ensures again (cni0), so it nearly always exists already; one read then replaces a
    # create refused with "exists" and three writes (it also caches the bridge's ifindex for
    # the veth's master and the address that follow).
    link = _get_link(s, step.netns, step.name)
    if link is not None and _bridge_is_converged(step, link):
        return
    attrs: dict[str, Any] = {"kind": "bridge", "state": "up"}
    if step.mac:
        attrs["address"] = _mac(step.mac)
    created = link is None and _create_link(s, step.netns, step.name, **attrs)
    if not created:
        link = link if link is not None else _get_link(s, step.netns, step.name)
        if link is not None and _kind(link) != "bridge":
            raise _Refused(f"{step.name} exists and is a {_kind(link) or 'device'}, not a bridge")
        if step.mac:
            _set_link(s, step.netns, step.name, address=_mac(step.mac))
        _set_link(s, step.netns, step.name, state="up")
    # Set after creation so the MTU sticks: an MTU given at creation is not "set by the user"
    # and the bridge would follow its ports' MTU instead.
    _set_link(s, step.netns, step.name, mtu=step.mtu)


def _create_veth(s: NetlinkSession, step: VethPair, master: int | None, peer_netns_fd: int) -> bool:
    """``ip link add NAME up mtu M [address A] [master B] type veth peer name P netns FD mtu M
    [address A']``, in one request on the bare socket; False if the name is taken."""
    from pyroute2.netlink import NLM_F_CREATE, NLM_F_EXCL
    from pyroute2.netlink.rtnl import RTM_NEWLINK
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    peer = [("IFLA_IFNAME", step.peer_name), ("IFLA_MTU", step.mtu), ("IFLA_NET_NS_FD", peer_netns_fd)]
    if step.peer_mac:
        peer.append(("IFLA_ADDRESS", _mac(step.peer_mac)))
    msg = ifinfmsg()
    msg["flags"] = msg["change"] = _IFF_UP
    msg["attrs"] = [("IFLA_IFNAME", step.name), ("IFLA_MTU", step.mtu)]
    if step.mac:
        msg["attrs"].append(("IFLA_ADDRESS", _mac(step.mac)))
    if master is not None:
        msg["attrs"].append(("IFLA_MASTER", master))
    msg["attrs"].append(("IFLA_LINKINFO", {"attrs": [
        ("IFLA_INFO_KIND", "veth"),
        ("IFLA_INFO_DATA", {"attrs": [("VETH_INFO_PEER", {"attrs": peer})]}),
    ]}))
    try:
        s.rtnl(step.netns).request(msg, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL)
    except _netlink_error() as exc:
        if exc.code == errno.EEXIST:
            return False
        raise
    return True


def _veth_is_ours(s: NetlinkSession, step: VethPair, link: Any) -> bool:
    if _kind(link) != "veth":
        return False
    peer = _get_link(s, step.peer_netns, step.peer_name)
    return (
        peer is not None
        and _kind(peer) == "veth"
        and peer.get("link") == link["index"]
        and link.get("link") == peer["index"]
    )


def ensure_veth(s: NetlinkSession, step: VethPair) -> None:
    master = s.index(step.netns, step.master) if step.master else None
    s.rtnl(step.peer_netns)  # fails clearly if the peer namespace is missing
    fd = os.open(netns.path(step.peer_netns), os.O_RDONLY)
    try:
        created = _create_veth(s, step, master, fd)
        if not created:
            link = _get_link(s, step.netns, step.name)
            if link is None:
                stale = _get_link(s, step.peer_netns, step.peer_name)
                if stale is None or _kind(stale) != "veth" or stale.get("link_netnsid") is None:
                    raise _Refused(f'{step.peer_name} already exists in netns "{step.peer_netns}"')
                # A veth whose other end is in another namespace, without the name we want
                # there: its node's namespace was deleted while something still held it
                # (overlaynet's self-heal makes the node again). Replace it with our pair.
                s.ipr(step.peer_netns).link("del", ifname=step.peer_name)
                s.forget(step.peer_netns, step.peer_name)
                if not _create_veth(s, step, master, fd):
                    raise _Refused(f'{step.peer_name} already exists in netns "{step.peer_netns}"')
            elif not _veth_is_ours(s, step, link):
                # A stale or foreign device holds the name: replace it with the pair we want.
                s.ipr(step.netns).link("del", ifname=step.name)
                s.forget(step.netns, step.name)
                s.forget(step.peer_netns, step.peer_name)
                if not _create_veth(s, step, master, fd):
                    raise _Refused(f'{step.peer_name} already exists in netns "{step.peer_netns}"')
            else:
                local: dict[str, Any] = {"mtu": step.mtu, "master": master or 0}
                if step.mac:
                    local["address"] = _mac(step.mac)
                _set_link(s, step.netns, step.name, **local)
                _set_link(s, step.netns, step.name, state="up")
                remote: dict[str, Any] = {"mtu": step.mtu}
                if step.peer_mac:
                    remote["address"] = _mac(step.peer_mac)
                _set_link(s, step.peer_netns, step.peer_name, **remote)
    finally:
        os.close(fd)
    # The peer cannot be brought up in the creating request (the kernel has not paired the
    # two ends yet when it configures the peer): one request in the peer's namespace.
    _set_link(s, step.peer_netns, step.peer_name, state="up")
    if step.hairpin or not created:
        if step.master:
            _set_hairpin(s, step.netns, step.name, step.hairpin)


def _vxlan_matches(s: NetlinkSession, step: Vxlan, link: Any) -> bool:
    if _kind(link) != "vxlan":
        return False
    data = ("linkinfo", "data")
    return (
        link.get(data + ("vxlan_id",)) == step.vni
        and link.get(data + ("vxlan_local",)) == step.local
        and link.get(data + ("vxlan_port",)) == step.port
        and bool(link.get(data + ("vxlan_learning",))) == step.learning
        and link.get(data + ("vxlan_link",)) == s.index(step.netns, step.dev)
    )


def _raise_if_no_vxlan(exc: BaseException) -> None:
    text = str(exc).lower()
    if _code(exc) in _NO_VXLAN or any(t in text for t in _NO_VXLAN_TEXT):
        raise HostError(
            "this kernel lacks VXLAN support (CONFIG_VXLAN): cannot create a vxlan device; "
            "use a kernel built with CONFIG_VXLAN or a CNI mode without encapsulation"
        ) from exc


def ensure_vxlan(s: NetlinkSession, step: Vxlan) -> None:
    attrs = {
        "kind": "vxlan",
        "vxlan_id": step.vni,
        "vxlan_local": step.local,
        "vxlan_link": s.index(step.netns, step.dev),
        "vxlan_port": step.port,
        "vxlan_learning": 1 if step.learning else 0,
        "mtu": step.mtu,
        "address": _mac(step.mac),
        "state": "up",
    }
    try:
        if _create_link(s, step.netns, step.name, **attrs):
            return
    except _netlink_error() as exc:
        _raise_if_no_vxlan(exc)
        raise
    link = _get_link(s, step.netns, step.name)
    if link is None or not _vxlan_matches(s, step, link):
        # As Flannel does with an incompatible device: delete it and create ours.
        s.ipr(step.netns).link("del", ifname=step.name)
        s.forget(step.netns, step.name)
        if not _create_link(s, step.netns, step.name, **attrs):
            raise _Refused(f"{step.name} exists and cannot be replaced")
        return
    _set_link(s, step.netns, step.name, mtu=step.mtu, address=_mac(step.mac))
    _set_link(s, step.netns, step.name, state="up")


def ensure_address(s: NetlinkSession, step: Address) -> None:
    ip, prefixlen = _split_cidr(step.cidr)
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    from pyroute2.netlink import NLM_F_CREATE, NLM_F_EXCL
    from pyroute2.netlink.rtnl import RTM_NEWADDR
    from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg

    msg = ifaddrmsg()
    msg["family"], msg["prefixlen"], msg["index"] = family, prefixlen, s.index(step.netns, step.dev)
    # as `ip addr add` (and pyroute2) send it: IFA_LOCAL too for IPv4, no broadcast
    msg["attrs"] = [("IFA_ADDRESS", ip)] + ([("IFA_LOCAL", ip)] if family == socket.AF_INET else [])
    try:
        s.rtnl(step.netns).request(msg, RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL)
    except _netlink_error() as exc:
        if exc.code != errno.EEXIST:
            raise


# Route origins by the names /etc/iproute2/rt_protos gives them.
_PROTOS = {"boot": RTPROT_BOOT, "static": 4, "bird": 12}


def _route_proto(proto: str | None) -> int:
    if proto is None:
        return RTPROT_BOOT
    if proto in _PROTOS:
        return _PROTOS[proto]
    if proto.isdigit() and 0 < int(proto) < 256:
        return int(proto)
    raise _Malformed(f"unknown route protocol {proto!r}")


def _route_attrs(s: NetlinkSession, step: Route, for_delete: bool = False) -> dict[str, Any]:
    dst, dst_len = _split_cidr(step.dst)
    if step.type not in _ROUTE_TYPES:
        raise _Malformed(f"unknown route type {step.type!r}")
    if step.scope not in _SCOPES:
        raise _Malformed(f"unknown route scope {step.scope!r}")
    attrs: dict[str, Any] = {
        "family": socket.AF_INET6 if ":" in dst else socket.AF_INET,
        "table": RT_TABLE_MAIN,
        "type": _ROUTE_TYPES[step.type],
    }
    if dst_len:
        attrs["dst"] = dst
        attrs["dst_len"] = dst_len
    if for_delete:
        attrs["scope"] = RT_SCOPE_NOWHERE  # match whatever scope the route has
    else:
        attrs["scope"] = _SCOPES[step.scope]
        attrs["proto"] = _route_proto(step.proto)
        if step.src:
            attrs["prefsrc"] = step.src
    if step.type == "unicast":
        if step.gateway:
            attrs["gateway"] = step.gateway
        if step.dev:
            attrs["oif"] = s.index(step.netns, step.dev)
        if step.onlink and not for_delete:
            attrs["flags"] = RTNH_F_ONLINK
    return attrs


_RTA = {"dst": "RTA_DST", "gateway": "RTA_GATEWAY", "oif": "RTA_OIF", "prefsrc": "RTA_PREFSRC"}


def ensure_route(s: NetlinkSession, step: Route) -> None:
    from pyroute2.netlink import NLM_F_CREATE, NLM_F_REPLACE
    from pyroute2.netlink.rtnl import RTM_NEWROUTE
    from pyroute2.netlink.rtnl.rtmsg import rtmsg

    attrs = _route_attrs(s, step)
    msg = rtmsg()
    for field in ("family", "dst_len", "table", "type", "scope", "proto", "flags"):
        msg[field] = attrs.get(field, 0)
    msg["attrs"] = [("RTA_TABLE", attrs["table"])] + [(nla, attrs[key]) for key, nla in _RTA.items() if key in attrs]
    s.rtnl(step.netns).request(msg, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE)


def _new_neighbour(s: NetlinkSession, ns: str, family: int, ifindex: int, state: int, ndm_flags: int,
                   nlm_flags: int, **nda: Any) -> None:
    """``RTM_NEWNEIGH`` on the bare socket: ``ip neigh replace`` and ``bridge fdb append`` alike."""
    from pyroute2.netlink.rtnl import RTM_NEWNEIGH
    from pyroute2.netlink.rtnl.ndmsg import ndmsg

    msg = ndmsg()
    msg["family"], msg["ifindex"], msg["state"], msg["flags"] = family, ifindex, state, ndm_flags
    msg["attrs"] = [(f"NDA_{key.upper()}", value) for key, value in nda.items() if value is not None]
    s.rtnl(ns).request(msg, RTM_NEWNEIGH, nlm_flags)


def ensure_neighbour(s: NetlinkSession, step: Neighbour) -> None:
    from pyroute2.netlink import NLM_F_CREATE, NLM_F_REPLACE

    _new_neighbour(s, step.netns, socket.AF_INET6 if ":" in step.ip else socket.AF_INET,
                   s.index(step.netns, step.dev), NUD_PERMANENT, 0, NLM_F_CREATE | NLM_F_REPLACE,
                   dst=step.ip, lladdr=_mac(step.mac))


def ensure_proxy_neighbour(s: NetlinkSession, step: ProxyNeighbour) -> None:
    s.ipr(step.netns).neigh("replace", dst=step.ip, ifindex=s.index(step.netns, step.dev),
                            flags=_NTF_PROXY, family=socket.AF_INET)
    # As a layer-2 speaker does when it takes an address over: neighbours learn the new MAC now.
    arp.send_announcement(step.netns, step.dev, step.ip)


def ensure_fdb(s: NetlinkSession, step: FdbEntry) -> None:
    from pyroute2.netlink import NLM_F_APPEND, NLM_F_CREATE

    # `bridge fdb append ... self permanent`: NLM_F_APPEND without NLM_F_EXCL, so appending an
    # entry that exists is not an error.
    _new_neighbour(s, step.netns, socket.AF_BRIDGE, s.index(step.netns, step.dev), NUD_NOARP | NUD_PERMANENT,
                   NTF_SELF, NLM_F_CREATE | NLM_F_APPEND, lladdr=_mac(step.mac), dst=step.dst)


# --------------------------------------------------------------------------- delete_*


def _ignore_gone(fn: Callable[[], Any]) -> None:
    try:
        fn()
    except _netlink_error() as exc:
        if exc.code not in _GONE:
            raise


def _index_or_none(s: NetlinkSession, ns: str, ifname: str) -> int | None:
    try:
        return s.index(ns, ifname)
    except OSError as exc:
        if exc.errno in _GONE:
            return None
        raise


def delete_netns(s: NetlinkSession, step: Netns) -> None:
    s.drop(step.name)  # our socket would keep the namespace alive
    netns.delete(step.name)


def delete_sysctl(s: NetlinkSession, step: Sysctl) -> None:
    """Nothing to undo: the value dies with its namespace."""


def _delete_link(s: NetlinkSession, ns: str, ifname: str) -> None:
    _ignore_gone(lambda: s.ipr(ns).link("del", ifname=ifname))
    s.forget(ns, ifname)


def delete_bridge(s: NetlinkSession, step: Bridge) -> None:
    _delete_link(s, step.netns, step.name)


def delete_veth(s: NetlinkSession, step: VethPair) -> None:
    # Deleting one end deletes both; if our end is gone, so is the pair.
    _delete_link(s, step.netns, step.name)
    s.forget(step.peer_netns, step.peer_name)


def delete_vxlan(s: NetlinkSession, step: Vxlan) -> None:
    _delete_link(s, step.netns, step.name)


def delete_address(s: NetlinkSession, step: Address) -> None:
    idx = _index_or_none(s, step.netns, step.dev)
    if idx is None:
        return
    ip, prefixlen = _split_cidr(step.cidr)
    _ignore_gone(lambda: s.ipr(step.netns).addr(
        "del", index=idx, address=ip, prefixlen=prefixlen,
        family=socket.AF_INET6 if ":" in ip else socket.AF_INET))


def delete_route(s: NetlinkSession, step: Route) -> None:
    if step.dev and _index_or_none(s, step.netns, step.dev) is None:
        return  # the kernel removed the route with its device
    _ignore_gone(lambda: s.ipr(step.netns).route("del", **_route_attrs(s, step, for_delete=True)))


def delete_neighbour(s: NetlinkSession, step: Neighbour) -> None:
    idx = _index_or_none(s, step.netns, step.dev)
    if idx is None:
        return
    _ignore_gone(lambda: s.ipr(step.netns).neigh(
        "del", dst=step.ip, ifindex=idx,
        family=socket.AF_INET6 if ":" in step.ip else socket.AF_INET))


def delete_proxy_neighbour(s: NetlinkSession, step: ProxyNeighbour) -> None:
    idx = _index_or_none(s, step.netns, step.dev)
    if idx is None:
        return
    _ignore_gone(lambda: s.ipr(step.netns).neigh("del", dst=step.ip, ifindex=idx, flags=_NTF_PROXY,
                                                 family=socket.AF_INET))


def delete_fdb(s: NetlinkSession, step: FdbEntry) -> None:
    idx = _index_or_none(s, step.netns, step.dev)
    if idx is None:
        return
    _ignore_gone(lambda: s.ipr(step.netns).fdb("del", ifindex=idx, lladdr=_mac(step.mac),
                                               dst=step.dst))


_ENSURE: dict[type, Callable[[NetlinkSession, Any], None]] = {
    Netns: ensure_netns, Sysctl: ensure_sysctl, Bridge: ensure_bridge, VethPair: ensure_veth,
    Vxlan: ensure_vxlan, Address: ensure_address, Route: ensure_route,
    Neighbour: ensure_neighbour, FdbEntry: ensure_fdb, ProxyNeighbour: ensure_proxy_neighbour,
}
_DELETE: dict[type, Callable[[NetlinkSession, Any], None]] = {
    Netns: delete_netns, Sysctl: delete_sysctl, Bridge: delete_bridge, VethPair: delete_veth,
    Vxlan: delete_vxlan, Address: delete_address, Route: delete_route,
    Neighbour: delete_neighbour, FdbEntry: delete_fdb, ProxyNeighbour: delete_proxy_neighbour,
}


def _run(s: NetlinkSession, table: dict[type, Callable[[NetlinkSession, Any], None]], step: Step) -> None:
    handler = table.get(type(step))
    if handler is None:
        raise TypeError(f"not a plan step: {step!r}")
    try:
        handler(s, step)
    except (HostError, KernelError, InvalidInput):
        raise
    except _Refused as exc:
        raise _error(step, exc) from None
    except OSError as exc:
        raise _error(step, exc) from exc
    except Exception as exc:
        if isinstance(exc, _netlink_error()):
            raise _error(step, exc) from exc
        raise


# --------------------------------------------------------------------------- public


@off_event_loop
def apply(plan: Plan) -> None:
    """Make every step of ``plan`` true in the kernel, in order. Running it twice is a no-op."""
    with NetlinkSession() as s:
        for step in plan:
            _run(s, _ENSURE, step)


@off_event_loop
def remove(plan: Plan) -> None:
    """Undo ``plan``'s steps in reverse order; objects already gone are fine.

    A step inside a namespace this plan deletes is not taken apart piece by piece: the
    kernel destroys the namespace with everything in it. Deleting a namespace returns at
    once and the kernel finishes ~0.1 s later, taking the far end of any veth pair with it;
    so a pair whose other end survives (a pod's veth on its node) is deleted explicitly,
    and is gone when ``remove`` returns.
    """
    doomed = {step.name for step in plan if isinstance(step, Netns)}
    with NetlinkSession() as s:
        for step in reversed(plan):
            if not isinstance(step, Netns):
                if step.netns in doomed:
                    continue
                if not netns.exists(step.netns):
                    continue  # gone with its namespace
            _run(s, _DELETE, step)


@functools.lru_cache(maxsize=1)
@off_event_loop
def vxlan_supported() -> bool:
    """Whether this kernel can create VXLAN devices (probed once per process, in a throwaway
    namespace that is deleted again)."""
    netns.sweep_throwaways("probe")
    probe = netns.throwaway_name("probe")
    step = Vxlan(probe, "vxprobe0", vni=1, local="127.0.0.1", dev="lo", port=8472,
                 mtu=1450, mac="02:00:00:00:00:01")
    try:
        with NetlinkSession() as s:
            netns.ensure(probe)
            try:
                ensure_vxlan(s, step)
            except HostError:
                return False
            delete_vxlan(s, step)
        return True
    finally:
        netns.delete(probe)
