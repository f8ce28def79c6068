"""host-local IPAM (overlaynet.ipam.hostlocal) and the overlaynet-ipam plugin, no root needed.

The allocator runs against an in-memory store (a fake with the store's methods) and against
the real on-disk store in a temporary directory; the file layout is compared with the
reference plugin's (cni.md §9, §11). The blocks variant runs against a fake BlockIPAM and
against overlaynet.ipam.blocks itself on a temporary store.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import multiprocessing
import os
import stat
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from overlaynet.cni import ipam_plugin, plugins, spec
from overlaynet.cni.invocation import PluginOutput, answer
from overlaynet.control.store import Store
from overlaynet.errors import CapacityError, CniError
from overlaynet.ipam import blocks, hostlocal


class MemoryStore:
    """The store interface in memory (what the allocator is tested against)."""

    def __init__(self) -> None:
        self.files: dict = {}
        self.last: dict[int, object] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def lock(self):
        with self._lock:
            yield

    def reserved(self):
        return dict(self.files)

    def reserve(self, ip, content, set_index):
        if ip in self.files:
            return False
        self.files[ip] = content
        self.last[set_index] = ip
        return True

    def last_reserved(self, set_index):
        return self.last.get(set_index)

    def release(self, ip):
        self.files.pop(ip, None)


def request(ranges=None, name="testnet", version="1.0.0", data_dir=None, **ipam) -> dict:
    ipam = {"type": "overlaynet-ipam", **ipam}
    if ranges is not None:
        ipam["ranges"] = ranges
    if data_dir is not None:
        ipam["dataDir"] = data_dir
    return {"cniVersion": version, "name": name, "type": "overlaynet-ipam", "ipam": ipam}


def subnet(cidr, **extra):
    return [[{"subnet": cidr, **extra}]]


def env(command="ADD", cid="ctr1", ifname="eth0", args="") -> spec.CniEnv:
    return spec.parse_env({"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": "/run/netns/x",
                           "CNI_IFNAME": ifname, "CNI_PATH": "/x", "CNI_ARGS": args})


def addresses(result) -> list[str]:
    return [ip.address for ip in result.ips]


def add(conf, store, cid="ctr1", ifname="eth0", args=""):
    return hostlocal.cmd_add(conf, env("ADD", cid, ifname, args), store)


# -- configuration ------------------------------------------------------------------------


def test_defaults_of_a_range():
    cfg = hostlocal.parse_config(request(subnet("10.244.1.0/24")))
    (r,) = cfg.range_sets[0].ranges
    assert (str(r.start), str(r.end), str(r.gateway)) == ("10.244.1.1", "10.244.1.254", "10.244.1.1")
    assert cfg.data_dir == "/var/lib/cni/networks" and cfg.routes == ()
    assert r.capacity == 253  # .1-.254 without the gateway


def test_flat_form_and_routes():
    cfg = hostlocal.parse_config(request(subnet="10.1.0.0/16", rangeStart="10.1.5.10", rangeEnd="10.1.5.20",
                                         gateway="10.1.0.1", routes=[{"dst": "0.0.0.0/0"}, {"dst": "10.96.0.0/12", "gw": "10.1.0.254"}]))
    (r,) = cfg.range_sets[0].ranges
    assert (str(r.start), str(r.end), str(r.gateway)) == ("10.1.5.10", "10.1.5.20", "10.1.0.1")
    assert [(x.dst, x.gw) for x in cfg.routes] == [("0.0.0.0/0", None), ("10.96.0.0/12", "10.1.0.254")]


@pytest.mark.parametrize("ranges,words", [
    (subnet("10.0.0.0/31"), "too small"),
    (subnet("10.0.0.5/24"), "host bits"),
    (subnet("10.0.0.0/24", rangeStart="10.0.1.5"), "rangeStart 10.0.1.5"),
    (subnet("10.0.0.0/24", rangeEnd="10.0.0.255"), "rangeEnd 10.0.0.255"),
    (subnet("10.0.0.0/24", rangeStart="10.0.0.50", rangeEnd="10.0.0.40"), "after rangeEnd"),
    (subnet("10.0.0.0/24", gateway="10.0.9.1"), "gateway 10.0.9.1"),
    ([[{"subnet": "10.0.0.0/24"}, {"subnet": "10.0.0.0/25"}]], "overlaps"),
    ([[{"subnet": "10.0.0.0/24"}], [{"subnet": "10.0.0.0/24"}]], "overlap"),
    ([[{"subnet": "10.0.0.0/24"}, {"subnet": "fd00::/64"}]], "mixes"),
    ([[{"rangeStart": "10.0.0.1"}]], "subnet is missing"),
    ([], "ranges"),
    (None, "ranges"),
])
def test_invalid_ranges_are_code_7_and_say_why(ranges, words):
    with pytest.raises(CniError) as info:
        hostlocal.parse_config(request(ranges))
    assert info.value.code == 7 and words in info.value.msg


# -- the allocator ------------------------------------------------------------------------


def test_first_address_is_2_then_round_robin_after_the_last_reserved():
    conf, store = request(subnet("10.244.1.0/29")), MemoryStore()  # .1 gateway, .2-.6 usable
    assert addresses(add(conf, store, "a")) == ["10.244.1.2/29"]
    assert addresses(add(conf, store, "b")) == ["10.244.1.3/29"]
    hostlocal.cmd_del(conf, env("DEL", "a"), store)
    # .2 is free again, but allocation continues after the last reserved address
    assert addresses(add(conf, store, "c")) == ["10.244.1.4/29"]
    assert addresses(add(conf, store, "d")) == ["10.244.1.5/29"]
    assert addresses(add(conf, store, "e")) == ["10.244.1.6/29"]
    assert addresses(add(conf, store, "f")) == ["10.244.1.2/29"]  # wrapped, gateway skipped


def test_gateway_inside_the_range_is_skipped():
    conf, store = request(subnet("10.9.0.0/24", rangeStart="10.9.0.10", rangeEnd="10.9.0.12", gateway="10.9.0.11")), MemoryStore()
    assert [addresses(add(conf, store, c))[0] for c in ("a", "b")] == ["10.9.0.10/24", "10.9.0.12/24"]


def test_exhausted_range_names_the_range():
    conf, store = request(subnet("10.99.0.0/30")), MemoryStore()
    result = add(conf, store, "a")
    assert addresses(result) == ["10.99.0.2/30"] and result.ips[0].gateway == "10.99.0.1"  # cni.md §11
    with pytest.raises(CniError) as info:
        add(conf, store, "b")
    assert "no IP addresses available in range set" in info.value.msg
    assert "10.99.0.0/30 (10.99.0.1-10.99.0.2)" in info.value.msg  # rangeStart defaults to .1, the gateway


def test_ranges_of_a_set_are_walked_in_order_and_wrap():
    conf = request([[{"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.253"}, {"subnet": "10.2.0.0/24", "rangeEnd": "10.2.0.3"}]])
    store = MemoryStore()
    got = [addresses(add(conf, store, f"c{i}"))[0] for i in range(4)]
    assert got == ["10.1.0.253/24", "10.1.0.254/24", "10.2.0.2/24", "10.2.0.3/24"]  # 10.2.0.1 is that range's gateway
    hostlocal.cmd_del(conf, env("DEL", "c0"), store)
    assert addresses(add(conf, store, "c4")) == ["10.1.0.253/24"]


def test_one_address_per_range_set_dual_stack():
    conf, store = request([[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00:10::/64"}]]), MemoryStore()
    result = add(conf, store)
    assert addresses(result) == ["10.1.0.2/24", "fd00:10::2/64"]
    assert result.to_dict("0.4.0")["ips"][1]["version"] == "6"


def test_duplicate_allocation_for_one_attachment_is_refused():
    conf, store = request(subnet("10.1.0.0/24")), MemoryStore()
    add(conf, store)
    with pytest.raises(CniError) as info:
        add(conf, store)
    assert "duplicate" in info.value.msg
    assert addresses(add(conf, store, ifname="net1")) == ["10.1.0.3/24"]  # another interface is another attachment


def test_requested_address_from_cni_args_runtime_config_and_args():
    conf, store = request(subnet("10.1.0.0/24")), MemoryStore()
    assert addresses(add(conf, store, "a", args="IP=10.1.0.77")) == ["10.1.0.77/24"]
    with pytest.raises(CniError) as info:
        add(conf, store, "b", args="IP=10.1.0.77")
    assert "10.1.0.77 is not available" in info.value.msg
    assert addresses(add({**conf, "runtimeConfig": {"ips": ["10.1.0.80/24"]}}, store, "c")) == ["10.1.0.80/24"]
    assert addresses(add({**conf, "args": {"cni": {"ips": ["10.1.0.81"]}}}, store, "d")) == ["10.1.0.81/24"]
    with pytest.raises(CniError) as info:
        add(conf, store, "e", args="IP=10.7.0.1")
    assert "in no range" in info.value.msg
    with pytest.raises(CniError):
        add(conf, store, "f", args="IP=10.1.0.1")  # the gateway
    assert sorted(map(str, store.files)) == ["10.1.0.77", "10.1.0.80", "10.1.0.81"]


def test_runtime_ip_ranges_replace_the_configured_ranges():
    conf = {**request(subnet("10.1.0.0/24")), "runtimeConfig": {"ipRanges": [[{"subnet": "10.5.0.0/24"}]]}}
    assert addresses(add(conf, MemoryStore())) == ["10.5.0.2/24"]


def test_a_failing_second_set_releases_the_first():
    conf, store = request([[{"subnet": "10.1.0.0/24"}], [{"subnet": "10.2.0.0/30"}]]), MemoryStore()
    add(conf, store, "a")
    with pytest.raises(CniError):
        add(conf, store, "b")
    assert sorted(map(str, store.files)) == ["10.1.0.2", "10.2.0.2"]


def test_del_is_idempotent_and_releases_old_format_files():
    conf, store = request(subnet("10.1.0.0/24")), MemoryStore()
    add(conf, store, "a")
    store.files[ipaddress.ip_address("10.1.0.50")] = "a"  # written by an old host-local
    store.files[ipaddress.ip_address("10.1.0.51")] = "b\r\neth0"
    assert [str(ip) for ip in hostlocal.cmd_del(conf, env("DEL", "a"), store)] == ["10.1.0.2", "10.1.0.50"]
    assert hostlocal.cmd_del(conf, env("DEL", "a"), store) == []
    assert list(map(str, store.files)) == ["10.1.0.51"]


def test_check_fails_when_nothing_belongs_to_the_attachment():
    conf, store = request(subnet("10.1.0.0/24")), MemoryStore()
    with pytest.raises(CniError) as info:
        hostlocal.cmd_check(conf, env("CHECK", "a"), store)
    assert "no address is allocated to a/eth0" in info.value.msg
    result = add(conf, store, "a")
    hostlocal.cmd_check({**conf, "prevResult": result.to_dict("1.0.0")}, env("CHECK", "a"), store)
    wrong = {**conf, "prevResult": {"cniVersion": "1.0.0", "ips": [{"address": "10.1.0.9/24"}]}}
    with pytest.raises(CniError) as info:
        hostlocal.cmd_check(wrong, env("CHECK", "a"), store)
    assert "10.1.0.9" in info.value.msg


def test_gc_frees_everything_not_valid():
    conf, store = request(subnet("10.1.0.0/24")), MemoryStore()
    for cid in ("a", "b", "c"):
        add(conf, store, cid)
    store.files[ipaddress.ip_address("10.1.0.60")] = "b"  # old format, id still valid
    gc = {**conf, "cniVersion": "1.1.0", "cni.dev/valid-attachments": [{"containerID": "b", "ifname": "eth0"}]}
    freed = hostlocal.cmd_gc(gc, spec.parse_env({"CNI_COMMAND": "GC", "CNI_PATH": "/x"}), store)
    assert [str(ip) for ip in freed] == ["10.1.0.2", "10.1.0.4"]
    assert sorted(map(str, store.files)) == ["10.1.0.3", "10.1.0.60"]


def test_status_is_50_when_a_set_is_full():
    conf, store = request(subnet("10.99.0.0/30")), MemoryStore()
    status_env = spec.parse_env({"CNI_COMMAND": "STATUS"})
    hostlocal.cmd_status(conf, status_env, store)
    add(conf, store)
    with pytest.raises(CniError) as info:
        hostlocal.cmd_status(conf, status_env, store)
    assert info.value.code == 50 and "10.99.0.0/30" in info.value.msg


# -- the disk store -----------------------------------------------------------------------


def test_disk_layout_is_host_locals(tmp_path):
    conf = request(subnet("10.244.1.0/24", gateway="10.244.1.1"), name="overlaytest", data_dir=str(tmp_path))
    add(conf, None, "ctr1")
    directory = tmp_path / "overlaytest"
    assert sorted(os.listdir(directory)) == ["10.244.1.2", "last_reserved_ip.0", "lock"]
    assert (directory / "10.244.1.2").read_bytes() == b"ctr1\r\neth0"
    assert stat.S_IMODE(os.stat(directory / "10.244.1.2").st_mode) == 0o644
    assert (directory / "last_reserved_ip.0").read_bytes() == b"10.244.1.2"
    assert (directory / "lock").read_bytes() == b""
    hostlocal.cmd_check(conf, env("CHECK", "ctr1"), None)
    hostlocal.cmd_del(conf, env("DEL", "ctr1"), None)
    assert sorted(os.listdir(directory)) == ["last_reserved_ip.0", "lock"]


def test_disk_store_continues_after_the_last_reserved_file(tmp_path):
    conf = request(subnet("10.1.0.0/24"), data_dir=str(tmp_path))
    os.makedirs(tmp_path / "testnet")
    (tmp_path / "testnet" / "last_reserved_ip.0").write_text("10.1.0.40")
    assert addresses(add(conf, None, "a")) == ["10.1.0.41/24"]


def test_fifty_threads_get_fifty_distinct_addresses(tmp_path):
    conf = request(subnet("10.30.0.0/24"), data_dir=str(tmp_path))
    with ThreadPoolExecutor(50) as pool:
        got = list(pool.map(lambda i: addresses(add(conf, None, f"ctr{i}"))[0], range(50)))
    assert len(set(got)) == 50
    assert len([f for f in os.listdir(tmp_path / "testnet") if f[0].isdigit()]) == 50


def _add_in_process(args):
    data_dir, i = args
    conf = request(subnet("10.31.0.0/24"), data_dir=data_dir)
    return addresses(add(conf, None, f"proc{i}"))[0]


def test_fifty_processes_get_fifty_distinct_addresses(tmp_path):
    with multiprocessing.get_context("fork").Pool(16) as pool:
        got = pool.map(_add_in_process, [(str(tmp_path), i) for i in range(50)])
    assert len(set(got)) == 50


def test_unwritable_data_dir_is_an_io_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(CniError) as info:
        add(request(subnet("10.1.0.0/24"), data_dir=str(blocker)), None)
    assert info.value.code == 5


# -- the overlaynet-ipam plugin, in-process ------------------------------------------------


def run_ipam(conf: dict, command="ADD", cid="ctr1", **extra_env) -> PluginOutput:
    environ = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0",
               "CNI_PATH": "/x", **extra_env}
    return plugins.run("overlaynet-ipam", environ, json.dumps(conf).encode())


def test_ipam_plugin_prints_what_host_local_prints(tmp_path):
    out = run_ipam(request(subnet("10.99.0.0/30"), data_dir=str(tmp_path)))
    assert out.exit_code == 0
    assert out.stdout == spec.dumps({"cniVersion": "1.0.0", "ips": [{"address": "10.99.0.2/30", "gateway": "10.99.0.1"}],
                                     "dns": {}})
    out = run_ipam(request(subnet("10.98.0.0/30"), version="0.4.0", data_dir=str(tmp_path)))
    assert json.loads(out.stdout)["ips"] == [{"version": "4", "address": "10.98.0.2/30", "gateway": "10.98.0.1"}]


def test_ipam_plugin_errors_are_json_on_stdout(tmp_path):
    conf = request(subnet("10.99.0.0/30"), data_dir=str(tmp_path))
    assert run_ipam(conf).exit_code == 0
    out = run_ipam(conf, cid="ctr2")
    assert out.exit_code != 0
    error = json.loads(out.stdout)
    assert error["cniVersion"] == "1.0.0" and error["code"] == 999 and "10.99.0.0/30" in error["msg"]
    out = run_ipam({**conf, "ipam": {**conf["ipam"], "mode": "magic"}})
    assert json.loads(out.stdout)["code"] == 2 and "magic" in json.loads(out.stdout)["msg"]
    assert run_ipam(conf, command="DEL").stdout == "" and run_ipam(conf, command="DEL").exit_code == 0


def test_ipam_plugin_resolv_conf(tmp_path):
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("# test\nnameserver 10.96.0.10\nsearch default.svc.cluster.local svc.cluster.local\noptions ndots:5\n")
    out = run_ipam(request(subnet("10.1.0.0/24"), data_dir=str(tmp_path), resolvConf=str(resolv)))
    assert json.loads(out.stdout)["dns"] == {"nameservers": ["10.96.0.10"],
                                             "search": ["default.svc.cluster.local", "svc.cluster.local"],
                                             "options": ["ndots:5"]}


# -- blocks -------------------------------------------------------------------------------


class FakeBlockIPAM:
    """BlockIPAM's interface: allocate(node, handle), release(handle), lookup(handle), handles(node)."""

    def __init__(self, pool="10.250.0.0/30"):
        self.pool = ipaddress.IPv4Network(pool)
        self.allocations: dict[str, tuple[str, ipaddress.IPv4Address]] = {}

    def allocate(self, node, handle):
        if handle in self.allocations:
            return self.allocations[handle][1]
        used = {ip for _, ip in self.allocations.values()}
        for ip in self.pool:
            if ip not in used:
                self.allocations[handle] = (node, ip)
                return ip
        raise CapacityError(f"IP pool {self.pool} has no address for node {node}")

    def release(self, handle):
        self.allocations.pop(handle, None)

    def lookup(self, handle):
        found = self.allocations.get(handle)
        return found[1] if found else None

    def handles(self, node=None):
        return {h: ip for h, (n, ip) in self.allocations.items() if node is None or n == node}


