"""``overlaynet doctor``: is this host (a laptop, the course's VM, a CI runner) ready for
overlaynet and its labs? The judging, pure.

What this module owns: ``HostFacts``, everything the checks look at, as plain values that
``overlaynet.kernel.preflight.observe_host`` reads in one place; and ``judge(facts)``, which
turns them into ``Check`` lines, each with its status (``ok``, ``warn``, ``fail``) and, when
it is not ok, the exact command that fixes it. ``fail`` means overlaynet itself cannot work
(``up`` would refuse or break); ``warn`` means a lab or a tool will miss something, or the
host is in a state known to confuse (iptables rules in both backends at once).

What it never does: read the host, run anything, or print.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from overlaynet.kernel.host import NEIGHBOUR_TABLE_LIMITS

OK, WARN, FAIL = "ok", "warn", "fail"
KERNEL_FEATURES = ("netns", "veth", "bridge", "vxlan", "nf_tables")  # what observe_host probes, in order

# feature -> (what it is for, the fix when the kernel lacks it)
_FEATURE_USE = {
    "netns": ("network namespaces: every node and pod is one", "a kernel with CONFIG_NET_NS=y (Debian's has it)"),
    "veth": ("veth pairs: a pod's eth0 and a node's eth0", "modprobe veth"),
    "bridge": ("bridges: the underlay and flannel's cni0", "modprobe bridge"),
    "vxlan": ("VXLAN devices: flannel's flannel.1 tunnels", "modprobe vxlan"),
    "nf_tables": ("nf_tables: iptables-nft, kube-proxy's rules", "modprobe nf_tables"),
}


@dataclass(frozen=True)
class Program:
    """A program overlaynet or a lab runs: the names to look for, the Debian package, and
    whether overlaynet itself needs it (``fail`` when missing) or only a lab (``warn``)."""

    label: str
    names: tuple[str, ...]
    package: str
    use: str
    required: bool


PROGRAMS = (
    Program("ip, bridge", ("ip", "bridge"), "iproute2", "namespaces, links, routes, FDB", True),
    Program("iptables-save", ("iptables-save", "iptables-restore"), "iptables", "kube-proxy's rules", True),
    Program("nsenter", ("nsenter",), "util-linux", "CNI plugins and BIRD run in a node's namespace", True),
    Program("tcpdump", ("tcpdump",), "tcpdump", "overlaynet capture, the labs' packet captures", False),
    Program("curl", ("curl",), "curl", "HTTP to the pods' test servers", False),
    Program("ping", ("ping",), "iputils-ping", "ICMP between pods", False),
    Program("bird, birdc", ("bird", "birdc"), "bird2", "the routed mode's BGP mesh (up --bgp)", False),
    Program("conntrack", ("conntrack",), "conntrack", "the Services lab's connection-tracking entries", False),
    Program("dot", ("dot",), "graphviz", "overlaynet graph -o svg|png", False),
    Program("dig", ("dig",), "bind9-dnsutils", "queries to the cluster DNS (lab 13)", False),
)
CNI_PLUGIN_DIR = "/usr/lib/cni"
CNI_PLUGINS = ("bridge", "host-local", "loopback", "portmap")  # what the CNI-by-hand lab chains
CNI_PACKAGE = "containernetworking-plugins"


@dataclass(frozen=True)
class HostFacts:
    """What the checks look at. ``None`` in a probe means it could not be looked at (no root)."""

    euid: int
    capabilities: frozenset[str]  # of CAP_SYS_ADMIN, CAP_NET_ADMIN: those effective
    kernel: dict[str, str | None]  # feature -> None when it works, else why not; missing key: not probed
    iptables_version: str | None  # `iptables --version`, None when iptables is not installed
    legacy_rules: int | None  # rules (-A lines) in the host's legacy tables; None: not readable
    nft_rules: int | None  # rules in the host's iptables-nft tables
    forward_policies: dict[str, str] | None  # backend -> the host's filter FORWARD policy; None: not read
    docker_chains: bool  # a DOCKER or DOCKER-USER chain exists in the host's filter table
    ip_forward: str | None
    bridge_nf_call_iptables: str | None  # None: br_netfilter is not loaded
    neighbour_limits: dict[str, int]
    neighbour_limits_writable: bool
    programs: dict[str, str | None]  # program -> its path, None when not found
    cni_plugins: dict[str, bool] = field(default_factory=dict)  # plugin in CNI_PLUGIN_DIR -> found


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # OK, WARN or FAIL
    detail: str
    fix: str = ""

    def as_dict(self) -> dict:
        return {"name": self.name, "status": self.status, "detail": self.detail, "fix": self.fix}


@dataclass(frozen=True)
class Report:
    checks: tuple[Check, ...]

    @property
    def passed(self) -> bool:
        return all(c.status != FAIL for c in self.checks)

    def count(self, status: str) -> int:
        return sum(1 for c in self.checks if c.status == status)

    def summary(self) -> str:
        fails, warns = self.count(FAIL), self.count(WARN)
        if not fails and not warns:
            return f"all {len(self.checks)} checks passed: ready for overlaynet and its labs"
        parts = [f"{fails} failed" if fails else "", f"{warns} warning{'s' if warns != 1 else ''}" if warns else ""]
        verdict = "not ready: fix the failed checks above" if fails else "ready (the warnings concern some labs)"
        return f"{', '.join(p for p in parts if p)} of {len(self.checks)} checks: {verdict}"


def judge(facts: HostFacts) -> Report:
    checks = [_root(facts)]
    checks += [_kernel_feature(facts, feature) for feature in KERNEL_FEATURES]
    checks += [_iptables_backend(facts), _forward_policy(facts), _ip_forward(facts), _br_netfilter(facts),
               _neighbour_limits(facts)]
    checks += [_program(facts, program) for program in PROGRAMS]
    checks.append(_cni_plugins(facts))
    return Report(tuple(checks))


def _root(facts: HostFacts) -> Check:
    missing = [cap for cap in ("CAP_SYS_ADMIN", "CAP_NET_ADMIN") if cap not in facts.capabilities]
    if not missing:
        return Check("root", OK, "CAP_SYS_ADMIN and CAP_NET_ADMIN (create and configure namespaces)")
    return Check("root", FAIL, f"missing {' and '.join(missing)}: overlaynet creates namespaces and interfaces",
                 "sudo overlaynet doctor   (run overlaynet as root; in a container: --privileged)")


def _kernel_feature(facts: HostFacts, feature: str) -> Check:
    use, fix = _FEATURE_USE[feature]
    if feature not in facts.kernel:
        return Check(feature, WARN, f"not probed (needs root): {use}")
    problem = facts.kernel[feature]
    if problem is None:
        return Check(feature, OK, use)
    return Check(feature, FAIL, f"{use}: {problem}", fix)


def _iptables_backend(facts: HostFacts) -> Check:
    if facts.iptables_version is None:
        return Check("iptables backend", FAIL, "iptables is not installed", "apt-get install -y iptables")
    backend = "nf_tables" if "nf_tables" in facts.iptables_version else "legacy"
    if facts.legacy_rules and facts.nft_rules:
        return Check("iptables backend", WARN,
                     f"{facts.iptables_version.strip()}, but the host has rules in both backends "
                     f"({facts.legacy_rules} legacy, {facts.nft_rules} nf_tables): the kernel runs both sets, "
                     "and each `iptables` shows only one",
                     "iptables-legacy-save; iptables-nft-save   (compare them, then remove the set nothing uses, "
                     "e.g. iptables-legacy -F && iptables-legacy -X)")
    return Check("iptables backend", OK, f"{backend} ({facts.iptables_version.strip()}); "
                 "overlaynet's nodes use the same one")


def _forward_policy(facts: HostFacts) -> Check:
    if facts.forward_policies is None:
        return Check("FORWARD policy", WARN, "not read (needs root): the host's filter FORWARD policy")
    dropping = sorted(b for b, policy in facts.forward_policies.items() if policy == "DROP")
    if not dropping:
        return Check("FORWARD policy", OK, "the host's filter FORWARD policy is ACCEPT")
    who = "Docker set it" if facts.docker_chains else "set on this host"
    return Check("FORWARD policy", WARN,
                 f"the host's FORWARD policy is DROP ({who}, {'/'.join(dropping)}): traffic routed through the "
                 "host is dropped; overlaynet's nodes are separate namespaces and unaffected",
                 "iptables -I DOCKER-USER -j ACCEPT" if facts.docker_chains else "iptables -P FORWARD ACCEPT")


def _ip_forward(facts: HostFacts) -> Check:
    if facts.ip_forward == "1":
        return Check("ip_forward", OK, "net.ipv4.ip_forward = 1 on the host")
    return Check("ip_forward", WARN,
                 f"net.ipv4.ip_forward = {facts.ip_forward} on the host (overlaynet's nodes set their own; "
                 "a real node needs 1)", "sysctl -w net.ipv4.ip_forward=1")


def _br_netfilter(facts: HostFacts) -> Check:
    if facts.bridge_nf_call_iptables is None:
        return Check("br_netfilter", WARN,
                     "not loaded: traffic bridged on cni0 skips iptables (a Service reached from a pod on the "
                     "same node as its endpoint may then fail, as kubeadm's preflight warns)",
                     "modprobe br_netfilter")
    if facts.bridge_nf_call_iptables != "1":
        return Check("br_netfilter", WARN, f"loaded, but net.bridge.bridge-nf-call-iptables = "
                     f"{facts.bridge_nf_call_iptables}: bridged traffic skips iptables",
                     "sysctl -w net.bridge.bridge-nf-call-iptables=1")
    return Check("br_netfilter", OK, "loaded, bridge-nf-call-iptables = 1 (bridged traffic passes iptables)")


def _neighbour_limits(facts: HostFacts) -> Check:
    values = "/".join(str(facts.neighbour_limits.get(key, "?")) for key in NEIGHBOUR_TABLE_LIMITS)
    wanted = "/".join(str(v) for v in NEIGHBOUR_TABLE_LIMITS.values())
    low = [k for k, v in NEIGHBOUR_TABLE_LIMITS.items() if facts.neighbour_limits.get(k, 0) < v]
    if not low:
        return Check("ARP table limits", OK, f"gc_thresh1/2/3 = {values}: room for large clusters")
    if facts.neighbour_limits_writable:
        return Check("ARP table limits", OK, f"gc_thresh1/2/3 = {values}: `up` raises them to {wanted} "
                     "while clusters exist, and `down` puts them back")
    fix = " && ".join(f"sysctl -w {key}={value}" for key, value in NEIGHBOUR_TABLE_LIMITS.items())
    return Check("ARP table limits", WARN, f"gc_thresh1/2/3 = {values} and /proc/sys is read-only here: "
                 "`up` cannot raise them, so clusters over ~300 pods lose neighbours", f"{fix}   (on the host)")


def _program(facts: HostFacts, program: Program) -> Check:
    name = program.label
    missing = [n for n in program.names if not facts.programs.get(n)]
    if not missing:
        return Check(name, OK, f"{program.use} ({facts.programs[program.names[0]]})")
    return Check(name, FAIL if program.required else WARN, f"{', '.join(missing)} not found: {program.use}",
                 f"apt-get install -y {program.package}")


def _cni_plugins(facts: HostFacts) -> Check:
    missing = [p for p in CNI_PLUGINS if not facts.cni_plugins.get(p)]
    if not missing:
        return Check("CNI plugins", OK, f"{', '.join(CNI_PLUGINS)} in {CNI_PLUGIN_DIR} (the CNI-by-hand lab)")
    return Check("CNI plugins", WARN, f"{', '.join(missing)} not in {CNI_PLUGIN_DIR}: the CNI-by-hand lab chains them",
                 f"apt-get install -y {CNI_PACKAGE}")
