"""host-local IPAM: per-node address allocation from ranges, state in files (cni.md §9).

What this module owns: the semantics of the reference ``host-local`` plugin, re-implemented
(not copied) as a pure allocator over a small store interface, plus the on-disk store:

- ``ranges``: a list of range sets; each set yields one address per attachment (a v4 set and a
  v6 set make a dual-stack pod). A range is ``subnet`` (required, no host bits), ``rangeStart``
  (default network+1), ``rangeEnd`` (default the last usable address), ``gateway`` (default
  network+1, never handed out). The flat form (``subnet``/``rangeStart``/... directly in
  ``ipam``) is accepted too. A v4 subnet must be /30 or larger (a /30 holds exactly one pod);
- ``routes`` are returned as given; ``resolvConf`` fills ``dns``; ``dataDir`` is the state
  directory (default ``/var/lib/cni/networks``), one sub-directory per network name;
- state files: ``<ip>`` (created O_EXCL, 0644, ``<containerID>\\r\\n<ifname>``),
  ``last_reserved_ip.<set index>`` (the last address handed out: allocation continues
  round-robin after it) and ``lock``, ``flock``-ed around every operation, so concurrent ADDs
  — threads or processes — never get the same address;
- specific addresses: ``CNI_ARGS`` ``IP=`` (comma-separated), ``args.cni.ips``,
  ``runtimeConfig.ips``; ``runtimeConfig.ipRanges`` replaces ``ranges``;
- ADD refuses a second allocation for the same (containerID, ifname) in a range set, and fails
  naming the range set when it is exhausted; DEL is idempotent and also removes old-format files
  (bare ``<containerID>``); CHECK fails when no address belongs to the attachment; GC frees every
  address whose attachment is not listed as valid; ``status`` says whether each set has room.

What it never does: touch the kernel. The store is the only thing that does I/O, and
``DiskStore`` is the only store here (tests use an in-memory one with the same methods).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import ipaddress
import os
from collections.abc import Iterator, Mapping
from typing import Protocol, Union

from overlaynet.cni import spec
from overlaynet.cni.spec import DNS, IPConfig, Record, Result, RouteEntry
from overlaynet.errors import CniError

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

DEFAULT_DATA_DIR = "/var/lib/cni/networks"
LAST_RESERVED_PREFIX = "last_reserved_ip."
LOCK_FILE = "lock"
LINE_BREAK = "\r\n"


# --------------------------------------------------------------------------- configuration


class Range(Record):
    """``subnet``, ``start``, ``end`` (inclusive) and ``gateway`` (None: no gateway)."""

    __slots__ = ("subnet", "start", "end", "gateway")

    subnet: IPNetwork
    start: IPAddress
    end: IPAddress
    gateway: IPAddress | None

    def __contains__(self, ip: object) -> bool:
        return (isinstance(ip, (ipaddress.IPv4Address, ipaddress.IPv6Address)) and ip.version == self.subnet.version
                and int(self.start) <= int(ip) <= int(self.end))

    @property
    def capacity(self) -> int:
        count = int(self.end) - int(self.start) + 1
        return count - (1 if self.gateway is not None and self.gateway in self else 0)

    def __str__(self) -> str:
        return f"{self.subnet} ({self.start}-{self.end})"


class RangeSet(Record):
    """One address per attachment comes from each range set: ``ranges``, walked in order."""

    __slots__ = ("ranges",)

    ranges: tuple[Range, ...]

    def __contains__(self, ip: object) -> bool:
        return any(ip in r for r in self.ranges)

    def __str__(self) -> str:
        return ", ".join(str(r) for r in self.ranges)

    @property
    def capacity(self) -> int:
        return sum(r.capacity for r in self.ranges)

    def is_gateway(self, ip: IPAddress) -> bool:
        return any(r.gateway == ip for r in self.ranges)


class IpamConfig(Record):
    """``network`` (its name), ``range_sets``, ``routes``, ``data_dir``, ``resolv_conf``."""

    __slots__ = ("network", "range_sets", "routes", "data_dir", "resolv_conf")
    _defaults = {"routes": (), "data_dir": DEFAULT_DATA_DIR, "resolv_conf": None}

    network: str
    range_sets: tuple[RangeSet, ...]
    routes: tuple[RouteEntry, ...]
    data_dir: str
    resolv_conf: str | None


def _invalid(network: str, message: str) -> CniError:
    return CniError(spec.ERR_INVALID_CONFIG, f'network "{network}": ipam: {message}')


def _address(network: str, where: str, value: object) -> IPAddress:
    try:
        return ipaddress.ip_address(value)  # type: ignore[arg-type]
    except ValueError:
        raise _invalid(network, f"{where} {value!r} is not an IP address") from None


def _last_usable(subnet: IPNetwork) -> IPAddress:
    return subnet.broadcast_address - 1 if subnet.version == 4 else subnet.broadcast_address


def parse_range(network: str, where: str, doc: object) -> Range:
    if not isinstance(doc, dict):
        raise _invalid(network, f"{where} must be an object with a subnet")
    text = doc.get("subnet")
    if not isinstance(text, str) or not text:
        raise _invalid(network, f"{where}.subnet is missing")
    try:
        subnet = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        reason = "host bits are set" if "host bits" in str(exc) else "not a CIDR"
        raise _invalid(network, f"{where}.subnet {text!r}: {reason}") from None
    if subnet.prefixlen > subnet.max_prefixlen - 2:
        raise _invalid(network, f"{where}.subnet {subnet} is too small to allocate from "
                                f"(at most /{subnet.max_prefixlen - 2})")
    first = subnet.network_address + 1
    last = _last_usable(subnet)
    start = _address(network, f"{where}.rangeStart", doc["rangeStart"]) if doc.get("rangeStart") else first
    end = _address(network, f"{where}.rangeEnd", doc["rangeEnd"]) if doc.get("rangeEnd") else last
    for key, ip in (("rangeStart", start), ("rangeEnd", end)):
        if ip.version != subnet.version or not int(first) <= int(ip) <= int(last):
            raise _invalid(network, f"{where}.{key} {ip} is not a usable address of subnet {subnet}")
    if int(start) > int(end):  # the same version: checked above
        raise _invalid(network, f"{where}: rangeStart {start} is after rangeEnd {end}")
    gateway: IPAddress | None = first
    if doc.get("gateway"):
        gateway = _address(network, f"{where}.gateway", doc["gateway"])
        if gateway not in subnet:
            raise _invalid(network, f"{where}.gateway {gateway} is not in subnet {subnet}")
    return Range(subnet, start, end, gateway)


def _parse_route(network: str, index: int, doc: object) -> RouteEntry:
    if not isinstance(doc, dict):
        raise _invalid(network, f"routes[{index}] must be an object with dst")
    dst = doc.get("dst")
    try:
        ipaddress.ip_network(dst, strict=False)  # type: ignore[arg-type]
    except (ValueError, TypeError):
        raise _invalid(network, f"routes[{index}].dst {dst!r} is not a CIDR") from None
    gw = doc.get("gw")
    if gw:
        _address(network, f"routes[{index}].gw", gw)
    return RouteEntry(dst=str(dst), gw=gw or None)


def parse_config(conf: Mapping) -> IpamConfig:
    """The ``ipam`` section of a request (plus ``runtimeConfig.ipRanges``), validated."""
    network = str(conf.get("name", ""))
    ipam = conf.get("ipam")
    if not isinstance(ipam, dict):
        raise CniError(spec.ERR_INVALID_CONFIG, f'network "{network}": ipam must be an object')
    raw_sets = ipam.get("ranges")
    runtime_ranges = (conf.get("runtimeConfig") or {}).get("ipRanges")
    if runtime_ranges:
        raw_sets = runtime_ranges
    if raw_sets is None and ipam.get("subnet"):
        raw_sets = [[{k: ipam[k] for k in ("subnet", "rangeStart", "rangeEnd", "gateway") if k in ipam}]]
    if not isinstance(raw_sets, list) or not raw_sets:
        raise _invalid(network, "ranges must be a non-empty list of range sets (or give a subnet)")
    sets = []
    for i, raw_set in enumerate(raw_sets):
        if not isinstance(raw_set, list) or not raw_set:
            raise _invalid(network, f"ranges[{i}] must be a non-empty list of ranges")
        ranges = tuple(parse_range(network, f"ranges[{i}][{j}]", r) for j, r in enumerate(raw_set))
        if len({r.subnet.version for r in ranges}) > 1:
            raise _invalid(network, f"ranges[{i}] mixes IPv4 and IPv6 ranges")
        for a in range(len(ranges)):
            for b in range(a + 1, len(ranges)):
                ra, rb = ranges[a], ranges[b]
                if int(ra.start) <= int(rb.end) and int(rb.start) <= int(ra.end):
                    raise _invalid(network, f"ranges[{i}]: range {ra} overlaps range {rb}")
        sets.append(RangeSet(ranges))
    for a in range(len(sets)):
        for b in range(a + 1, len(sets)):
            if any(ra.subnet.overlaps(rb.subnet) for ra in sets[a].ranges for rb in sets[b].ranges):
                raise _invalid(network, f"range sets {a} and {b} overlap")
    routes = ipam.get("routes") or []
    if not isinstance(routes, list):
        raise _invalid(network, "routes must be a list of {dst, gw}")
    data_dir = ipam.get("dataDir") or DEFAULT_DATA_DIR
    if not isinstance(data_dir, str):
        raise _invalid(network, f"dataDir {data_dir!r} must be a path")
    resolv = ipam.get("resolvConf")
    return IpamConfig(
        network=spec.check_network_name(network),
        range_sets=tuple(sets),
        routes=tuple(_parse_route(network, i, r) for i, r in enumerate(routes)),
        data_dir=data_dir,
        resolv_conf=resolv if isinstance(resolv, str) and resolv else None,
    )


def requested_ips(conf: Mapping, env_args: Mapping[str, str]) -> list[IPAddress]:
    """Specific addresses asked for: CNI_ARGS ``IP=``, ``args.cni.ips``, ``runtimeConfig.ips``."""
    texts: list[str] = []
    if env_args.get("IP"):
        texts += [t for t in env_args["IP"].split(",") if t.strip()]
    args = conf.get("args")
    if isinstance(args, dict) and isinstance(args.get("cni"), dict):
        texts += list(args["cni"].get("ips") or [])
    texts += list((conf.get("runtimeConfig") or {}).get("ips") or [])
    out = []
    for text in texts:
        try:
            out.append(ipaddress.ip_interface(str(text).strip()).ip)
        except ValueError:
            raise CniError(spec.ERR_INVALID_CONFIG, f"requested IP {text!r} is not an IP address") from None
    return out


# --------------------------------------------------------------------------- the store


class AllocationStore(Protocol):
    """What the allocator needs; every method is called with the lock held."""

    def lock(self) -> contextlib.AbstractContextManager: ...

    def reserved(self) -> dict[IPAddress, str]: ...  # ip -> file content

    def reserve(self, ip: IPAddress, content: str, set_index: int) -> bool: ...

    def last_reserved(self, set_index: int) -> IPAddress | None: ...

    def release(self, ip: IPAddress) -> None: ...


def attachment_content(container_id: str, ifname: str) -> str:
    return f"{container_id}{LINE_BREAK}{ifname}"


def belongs_to(content: str, container_id: str, ifname: str) -> bool:
    """A state file's content names this attachment (``id\\r\\nifname``, or the old bare ``id``)."""
    content = content.strip()
    return content == attachment_content(container_id, ifname) or content == container_id