def test_blocks_add_del_check_with_a_fake():
    fake = FakeBlockIPAM()
    conf = request(mode="blocks")
    result = ipam_plugin.blocks_command("ADD", conf, env("ADD", "c1"), fake, "node-1")
    assert addresses(result) == ["10.250.0.0/32"] and result.ips[0].gateway is None
    assert fake.lookup("c1.eth0") == ipaddress.ip_address("10.250.0.0")
    ipam_plugin.blocks_command("CHECK", {**conf, "prevResult": result.to_dict("1.0.0")}, env("CHECK", "c1"), fake, "node-1")
    with pytest.raises(CniError) as info:
        ipam_plugin.blocks_command("CHECK", conf, env("CHECK", "c2"), fake, "node-1")
    assert "c2.eth0" in info.value.msg
    ipam_plugin.blocks_command("DEL", conf, env("DEL", "c1"), fake, "node-1")
    ipam_plugin.blocks_command("DEL", conf, env("DEL", "c1"), fake, "node-1")
    assert fake.allocations == {}


def test_blocks_exhausted_pool_status_and_gc_with_a_fake():
    fake = FakeBlockIPAM("10.250.0.0/31")
    conf = request(mode="blocks", version="1.1.0")
    ipam_plugin.blocks_command("ADD", conf, env("ADD", "mine"), fake, "node-1")
    ipam_plugin.blocks_command("STATUS", conf, env("STATUS"), fake, "node-1")
    ipam_plugin.blocks_command("ADD", conf, env("ADD", "theirs"), fake, "node-2")
    with pytest.raises(CniError) as info:
        ipam_plugin.blocks_command("ADD", conf, env("ADD", "more"), fake, "node-1")
    assert "10.250.0.0/31" in info.value.msg
    with pytest.raises(CniError) as info:
        ipam_plugin.blocks_command("STATUS", conf, env("STATUS"), fake, "node-1")
    assert info.value.code == 50
    # GC on node-1 with nothing valid frees node-1's handle only: node-2's pods are not its business
    ipam_plugin.blocks_command("GC", {**conf, "cni.dev/valid-attachments": []}, env("GC"), fake, "node-1")
    assert set(fake.allocations) == {"theirs.eth0"}


