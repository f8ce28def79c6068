"""calico-ipam semantics of overlaynet.ipam.blocks: blocks, affinity, borrowing, release; the store-backed
allocator under concurrent processes; property tests over random operation sequences."""

from __future__ import annotations

import ipaddress
import multiprocessing

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overlaynet.control.store import Store
from overlaynet.errors import CapacityError, InvalidInput
from overlaynet.ipam import blocks
from overlaynet.ipam.blocks import BlockIPAM, PoolState

N = ipaddress.IPv4Network
A = ipaddress.IPv4Address
POOL = N("10.244.0.0/16")


# --------------------------------------------------------------------------- the pool


def test_fnv32_is_fnv1_like_go_hash_fnv_new32():
    assert blocks.fnv32(b"") == 0x811C9DC5
    assert blocks.fnv32(b"a") == 0x050C5D7E  # FNV-1 (FNV-1a would give 0xe40c292c)
    assert blocks.fnv32(b"foobar") == 0x31F0B262


def test_a_pool_smaller_than_a_block_names_both():
    with pytest.raises(InvalidInput, match=r"IP pool 10\.244\.0\.0/28 is smaller than one block of /26"):
        blocks.check_pool(N("10.244.0.0/28"), 26)


@pytest.mark.parametrize("size", [19, 33, 0])
def test_block_size_outside_20_to_32_is_refused(size):
    with pytest.raises(InvalidInput, match=f"blockSize {size} is out of range 20-32"):
        PoolState(POOL, size)


def test_blocks_of_the_pool():
    assert blocks.block_count(POOL, 26) == 1024
    assert blocks.block_at(POOL, 26, 0) == N("10.244.0.0/26")
    assert blocks.block_at(POOL, 26, 5) == N("10.244.1.64/26")
    assert blocks.block_index(POOL, 26, N("10.244.1.64/26")) == 5
    assert blocks.block_of(POOL, 26, A("10.244.1.100")) == N("10.244.1.64/26")


def test_search_starts_at_a_stable_per_node_index_and_walks_every_block_once():
    start = blocks.search_start(POOL, 26, "node-1")
    assert start == blocks.search_start(POOL, 26, "node-1")
    assert len({blocks.search_start(POOL, 26, f"node-{i}") for i in range(1, 11)}) >= 9
    order = list(blocks.search_order(POOL, 26, "node-1"))
    assert order[0] == blocks.block_at(POOL, 26, start)
    assert sorted(order) == [blocks.block_at(POOL, 26, i) for i in range(1024)]
    assert order[1024 - start] == N("10.244.0.0/26")  # wraps to the pool's first block


# --------------------------------------------------------------------------- allocation


def test_first_address_is_the_bottom_of_the_nodes_seeded_block():
    state = PoolState(POOL)
    ip = state.allocate("node-1", "c1.eth0")
    block = next(blocks.search_order(POOL, 26, "node-1"))
    assert ip == block.network_address  # .0 is usable: the pool is routed as /32s
    assert state.allocate("node-1", "c2.eth0") == block.network_address + 1
    assert state.node_blocks("node-1") == (block,)


def test_allocate_is_idempotent_per_handle():
    state = PoolState(POOL)
    first = state.allocate("node-1", "c1.eth0")
    assert state.allocate("node-1", "c1.eth0") == first
    assert len(state.handles()) == 1


def test_a_second_block_only_when_the_first_is_full():
    state = PoolState(POOL, 26)
    ips = [state.allocate("node-1", f"c{i}.eth0") for i in range(64)]
    assert len(state.node_blocks("node-1")) == 1
    assert len(set(ips)) == 64 and all(ip in state.node_blocks("node-1")[0] for ip in ips)
    ip65 = state.allocate("node-1", "c64.eth0")
    first, second = state.node_blocks("node-1")
    assert ip65 == second.network_address and first != second


def test_borrowing_when_the_pool_is_out_of_blocks():
    state = PoolState(N("10.0.0.0/25"), 26)  # two blocks
    a = state.allocate("node-1", "a.eth0")
    b = state.allocate("node-2", "b.eth0")
    c = state.allocate("node-3", "c.eth0")
    assert state.node_blocks("node-3") == ()
    assert state.borrowed("node-3") == (c,)
    owner = [n for n in ("node-1", "node-2") if any(c in blk for blk in state.node_blocks(n))]
    assert len(owner) == 1
    assert state.borrowed("node-1") == state.borrowed("node-2") == ()
    assert c not in (a, b) and state.host_of(c) == "node-3"


