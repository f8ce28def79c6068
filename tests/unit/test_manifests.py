import textwrap

import pytest

from overlaynet.api.manifests import DeploymentManifest, PodManifest, load_cluster, parse_manifests, served_ports
from overlaynet.errors import InvalidInput

POD = """
apiVersion: v1
kind: Pod
metadata: {name: client, labels: {app: client}}
spec:
  nodeName: node-1
  containers:
  - name: c
    image: busybox          # accepted and ignored
    ports: [{containerPort: 9000, protocol: UDP, name: dns}]
"""

DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      nodeSelector: {zone: b}
      containers: [{name: web, image: nginx, ports: [{containerPort: 80}]}]
"""


def parse(text, namespace=None):
    return parse_manifests("app.yaml", namespace, text=textwrap.dedent(text))


def test_pod_and_deployment_multi_document():
    pod, deployment = parse(POD + "---" + DEPLOYMENT)
    assert isinstance(pod, PodManifest) and pod.namespace == "default" and pod.template.node_name == "node-1"
    assert isinstance(deployment, DeploymentManifest) and deployment.namespace == "shop" and deployment.replicas == 3
    assert dict(deployment.template.node_selector) == {"zone": "b"}
    assert served_ports(pod.template) == ((8080, "TCP"), (8080, "UDP"), (9000, "UDP"))


def test_deployment_pod_names_are_stable_and_valid():
    (deployment,) = parse(DEPLOYMENT)
    first = deployment.pod_name(0)
    assert first == deployment.pod_name(0) and first != deployment.pod_name(1)
    assert first.startswith("web-") and len(first.split("-")[-1]) == 5


def test_list_kind_is_flattened():
    text = "kind: List\nitems:\n" + textwrap.indent(textwrap.dedent(POD).replace("\n", "\n", 1), "- ").replace("- \n", "")
    documents = parse_manifests("l.yaml", text="apiVersion: v1\nkind: List\nitems:\n- " +
                                textwrap.dedent(POD).strip().replace("\n", "\n  "))
    assert [m.name for m in documents] == ["client"]
    assert text  # the literal above documents the shape


@pytest.mark.parametrize("change, message", [
    (("containerPort: 9000", "containerPort: 70000"),
     'app.yaml: Pod "client": spec.containers[0].ports[0].containerPort 70000 is out of range 1-65535'),
    (("protocol: UDP", "protocol: SCTP"), 'spec.containers[0].ports[0].protocol "SCTP" is not supported'),
    (("name: client", "name: Client_1"), 'Pod "Client_1": metadata.name must consist of lower case'),
    (("kind: Pod", "kind: Gadget"), 'kind "Gadget" is not supported (supported: Pod, Deployment, Service, EndpointSlice, '
     'NetworkPolicy, Namespace, List)'),
    (("nodeName: node-1", "hostNetwork: true"), "spec.hostNetwork is not supported"),
    (("name: dns", "name: this-name-is-too-long"), "must be an IANA service name"),
])
def test_bad_fields_name_file_object_and_field(change, message):
    with pytest.raises(InvalidInput) as error:
        parse(POD.replace(*change))
    assert message in str(error.value)


def test_malformed_yaml_gives_the_line():
    with pytest.raises(InvalidInput, match=r"^bad.yaml:4: malformed YAML"):
        parse_manifests("bad.yaml", text="kind: Pod\nmetadata:\n  name: [oops\n  x: y: z\n")


def test_selector_must_match_template():
    with pytest.raises(InvalidInput, match="spec.selector.matchLabels does not match spec.template.metadata.labels"):
        parse(DEPLOYMENT.replace("matchLabels: {app: web}", "matchLabels: {app: api}"))


def test_namespace_flag_conflict():
    with pytest.raises(InvalidInput, match='metadata.namespace "shop" does not match the namespace "prod"'):
        parse(DEPLOYMENT, namespace="prod")


def test_negative_replicas():
    with pytest.raises(InvalidInput, match=r"spec.replicas -1 must be a whole number >= 0"):
        parse(DEPLOYMENT.replace("replicas: 3", "replicas: -1"))


def test_cluster_document(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text("kind: Cluster\nmetadata: {name: lab}\nspec: {nodes: 2, cni: vxlan, nodeNetwork: 172.30.0.0/24}\n")
    spec = load_cluster(str(path))
    assert spec.name == "lab" and len(spec.nodes) == 2 and spec.cni == "flannel"
    path.write_text("kind: Cluster\nmetadata: {name: lab}\nspec: {nodez: 2}\n")
    with pytest.raises(InvalidInput, match="unknown field spec.nodez"):
        load_cluster(str(path))


def test_cluster_document_in_apply_is_refused():
    with pytest.raises(InvalidInput, match="use `overlaynet up -f`"):
        parse("kind: Cluster\nmetadata: {name: x}\n")


def test_every_kind_shares_the_error_prefix_and_the_namespace_rules():
    from overlaynet.api.objects import Where, object_namespace

    assert str(Where("web.yaml", "Pod", "web-1").error("spec is required")) == 'web.yaml: Pod "web-1": spec is required'
    assert str(Where("", "Service", "web").error("x")) == 'Service "web": x'
    assert str(Where("web.yaml", "document 2", "").error("x")) == "web.yaml: document 2: x"
    where = Where("web.yaml", "Pod", "web-1")
    assert object_namespace({}, where, None) == "default"
    assert object_namespace({}, where, "team-a") == object_namespace({"namespace": "team-a"}, where, None) == "team-a"
    with pytest.raises(InvalidInput, match=r'^web.yaml: Pod "web-1": metadata.namespace "a" does not match '
                                           r'the namespace "b" given by -n$'):
        object_namespace({"namespace": "a"}, where, "b")
    with pytest.raises(InvalidInput, match=r'^web.yaml: Pod "web-1": metadata.namespace must be at most 63'):
        object_namespace({"namespace": "n" * 64}, where, None)
