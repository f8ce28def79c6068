import pytest

from overlaynet.api.probes import ProbeSpec, Tracker, container_probes, parse_probe
from overlaynet.errors import InvalidInput


def test_http_probe_with_a_named_port_and_kubelet_defaults():
    spec = parse_probe("c", "readiness", {"httpGet": {"path": "healthz", "port": "http"}}, {"http": 8080})
    assert spec == ProbeSpec("readiness", "http", 8080, "/healthz", period=10, timeout=1, failure_threshold=3)


def test_tcp_and_exec_probes():
    container = {"name": "c", "ports": [{"containerPort": 9000, "name": "grpc"}],
                 "livenessProbe": {"tcpSocket": {"port": 9000}, "periodSeconds": 2, "failureThreshold": 1},
                 "readinessProbe": {"exec": {"command": ["cat", "/tmp/ready"]}}}
    readiness, liveness = container_probes("spec.containers[0]", container)
    assert (readiness.action, readiness.command) == ("exec", ("cat", "/tmp/ready"))
    assert (liveness.action, liveness.port, liveness.period, liveness.failure_threshold) == ("tcp", 9000, 2, 1)


@pytest.mark.parametrize("probe, words", [
    ({"httpGet": {"port": "metrics"}}, 'httpGet.port "metrics" names no containerPort'),
    ({"tcpSocket": {"port": 70000}}, "tcpSocket.port 70000 is out of range 1-65535"),
    ({"grpc": {"port": 9000}}, "needs one of httpGet, tcpSocket or exec"),
    ({"httpGet": {"port": 80}, "periodSeconds": 0}, "periodSeconds 0 must be a number >= 1"),
])
def test_bad_probes_name_the_field(probe, words):
    with pytest.raises(InvalidInput) as error:
        parse_probe("spec.containers[0].readinessProbe", "readiness", probe, {})
    assert str(error.value).startswith("spec.containers[0].readinessProbe") and words in str(error.value)


def test_liveness_success_threshold_must_be_one():
    with pytest.raises(InvalidInput, match="successThreshold must be 1 for a liveness probe"):
        parse_probe("p", "liveness", {"tcpSocket": {"port": 80}, "successThreshold": 2}, {})


def test_tracker_counts_consecutive_outcomes():
    tracker = Tracker(ProbeSpec("readiness", "tcp", 80, success_threshold=2, failure_threshold=3))
    assert [tracker.record(ok) for ok in (True, True, False, False, True, False, False, False, False)] == \
        [None, True, None, None, None, None, None, False, None]
