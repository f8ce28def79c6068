"""Readiness and liveness probes as Kubernetes declares them (pure: parsing and the state machine).

A container's ``readinessProbe`` / ``livenessProbe`` (``httpGet``, ``tcpSocket`` or ``exec``, with
``initialDelaySeconds``, ``periodSeconds``, ``timeoutSeconds``, ``successThreshold`` and
``failureThreshold``, defaults as the kubelet's) become ``ProbeSpec`` values the agent runs;
``Tracker`` turns a stream of probe outcomes into the transitions the kubelet reports (Ready
after ``successThreshold`` successes, not Ready / restart after ``failureThreshold`` failures).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from overlaynet.errors import InvalidInput

KINDS = ("readiness", "liveness")
ACTIONS = ("http", "tcp", "exec")


@dataclass(frozen=True)
class ProbeSpec:
    kind: str  # readiness | liveness
    action: str  # http | tcp | exec
    port: int = 0
    path: str = "/"
    command: tuple[str, ...] = ()
    initial_delay: float = 0
    period: float = 10
    timeout: float = 1
    success_threshold: int = 1
    failure_threshold: int = 3

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, value: object) -> ProbeSpec:
        """The inverse of ``as_dict``, checked: what crosses the agent's socket is input too."""
        if not isinstance(value, dict) or not set(value) <= set(cls.__dataclass_fields__):
            raise InvalidInput(f"probe spec {value!r} is not an object of {', '.join(cls.__dataclass_fields__)}")
        command = value.get("command", ())
        if not isinstance(command, (list, tuple)) or not all(isinstance(c, str) for c in command):
            raise InvalidInput(f"probe spec: command {command!r} must be a list of strings")
        spec = cls(**{**value, "command": tuple(command)})
        numbers = (spec.initial_delay, spec.period, spec.timeout, spec.success_threshold, spec.failure_threshold)
        if (spec.kind not in KINDS or spec.action not in ACTIONS or not isinstance(spec.path, str)
                or isinstance(spec.port, bool) or not isinstance(spec.port, int) or not 0 <= spec.port <= 65535
                or any(isinstance(n, bool) or not isinstance(n, (int, float)) or not n >= 0 for n in numbers)):
            raise InvalidInput(f"probe spec {value!r}: a field is out of its range")
        return spec


def _number(where: str, probe: dict, field: str, default: float, low: float) -> float:
    value = probe.get(field, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low:
        raise InvalidInput(f"{where}.{field} {value!r} must be a number >= {low:g}")
    return value


def parse_probe(where: str, kind: str, probe: object, ports: dict[str, int]) -> ProbeSpec:
    """One ``readinessProbe``/``livenessProbe``; ``ports`` maps the container's port names."""
    if not isinstance(probe, dict):
        raise InvalidInput(f"{where} must be a mapping")

    def port_of(action: dict, path: str) -> int:
        port = action.get("port")
        if isinstance(port, str) and not port.isdigit():
            if port not in ports:
                raise InvalidInput(f'{where}.{path}.port "{port}" names no containerPort of this container')
            return ports[port]
        if isinstance(port, bool) or not str(port).isdigit() or not 1 <= int(str(port)) <= 65535:
            raise InvalidInput(f"{where}.{path}.port {port!r} is out of range 1-65535")
        return int(str(port))

    initial_delay = _number(where, probe, "initialDelaySeconds", 0, 0)
    period = _number(where, probe, "periodSeconds", 10, 1)
    timeout = _number(where, probe, "timeoutSeconds", 1, 1)
    success_threshold = int(_number(where, probe, "successThreshold", 1, 1))
    failure_threshold = int(_number(where, probe, "failureThreshold", 3, 1))
    if kind == "liveness" and success_threshold != 1:
        raise InvalidInput(f"{where}.successThreshold must be 1 for a liveness probe")

    def probe_spec(action: str, port: int = 0, path: str = "/", command: tuple[str, ...] = ()) -> ProbeSpec:
        return ProbeSpec(kind, action, port, path, command, initial_delay, period, timeout, success_threshold,
                         failure_threshold)

    if isinstance(probe.get("httpGet"), dict):
        action = probe["httpGet"]
        path = str(action.get("path", "/"))
        return probe_spec("http", port_of(action, "httpGet"), path if path.startswith("/") else "/" + path)
    if isinstance(probe.get("tcpSocket"), dict):
        return probe_spec("tcp", port_of(probe["tcpSocket"], "tcpSocket"))
    if isinstance(probe.get("exec"), dict):
        command = probe["exec"].get("command")
        if not isinstance(command, list) or not command or not all(isinstance(c, str) for c in command):
            raise InvalidInput(f"{where}.exec.command must be a non-empty list of strings")
        return probe_spec("exec", command=tuple(command))
    raise InvalidInput(f"{where} needs one of httpGet, tcpSocket or exec (grpc is not supported)")


def container_probes(where: str, container: dict) -> list[ProbeSpec]:
    ports = {p["name"]: p["containerPort"] for p in container.get("ports") or [] if p.get("name")}
    return [parse_probe(f"{where}.{kind}Probe", kind, container[f"{kind}Probe"], ports)
            for kind in KINDS if container.get(f"{kind}Probe") is not None]


class Tracker:
    """Consecutive successes and failures of one probe, and the state they amount to."""

    def __init__(self, spec: ProbeSpec, initial: bool | None = None):
        self.spec = spec
        self.state = initial
        self.successes = 0
        self.failures = 0

    def record(self, ok: bool) -> bool | None:
        """Feed one outcome; return the new state when it changes, else None."""
        if ok:
            self.successes, self.failures = self.successes + 1, 0
            if self.successes >= self.spec.success_threshold and self.state is not True:
                self.state = True
                return True
        else:
            self.failures, self.successes = self.failures + 1, 0
            if self.failures >= self.spec.failure_threshold and self.state is not False:
                self.state = False
                return False
        return None
