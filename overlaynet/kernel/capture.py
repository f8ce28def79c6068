"""``tcpdump`` inside one named namespace, its pcap kept: what ``overlaynet capture`` runs.

What this module owns: ``capture(netns, interface, ...)``, which runs ``ip netns exec <netns>
tcpdump -i <interface> -U -w - [-c N] [filter]`` (an argv list, never a shell; the filter is one
argument, which tcpdump joins as it joins several), reads the pcap stream tcpdump writes to its
stdout, counts the packets as they arrive (for the caller's progress) and returns the bytes.
tcpdump writes to a pipe, not to a file, so neither its privilege drop (``-Z``) nor an
AppArmor profile decides where a user's ``-w FILE`` may go; the caller writes the file.

It stops after ``count`` packets (tcpdump's ``-c``), at ``timeout`` seconds (SIGINT: tcpdump
then flushes what it has), or on Ctrl-C (the terminal sends SIGINT to both). What it never
does: decode packets (``tools.capture`` does) or capture outside the namespace it is given.
"""

from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

from overlaynet.errors import HostError, InvalidInput, KernelError
from overlaynet.kernel import netns as netns_mod

PCAP_HEADER = 24  # the global header of a pcap file
RECORD_HEADER = 16  # ts_sec, ts_usec, incl_len, orig_len
_START_TIMEOUT = 10.0  # seconds tcpdump may take to open the interface


@dataclass(frozen=True)
class Captured:
    pcap: bytes
    packets: int
    seconds: float
    stopped_by: str  # "count", "timeout" or "interrupt"


def count_records(data: bytes) -> int:
    """How many whole packet records a (possibly still growing) pcap stream holds."""
    if len(data) < PCAP_HEADER:
        return 0
    order = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    offset, found = PCAP_HEADER, 0
    while offset + RECORD_HEADER <= len(data):
        (length,) = struct.unpack_from(order + "I", data, offset + 8)
        if offset + RECORD_HEADER + length > len(data):
            break
        offset += RECORD_HEADER + length
        found += 1
    return found


def capture(netns: str, interface: str, count: int, timeout: float, bpf_filter: str | None,
            on_ready: Callable[[], None] = lambda: None,
            on_progress: Callable[[int, float], None] = lambda packets, seconds: None) -> Captured:
    """Capture until ``count`` packets (0: no limit), ``timeout`` seconds or Ctrl-C.
    ``on_ready`` is called once tcpdump listens (its "listening on" line), ``on_progress``
    about ten times a second with the packets so far and the seconds since it listens."""
    netns_mod.require(netns)
    tcpdump = shutil.which("tcpdump") or shutil.which("tcpdump", path="/usr/sbin:/sbin")
    if tcpdump is None:
        raise HostError("capture needs tcpdump: apt-get install -y tcpdump")
    # --immediate-mode: each packet as it arrives (TPACKET_V3 otherwise hands them over in blocks, and
    # a block still open at Ctrl-C is lost); -U: each packet written to the pipe at once.
    argv = ["ip", "netns", "exec", netns, tcpdump, "-i", interface, "--immediate-mode", "-U", "-w", "-", "-s", "262144"]
    if count:
        argv += ["-c", str(count)]
    if bpf_filter:
        argv.append(bpf_filter)
    try:
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as exc:
        raise HostError(f"cannot run tcpdump: {exc.strerror}") from None
    chunks: list[bytes] = []
    errors: list[str] = []
    listening = threading.Event()
    reader = threading.Thread(target=_read_all, args=(process.stdout, chunks), daemon=True)
    reader.start()
    watcher = threading.Thread(target=_watch_stderr, args=(process.stderr, errors, listening), daemon=True)
    watcher.start()
    started, stopped_by = time.monotonic(), "count"
    try:
        while process.poll() is None and not listening.wait(0.05):
            if time.monotonic() - started >= _START_TIMEOUT:
                break
        if listening.is_set():
            on_ready()
        started = time.monotonic()
        while process.poll() is None:
            elapsed = time.monotonic() - started
            if elapsed >= timeout:
                process.send_signal(signal.SIGINT)
                stopped_by = "timeout"
                break
            on_progress(count_records(b"".join(chunks)), elapsed)
            time.sleep(0.1)
    except KeyboardInterrupt:
        stopped_by = "interrupt"
        process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    reader.join(timeout=5)
    watcher.join(timeout=5)
    data = b"".join(chunks)
    if not listening.is_set() or (process.returncode not in (0, -signal.SIGINT) and not data):
        _refuse(netns, interface, bpf_filter, "\n".join(errors))
    return Captured(data, count_records(data), time.monotonic() - started, stopped_by)


def _read_all(stream: IO[bytes], chunks: list[bytes]) -> None:
    while True:
        chunk = os.read(stream.fileno(), 65536)
        if not chunk:
            return
        chunks.append(chunk)


def _watch_stderr(stream: IO[bytes], lines: list[str], listening: threading.Event) -> None:
    for raw in stream:
        line = raw.decode(errors="replace").rstrip()
        lines.append(line)
        if "listening on" in line:
            listening.set()


def _refuse(netns: str, interface: str, bpf_filter: str | None, errors: str) -> None:
    lines = [line.removeprefix("tcpdump: ") for line in errors.splitlines()
             if line.strip() and not line.startswith(("tcpdump: listening", "listening on"))]
    message = "; ".join(lines) or "tcpdump failed"
    if bpf_filter and ("syntax error" in message or "expression" in message):
        raise InvalidInput(f'capture --filter "{bpf_filter}": {message}')
    raise KernelError(f'netns "{netns}": tcpdump -i {interface}: {message}')
