"""The CNI protocol as plain values: versions, error codes, environment, CNI_ARGS, network
configuration lists and results (pure; shared/reference/cni.md is the source of every rule).

What this module owns: everything a CNI runtime and a CNI plugin must agree on, checked the
same way on both sides:
- versions: the plugins speak 0.4.0, 1.0.0 and 1.1.0 and answer in the version asked for;
  STATUS and GC need 1.1.0 (cni.md §3-4);
- error codes (cni.md §2), the code each of overlaynet's errors becomes (``cni_error``), and
  the error object, printed on **stdout** like every answer;
- the ``CNI_*`` environment of each command: what is required, the container id's charset,
  an interface name shorter than 16 characters (cni.md §1, §8.4);
- ``CNI_ARGS`` (``K=V;K=V``): unknown keys are ignored whether or not ``IgnoreUnknown`` is set
  (cni.md §12.5: refusing them is a reference-plugin bug we do not copy);
- network configuration: one plugin's request (stdin) and the conflist a runtime reads;
- results: ``Result`` parses any 0.4.0/1.x result and renders it in a requested version
  (0.4.0 puts ``"version"`` in each ip; 1.1 adds interface ``mtu``/``socketPath``/``pciID`` and
  route ``mtu``/``advmss``/``priority``/``table``/``scope``).

What it never does: I/O, or import anything heavier than json, os, re and ipaddress — it is
on the start-up path of every plugin process (one per pod); the value types are ``Record``s,
not dataclasses (importing ``dataclasses`` alone costs a plugin ~4 ms).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Mapping

from overlaynet.errors import AgentError, CniError, InvalidInput, OverlaynetError

SUPPORTED_VERSIONS = ("0.4.0", "1.0.0", "1.1.0")
LATEST_VERSION = "1.1.0"

# Error codes (cni.md §2).
ERR_INCOMPATIBLE_VERSION = 1  # incompatible CNI version
ERR_UNSUPPORTED_FIELD = 2  # unsupported field in network configuration
ERR_UNKNOWN_CONTAINER = 3  # container unknown or does not exist
ERR_INVALID_ENV = 4  # invalid or missing environment variables
ERR_IO = 5  # I/O failure
ERR_DECODE = 6  # failed to decode content
ERR_INVALID_CONFIG = 7  # invalid network configuration
ERR_TRY_AGAIN = 11  # try again later
ERR_NOT_AVAILABLE = 50  # plugin not available
ERR_LIMITED = 51  # plugin not available, existing containers may have limited connectivity
ERR_PLUGIN = 999  # plugin-specific error

# The code an overlaynet error becomes when it ends a CNI operation: the nearest class in
# its MRO listed here, else ERR_PLUGIN. Not mapped on purpose: NotFoundError (code 3 would tell
# the runtime that no cleanup is needed), CapacityError (out of addresses is 999, as host-local
# says it, cni.md §8.3), KernelError and HostError (plugin-specific, as Go plugins report them).
ERROR_CODES: dict[type[OverlaynetError], int] = {
    InvalidInput: ERR_INVALID_CONFIG,  # a plugin's input is its network configuration
    AgentError: ERR_TRY_AGAIN,  # the agent is unreachable or busy: transient
}

COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")
# What the spec requires per command (cni.md §1); CNI_NETNS is optional for DEL.
REQUIRED_ENV: dict[str, tuple[str, ...]] = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "VERSION": (),
    "STATUS": (),
    "GC": ("CNI_PATH",),
}
ATTACHMENT_COMMANDS = ("ADD", "DEL", "CHECK")
NEEDS_1_1 = ("STATUS", "GC")

IFNAME_MAX = 15  # IFNAMSIZ - 1: the name must be shorter than 16 characters
CONTAINER_ID_MAX = 128  # runtimes use 64 hex digits; it becomes part of cache file names (<= 255 bytes)
_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*")  # network names and container ids
# Stricter than the kernel (which takes any bytes but "/", ":" and whitespace): a name that reaches
# a file name or a log line holds no shell metacharacter, no control and no look-alike letter.
_IFNAME_CHARS = re.compile(r"[A-Za-z0-9_.\-]+")
_NETNS_PATH = re.compile(r"/[A-Za-z0-9_.\-/]+")
_VERSION = re.compile(r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)")

VALID_ATTACHMENTS_KEYS = ("cni.dev/valid-attachments", "cni.dev/attachments")


# --------------------------------------------------------------------------- value types


class Factory:
    """A default made afresh for each record (``list``, ``dict``...)."""

    __slots__ = ("make",)

    def __init__(self, make) -> None:
        self.make = make


class Record:
    """A small mutable value: fields in ``__slots__`` order, ``_defaults`` by name; equality
    and repr by fields."""

    __slots__: tuple[str, ...] = ()
    _defaults: dict = {}

    def __init__(self, *args, **kwargs) -> None:
        names = self.__slots__
        if len(args) > len(names):
            raise TypeError(f"{type(self).__name__} takes at most {len(names)} fields")
        values = dict(zip(names, args))
        for key, value in kwargs.items():
            if key not in names or key in values:
                raise TypeError(f"{type(self).__name__}: unexpected or repeated field {key!r}")
            values[key] = value
        for name in names:
            if name not in values:
                if name not in self._defaults:
                    raise TypeError(f"{type(self).__name__}: missing field {name!r}")
                default = self._defaults[name]
                values[name] = default.make() if isinstance(default, Factory) else default
            object.__setattr__(self, name, values[name])

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and all(getattr(self, n) == getattr(other, n) for n in self.__slots__)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{n}={getattr(self, n)!r}' for n in self.__slots__)})"


# --------------------------------------------------------------------------- versions


def parse_version(text: object) -> tuple[int, int, int]:
    """``"1.0.0"`` -> ``(1, 0, 0)``; a malformed version string is a decode error (code 6)."""
    if not isinstance(text, str) or not _VERSION.fullmatch(text):
        raise CniError(ERR_DECODE, f"cniVersion {text!r} is not a version string",
                       "expected MAJOR.MINOR.PATCH, e.g. 1.0.0")
    major, minor, patch = text.split(".")
    return int(major), int(minor), int(patch)


def check_version(version: object, command: str | None = None) -> str:
    """Return ``version`` if a plugin of ours can answer it (for ``command``), else code 1."""
    parse_version(version)
    assert isinstance(version, str)
    if version not in SUPPORTED_VERSIONS:
        raise CniError(ERR_INCOMPATIBLE_VERSION, f"incompatible CNI version {version}",
                       f"supported versions: {', '.join(SUPPORTED_VERSIONS)}")
    if command in NEEDS_1_1 and parse_version(version) < (1, 1, 0):
        raise CniError(ERR_INCOMPATIBLE_VERSION, f"config version {version} does not allow {command}",
                       f"{command} needs cniVersion 1.1.0 or later")
    return version


def pick_version(cni_version: str | None, cni_versions: list | tuple | None) -> str:
    """The version a runtime uses for a conflist: the highest of ``cniVersions`` it supports
    (spec 1.1), else ``cniVersion``; code 1 when none is supported."""
    if cni_versions:
        usable = []
        for candidate in cni_versions:
            parse_version(candidate)
            if candidate in SUPPORTED_VERSIONS:
                usable.append(candidate)
        if not usable:
            raise CniError(ERR_INCOMPATIBLE_VERSION,
                           f"no supported version in cniVersions {list(cni_versions)}",
                           f"supported versions: {', '.join(SUPPORTED_VERSIONS)}")
        return max(usable, key=parse_version)
    if cni_version is None:
        raise CniError(ERR_INVALID_CONFIG, "network configuration has no cniVersion")
    return check_version(cni_version)


def version_document(asked: str | None) -> dict:
    """The VERSION answer: the version asked for (or the latest) and what we support."""
    return {"cniVersion": asked or LATEST_VERSION, "supportedVersions": list(SUPPORTED_VERSIONS)}


def version_answer(stdin: bytes | str) -> dict:
    """The VERSION answer to a request (``{"cniVersion": ...}``, possibly empty); code 6 for
    input that does not decode or a malformed version string."""
    asked = None
    if stdin.strip():
        doc = decode_json(stdin, "VERSION request")
        if isinstance(doc, dict) and "cniVersion" in doc:
            parse_version(doc["cniVersion"])
            asked = doc["cniVersion"]
    return version_document(asked)


# --------------------------------------------------------------------------- env and CNI_ARGS


def valid_container_id(value: str) -> bool:
    return bool(_NAME.fullmatch(value))


def ifname_problem(name: str) -> str | None:
    """Why ``name`` cannot be an interface name, or None (rules of Go skel / the kernel)."""
    if not name:
        return "is empty"
    if name in (".", ".."):
        return "must not be . or .."
    if not _IFNAME_CHARS.fullmatch(name):
        return "may hold only ASCII letters, digits, _, . and -"
    if len(name) > IFNAME_MAX:
        return f"is {len(name)} characters long; it must be shorter than {IFNAME_MAX + 1}"
    return None


def netns_problem(path: str) -> str | None:
    """Why ``path`` cannot be a CNI_NETNS, or None: an absolute path (``/var/run/netns/cni-...``,
    ``/proc/<pid>/ns/net``) of plain characters, with no ``.`` or ``..`` step."""
    if not _NETNS_PATH.fullmatch(path):
        return "must be an absolute path of ASCII letters, digits, _, ., - and /"
    if any(step in (".", "..") for step in path.split("/")):
        return "must not step through . or .."
    return None


def parse_cni_args(text: str | None) -> dict[str, str]:
    """``"IgnoreUnknown=1;K8S_POD_NAME=web-0"`` -> a dict; a pair without ``=`` is code 4."""
    out: dict[str, str] = {}
    for pair in (text or "").split(";"):
        if not pair.strip():
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise CniError(ERR_INVALID_ENV, f"CNI_ARGS: invalid pair {pair!r}", "expected K=V;K=V")
        out[key.strip()] = value.strip()
    return out


def format_cni_args(args: Mapping[str, str]) -> str:
    return ";".join(f"{k}={v}" for k, v in args.items())


def ignore_unknown(args: Mapping[str, str]) -> bool:
    return args.get("IgnoreUnknown", "").lower() in ("1", "true")


class CniEnv(Record):
    """The ``CNI_*`` environment of one invocation, validated for its command: ``command``,
    ``container_id``, ``netns``, ``ifname``, ``args`` (CNI_ARGS), ``path`` (CNI_PATH) and
    ``environ``, the whole environment, which delegates get."""

    __slots__ = ("command", "container_id", "netns", "ifname", "args", "path", "environ")
    _defaults = {"container_id": "", "netns": "", "ifname": "", "args": Factory(dict), "path": (),
                 "environ": Factory(dict)}

    command: str
    container_id: str
    netns: str
    ifname: str
    args: dict[str, str]
    path: tuple[str, ...]
    environ: dict[str, str]

    @property
    def pod_namespace(self) -> str:
        return self.args.get("K8S_POD_NAMESPACE", "")

    @property
    def pod_name(self) -> str:
        return self.args.get("K8S_POD_NAME", "")


def parse_env(environ: Mapping[str, str]) -> CniEnv:
    """Validate the environment for its ``CNI_COMMAND`` (code 4 naming every bad variable)."""
    command = environ.get("CNI_COMMAND", "")
    if not command:
        raise CniError(ERR_INVALID_ENV, "required environment variable CNI_COMMAND is missing",
                       f"one of {', '.join(COMMANDS)}")
    if command not in COMMANDS:
        raise CniError(ERR_INVALID_ENV, f"unknown CNI_COMMAND {command!r}", f"one of {', '.join(COMMANDS)}")
    missing = [name for name in REQUIRED_ENV[command] if not environ.get(name)]
    if missing:
        raise CniError(ERR_INVALID_ENV,
                       f"required environment variables missing for {command}: {', '.join(missing)}")
    container_id = environ.get("CNI_CONTAINERID", "")
    if container_id and not valid_container_id(container_id):
        raise CniError(ERR_INVALID_ENV, f"CNI_CONTAINERID {container_id!r} has invalid characters",
                       "it must start with a letter or digit, followed by letters, digits, _, . or -")
    if len(container_id) > CONTAINER_ID_MAX:
        raise CniError(ERR_INVALID_ENV,
                       f"CNI_CONTAINERID is {len(container_id)} characters long; at most {CONTAINER_ID_MAX}")
    ifname = environ.get("CNI_IFNAME", "")
    if ifname or command in ATTACHMENT_COMMANDS:
        problem = ifname_problem(ifname)
        if problem:
            raise CniError(ERR_INVALID_ENV, f"CNI_IFNAME {ifname!r} {problem}")
    netns = environ.get("CNI_NETNS", "")
    problem = netns_problem(netns) if netns else None
    if problem:
        raise CniError(ERR_INVALID_ENV, f"CNI_NETNS {netns!r} {problem}")
    path = tuple(p for p in environ.get("CNI_PATH", "").split(os.pathsep) if p)
    return CniEnv(
        command=command,
        container_id=container_id,
        netns=netns,
        ifname=ifname,
        args=parse_cni_args(environ.get("CNI_ARGS")),
        path=path,
        environ=dict(environ),
    )


# --------------------------------------------------------------------------- configuration


def decode_json(data: bytes | str, what: str = "network configuration") -> object:
    """JSON from stdin or a file; code 6 when it does not decode."""
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CniError(ERR_DECODE, f"{what} is not valid JSON", str(exc)) from None


def check_network_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise CniError(ERR_INVALID_CONFIG, "network configuration has no name")
    if not _NAME.fullmatch(name):
        raise CniError(ERR_INVALID_CONFIG, f"network name {name!r} is invalid",
                       "it must start with a letter or digit, followed by letters, digits, _, . or -")
    return name


def peek_version(data: bytes | str) -> str | None:
    """The request's ``cniVersion`` if it can be read at all (for wording an early error)."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    version = doc.get("cniVersion") if isinstance(doc, dict) else None
    return version if isinstance(version, str) and _VERSION.fullmatch(version) else None