def test_blocks_mode_through_the_plugin_on_overlaynet_blocks(tmp_path):
    conf = {"cniVersion": "1.1.0", "name": "podnet", "type": "overlaynet-ipam",
            "ipam": {"type": "overlaynet-ipam", "mode": "blocks", "stateDir": str(tmp_path), "blockSize": 30},
            "overlaynet": {"cluster": {"metadata": {"name": "blk"}, "spec": {"clusterCIDR": "10.60.0.0/28"}},
                           "node": {"name": "node-1"}}}
    first = json.loads(run_ipam(conf, cid="a").stdout)
    second = json.loads(run_ipam(conf, cid="b").stdout)
    got = [ipaddress.ip_interface(doc["ips"][0]["address"]) for doc in (first, second)]
    assert all(i.network.prefixlen == 32 and i.ip in ipaddress.ip_network("10.60.0.0/28") for i in got)
    assert got[0] != got[1] and ipaddress.ip_network(f"{got[0].ip}/30", strict=False).supernet_of(
        ipaddress.ip_network(f"{got[1].ip}/32"))  # the same /30 block, handed out bottom-up
    assert run_ipam(conf, command="CHECK", cid="a").exit_code == 0
    assert run_ipam(conf, command="DEL", cid="a").exit_code == 0
    assert json.loads(run_ipam(conf, command="CHECK", cid="a").stdout)["code"] == 999
    bad = {**conf, "ipam": {**conf["ipam"], "blockSize": 26}}  # pool /28 is smaller than a /26 block
    error = json.loads(run_ipam(bad, cid="c").stdout)
    assert error["code"] == 7 and "smaller than one block" in error["msg"]


