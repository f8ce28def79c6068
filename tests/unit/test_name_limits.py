"""A derived kernel name over the kernel's limit is refused on apply before anything is made:
the control plane over a recording runtime, no root."""

from __future__ import annotations

import pytest

from overlaynet.api.manifests import parse_document
from overlaynet.api.model import spec_from_document
from overlaynet.control.manager import ClusterManager
from overlaynet.control.store import Store
from overlaynet.errors import InvalidInput

TEMPLATE = {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web"}]}}


class _Agent:
    def serve(self, *args, **kwargs) -> None:
        pass

    def unserve(self, *args, **kwargs) -> None:
        pass


class RecordingRuntime:
    """Every side effect the manager asks for, by name; nothing happens."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattr__(self, name: str):
        def record(*args, **kwargs):
            self.calls.append(name)
            return {"host_limits": {}, "agent": _Agent(), "delete_namespaces": [], "cni_add": {}}.get(name)

        return record


@pytest.fixture
def manager(tmp_path):
    manager = ClusterManager(Store(str(tmp_path)), RecordingRuntime())
    manager.up(spec_from_document({"kind": "Cluster", "metadata": {"name": "lab"}, "spec": {"nodes": 1, "dns": False}}))
    manager.runtime.calls.clear()
    return manager


def test_a_deployment_whose_pods_would_overflow_the_netns_name_creates_nothing(manager):
    namespace = "n" * 63
    deployment = parse_document({"kind": "Deployment", "metadata": {"name": "web-" + "d" * 236, "namespace": namespace},
                                 "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                                          "template": TEMPLATE}}, "web.yaml")
    with pytest.raises(InvalidInput, match=rf'^pod "{namespace}/web-d+-\w+-\w+": the network namespace name '
                                           r'"lab\.pod\.n+\.web-d+-\w+-\w+" is 329 characters, over the kernel\'s 255$'):
        manager.apply("lab", [deployment])
    assert manager.runtime.calls == []
    assert manager.pods("lab") == [] and manager.deployments("lab") == []


def test_a_pod_whose_netns_name_overflows_creates_nothing(manager):
    pod = parse_document({"kind": "Pod", "metadata": {"name": "p" * 253, "namespace": "n" * 63},
                          "spec": TEMPLATE["spec"]}, "pod.yaml")
    with pytest.raises(InvalidInput, match="is 325 characters, over the kernel's 255"):
        manager.apply("lab", [pod])
    assert manager.runtime.calls == []
    assert manager.pods("lab") == []
