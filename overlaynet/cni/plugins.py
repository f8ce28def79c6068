"""The logic of overlaynet's CNI plugins, callable in-process (standalone) or by the agent.

- the **main plugin** of every mode (``overlaynet-flannel``, ``overlaynet-calico``, or the
  ``plugin_type`` of any other ``overlaynet.datapath.modes.Mode``) is one skeleton: the mode comes from
  the Cluster document in the configuration (the ``overlaynet`` object's ``cluster``), and must
  be the one whose plugin was invoked; the mode plans what to create (``plan_pod_prerequisites``,
  made when missing and never undone, then ``plan_pod``) and ``kernel.apply`` makes it true.
  The flannel mode's plan is what flannel's ``bridge`` delegate does (``cni0`` with the pod
  CIDR's gateway address, a veth per pod with hairpin on); the calico mode's has no bridge.
- ``overlaynet-ipam``: host-local semantics (``hostlocal``), or ``"mode": "blocks"``, which
  delegates to ``overlaynet.ipam.blocks.BlockIPAM`` (Calico-like blocks, state in the store).

Configuration of a main plugin: ``ipam`` (required, delegated), ``mtu`` (default: the mode's
pod MTU), ``dns`` (returned as is), ``agentSocket`` (``skel``'s thin path); ``bridge`` (default:
the mode's) and ``hairpinMode`` (default true) for a mode that bridges its pods; and the
``overlaynet`` object ``{"cluster": <Cluster document>, "node": {"name", "ip", "podCIDR",
"annotations", "netns", "blocks", "borrowed"}}`` (``podCIDR`` required by a mode whose pods
take their addresses from it, ``IPAM_HOST_LOCAL``). ``node.netns`` is where the host side goes;
without it, the namespace the plugin process runs in (``/proc/<pid>/ns/net``: the runtime's,
i.e. the node's). Pod namespace and name come from ``CNI_ARGS`` ``K8S_POD_*``.

The ADD result lists the host veth (no ``sandbox``) and the pod interface (``sandbox`` =
``CNI_NETNS``), the pod address with ``interface`` pointing at the latter, the mode's sandbox
routes and DNS: the shape the reference ``portmap`` and ``bandwidth`` plugins need. DEL takes
the host side apart unless ``prevResult`` shows that the veth of that name now has another MAC
(a newer attachment of the same pod name reuses the name), then releases the address.

Rules kept (cni.md §4-5): IPAM is delegated through ``CNI_PATH`` with the same environment and
the complete stdin, for ADD, DEL, CHECK, GC and STATUS, and a delegate's error is ours; ADD
fails if the interface exists in the sandbox and undoes everything (plan and address) when any
later step fails; DEL is idempotent and works without netns, prevResult or allocation; CHECK
names every missing object. One shortcut: inside the agent, when the IPAM executable found on
``CNI_PATH`` *is* this package's ``overlaynet-ipam``, it runs in-process on the same env and
stdin instead of paying for a new interpreter per pod; any other IPAM plugin is exec'd (in the
plugin process's netns, through ``nsenter``).

What it never does: read ``os.environ`` or write to stdout/stderr (``run`` returns an
``Outcome``; the edge, ``skel`` or the agent, prints it), or touch the kernel except through
``overlaynet.kernel``.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Mapping
from typing import Any

from overlaynet.cni import launch, spec
from overlaynet.cni.spec import CniEnv, Factory, Interface, IPConfig, Record, Result, RouteEntry
from overlaynet.datapath.modes import IPAM_BLOCKS, IPAM_HOST_LOCAL, IPAM_PLUGIN, PluginOptions
from overlaynet.errors import CniError, OverlaynetError
from overlaynet.ipam import hostlocal

IPAM = IPAM_PLUGIN
DELEGATE_TIMEOUT = 60.0
STDERR_TAIL = 2000
DEFAULT_BLOCK_SIZE = 26  # Calico's default IPv4 block (calico.md §2)
SCOPE_LINK = 253



class Outcome(Record):
    """What a plugin invocation prints and returns: ``stdout`` (result or error JSON),
    ``exit_code``, ``stderr`` (logs)."""

    __slots__ = ("stdout", "exit_code", "stderr")
    _defaults = {"stderr": ""}


class Context(Record):
    """One invocation: ``plugin``, ``env``, ``stdin``, ``runtime_netns`` (a path to the netns
    the plugin process runs in: the runtime's, the node's), ``in_agent``, ``logs``."""

    __slots__ = ("plugin", "env", "stdin", "runtime_netns", "in_agent", "logs")
    _defaults = {"logs": Factory(list)}

    def log(self, message: str) -> None:
        self.logs.append(f"{self.plugin}: {message}")


# --------------------------------------------------------------------------- entry point


def run(plugin: str, environ: Mapping[str, str], stdin: bytes, pid: int | None = None,
        in_agent: bool = False, runtime_netns: str | None = None) -> Outcome:
    """One CNI invocation of ``plugin`` (``overlaynet-ipam``, or a mode's main plugin): never
    raises; errors become the CNI error object.

    The runtime's netns (where the plugin process runs) is ``runtime_netns`` if given, else
    ``/proc/<pid>/ns/net`` of ``pid`` (default: this process). The agent passes a path to a
    descriptor it holds open, so the namespace cannot vanish, nor the pid be reused, mid-way.
    """
    version = spec.peek_version(stdin)
    logs: list[str] = []
    try:
        env = spec.parse_env(environ)
        if env.command == "VERSION":
            return Outcome(spec.dumps(spec.version_answer(stdin)), 0)
        conf = spec.parse_plugin_config(stdin, env.command)
        version = conf["cniVersion"]
        runtime_netns = runtime_netns or f"/proc/{pid or os.getpid()}/ns/net"
        ctx = Context(plugin, env, stdin, runtime_netns, in_agent, logs)
        result = (_ipam if plugin == IPAM else _main)(ctx, conf)
        stdout = spec.dumps(result.to_dict(version)) if result is not None else ""
        return Outcome(stdout, 0, "\n".join(logs))
    except CniError as exc:
        error = exc
    except OverlaynetError as exc:
        error = spec.cni_error(exc)
    except Exception as exc:  # a bug: answer in the protocol all the same
        import traceback

        logs.append(traceback.format_exc())
        error = CniError(spec.ERR_PLUGIN, f"internal error: {type(exc).__name__}: {exc}")
    return Outcome(spec.dumps(spec.error_document(error, version)), 1, "\n".join(logs))


# --------------------------------------------------------------------------- IPAM plugin


def _ipam(ctx: Context, conf: dict) -> Result | None:
    ipam = conf.get("ipam")
    if not isinstance(ipam, dict):
        raise CniError(spec.ERR_INVALID_CONFIG, f'network "{conf["name"]}": ipam must be an object')
    mode = ipam.get("mode", IPAM_HOST_LOCAL)
    command = ctx.env.command
    if mode == IPAM_HOST_LOCAL:
        if command == "ADD":
            return hostlocal.cmd_add(conf, ctx.env)
        if command == "DEL":
            hostlocal.cmd_del(conf, ctx.env)
        elif command == "CHECK":
            hostlocal.cmd_check(conf, ctx.env)
        elif command == "GC":
            hostlocal.cmd_gc(conf, ctx.env)
        elif command == "STATUS":
            hostlocal.cmd_status(conf, ctx.env)
        return None
    if mode == IPAM_BLOCKS:
        ipam_obj, node, close = open_block_ipam(conf)
        try:
            return blocks_command(command, conf, ctx.env, ipam_obj, node)
        finally:
            close()
    raise CniError(spec.ERR_UNSUPPORTED_FIELD, f'ipam.mode "{mode}" is not supported', "host-local or blocks")


def open_block_ipam(conf: Mapping) -> tuple[Any, str, Any]:
    """``BlockIPAM`` for the request: ``ipam.{cluster,pool,blockSize,node,stateDir}``; all but
    ``stateDir`` default to the ``overlaynet`` object's cluster document and node, ``stateDir``
    to the store's (``$OVERLAYNET_STATE_DIR``)."""
    ipam = conf["ipam"]
    top = conf.get("overlaynet") if isinstance(conf.get("overlaynet"), dict) else {}
    cluster_doc = top.get("cluster") if isinstance(top.get("cluster"), dict) else {}
    node_doc = top.get("node") if isinstance(top.get("node"), dict) else {}
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

    try:
        store = Store(ipam.get("stateDir") or state_dir())
    except Exception as exc:  # sqlite3 or OS errors: the state is unusable
        raise CniError(spec.ERR_IO, f"ipam (blocks): cannot open the store: {exc}") from exc
    try:
        ipam_obj = blocks.BlockIPAM(store, str(cluster), pool_net, block_size)
    except OverlaynetError as exc:
        store.close()
        raise CniError(spec.ERR_INVALID_CONFIG, f"ipam (blocks): {exc}") from None
    return ipam_obj, str(node), store.close


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


# --------------------------------------------------------------------------- main plugins: config


class MainConfig(Record):
    """A main plugin's configuration: ``network``, ``spec`` (``model.ClusterSpec``), ``mode``
    (its ``modes.Mode``), ``node`` (``topology.NodeInfo``), ``node_netns``, ``options``
    (``modes.PluginOptions``), ``dns``."""

    __slots__ = ("network", "spec", "mode", "node", "node_netns", "options", "dns")


def _unsupported(key: str, value: object, why: str) -> CniError:
    return CniError(spec.ERR_UNSUPPORTED_FIELD, f"{key} {value!r}: {why}")


def parse_main_config(plugin: str, conf: Mapping) -> MainConfig:
    from overlaynet.api import model
    from overlaynet.datapath.modes import get_mode
    from overlaynet.datapath.topology import NodeInfo

    network = conf["name"]
    ipam = conf.get("ipam")
    if not isinstance(ipam, dict) or not isinstance(ipam.get("type"), str) or not ipam["type"]:
        raise CniError(spec.ERR_INVALID_CONFIG, f'network "{network}": ipam with a type is required')
    top = conf.get("overlaynet")
    if not isinstance(top, dict) or not isinstance(top.get("cluster"), dict) or not isinstance(top.get("node"), dict):
        raise CniError(spec.ERR_INVALID_CONFIG,
                       f'network "{network}": the overlaynet object with cluster (a Cluster document) '
                       "and node is required")
    try:
        cluster = model.spec_from_document(top["cluster"])
    except OverlaynetError as exc:
        raise CniError(spec.ERR_INVALID_CONFIG, f"overlaynet.cluster: {exc}") from None
    except (KeyError, TypeError, AttributeError) as exc:
        raise CniError(spec.ERR_INVALID_CONFIG,
                       f"overlaynet.cluster is not a Cluster document: missing {exc}") from None
    mode = get_mode(cluster.cni)
    if mode.plugin_type != plugin:
        raise _unsupported("overlaynet.cluster.spec.cni", cluster.cni,
                           f"{plugin} does not wire that mode (its plugin is {mode.plugin_type})")
    node_doc = top["node"]
    name = node_doc.get("name")
    if not isinstance(name, str) or not name:
        raise CniError(spec.ERR_INVALID_CONFIG, "overlaynet.node.name is required")
    try:
        ip = ipaddress.IPv4Address(node_doc.get("ip"))
    except ValueError:
        raise CniError(spec.ERR_INVALID_CONFIG,
                       f"overlaynet.node.ip {node_doc.get('ip')!r} is not an IPv4 address") from None
    pod_cidr = None
    if node_doc.get("podCIDR"):
        try:
            pod_cidr = ipaddress.IPv4Network(node_doc["podCIDR"])
        except ValueError:
            raise CniError(spec.ERR_INVALID_CONFIG,
                           f"overlaynet.node.podCIDR {node_doc['podCIDR']!r} is not a CIDR") from None
    elif mode.ipam == IPAM_HOST_LOCAL:
        raise CniError(spec.ERR_INVALID_CONFIG, f"overlaynet.node.podCIDR is required by the {mode.name} mode")
    annotations = node_doc.get("annotations") or {}
    if not isinstance(annotations, dict):
        raise CniError(spec.ERR_INVALID_CONFIG, "overlaynet.node.annotations must be an object of strings")
    try:
        blocks = tuple(ipaddress.IPv4Network(b) for b in node_doc.get("blocks") or ())
        borrowed = tuple(ipaddress.IPv4Address(b) for b in node_doc.get("borrowed") or ())
    except ValueError as exc:
        raise CniError(spec.ERR_INVALID_CONFIG, f"overlaynet.node: {exc}") from None
    node = NodeInfo(name=name, ip=ip, pod_cidr=pod_cidr,
                    annotations=tuple(sorted((str(k), str(v)) for k, v in annotations.items())),
                    blocks=blocks, borrowed=borrowed)
    node_netns = node_doc.get("netns") or None
    if node_netns is not None and not isinstance(node_netns, str):
        raise CniError(spec.ERR_INVALID_CONFIG, "overlaynet.node.netns must be a namespace name or path")
    mtu = conf.get("mtu")
    if mtu is not None and (isinstance(mtu, bool) or not isinstance(mtu, int) or not 68 <= mtu <= 65535):
        raise _unsupported("mtu", mtu, "must be a whole number 68-65535")
    bridge = conf.get("bridge")
    if bridge is not None and (not isinstance(bridge, str) or spec.ifname_problem(bridge)):
        why = spec.ifname_problem(bridge) if isinstance(bridge, str) else "must be a name"
        raise _unsupported("bridge", bridge, why or "")
    hairpin = conf.get("hairpinMode", True)
    if not isinstance(hairpin, bool):
        raise _unsupported("hairpinMode", hairpin, "must be true or false")
    dns = None
    if isinstance(conf.get("dns"), dict) and conf["dns"]:
        dns = Result.from_dict({"dns": conf["dns"]}, "dns").dns
    return MainConfig(network, cluster, mode, node, node_netns, PluginOptions(mtu, bridge, hairpin), dns)


# --------------------------------------------------------------------------- main plugins: helpers


def _host_netns(ctx: Context, cfg: MainConfig) -> str:
    return cfg.node_netns or ctx.runtime_netns


def _ns_path(ns: str) -> str:
    from overlaynet.kernel import netns

    return netns.path(ns)


def _same_namespace(a: str, b: str) -> bool:
    try:
        sa, sb = os.stat(_ns_path(a)), os.stat(_ns_path(b))
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _random_mac() -> str:
    raw = bytearray(os.urandom(6))
    raw[0] = (raw[0] | 0x02) & 0xFE  # locally administered, unicast
    return ":".join(f"{b:02x}" for b in raw)


def _step_ns(step: Any) -> str:
    from overlaynet.datapath.plan import Netns

    return step.name if isinstance(step, Netns) else step.netns


def _pod_info(ctx: Context, cfg: MainConfig, ip: ipaddress.IPv4Address) -> Any:
    from overlaynet.datapath.topology import PodInfo

    return PodInfo(namespace=ctx.env.pod_namespace, name=ctx.env.pod_name, ip=ip, node=cfg.node.name,
                   netns=ctx.env.netns, host_netns=_host_netns(ctx, cfg),
                   container_id=ctx.env.container_id, ifname=ctx.env.ifname)


def _plan(cfg: MainConfig, pod: Any, fill_macs: bool) -> tuple:
    """The mode's attachment plan for this config's options, without the sandbox (the
    runtime's), with MACs chosen here when the mode leaves them to the kernel (so the result
    names them without reading them back)."""
    import dataclasses

    from overlaynet.datapath.plan import Netns, VethPair

    try:
        plan = cfg.mode.plan_pod(cfg.spec, cfg.node, pod, cfg.options)
    except (OverlaynetError, ValueError) as exc:
        raise CniError(spec.ERR_PLUGIN, f"cannot plan the attachment: {exc}") from None
    out = []
    for step in plan:
        if isinstance(step, Netns):
            continue  # the runtime owns the sandbox; a plugin never creates or deletes it
        if isinstance(step, VethPair) and fill_macs:
            changes: dict[str, Any] = {}
            if step.mac is None:
                changes["mac"] = _random_mac()
            if step.peer_mac is None:
                changes["peer_mac"] = _random_mac()
            step = dataclasses.replace(step, **changes)
        out.append(step)
    return tuple(out)


def _veth(plan: tuple, ctx: Context) -> Any:
    from overlaynet.datapath.plan import VethPair

    for step in plan:
        if isinstance(step, VethPair) and step.peer_name == ctx.env.ifname:
            return step
    raise CniError(spec.ERR_PLUGIN, f"the mode's plan has no veth for {ctx.env.ifname}")


def find_plugin(plugin_type: str, path: tuple[str, ...]) -> str:
    """The executable ``plugin_type`` on ``CNI_PATH``; the error names every directory tried."""
    if not path:
        raise CniError(spec.ERR_INVALID_ENV, f"CNI_PATH is empty: cannot find the delegate plugin {plugin_type}")
    for directory in path:
        candidate = os.path.join(directory, plugin_type)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise CniError(spec.ERR_PLUGIN, f'failed to find plugin "{plugin_type}" in path {list(path)}')


def _is_our_ipam(path: str) -> bool:
    try:
        return os.path.samefile(path, os.path.join(launch.own_plugin_dir(), IPAM))
    except OSError:
        return False


def delegate(ctx: Context, conf: Mapping, command: str) -> Result | None:
    """Run the IPAM plugin (``ipam.type`` on ``CNI_PATH``) for ``command`` with our env and stdin."""
    import subprocess

    ipam_type = conf["ipam"]["type"]
    executable = find_plugin(ipam_type, ctx.env.path)
    env = dict(ctx.env.environ)
    env["CNI_COMMAND"] = command
    if ctx.in_agent and _is_our_ipam(executable):
        outcome = run(IPAM, env, ctx.stdin, in_agent=True, runtime_netns=ctx.runtime_netns)
        stdout, code, stderr = outcome.stdout, outcome.exit_code, outcome.stderr
    else:
        argv = [executable]
        if ctx.in_agent:  # exec it where the plugin process runs, as the plugin itself would
            argv = ["nsenter", f"--net={ctx.runtime_netns}", "--", executable]
        try:
            proc = subprocess.run(argv, input=ctx.stdin, capture_output=True, env=env,
                                  timeout=DELEGATE_TIMEOUT, close_fds=True)
        except subprocess.TimeoutExpired:
            raise CniError(spec.ERR_TRY_AGAIN, f"ipam plugin {ipam_type} did not answer {command} "
                                               f"within {DELEGATE_TIMEOUT:g} s") from None
        except OSError as exc:
            raise CniError(spec.ERR_PLUGIN, f"cannot run ipam plugin {executable}: {exc.strerror}") from None
        stdout = proc.stdout.decode("utf-8", "replace")
        stderr = proc.stderr.decode("utf-8", "replace")[-STDERR_TAIL:]
        code = proc.returncode
    if stderr.strip():
        ctx.logs.append(stderr.rstrip())
    if code != 0:
        error = spec.parse_error_document(stdout)
        if error is None:
            raise CniError(spec.ERR_PLUGIN, f"ipam plugin {ipam_type} failed {command} (exit {code})",
                           (stdout.strip() or stderr.strip())[-STDERR_TAIL:])
        raise CniError(error.code, f"ipam plugin {ipam_type}: {error.msg}", error.details)
    if command != "ADD":
        return None
    try:
        return Result.from_dict(json.loads(stdout), f"ipam plugin {ipam_type}'s result")
    except ValueError:
        raise CniError(spec.ERR_PLUGIN, f"ipam plugin {ipam_type} printed no JSON result",
                       stdout[:STDERR_TAIL]) from None


def _first_ipv4(result: Result, ipam_type: str) -> tuple[ipaddress.IPv4Interface, str | None]:
    for ip in result.ips:
        iface = ipaddress.ip_interface(ip.address)
        if iface.version == 4:
            return iface, ip.gateway  # type: ignore[return-value]
    raise CniError(spec.ERR_PLUGIN, f"ipam plugin {ipam_type} returned no IPv4 address",
                   f"ips: {[ip.address for ip in result.ips]}")


def _prev_result(conf: Mapping) -> Result | None:
    prev = conf.get("prevResult")
    return Result.from_dict(prev, "prevResult") if isinstance(prev, dict) else None


def _prev_address(prev: Result | None, ifname: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address prevResult gives the sandbox interface ``ifname``."""
    if prev is None:
        return None
    for ip in prev.ips:
        iface = ipaddress.ip_interface(ip.address)
        if iface.version != 4:
            continue
        if ip.interface is None or (prev.interfaces[ip.interface].name == ifname
                                    and prev.interfaces[ip.interface].sandbox):
            return iface.ip  # type: ignore[return-value]
    return None


# --------------------------------------------------------------------------- main plugins: commands


def _main(ctx: Context, conf: dict) -> Result | None:
    cfg = parse_main_config(ctx.plugin, conf)
    command = ctx.env.command
    if command == "ADD":
        return _add(ctx, conf, cfg)
    if command == "DEL":
        _del(ctx, conf, cfg)
    elif command == "CHECK":
        _check(ctx, conf, cfg)
    elif command == "STATUS":
        _status(ctx, conf, cfg)
    elif command == "GC":
        delegate(ctx, conf, "GC")
    return None


def _check_sandbox(ctx: Context, host_ns: str) -> None:
    """Before any work: the sandbox exists, is not the node's netns, and has no ``ifname``."""
    from overlaynet.kernel import netns, observe

    sandbox = ctx.env.netns
    if not netns.exists(sandbox):
        raise CniError(spec.ERR_UNKNOWN_CONTAINER, f"CNI_NETNS {sandbox} does not exist")
    if not netns.exists(host_ns):
        raise CniError(spec.ERR_PLUGIN, f'the node\'s network namespace "{host_ns}" does not exist')
    if _same_namespace(sandbox, host_ns):
        raise CniError(spec.ERR_PLUGIN, f"CNI_NETNS {sandbox} is the node's own network namespace")
    try:
        links = observe.observe_links(sandbox)
    except OverlaynetError as exc:
        raise CniError(spec.ERR_UNKNOWN_CONTAINER, f"CNI_NETNS {sandbox} is not a usable network namespace",
                       str(exc)) from None
    if any(link["name"] == ctx.env.ifname for link in links):
        raise CniError(spec.ERR_PLUGIN, f'interface "{ctx.env.ifname}" already exists in {sandbox}')


def _add(ctx: Context, conf: dict, cfg: MainConfig) -> Result:
    from overlaynet.kernel import apply as kapply

    host_ns = _host_netns(ctx, cfg)
    _check_sandbox(ctx, host_ns)
    ipam_result = delegate(ctx, conf, "ADD")
    assert ipam_result is not None
    pod_steps: tuple = ()
    try:
        address, _ = _first_ipv4(ipam_result, conf["ipam"]["type"])
        if cfg.mode.ipam == IPAM_HOST_LOCAL and address.ip not in cfg.node.pod_cidr:
            raise CniError(spec.ERR_INVALID_CONFIG,
                           f"ipam gave {address.ip}, outside the node's podCIDR {cfg.node.pod_cidr}")
        pod = _pod_info(ctx, cfg, address.ip)
        plan = _plan(cfg, pod, fill_macs=True)
        pod_steps = plan + _ipam_routes(ctx, plan, ipam_result)
        prerequisites = cfg.mode.plan_pod_prerequisites(cfg.spec, cfg.node, host_ns, cfg.options)
        kapply.apply(prerequisites + pod_steps)
    except BaseException as exc:
        _undo(ctx, conf, pod_steps, exc)
        raise
    return _result(ctx, conf, cfg, pod_steps, ipam_result)


def _undo(ctx: Context, conf: Mapping, steps: tuple, exc: BaseException) -> None:
    """After a failed ADD: take the attachment apart and give the address back."""
    from overlaynet.kernel import apply as kapply

    if steps:
        try:
            kapply.remove(steps)
        except Exception as undo_exc:
            ctx.log(f"undoing the failed ADD: {undo_exc}")
    try:
        delegate(ctx, conf, "DEL")
    except CniError as del_exc:
        ctx.log(f"releasing the address after the failed ADD ({exc}): {del_exc}")


def _ipam_routes(ctx: Context, plan: tuple, ipam_result: Result) -> tuple:
    """IPAM routes the mode did not plan, in the sandbox via the IPAM gateway (as the bridge
    plugin installs them)."""
    from overlaynet.datapath.plan import Route

    planned = {step.dst for step in plan if isinstance(step, Route) and step.netns == ctx.env.netns}
    gateway = next((ip.gateway for ip in ipam_result.ips if ip.gateway and ":" not in ip.gateway), None)
    extra = []
    for route in ipam_result.routes:
        dst = str(ipaddress.ip_network(route.dst, strict=False))
        if ":" in dst or dst in planned:
            continue
        gw = route.gw or gateway
        extra.append(Route(ctx.env.netns, dst, gateway=gw, dev=ctx.env.ifname,
                           scope="universe" if gw else "link"))
        planned.add(dst)
    return tuple(extra)


def _result(ctx: Context, conf: Mapping, cfg: MainConfig, steps: tuple, ipam_result: Result) -> Result:
    """The ADD result: host veth (no sandbox), then the pod interface (sandbox = CNI_NETNS),
    its address (``interface`` = the pod interface's index), its routes, DNS."""
    from overlaynet.datapath.plan import Address, Route

    version = spec.parse_version(conf["cniVersion"])
    veth = _veth(steps, ctx)
    prev = _prev_result(conf) or Result()
    base = len(prev.interfaces)
    interfaces = [Interface(name=veth.name, mac=veth.mac, mtu=veth.mtu),
                  Interface(name=ctx.env.ifname, mac=veth.peer_mac, mtu=veth.mtu, sandbox=ctx.env.netns)]
    sandbox_routes = [s for s in steps if isinstance(s, Route) and s.netns == ctx.env.netns]
    gateway = next((r.gateway for r in sandbox_routes if r.dst in ("0.0.0.0/0", "default") and r.gateway), None)
    ips = [IPConfig(address=s.cidr, gateway=gateway, interface=base + 1)
           for s in steps if isinstance(s, Address) and s.netns == ctx.env.netns and s.dev == ctx.env.ifname]
    routes = []
    for r in sandbox_routes:
        if r.scope == "link" and not r.gateway:
            if version < (1, 1, 0):
                continue  # without "scope", a gateway-less route would read "via the ips gateway"
            routes.append(RouteEntry(dst=r.dst, scope=SCOPE_LINK))
        else:
            routes.append(RouteEntry(dst="0.0.0.0/0" if r.dst == "default" else r.dst, gw=r.gateway))
    dns = cfg.dns or ipam_result.dns
    return Result(interfaces=prev.interfaces + interfaces, ips=prev.ips + ips, routes=prev.routes + routes,
                  dns=dns if (dns.nameservers or dns.domain or dns.search or dns.options) else prev.dns)


def _del(ctx: Context, conf: dict, cfg: MainConfig) -> None:
    """Idempotent: host side of the attachment (unless prevResult shows the veth of that name
    is another attachment's now), then the address."""
    from overlaynet.datapath.plan import VethPair
    from overlaynet.kernel import apply as kapply
    from overlaynet.kernel import netns, observe

    host_ns = _host_netns(ctx, cfg)
    sandbox = ctx.env.netns
    sandbox_there = bool(sandbox) and netns.exists(sandbox)
    prev = _prev_result(conf)
    ip = _prev_address(prev, ctx.env.ifname)
    if ip is None and sandbox_there:
        try:
            for entry in observe.observe_addresses(sandbox):
                if entry["dev"] == ctx.env.ifname:
                    ip = ipaddress.IPv4Interface(entry["cidr"]).ip
                    break
        except OverlaynetError:
            pass
    pod = _pod_info(ctx, cfg, ip or ipaddress.IPv4Address("0.0.0.0"))
    plan = _plan(cfg, pod, fill_macs=False)
    host_steps = tuple(s for s in plan if _step_ns(s) != pod.netns)
    if netns.exists(host_ns):
        veth = _veth(plan, ctx)
        if prev is not None:
            listed = next((i for i in prev.interfaces if i.name == veth.name and not i.sandbox and i.mac), None)
            if listed is not None:
                current = next((link for link in observe.observe_links(host_ns) if link["name"] == veth.name), None)
                if current is not None and (current["mac"] or "").lower() != listed.mac.lower():
                    ctx.log(f"{veth.name} in {host_ns} has MAC {current['mac']}, not {listed.mac} as prevResult says: "
                            "it belongs to a newer attachment; leaving it")
                    host_steps = tuple(s for s in host_steps
                                       if not (isinstance(s, VethPair) and s.name == veth.name)
                                       and getattr(s, "dev", None) != veth.name)
        try:
            kapply.remove(host_steps)
        except OverlaynetError as exc:
            raise CniError(spec.ERR_PLUGIN,
                           f"DEL: cannot remove the host side of {ctx.env.container_id}/{ctx.env.ifname}",
                           str(exc)) from None
    delegate(ctx, conf, "DEL")


def _check(ctx: Context, conf: dict, cfg: MainConfig) -> None:
    from overlaynet.datapath.plan import Address, Route, Sysctl, VethPair
    from overlaynet.kernel import netns, observe

    prev = _prev_result(conf)
    if prev is None:
        raise CniError(spec.ERR_INVALID_CONFIG, "CHECK needs prevResult (the attachment's ADD result)")
    delegate(ctx, conf, "CHECK")
    sandbox, host_ns = ctx.env.netns, _host_netns(ctx, cfg)
    who = f"{ctx.env.container_id}/{ctx.env.ifname}"
    if not netns.exists(sandbox):
        raise CniError(spec.ERR_PLUGIN, f"CHECK {who}: CNI_NETNS {sandbox} does not exist")
    ip = _prev_address(prev, ctx.env.ifname)
    if ip is None:
        raise CniError(spec.ERR_PLUGIN, f"CHECK {who}: prevResult lists no IPv4 address for {ctx.env.ifname}")
    plan = _plan(cfg, _pod_info(ctx, cfg, ip), fill_macs=False)
    missing: list[str] = []
    views: dict[str, dict] = {}

    def view(ns: str) -> dict:
        if ns not in views:
            try:
                views[ns] = {"links": {link["name"]: link for link in observe.observe_links(ns)},
                             "addresses": observe.observe_addresses(ns), "routes": observe.observe_routes(ns)}
            except OverlaynetError as exc:
                raise CniError(spec.ERR_PLUGIN, f"CHECK {who}: cannot read netns {ns}", str(exc)) from None
        return views[ns]

    if not netns.exists(host_ns):
        raise CniError(spec.ERR_PLUGIN, f'CHECK {who}: the node\'s network namespace "{host_ns}" does not exist')
    for step in plan:
        where = "the sandbox" if step.netns == sandbox else "the node"
        if isinstance(step, VethPair):
            host_link = view(step.netns)["links"].get(step.name)
            if host_link is None:
                missing.append(f"interface {step.name} in {where}")
            elif step.master and host_link.get("master") != step.master:
                missing.append(f"interface {step.name} is not on bridge {step.master}")
            pod_link = view(step.peer_netns)["links"].get(step.peer_name)
            if pod_link is None:
                missing.append(f"interface {step.peer_name} in the sandbox")
            elif not pod_link["up"]:
                missing.append(f"interface {step.peer_name} in the sandbox is down")
        elif isinstance(step, Address):
            if not any(a["dev"] == step.dev and a["cidr"] == step.cidr for a in view(step.netns)["addresses"]):
                missing.append(f"address {step.cidr} on {step.dev} in {where}")
        elif isinstance(step, Route):
            if not any(_route_matches(step, r) for r in view(step.netns)["routes"]):
                missing.append(f"{_route_words(step)} in {where}")
        elif isinstance(step, Sysctl):
            try:
                value = observe.observe_sysctl(step.netns, step.key)
            except OverlaynetError:
                value = None
            if value != step.value:
                missing.append(f"sysctl {step.key}={step.value} in {where} (is {value})")
    if missing:
        raise CniError(spec.ERR_PLUGIN, f"CHECK {who}: missing or wrong: " + "; ".join(missing))


def _route_matches(step: Any, seen: dict) -> bool:
    dst = "0.0.0.0/0" if step.dst == "default" else str(ipaddress.ip_network(step.dst, strict=False))
    return (seen["dst"] == dst and seen["type"] == step.type
            and (step.gateway is None or seen["gateway"] == step.gateway)
            and (step.dev is None or seen["dev"] == step.dev))


def _route_words(step: Any) -> str:
    words = ["route", step.dst]
    if step.gateway:
        words += ["via", step.gateway]
    if step.dev:
        words += ["dev", step.dev]
    return " ".join(words)


def _status(ctx: Context, conf: dict, cfg: MainConfig) -> None:
    from overlaynet.kernel import netns, observe

    host_ns = _host_netns(ctx, cfg)
    if not netns.exists(host_ns):
        raise CniError(spec.ERR_NOT_AVAILABLE, f'the node\'s network namespace "{host_ns}" does not exist')
    problem = cfg.mode.status_problem(cfg.options, observe.observe_links(host_ns), observe.observe_routes(host_ns))
    if problem is not None:
        raise CniError(spec.ERR_NOT_AVAILABLE, *problem)
    delegate(ctx, conf, "STATUS")
