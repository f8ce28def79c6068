"""Calico-like IPAM in blocks (calico-ipam): pure allocation logic and a thin store-backed class.

What this module owns (shared/reference/calico.md §2, faithful to projectcalico/calico
``libcalico-go/lib/ipam/{ipam.go,ipam_block.go,ipam_block_reader_writer.go}``):

- the IP pool (the cluster CIDR) is cut into blocks of ``block_size`` (/26 by default, 20-32);
  a pool smaller than one block is an error;
- a node holds the blocks it claimed (its *affinity*) and takes addresses from them bottom-up:
  ``.0`` is usable, because the whole pool is routed as /32s (no network or broadcast address);
- a node claims a new block only when all of its blocks are full, up to
  ``max_blocks_per_host`` (20, Calico's documented default); the search for an unclaimed block
  starts at a pseudo-random index seeded from the FNV-32 hash of the node's name and walks the
  pool, wrapping at its end (``randomBlockGenerator``/``determineSeed`` in
  ipam_block_reader_writer.go). Calico feeds the hash to Go's math/rand; we feed it to Python's
  ``random.Random``: a different index than Calico's, as stable and as spread out, which is what
  the seed is for (a node keeps finding "its" region; nodes rarely race for one block);
- when a node cannot claim a block (none unclaimed, or it is at its maximum) it **borrows** an
  address from another node's block, walking blocks in the same seeded order, unless
  ``strict_affinity`` forbids it (Calico's ``StrictAffinity``);
- a node that leaves loses its affinities; an empty block is freed at once, a block still
  holding addresses stays, without affinity, until its last address is released.

Each allocation is keyed by a *handle* (``<containerID>.<ifname>``, the CNI attachment key) and
records the node that hosts it, so ``borrowed(node)`` can tell which addresses a node hosts in
blocks it does not own (what ``NodeInfo.borrowed`` and the routed mode's /32 routes need).

``PoolState`` is the pure part: a value with methods, no I/O, fully property-tested.
``BlockIPAM`` keeps one ``PoolState`` per cluster as JSON in the store's ``meta`` table and
read-modify-writes it inside ``store.transaction()`` (``BEGIN IMMEDIATE``): concurrent CNI ADDs
from several processes are serialised by SQLite and never hand out one address twice.

What it never does: touch the kernel, or decide routes (``modes/calico.py`` does, from
``node_blocks`` and ``borrowed``).
"""

from __future__ import annotations

import ipaddress
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

from overlaynet.errors import CapacityError, InvalidInput

DEFAULT_BLOCK_SIZE = 26
MIN_BLOCK_SIZE = 20
MAX_BLOCK_SIZE = 32
DEFAULT_MAX_BLOCKS_PER_HOST = 20
META_KEY = "ipam-blocks"

IPv4Address = ipaddress.IPv4Address
IPv4Network = ipaddress.IPv4Network

_FNV32_OFFSET = 0x811C9DC5
_FNV32_PRIME = 0x01000193


# --------------------------------------------------------------------------- the pool


def check_pool(pool: IPv4Network, block_size: int) -> None:
    """Refuse a block size outside 20-32 or a pool that cannot hold one block."""
    if isinstance(block_size, bool) or not isinstance(block_size, int):
        raise InvalidInput(f"IP pool {pool}: blockSize {block_size!r} is not a whole number")
    if not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE:
        raise InvalidInput(
            f"IP pool {pool}: blockSize {block_size} is out of range {MIN_BLOCK_SIZE}-{MAX_BLOCK_SIZE}")
    if not isinstance(pool, IPv4Network):
        raise InvalidInput(f"IP pool {pool!r}: only IPv4 pools are supported")
    if pool.prefixlen > block_size:
        raise InvalidInput(
            f"IP pool {pool} is smaller than one block of /{block_size} (blockSize {block_size}): "
            f"the pool must be /{block_size} or larger")


def block_count(pool: IPv4Network, block_size: int) -> int:
    return 2 ** (block_size - pool.prefixlen)


