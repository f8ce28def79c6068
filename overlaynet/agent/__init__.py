"""The per-cluster agent: one background process that serves every pod's test server and runs probes.

``overlaynet up`` starts it (``client.start_agent``), ``overlaynet down`` stops it
(``client.stop_agent``, which finds it by its command line even after the caller lost its
pid); the kubelet tells it what each pod serves (``AgentClient.serve``) and ``verify`` asks
it to probe (``AgentClient.probe``).

- ``server``: the process: one asyncio event loop, a JSON-lines control protocol on a unix
  socket, the registry of served keys.
- ``testserver``: the agnhost-netexec-like HTTP and UDP server, as pure protocol functions
  plus the per-key sockets opened inside each pod's netns.
- ``reachability``: TCP, UDP and ICMP probes from inside a source netns, thousands at a time.
- ``client``: start, find and stop the process; ``AgentClient`` speaks the protocol.
- ``watcher`` and ``guardian``: the self-heal loop's watch over the kernel, and over the agent.

The agent process keeps its imports light (no pyroute2, no scapy): a 1000-pod cluster is
one interpreter holding 2000 sockets. This package's ``__init__`` imports nothing, so
``python -m overlaynet.agent`` pays only for what the process uses.
"""

__all__ = ["client", "guardian", "prober", "reachability", "server", "testserver", "watcher"]