def parse_plugin_config(data: bytes | str, command: str) -> dict:
    """One plugin's request from stdin: JSON object, supported ``cniVersion`` (for ``command``),
    valid ``name`` and ``type``. Returns the object as is (plugin keys included)."""
    doc = decode_json(data)
    if not isinstance(doc, dict):
        raise CniError(ERR_INVALID_CONFIG, "network configuration must be a JSON object")
    if "cniVersion" not in doc:
        raise CniError(ERR_INCOMPATIBLE_VERSION, "network configuration has no cniVersion",
                       f"supported versions: {', '.join(SUPPORTED_VERSIONS)}")
    check_version(doc["cniVersion"], command)
    check_network_name(doc.get("name"))
    plugin_type = doc.get("type")
    if not isinstance(plugin_type, str) or not plugin_type:
        raise CniError(ERR_INVALID_CONFIG, f'network "{doc["name"]}": plugin configuration has no type')
    return doc


def valid_attachments(conf: Mapping) -> set[tuple[str, str]]:
    """GC's still-valid attachments, from ``cni.dev/valid-attachments`` or ``cni.dev/attachments``."""
    for key in VALID_ATTACHMENTS_KEYS:
        if key in conf:
            items = conf[key]
            break
    else:
        return set()
    if not isinstance(items, list):
        raise CniError(ERR_INVALID_CONFIG, f"{key} must be a list of {{containerID, ifname}}")
    out = set()
    for index, item in enumerate(items):
        if (not isinstance(item, dict) or not isinstance(item.get("containerID"), str)
                or not isinstance(item.get("ifname"), str)):
            raise CniError(ERR_INVALID_CONFIG, f"{key}[{index}] must be {{containerID, ifname}}, not {item!r}")
        out.add((item["containerID"], item["ifname"]))
    return out