def test_blocks_mode_in_the_agent_keeps_its_store_and_follows_a_new_database(tmp_path):
    """In the agent the store stays open between requests; a state database made anew (a
    later cluster's) is opened again rather than written through a stale connection, and a
    refused request changes nothing."""
    conf = {"cniVersion": "1.1.0", "name": "podnet", "type": "overlaynet-ipam",
            "ipam": {"type": "overlaynet-ipam", "mode": "blocks", "stateDir": str(tmp_path), "blockSize": 30},
            "overlaynet": {"cluster": {"metadata": {"name": "blk"}, "spec": {"clusterCIDR": "10.60.0.0/28"}},
                           "node": {"name": "node-1"}}}

    def in_agent(cid, body=conf):
        environ = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": cid, "CNI_NETNS": "/run/netns/x",
                   "CNI_IFNAME": "eth0", "CNI_PATH": "/x"}
        return answer(ipam_plugin.command, "overlaynet-ipam", environ, json.dumps(body).encode(), in_agent=True)

    try:
        first = ipaddress.ip_interface(json.loads(in_agent("a").stdout)["ips"][0]["address"])
        kept = ipam_plugin._AGENT_STORES[str(tmp_path)][0]
        second = ipaddress.ip_interface(json.loads(in_agent("b").stdout)["ips"][0]["address"])
        assert second.ip == first.ip + 1  # the same block, bottom-up: the kept store saw "a"
        assert ipam_plugin._AGENT_STORES[str(tmp_path)][0] is kept
        for name in os.listdir(tmp_path):  # the state goes; a new one is made
            os.remove(tmp_path / name)
        Store(str(tmp_path)).close()
        assert ipaddress.ip_interface(json.loads(in_agent("c").stdout)["ips"][0]["address"]) == first
        assert ipam_plugin._AGENT_STORES[str(tmp_path)][0] is not kept
        full = {**conf, "ipam": {**conf["ipam"], "blockSize": 26}}  # refused: smaller than one block
        assert json.loads(in_agent("d", full).stdout)["code"] == 7
        store = Store(str(tmp_path))
        assert list(blocks.BlockIPAM(store, "blk", ipaddress.IPv4Network("10.60.0.0/28"), 30).handles()) == ["c.eth0"]
        store.close()
    finally:
        ipam_plugin._drop_kept_stores()