def test_borrowing_when_the_node_holds_its_maximum_of_blocks():
    state = PoolState(N("10.0.0.0/24"), 30, max_blocks_per_host=1)
    state.allocate("node-2", "x.eth0")
    for i in range(4):
        state.allocate("node-1", f"c{i}.eth0")
    ip = state.allocate("node-1", "c4.eth0")
    assert len(state.node_blocks("node-1")) == 1
    assert ip in state.node_blocks("node-2")[0] and state.borrowed("node-1") == (ip,)


def test_strict_affinity_refuses_to_borrow():
    state = PoolState(N("10.0.0.0/26"), 26, strict_affinity=True)
    state.allocate("node-1", "a.eth0")
    with pytest.raises(CapacityError, match='node "node-2": IP pool 10.0.0.0/26 .*strictAffinity forbids borrowing'):
        state.allocate("node-2", "b.eth0")


def test_an_exhausted_pool_says_so():
    state = PoolState(N("10.0.0.0/30"), 30)
    for i in range(4):
        state.allocate("node-1", f"c{i}.eth0")
    with pytest.raises(CapacityError, match=r"all 1 blocks of /30 are claimed.*no block of the pool has a free address"):
        state.allocate("node-2", "x.eth0")


def test_release_makes_the_address_reusable_and_is_idempotent():
    state = PoolState(POOL)
    ips = [state.allocate("node-1", f"c{i}.eth0") for i in range(3)]
    assert state.release("c1.eth0") == ips[1]
    assert state.release("c1.eth0") is None
    assert state.lookup("c1.eth0") is None
    assert state.allocate("node-1", "c9.eth0") == ips[1]


def test_a_leaving_node_frees_empty_blocks_and_keeps_blocks_with_borrowed_addresses():
    state = PoolState(N("10.0.0.0/25"), 26)
    state.allocate("node-1", "a.eth0")
    state.allocate("node-2", "b.eth0")
    borrowed = state.allocate("node-3", "c.eth0")  # from node-1's or node-2's block
    owner = "node-1" if state.node_blocks("node-1") and borrowed in state.node_blocks("node-1")[0] else "node-2"
    other = "node-2" if owner == "node-1" else "node-1"
    owner_block = state.node_blocks(owner)[0]
    state.release("a.eth0" if owner == "node-1" else "b.eth0")
    state.release_node(owner)
    assert state.node_blocks(owner) == ()
    assert owner_block in state.blocks and state.blocks[owner_block].affinity is None
    assert state.borrowed("node-3") == (borrowed,)
    # the block is not claimable while it holds an address...
    assert state.allocate("node-4", "d.eth0") in owner_block  # ...but borrowable
    state.release("d.eth0")
    state.release("c.eth0")
    assert owner_block not in state.blocks  # freed with its last address
    assert state.allocate("node-4", "e.eth0") == owner_block.network_address
    assert state.node_blocks("node-4") == (owner_block,)
    assert state.node_blocks(other)


def test_json_round_trip_and_a_changed_pool_is_refused():
    state = PoolState(N("10.0.0.0/25"), 26)
    for i, node in enumerate(["node-1", "node-2", "node-3"]):
        state.allocate(node, f"c{i}.eth0")
    again = PoolState.from_json(state.to_json(), N("10.0.0.0/25"), 26)
    assert again.to_json() == state.to_json()
    assert again.handles() == state.handles() and again.borrowed("node-3") == state.borrowed("node-3")
    with pytest.raises(InvalidInput, match="blockSize 26.*cannot change"):
        PoolState.from_json(state.to_json(), N("10.0.0.0/25"), 27)


# --------------------------------------------------------------------------- properties


def check_invariants(state: PoolState) -> None:
    handles = state.handles()
    assert len(set(handles.values())) == len(handles), "an address was handed out twice"
    for cidr, block in state.blocks.items():
        assert cidr.prefixlen == state.block_size and cidr.subnet_of(state.pool)
        assert int(cidr.network_address) % cidr.num_addresses == 0, f"{cidr} is not aligned"
        assert block.affinity is not None or block.allocations, f"{cidr}: empty block without affinity kept"
    for node in {block.affinity for block in state.blocks.values()} - {None}:
        assert len(state.node_blocks(node)) <= state.max_blocks_per_host, f"{node} holds too many blocks"
    for handle, ip in handles.items():
        assert ip in state.pool and state.lookup(handle) == ip
    again = PoolState.from_json(state.to_json(), state.pool, state.block_size,
                                max_blocks_per_host=state.max_blocks_per_host)
    assert again.handles() == handles


