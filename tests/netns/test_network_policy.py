"""NetworkPolicy enforced in real clusters, both modes: real TCP and UDP connections between
pods on the same node (bridged in the vxlan mode) and on different nodes, checked against
what the policies say.

One module-scoped cluster per mode (pods x/a, x/b on node-1, y/c on node-2, z/d on node-1);
the cases apply policies, check with real connections, and delete them again, so each
starts from a cluster without policies.
"""

from __future__ import annotations

import json
import shutil

import pytest

from tests.netns.clusters import Cli, in_netns, short_state_dir, write_manifest

PODS = (("x", "a", "node-1"), ("x", "b", "node-1"), ("y", "c", "node-2"), ("z", "d", "node-1"))


def _pod(namespace: str, name: str, node: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace,
                                                            "labels": {"pod": name}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [
                {"containerPort": 80, "name": "http"}, {"containerPort": 81, "protocol": "UDP", "name": "dns"}]}]}}


def policy(name: str, namespace: str, spec: dict) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


class Cluster:
    def __init__(self, cli: Cli, name: str, state: str):
        self.cli, self.name, self.state = cli, name, state
        self.ips = {f"{p['metadata']['namespace']}/{p['metadata']['name']}": p["status"]["podIP"]
                    for p in cli.json("get", "pods", "-A", "--name", name)["items"]}

    def apply(self, *documents: dict) -> str:
        path = write_manifest(self.state, "policies.yaml", list(documents))
        return self.cli.run("apply", "-f", path, "--name", self.name).stdout

    def delete_policies(self) -> None:
        for item in self.cli.json("get", "netpol", "-A", "--name", self.name)["items"]:
            self.cli.run("delete", "netpol", item["metadata"]["name"], "-n", item["metadata"]["namespace"],
                         "--name", self.name)

    def netns(self, key: str) -> str:
        namespace, name = key.split("/")
        return f"{self.name}.pod.{namespace}.{name}"

    def tcp(self, source: str, target: str, port: int = 80) -> bool:
        result = in_netns(self.netns(source), "curl", "-s", "-m", "0.5", f"http://{self.ips[target]}:{port}/hostname")
        return result.returncode == 0 and result.stdout.strip() == target.split("/")[1]

    def udp(self, source: str, target: str, port: int = 81) -> bool:
        code = ("import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.5);"
                f"s.sendto(b'hostname', ('{self.ips[target]}', {port}));"
                "print(s.recv(200).decode())")
        result = in_netns(self.netns(source), "python3", "-c", code)
        return result.returncode == 0 and result.stdout.strip() == target.split("/")[1]

    def table(self, *extra: str) -> dict:
        result = self.cli.run("netpol", "table", "--probe", "--timeout", "0.5", "-o", "json", "--name", self.name,
                              *extra, check=False)
        return json.loads(result.stdout)


@pytest.fixture(scope="module", params=["vxlan", "routed"])
def cluster(request):
    state = short_state_dir()
    cli = Cli(state)
    name = f"np{request.param[0]}"
    try:
        cli.run("up", "--name", name, "--nodes", "2", "--cni", request.param, "--no-dns")
        path = write_manifest(state, "pods.yaml", [_pod(*p) for p in PODS])
        cli.run("apply", "-f", path, "--name", name)
        cluster = Cluster(cli, name, state)
        yield cluster
    finally:
        cli.down_quietly(name)
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture
def clean(cluster):
    yield cluster
    cluster.delete_policies()


def test_default_deny_ingress_then_policy_delete_restores(clean):
    c = clean
    assert c.tcp("x/b", "x/a") and c.udp("y/c", "x/a")
    c.apply(policy("deny", "x", {"podSelector": {}}))
    assert not c.tcp("x/b", "x/a"), "same node (bridged in vxlan) must be denied"
    assert not c.tcp("y/c", "x/a"), "other node must be denied"
    assert not c.udp("z/d", "x/b")
    assert c.tcp("x/a", "y/c") and c.udp("x/a", "z/d"), "egress is not isolated, replies come back"
    node = in_netns(f"{c.name}.node.node-1", "curl", "-s", "-m", "1", f"http://{c.ips['x/a']}:80/hostname")
    assert node.stdout.strip() == "a", "the node reaches its own pods under default deny (kubelet probes)"
    report = c.table("--port", "80")
    assert report["mismatches"] == 0
    verify = c.cli.run("verify", "-o", "json", "--timeout", "1", "--name", c.name, check=False)
    checks = json.loads(verify.stdout)["checks"]
    assert verify.returncode == 0, [ch for ch in checks if ch["status"] not in ("ok", "denied")]
    denied = {(ch["from"], ch["to"]) for ch in checks if ch["status"] == "denied" and ch["rule"] == "pod-pod"}
    assert ("y/c", "x/a") in denied and ("x/a", "y/c") not in denied
    diff = c.cli.run("rules", "node-1", "--diff", "--table", "filter", "--name", c.name).stdout
    assert "live rules match the rendered ones" in diff
    assert {(p["from"], p["to"]) for p in report["pairs"] if not p["allowed"]} == {
        (s, t) for s in c.ips for t in ("x/a", "x/b") if s != t}
    c.cli.run("delete", "netpol", "deny", "-n", "x", "--name", c.name)
    assert c.tcp("y/c", "x/a") and c.tcp("x/b", "x/a")