class NetworkConfigList(Record):
    """A conflist as a runtime reads it (cni.md §6): ``name``, ``cni_version`` (the version
    picked), ``plugins``, ``disable_check``, ``disable_gc`` and the ``raw`` document."""

    __slots__ = ("name", "cni_version", "plugins", "disable_check", "disable_gc", "raw")
    _defaults = {"disable_check": False, "disable_gc": False, "raw": Factory(dict)}

    name: str
    cni_version: str
    plugins: list[dict]
    disable_check: bool
    disable_gc: bool
    raw: dict


def _bool(doc: Mapping, key: str, where: str) -> bool:
    value = doc.get(key, False)
    if not isinstance(value, bool):
        raise CniError(ERR_INVALID_CONFIG, f"{where}: {key} must be true or false, not {value!r}")
    return value


def parse_conflist(doc: object) -> NetworkConfigList:
    """Validate a conflist (dict, or JSON text). A single network configuration (with
    ``type`` and no ``plugins``) is accepted as a list of one, as libcni does."""
    if isinstance(doc, (bytes, str)):
        doc = decode_json(doc, "network configuration list")
    if not isinstance(doc, dict):
        raise CniError(ERR_INVALID_CONFIG, "network configuration list must be a JSON object")
    if "plugins" not in doc and "type" in doc:
        single = {k: v for k, v in doc.items() if k not in ("cniVersion", "cniVersions", "name", "disableCheck")}
        doc = {k: doc[k] for k in ("cniVersion", "cniVersions", "name", "disableCheck") if k in doc}
        doc["plugins"] = [single]
    name = check_network_name(doc.get("name"))
    where = f'network "{name}"'
    version = pick_version(doc.get("cniVersion"), doc.get("cniVersions"))
    plugins = doc.get("plugins")
    if not isinstance(plugins, list) or not plugins:
        raise CniError(ERR_INVALID_CONFIG, f"{where}: plugins must be a non-empty list")
    for index, plugin in enumerate(plugins):
        if not isinstance(plugin, dict):
            raise CniError(ERR_INVALID_CONFIG, f"{where}: plugins[{index}] must be an object")
        plugin_type = plugin.get("type")
        if not isinstance(plugin_type, str) or not plugin_type or "/" in plugin_type:
            raise CniError(ERR_INVALID_CONFIG, f"{where}: plugins[{index}] has no valid type ({plugin_type!r})")
        caps = plugin.get("capabilities", {})
        if not isinstance(caps, dict):
            raise CniError(ERR_INVALID_CONFIG, f"{where}: plugins[{index}].capabilities must be an object")
    return NetworkConfigList(
        name=name,
        cni_version=version,
        plugins=tuple(plugins),
        disable_check=_bool(doc, "disableCheck", where),
        disable_gc=_bool(doc, "disableGC", where),
        raw=doc,
    )