def block_at(pool: IPv4Network, block_size: int, index: int) -> IPv4Network:
    return IPv4Network((int(pool.network_address) + index * 2 ** (32 - block_size), block_size))


def block_index(pool: IPv4Network, block_size: int, block: IPv4Network) -> int:
    return (int(block.network_address) - int(pool.network_address)) >> (32 - block_size)


def block_of(pool: IPv4Network, block_size: int, ip: IPv4Address) -> IPv4Network:
    """The block of the pool that contains ``ip``."""
    return IPv4Network((int(ip) >> (32 - block_size) << (32 - block_size), block_size))


def fnv32(data: bytes) -> int:
    """FNV-1 32-bit, as Go's ``hash/fnv.New32`` (multiply, then xor) that Calico uses."""
    h = _FNV32_OFFSET
    for byte in data:
        h = (h * _FNV32_PRIME) & 0xFFFFFFFF
        h ^= byte
    return h


def search_start(pool: IPv4Network, block_size: int, node: str) -> int:
    """The block index where ``node``'s search starts, seeded from FNV-32 of its name."""
    return random.Random(fnv32(node.encode())).randrange(block_count(pool, block_size))


def search_order(pool: IPv4Network, block_size: int, node: str) -> Iterator[IPv4Network]:
    """Every block of the pool, once, from ``node``'s seeded start to the end, then from the start."""
    count = block_count(pool, block_size)
    start = search_start(pool, block_size, node)
    for step in range(count):
        yield block_at(pool, block_size, (start + step) % count)


# --------------------------------------------------------------------------- the state


@dataclass(frozen=True)
class Allocation:
    handle: str
    node: str  # the node that hosts the address (its owner, or a borrower)


@dataclass
class Block:
    cidr: IPv4Network
    affinity: str | None  # the node that claimed it; None after that node left
    allocations: dict[int, Allocation] = field(default_factory=dict)  # ordinal -> allocation

    @property
    def size(self) -> int:
        return self.cidr.num_addresses

    def free_ordinal(self) -> int | None:
        """The lowest free ordinal: addresses are handed out from the bottom of the block."""
        for ordinal in range(self.size):
            if ordinal not in self.allocations:
                return ordinal
        return None

    def address(self, ordinal: int) -> IPv4Address:
        return self.cidr.network_address + ordinal