def test_selectors_ports_and_label_change_are_followed(clean):
    c = clean
    c.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "y", "labels": {"team": "blue"}}},
            policy("allow-blue-tcp", "x", {
                "podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "blue"}}},
                                      {"podSelector": {"matchLabels": {"role": "frontend"}}}],
                             "ports": [{"port": "http"}]}]}))
    assert c.tcp("y/c", "x/a") and not c.udp("y/c", "x/a"), "only the named TCP port"
    assert not c.tcp("x/b", "x/a") and not c.tcp("z/d", "x/a")
    c.cli.run("label", "pod", "b", "role=frontend", "-n", "x", "--name", c.name)
    assert c.tcp("x/b", "x/a"), "the policy follows the pod's new label"
    c.cli.run("label", "ns", "y", "team-", "--name", c.name)
    assert not c.tcp("y/c", "x/a"), "the policy follows the namespace's label"
    c.cli.run("label", "pod", "b", "role-", "-n", "x", "--name", c.name)
    assert not c.tcp("x/b", "x/a")


def test_egress_with_ip_block_except_and_end_port(clean):
    c = clean
    c.apply(policy("egress", "z", {
        "podSelector": {}, "policyTypes": ["Egress"],
        "egress": [{"to": [{"ipBlock": {"cidr": "10.244.0.0/16", "except": [f"{c.ips['x/b']}/32"]}}],
                    "ports": [{"port": 79, "endPort": 81, "protocol": "TCP"}, {"port": 81, "protocol": "UDP"}]}]}))
    assert c.tcp("z/d", "x/a") and c.tcp("z/d", "y/c"), "inside the ipBlock and the port range"
    assert not c.tcp("z/d", "x/b"), "the except range"
    assert c.udp("z/d", "y/c") and not c.udp("z/d", "x/b")
    assert not c.tcp("z/d", "y/c", 8080), "outside the port range"
    assert c.tcp("x/a", "z/d"), "ingress to z is not isolated: replies of allowed connections pass"
    rules = c.cli.run("rules", "node-1", "--table", "filter", "--name", c.name).stdout
    assert "cali-FORWARD" in rules and "z/egress egress[0] to[0]" in rules
    assert c.table("--namespace", "z", "--port", "80")["mismatches"] == 0


def test_describe_and_get_show_the_policy_and_its_chains(clean):
    c = clean
    c.apply(policy("deny", "x", {"podSelector": {"matchLabels": {"pod": "a"}}}))
    out = c.cli.run("describe", "pod", "a", "-n", "x", "--name", c.name).stdout
    assert "Ingress: isolated by deny (chain cali-tw-" in out
    chain = out.split("(chain ")[1].split(")")[0]
    live = in_netns(f"{c.name}.node.node-1", "iptables", "-S", chain).stdout
    assert "x/a: no ingress policy allowed it" in live
    assert "deny" in c.cli.run("get", "netpol", "-n", "x", "--name", c.name).stdout
    traced = c.cli.run("trace", "b", f"{c.ips['x/a']}:80", "-n", "x", "--name", c.name).stdout
    assert f"{chain}, cali-pi-" in traced and "DROP" in traced, traced
    in_netns(f"{c.name}.node.node-1", "iptables", "-F", chain)  # changed behind overlaynet's back
    assert c.tcp("x/b", "x/a")
    repaired = c.cli.run("reconcile", "--name", c.name).stdout
    assert "the policy agent wrote back" in repaired and not c.tcp("x/b", "x/a")
    bad = c.cli.run("apply", "-f", write_manifest(c.state, "bad.yaml", [policy("bad", "x", {
        "podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.1.0.0/24"]}}]}]})]),
        "--name", c.name, check=False)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert 'NetworkPolicy "bad": spec.ingress[0].from[0].ipBlock.except[0]' in bad.stderr