# --------------------------------------------------------------------------- results


def _ip_version(address: str) -> str:
    return "6" if ":" in address else "4"


def _check_cidr(value: object, where: str) -> str:
    try:
        ipaddress.ip_interface(value)  # type: ignore[arg-type]
        if not isinstance(value, str) or "/" not in value:
            raise ValueError
    except ValueError:
        raise CniError(ERR_DECODE, f"result: {where} {value!r} is not an address with a prefix length") from None
    return value


def _check_ip(value: object, where: str) -> str:
    try:
        ipaddress.ip_address(value)  # type: ignore[arg-type]
    except ValueError:
        raise CniError(ERR_DECODE, f"result: {where} {value!r} is not an IP address") from None
    return value  # type: ignore[return-value]


class Interface(Record):
    """``name``, ``mac``, ``mtu`` (1.1), ``sandbox``, ``socket_path`` (1.1), ``pci_id`` (1.1)."""

    __slots__ = ("name", "mac", "mtu", "sandbox", "socket_path", "pci_id")
    _defaults = {"mac": None, "mtu": None, "sandbox": None, "socket_path": None, "pci_id": None}

    name: str
    mac: str | None
    mtu: int | None
    sandbox: str | None
    socket_path: str | None
    pci_id: str | None

    def to_dict(self, version: tuple[int, int, int]) -> dict:
        out: dict = {"name": self.name}
        if self.mac:
            out["mac"] = self.mac
        if self.mtu and version >= (1, 1, 0):
            out["mtu"] = self.mtu
        if self.sandbox:
            out["sandbox"] = self.sandbox
        if version >= (1, 1, 0):
            if self.socket_path:
                out["socketPath"] = self.socket_path
            if self.pci_id:
                out["pciID"] = self.pci_id
        return out