def owner(content: str) -> tuple[str, str | None]:
    """(containerID, ifname) from a state file's content; ifname None for the old format."""
    content = content.strip()
    if LINE_BREAK in content:
        cid, _, ifname = content.partition(LINE_BREAK)
        return cid.strip(), ifname.strip()
    return content, None


@functools.lru_cache(maxsize=1 << 16)
def _entry_address(entry: str) -> IPAddress | None:
    """The address a state directory entry is named after; None for ``lock`` and the like.
    (Cached: every allocation reads every entry's name.)"""
    try:
        return ipaddress.ip_address(entry)
    except ValueError:
        return None


def _read_text(name: str, directory: int) -> str:
    """A state file's content, its ``\\r\\n`` kept (a file per address is read on every ADD:
    plain reads, without a text file object)."""
    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=directory)
    try:
        chunks = []
        while chunk := os.read(fd, 4096):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode("utf-8", "replace")


def _overwrite(path: str, data: bytes) -> None:
    """Replace the content of ``path`` with ``data``, written over the old content and cut to
    length: opening with O_TRUNC frees the file's block first (~0.2 ms on ext4, every ADD)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


class DiskStore:
    """host-local's directory: ``<dataDir>/<network>/{<ip>, last_reserved_ip.<n>, lock}``."""

    def __init__(self, data_dir: str, network: str) -> None:
        self.directory = os.path.join(data_dir, spec.check_network_name(network))

    def _io_error(self, exc: OSError, what: str) -> CniError:
        return CniError(spec.ERR_IO, f"host-local: cannot {what} in {self.directory}",
                        exc.strerror or str(exc))

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        try:
            os.makedirs(self.directory, mode=0o755, exist_ok=True)
            fd = os.open(os.path.join(self.directory, LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise self._io_error(exc, "open the lock") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the last descriptor of the open file drops the flock

    def reserved(self) -> dict[IPAddress, str]:
        out: dict[IPAddress, str] = {}
        try:
            entries = os.listdir(self.directory)
        except FileNotFoundError:
            return out
        except OSError as exc:
            raise self._io_error(exc, "list allocations") from exc
        try:
            directory = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            return out
        except OSError as exc:
            raise self._io_error(exc, "list allocations") from exc
        try:
            for entry in entries:
                ip = _entry_address(entry)
                if ip is None:
                    continue
                try:
                    out[ip] = _read_text(entry, directory)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    raise self._io_error(exc, f"read {entry}") from exc
        finally:
            os.close(directory)
        return out

    def reserve(self, ip: IPAddress, content: str, set_index: int) -> bool:
        path = os.path.join(self.directory, str(ip))
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            return False
        except OSError as exc:
            raise self._io_error(exc, f"reserve {ip}") from exc
        try:
            os.write(fd, content.encode())
        except OSError as exc:
            os.close(fd)
            os.unlink(path)
            raise self._io_error(exc, f"write {ip}") from exc
        os.close(fd)
        last = os.path.join(self.directory, f"{LAST_RESERVED_PREFIX}{set_index}")
        try:
            _overwrite(last, str(ip).encode())
        except OSError as exc:
            os.unlink(path)
            raise self._io_error(exc, f"write {os.path.basename(last)}") from exc
        return True

    def last_reserved(self, set_index: int) -> IPAddress | None:
        try:
            with open(os.path.join(self.directory, f"{LAST_RESERVED_PREFIX}{set_index}"), encoding="ascii") as handle:
                return ipaddress.ip_address(handle.read().strip())
        except (OSError, ValueError):
            return None

    def release(self, ip: IPAddress) -> None:
        try:
            os.unlink(os.path.join(self.directory, str(ip)))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise self._io_error(exc, f"release {ip}") from exc


# --------------------------------------------------------------------------- the allocator


def _candidates(rset: RangeSet, last: IPAddress | None) -> Iterator[tuple[Range, IPAddress]]:
    """Every address of the set once, round-robin: starting after ``last`` when it lies in
    the set, else at the first range's start; wrapping to the first range after the last."""
    ranges = rset.ranges
    first_range, first_ip = 0, int(ranges[0].start)
    if last is not None:
        for index, r in enumerate(ranges):
            if last in r:
                if int(last) < int(r.end):
                    first_range, first_ip = index, int(last) + 1
                else:
                    first_range = (index + 1) % len(ranges)
                    first_ip = int(ranges[first_range].start)
                break
    order = list(range(first_range, len(ranges))) + list(range(0, first_range + 1))
    for n, index in enumerate(order):
        r = ranges[index]
        lo, hi = int(r.start), int(r.end)
        if n == 0:
            lo = first_ip
        elif n == len(order) - 1:
            hi = first_ip - 1 if index == first_range else hi
        for value in range(lo, hi + 1):
            yield r, ipaddress.ip_address(value) if r.subnet.version == 4 else ipaddress.IPv6Address(value)


def _ip_config(r: Range, ip: IPAddress) -> IPConfig:
    return IPConfig(address=f"{ip}/{r.subnet.prefixlen}", gateway=str(r.gateway) if r.gateway else None)


def _range_of(rset: RangeSet, ip: IPAddress) -> Range | None:
    return next((r for r in rset.ranges if ip in r), None)


def allocate(cfg: IpamConfig, store: AllocationStore, container_id: str, ifname: str,
             requested: list[IPAddress] | None = None) -> list[IPConfig]:
    """One address per range set for the attachment (all or none). Call with the lock held."""
    requested = list(requested or [])
    reserved = store.reserved()
    content = attachment_content(container_id, ifname)
    got: list[IPAddress] = []
    out: list[IPConfig] = []
    try:
        for set_index, rset in enumerate(cfg.range_sets):
            for ip, text in reserved.items():
                if ip in rset and belongs_to(text, container_id, ifname):
                    raise CniError(spec.ERR_PLUGIN, f"{ip} has been allocated to {container_id}/{ifname}, "
                                                    "duplicate allocation is not allowed",
                                   f'network "{cfg.network}", range set {rset}')
            wanted = [ip for ip in requested if ip in rset]
            if len(wanted) > 1:
                listed = ", ".join(map(str, wanted))
                raise CniError(spec.ERR_INVALID_CONFIG, f"requested IPs {listed} are in one range set {rset}",
                               "one address per range set")
            if wanted:
                ip = wanted[0]
                r = _range_of(rset, ip)
                assert r is not None
                if ip in reserved or rset.is_gateway(ip) or not store.reserve(ip, content, set_index):
                    raise CniError(spec.ERR_PLUGIN, f"requested IP address {ip} is not available in range set {rset}",
                                   f'network "{cfg.network}"')
                requested.remove(ip)
            else:
                for r, ip in _candidates(rset, store.last_reserved(set_index)):
                    if ip == r.gateway or ip in reserved:
                        continue
                    if store.reserve(ip, content, set_index):
                        break
                else:
                    raise CniError(spec.ERR_PLUGIN, f"no IP addresses available in range set {rset}",
                                   f'network "{cfg.network}": all {rset.capacity} addresses are allocated')
            got.append(ip)
            out.append(_ip_config(r, ip))
        if requested:
            raise CniError(spec.ERR_INVALID_CONFIG,
                           f"requested IP {', '.join(map(str, requested))} is in no range of network \"{cfg.network}\"")
    except BaseException:
        for ip in got:
            store.release(ip)
        raise
    return out


def release(store: AllocationStore, container_id: str, ifname: str) -> list[IPAddress]:
    """Free every address of the attachment (idempotent). Call with the lock held."""
    freed = [ip for ip, text in store.reserved().items() if belongs_to(text, container_id, ifname)]
    for ip in freed:
        store.release(ip)
    return sorted(freed, key=lambda ip: (ip.version, ip))


def addresses_of(store: AllocationStore, container_id: str, ifname: str) -> list[IPAddress]:
    return sorted((ip for ip, text in store.reserved().items() if belongs_to(text, container_id, ifname)),
                  key=lambda ip: (ip.version, ip))


def collect_garbage(store: AllocationStore, valid: set[tuple[str, str]]) -> list[IPAddress]:
    """Free every address whose attachment is not in ``valid``. Call with the lock held."""
    valid_ids = {cid for cid, _ in valid}
    freed = []
    for ip, text in store.reserved().items():
        cid, ifname = owner(text)
        keep = (cid, ifname) in valid if ifname is not None else cid in valid_ids
        if not keep:
            store.release(ip)
            freed.append(ip)
    return sorted(freed, key=lambda ip: (ip.version, ip))


def free_count(cfg: IpamConfig, store: AllocationStore) -> list[tuple[RangeSet, int]]:
    """Free addresses per range set (gateways excluded)."""
    reserved = store.reserved()
    out = []
    for rset in cfg.range_sets:
        used = sum(1 for ip in reserved if ip in rset and not rset.is_gateway(ip))
        out.append((rset, rset.capacity - used))
    return out


# --------------------------------------------------------------------------- the commands


def _dns(cfg: IpamConfig) -> DNS:
    """``nameserver``, ``domain``, ``search`` and ``options`` of ``resolvConf``, if given."""
    dns = DNS()
    if not cfg.resolv_conf:
        return dns
    try:
        with open(cfg.resolv_conf, encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError as exc:
        raise CniError(spec.ERR_IO, f"host-local: cannot read resolvConf {cfg.resolv_conf}",
                       exc.strerror or "") from exc
    for line in lines:
        words = line.split("#", 1)[0].split()
        if len(words) < 2:
            continue
        if words[0] == "nameserver":
            dns.nameservers.append(words[1])
        elif words[0] == "domain":
            dns.domain = words[1]
        elif words[0] == "search":
            dns.search.extend(words[1:])
        elif words[0] == "options":
            dns.options.extend(words[1:])
    return dns


def store_for(cfg: IpamConfig) -> DiskStore:
    return DiskStore(cfg.data_dir, cfg.network)


def cmd_add(conf: Mapping, env: spec.CniEnv, store: AllocationStore | None = None) -> Result:
    cfg = parse_config(conf)
    store = store or store_for(cfg)
    dns = _dns(cfg)
    with store.lock():
        ips = allocate(cfg, store, env.container_id, env.ifname, requested_ips(conf, env.args))
    return Result(ips=ips, routes=list(cfg.routes), dns=dns)


def cmd_del(conf: Mapping, env: spec.CniEnv, store: AllocationStore | None = None) -> list[IPAddress]:
    cfg = parse_config(conf)
    store = store or store_for(cfg)
    with store.lock():
        return release(store, env.container_id, env.ifname)


def cmd_check(conf: Mapping, env: spec.CniEnv, store: AllocationStore | None = None) -> None:
    cfg = parse_config(conf)
    store = store or store_for(cfg)
    with store.lock():
        held = addresses_of(store, env.container_id, env.ifname)
    if not held:
        raise CniError(spec.ERR_PLUGIN,
                       f"host-local: no address is allocated to {env.container_id}/{env.ifname} "
                       f'in network "{cfg.network}"')
    prev = conf.get("prevResult")
    if isinstance(prev, dict):
        expected = {ipaddress.ip_interface(ip.address).ip for ip in Result.from_dict(prev, "prevResult").ips}
        mine = {ip for ip in expected if any(ip in rset for rset in cfg.range_sets)}
        missing = sorted(mine - set(held), key=lambda ip: (ip.version, ip))
        if missing:
            raise CniError(spec.ERR_PLUGIN,
                           f"host-local: {', '.join(map(str, missing))} of prevResult is not allocated to "
                           f"{env.container_id}/{env.ifname} (it holds {', '.join(map(str, held))})")


def cmd_gc(conf: Mapping, env: spec.CniEnv, store: AllocationStore | None = None) -> list[IPAddress]:
    cfg = parse_config(conf)
    store = store or store_for(cfg)
    valid = spec.valid_attachments(conf)
    with store.lock():
        return collect_garbage(store, valid)


def cmd_status(conf: Mapping, env: spec.CniEnv, store: AllocationStore | None = None) -> None:
    cfg = parse_config(conf)
    store = store or store_for(cfg)
    try:
        with store.lock():
            counts = free_count(cfg, store)
    except CniError as exc:
        raise CniError(spec.ERR_NOT_AVAILABLE, f"host-local: state directory unusable: {exc.msg}", exc.details) from exc
    full = [rset for rset, free in counts if free <= 0]
    if full:
        raise CniError(spec.ERR_NOT_AVAILABLE,
                       f"no IP addresses available in range set {'; '.join(str(r) for r in full)}",
                       f'network "{cfg.network}": an ADD would fail')