class PoolState:
    """The IPAM state of one pool: claimed blocks (in claim order) and their allocations.

    Pure: methods change this value only. ``to_json``/``from_json`` round-trip it.
    """

    def __init__(self, pool: IPv4Network, block_size: int = DEFAULT_BLOCK_SIZE, *,
                 max_blocks_per_host: int = DEFAULT_MAX_BLOCKS_PER_HOST, strict_affinity: bool = False):
        check_pool(pool, block_size)
        if max_blocks_per_host < 1:
            raise InvalidInput(f"IP pool {pool}: maxBlocksPerHost {max_blocks_per_host} must be at least 1")
        self.pool = pool
        self.block_size = block_size
        self.max_blocks_per_host = max_blocks_per_host
        self.strict_affinity = strict_affinity
        self.blocks: dict[IPv4Network, Block] = {}
        self._handles: dict[str, tuple[IPv4Network, int]] = {}

    # -- queries ------------------------------------------------------------------------------

    def lookup(self, handle: str) -> IPv4Address | None:
        where = self._handles.get(handle)
        return None if where is None else self.blocks[where[0]].address(where[1])

    def node_blocks(self, node: str) -> tuple[IPv4Network, ...]:
        """The blocks ``node`` holds (affinity), in the order it claimed them."""
        return tuple(cidr for cidr, block in self.blocks.items() if block.affinity == node)

    def borrowed(self, node: str) -> tuple[IPv4Address, ...]:
        """Addresses ``node`` hosts in blocks it does not hold, lowest first."""
        found = [block.address(ordinal)
                 for block in self.blocks.values() if block.affinity != node
                 for ordinal, alloc in block.allocations.items() if alloc.node == node]
        return tuple(sorted(found))

    def handles(self, node: str | None = None) -> dict[str, IPv4Address]:
        """Every allocation (of ``node`` only, if given): handle -> address."""
        out = {}
        for handle, (cidr, ordinal) in self._handles.items():
            block = self.blocks[cidr]
            if node is None or block.allocations[ordinal].node == node:
                out[handle] = block.address(ordinal)
        return out

    def host_of(self, ip: IPv4Address) -> str | None:
        """The node that hosts ``ip``, or None if it is not allocated."""
        block = self.blocks.get(block_of(self.pool, self.block_size, ip))
        if block is None:
            return None
        alloc = block.allocations.get(int(ip) - int(block.cidr.network_address))
        return alloc.node if alloc else None

    # -- changes ------------------------------------------------------------------------------

    def allocate(self, node: str, handle: str) -> IPv4Address:
        """An address for ``handle`` on ``node``; the same address again for a known handle."""
        known = self.lookup(handle)
        if known is not None:
            return known
        # 1. the node's own blocks, in claim order, each from the bottom
        own = [self.blocks[cidr] for cidr in self.node_blocks(node)]
        for block in own:
            ordinal = block.free_ordinal()
            if ordinal is not None:
                return self._assign(block, ordinal, node, handle)
        # 2. claim a new block, if the node may hold another
        if len(own) < self.max_blocks_per_host:
            claimed = self._claim(node)
            if claimed is not None:
                return self._assign(claimed, 0, node, handle)
        # 3. borrow from any block (another node's, or one whose node left)
        if self.strict_affinity:
            raise CapacityError(self._exhausted(node, len(own), "and strictAffinity forbids borrowing"))
        start = search_start(self.pool, self.block_size, node)
        count = block_count(self.pool, self.block_size)
        order = sorted(self.blocks.values(),
                       key=lambda b: (block_index(self.pool, self.block_size, b.cidr) - start) % count)
        for block in order:
            if block.affinity == node:
                continue
            ordinal = block.free_ordinal()
            if ordinal is not None:
                return self._assign(block, ordinal, node, handle)
        raise CapacityError(self._exhausted(node, len(own), "and no block of the pool has a free address"))

    def release(self, handle: str) -> IPv4Address | None:
        """Free ``handle``'s address (None if it had none). A block without affinity that
        becomes empty is freed; a node keeps its own empty blocks, as Calico does."""
        where = self._handles.pop(handle, None)
        if where is None:
            return None
        block = self.blocks[where[0]]
        del block.allocations[where[1]]
        if block.affinity is None and not block.allocations:
            del self.blocks[block.cidr]
        return block.address(where[1])

    def release_node(self, node: str) -> None:
        """``node`` leaves: its affinities go; its empty blocks are freed, blocks that still
        hold addresses stay until their last address is released."""
        for cidr in self.node_blocks(node):
            block = self.blocks[cidr]
            if block.allocations:
                block.affinity = None
            else:
                del self.blocks[cidr]

    # -- internals ----------------------------------------------------------------------------

    def _assign(self, block: Block, ordinal: int, node: str, handle: str) -> IPv4Address:
        block.allocations[ordinal] = Allocation(handle, node)
        self._handles[handle] = (block.cidr, ordinal)
        return block.address(ordinal)

    def _claim(self, node: str) -> Block | None:
        if len(self.blocks) >= block_count(self.pool, self.block_size):
            return None
        for cidr in search_order(self.pool, self.block_size, node):
            if cidr not in self.blocks:
                block = Block(cidr, node)
                self.blocks[cidr] = block
                return block
        return None

    def _exhausted(self, node: str, held: int, why: str) -> str:
        count = block_count(self.pool, self.block_size)
        if held >= self.max_blocks_per_host:
            reason = (f"its {held} blocks are full and it holds the maximum of "
                      f"{self.max_blocks_per_host} (maxBlocksPerHost)")
        else:
            reason = f"its {held} block(s) are full and all {count} blocks of /{self.block_size} are claimed"
        return f'node "{node}": IP pool {self.pool} has no address for it: {reason}, {why}'

    # -- serialisation ------------------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps({
            "pool": str(self.pool),
            "blockSize": self.block_size,
            "blocks": [
                {"cidr": str(b.cidr), "affinity": b.affinity,
                 "allocations": {str(o): [a.handle, a.node] for o, a in sorted(b.allocations.items())}}
                for b in self.blocks.values()
            ],
        }, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | None, pool: IPv4Network, block_size: int, *,
                  max_blocks_per_host: int = DEFAULT_MAX_BLOCKS_PER_HOST,
                  strict_affinity: bool = False) -> PoolState:
        state = cls(pool, block_size, max_blocks_per_host=max_blocks_per_host, strict_affinity=strict_affinity)
        if not text:
            return state
        data = json.loads(text)
        stored_pool, stored_size = IPv4Network(data["pool"]), data["blockSize"]
        if (stored_pool, stored_size) != (pool, block_size) and data["blocks"]:
            raise InvalidInput(
                f"IP pool {pool} blockSize {block_size}: the stored IPAM state is for IP pool "
                f"{stored_pool} blockSize {stored_size}, and a pool's CIDR and block size cannot "
                f"change while addresses are allocated")
        for entry in data["blocks"]:
            block = Block(IPv4Network(entry["cidr"]), entry["affinity"])
            for ordinal_text, (handle, node) in entry["allocations"].items():
                ordinal = int(ordinal_text)
                block.allocations[ordinal] = Allocation(handle, node)
                state._handles[handle] = (block.cidr, ordinal)
            state.blocks[block.cidr] = block
        return state