class IPConfig(Record):
    """``address`` (``10.244.1.2/24``), ``gateway``, ``interface`` (an index into the result's
    interfaces)."""

    __slots__ = ("address", "gateway", "interface")
    _defaults = {"gateway": None, "interface": None}

    address: str
    gateway: str | None
    interface: int | None

    def to_dict(self, version: tuple[int, int, int]) -> dict:
        out: dict = {}
        if version < (1, 0, 0):
            out["version"] = _ip_version(self.address)
        if self.interface is not None:
            out["interface"] = self.interface
        out["address"] = self.address
        if self.gateway:
            out["gateway"] = self.gateway
        return out


_ROUTE_1_1 = (("mtu", "mtu"), ("advmss", "advmss"), ("priority", "priority"), ("table", "table"),
              ("scope", "scope"))


class RouteEntry(Record):
    """``dst``, ``gw``; 1.1 adds ``mtu``, ``advmss``, ``priority``, ``table``, ``scope``."""

    __slots__ = ("dst", "gw", "mtu", "advmss", "priority", "table", "scope")
    _defaults = {"gw": None, "mtu": None, "advmss": None, "priority": None, "table": None, "scope": None}

    dst: str
    gw: str | None
    mtu: int | None
    advmss: int | None
    priority: int | None
    table: int | None
    scope: int | None

    def to_dict(self, version: tuple[int, int, int]) -> dict:
        out: dict = {"dst": self.dst}
        if self.gw:
            out["gw"] = self.gw
        if version >= (1, 1, 0):
            for attr, key in _ROUTE_1_1:
                value = getattr(self, attr)
                if value is not None:
                    out[key] = value
        return out