NODES = ["node-1", "node-2", "node-3"]
# Mostly allocations, some releases, now and then a node leaving; long enough to fill pools.
ops = st.lists(st.tuples(st.sampled_from(["alloc"] * 6 + ["release"] * 2 + ["leave"]),
                         st.sampled_from(NODES), st.integers(0, 40)), min_size=20, max_size=120)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([(N("10.0.0.0/26"), 29), (N("10.0.0.0/27"), 30), (N("10.0.0.0/28"), 28)]),
       st.integers(1, 3), ops)
def test_random_operations_keep_every_invariant(pool_and_size, max_blocks, operations):
    pool, size = pool_and_size
    state = PoolState(pool, size, max_blocks_per_host=max_blocks)
    for op, node, number in operations:
        handle = f"h{number}.eth0"
        if op == "alloc":
            known = state.lookup(handle)
            own_before = state.node_blocks(node)
            full_before = all(state.blocks[b].free_ordinal() is None for b in own_before)
            claimed_before = len(state.blocks)
            try:
                ip = state.allocate(node, handle)
            except CapacityError:
                assert known is None
                continue
            if known is not None:
                assert ip == known
            else:
                own_after = state.node_blocks(node)
                if len(own_after) > len(own_before):
                    assert full_before, "claimed a block while one of its blocks had room"
                if not any(ip in b for b in own_after):
                    assert full_before, "borrowed while its own blocks had room"
                    assert (claimed_before == blocks.block_count(pool, size)
                            or len(own_before) >= max_blocks), "borrowed while it could claim a block"
                    assert ip in state.borrowed(node)
        elif op == "release":
            ip = state.lookup(handle)
            assert state.release(handle) == ip
            assert state.lookup(handle) is None
        else:
            state.release_node(node)
            assert state.node_blocks(node) == ()
        check_invariants(state)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_in_a_full_pool_a_released_address_is_the_next_one_handed_out(data):
    pool, size = N("10.0.0.0/28"), 30  # 4 blocks of 4
    state = PoolState(pool, size)
    count = 0
    while True:
        try:
            state.allocate(data.draw(st.sampled_from(NODES)), f"h{count}.eth0")
        except CapacityError:
            break
        count += 1
    assert count == 16
    victim = f"h{data.draw(st.integers(0, 15))}.eth0"
    freed = state.release(victim)
    assert state.allocate(data.draw(st.sampled_from(NODES + ["node-9"])), "new.eth0") == freed
    check_invariants(state)


# --------------------------------------------------------------------------- the store


def test_block_ipam_persists_in_the_store(tmp_path):
    store = Store(str(tmp_path))
    ipam = BlockIPAM(store, "lab", POOL, 26)
    ip = ipam.allocate("node-1", "abc.eth0")
    assert ipam.allocate("node-1", "abc.eth0") == ip
    other = BlockIPAM(Store(str(tmp_path)), "lab", POOL, 26)
    assert other.lookup("abc.eth0") == ip
    assert other.node_blocks("node-1") == (blocks.block_of(POOL, 26, ip),)
    assert other.borrowed("node-1") == ()
    other.release("abc.eth0")
    other.release("abc.eth0")
    assert ipam.lookup("abc.eth0") is None
    assert BlockIPAM(store, "other-cluster", POOL, 26).node_blocks("node-1") == ()
    ipam.release_node("node-1")
    assert ipam.node_blocks("node-1") == ()


def test_block_ipam_refuses_a_bad_pool(tmp_path):
    with pytest.raises(InvalidInput, match="IP pool 10.0.0.0/27 is smaller than one block of /26"):
        BlockIPAM(Store(str(tmp_path)), "lab", N("10.0.0.0/27"), 26)


def _worker(directory: str, node: str, first: int, count: int, queue) -> None:
    ipam = BlockIPAM(Store(directory), "lab", N("10.0.0.0/24"), 28)
    queue.put([(f"{node}-{i}.eth0", str(ipam.allocate(node, f"{node}-{i}.eth0"))) for i in range(first, first + count)])


def test_concurrent_processes_never_get_one_address_twice(tmp_path):
    Store(str(tmp_path)).close()  # schema and WAL mode in place before the race
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    workers = [ctx.Process(target=_worker, args=(str(tmp_path), f"node-{i % 3}", i * 100, 30, queue))
               for i in range(6)]
    for worker in workers:
        worker.start()
    results = [pair for _ in workers for pair in queue.get(timeout=60)]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    addresses = [ip for _, ip in results]
    assert len(addresses) == 180 and len(set(addresses)) == 180
    state = BlockIPAM(Store(str(tmp_path)), "lab", N("10.0.0.0/24"), 28).state()
    assert {h: str(ip) for h, ip in state.handles().items()} == dict(results)
    check_invariants(state)