# --------------------------------------------------------------------------- the store


class BlockIPAM:
    """``PoolState`` of one cluster kept in the store (``meta`` key ``ipam-blocks``).

    Every change is one ``BEGIN IMMEDIATE`` transaction: read the state, change it, write it
    back. SQLite lets one writer in at a time, across processes, so two CNI ADDs racing on
    different processes see each other's allocations.
    """

    def __init__(self, store, cluster: str, pool: IPv4Network, block_size: int = DEFAULT_BLOCK_SIZE, *,
                 max_blocks_per_host: int = DEFAULT_MAX_BLOCKS_PER_HOST, strict_affinity: bool = False):
        check_pool(pool, block_size)
        self.store = store
        self.cluster = cluster
        self.pool = pool
        self.block_size = block_size
        self.max_blocks_per_host = max_blocks_per_host
        self.strict_affinity = strict_affinity

    def state(self) -> PoolState:
        """A snapshot of the current state (read without a transaction)."""
        return PoolState.from_json(
            self.store.get_meta(self.cluster, META_KEY), self.pool, self.block_size,
            max_blocks_per_host=self.max_blocks_per_host, strict_affinity=self.strict_affinity)

    def _write(self, state: PoolState) -> None:
        self.store.set_meta(self.cluster, META_KEY, state.to_json())

    def allocate(self, node: str, handle: str) -> IPv4Address:
        with self.store.transaction():
            state = self.state()
            known = state.lookup(handle)
            if known is not None:
                return known
            ip = state.allocate(node, handle)
            self._write(state)
            return ip

    def release(self, handle: str) -> None:
        with self.store.transaction():
            state = self.state()
            if state.release(handle) is not None:
                self._write(state)

    def release_node(self, node: str) -> None:
        with self.store.transaction():
            state = self.state()
            if state.node_blocks(node):
                state.release_node(node)
                self._write(state)

    def lookup(self, handle: str) -> IPv4Address | None:
        return self.state().lookup(handle)

    def node_blocks(self, node: str) -> tuple[IPv4Network, ...]:
        return self.state().node_blocks(node)

    def borrowed(self, node: str) -> tuple[IPv4Address, ...]:
        return self.state().borrowed(node)

    def handles(self, node: str | None = None) -> dict[str, IPv4Address]:
        return self.state().handles(node)