class DNS(Record):
    __slots__ = ("nameservers", "domain", "search", "options")
    _defaults = {"nameservers": Factory(list), "domain": None, "search": Factory(list), "options": Factory(list)}

    nameservers: list[str]
    domain: str | None
    search: list[str]
    options: list[str]

    def to_dict(self) -> dict:
        out: dict = {}
        if self.nameservers:
            out["nameservers"] = list(self.nameservers)
        if self.domain:
            out["domain"] = self.domain
        if self.search:
            out["search"] = list(self.search)
        if self.options:
            out["options"] = list(self.options)
        return out


class Result(Record):
    """An ADD result (or an IPAM plugin's abbreviated one), version-independent:
    ``interfaces``, ``ips``, ``routes``, ``dns``."""

    __slots__ = ("interfaces", "ips", "routes", "dns")
    _defaults = {"interfaces": Factory(list), "ips": Factory(list), "routes": Factory(list), "dns": Factory(DNS)}

    interfaces: list[Interface]
    ips: list[IPConfig]
    routes: list[RouteEntry]
    dns: DNS

    def to_dict(self, version: str) -> dict:
        """The result as a plugin prints it for ``version`` (key order as the Go types)."""
        v = parse_version(version)
        out: dict = {"cniVersion": version}
        if self.interfaces:
            out["interfaces"] = [i.to_dict(v) for i in self.interfaces]
        if self.ips:
            out["ips"] = [ip.to_dict(v) for ip in self.ips]
        if self.routes:
            out["routes"] = [r.to_dict(v) for r in self.routes]
        out["dns"] = self.dns.to_dict()
        return out

    @classmethod
    def from_dict(cls, doc: object, where: str = "result") -> Result:
        """Parse a 0.3.x/0.4.0/1.x result (``prevResult``, a delegate's output); code 6 if malformed."""
        if not isinstance(doc, dict):
            raise CniError(ERR_DECODE, f"{where} must be a JSON object")
        version = doc.get("cniVersion")
        if version is not None:
            parse_version(version)
        try:
            interfaces = [
                Interface(name=str(i["name"]), mac=i.get("mac"), mtu=i.get("mtu"), sandbox=i.get("sandbox") or None,
                          socket_path=i.get("socketPath"), pci_id=i.get("pciID"))
                for i in doc.get("interfaces") or []
            ]
            ips = []
            for n, ip in enumerate(doc.get("ips") or []):
                index = ip.get("interface")
                if index is not None and (isinstance(index, bool) or not isinstance(index, int)
                                          or not 0 <= index < len(interfaces)):
                    raise CniError(ERR_DECODE, f"{where}: ips[{n}].interface {index!r} is not an index into interfaces")
                gateway = ip.get("gateway")
                ips.append(IPConfig(address=_check_cidr(ip.get("address"), f"ips[{n}].address"),
                                    gateway=_check_ip(gateway, f"ips[{n}].gateway") if gateway else None,
                                    interface=index))
            routes = []
            for n, route in enumerate(doc.get("routes") or []):
                gw = route.get("gw")
                routes.append(RouteEntry(dst=_check_cidr(route.get("dst"), f"routes[{n}].dst"),
                                         gw=_check_ip(gw, f"routes[{n}].gw") if gw else None,
                                         **{attr: route.get(key) for attr, key in _ROUTE_1_1}))
            dns_doc = doc.get("dns") or {}
            dns = DNS(nameservers=list(dns_doc.get("nameservers") or []), domain=dns_doc.get("domain"),
                      search=list(dns_doc.get("search") or []), options=list(dns_doc.get("options") or []))
        except (AttributeError, KeyError, TypeError) as exc:
            raise CniError(ERR_DECODE, f"{where} is malformed", f"{type(exc).__name__}: {exc}") from None
        return cls(interfaces=interfaces, ips=ips, routes=routes, dns=dns)


def convert_result(doc: dict, version: str) -> dict:
    """A result document in another version (what libcni does to ``prevResult``)."""
    return Result.from_dict(doc).to_dict(version)


# --------------------------------------------------------------------------- output


def dumps(doc: object) -> str:
    """As Go plugins print: 4-space indented JSON, no trailing newline (cni.md §8.9)."""
    return json.dumps(doc, indent=4)


def cni_error(error: OverlaynetError) -> CniError:
    """``error`` as the CNI error a plugin answers with: a ``CniError`` as it is, any other
    overlaynet error with the code ``ERROR_CODES`` gives its class and its message as ``msg``."""
    if isinstance(error, CniError):
        return error
    code = next((ERROR_CODES[cls] for cls in type(error).__mro__ if cls in ERROR_CODES), ERR_PLUGIN)
    return CniError(code, str(error))


def error_document(error: CniError, version: str | None) -> dict:
    """The error object for stdout: cniVersion, code, msg and details (when there are any)."""
    out: dict = {"cniVersion": version or LATEST_VERSION, "code": error.code, "msg": error.msg}
    if error.details:
        out["details"] = error.details
    return out


def parse_error_document(text: str) -> CniError | None:
    """A plugin's error object read back (runtime side); None if ``text`` is not one."""
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("code"), int) or isinstance(doc.get("code"), bool):
        return None
    return CniError(doc["code"], str(doc.get("msg", "")), str(doc.get("details", "") or ""))
