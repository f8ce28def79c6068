"""The runtime side of CNI (libcni's job, what containerd does for the kubelet): run a
network configuration list's plugins for one attachment.

What this module owns (cni.md §1, §6-7):
- finding each plugin's executable on the CNI path (the error names the plugin and every
  directory looked in) and running it with the ``CNI_*`` environment and its request on stdin
  — the plugin object with ``name``, ``cniVersion``, ``prevResult`` and, for the capabilities
  it declares, ``runtimeConfig`` injected (``capabilities`` itself is not sent, as spec 1.0
  says) — inside the node's network namespace when ``exec_netns`` is given
  (the calling thread enters it while the plugin starts, so the child is born there: no
  ``nsenter`` exec in between and no ``preexec_fn``, so callers may use threads);
- ADD in order with ``prevResult`` chaining, stopping at the first error; the final result
  cached as ``<cache_dir>/results/<network>-<containerID>-<ifname>`` (libcni's layout and
  ``cniCacheV1`` document); CHECK in order and DEL in reverse order, each with the cached
  result as ``prevResult``; DEL succeeds without a cache; STATUS; GC (first DEL of cached
  attachments no longer valid, then GC of every plugin, continuing past errors);
- one deliberate difference from libcni: DEL goes on through the remaining plugins after one
  fails (and then raises the first error, keeping the cache for a retry); libcni stops at the
  first error, so a plugin whose DEL always fails would strand every earlier plugin's state;
- turning a plugin's failure into a ``CniError`` carrying its code and message, and, for a
  plugin that crashes, hangs or prints garbage, a message that says so with its stderr tail.

Thread safety: no shared mutable state; calls for different containers may run at once (the
plugins lock their own shared state). Calls for one container must not overlap (cni.md §6).

A failed ADD is followed by a DEL of the whole list (as containerd does after a failed
``SetUpPod``), unless ``add(..., cleanup=False)``; the ADD's error is what is raised.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterable, Mapping

from overlaynet.cni import spec
from overlaynet.errors import CniError

DEFAULT_TIMEOUT = 60.0
STDERR_TAIL = 1500
CACHE_KIND = "cniCacheV1"


def _tail(data: bytes) -> str:
    return data.decode("utf-8", "replace").strip()[-STDERR_TAIL:]


class CniRuntime:
    def __init__(self, conflist: dict | str | bytes, cni_path: list[str], cache_dir: str,
                 exec_netns: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.config = spec.parse_conflist(conflist)
        self.conflist = conflist if isinstance(conflist, dict) else json.loads(conflist)
        self.cni_path = [p for p in cni_path if p]
        self.cache_dir = cache_dir
        self.exec_netns = exec_netns
        self.timeout = timeout

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def version(self) -> str:
        return self.config.cni_version

    # -- plugins ------------------------------------------------------------------------------

    def find_plugin(self, plugin_type: str) -> str:
        for directory in self.cni_path:
            candidate = os.path.join(directory, plugin_type)
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                return candidate
        raise CniError(spec.ERR_PLUGIN, f'network "{self.name}": plugin "{plugin_type}" not found',
                       f"looked in {', '.join(self.cni_path) or '(an empty CNI path)'}")

    def _request(self, plugin: Mapping, prev: dict | None, runtime_config: Mapping | None,
                 extra: Mapping | None = None) -> bytes:
        conf = {k: v for k, v in plugin.items() if k != "capabilities"}
        conf["name"] = self.name
        conf["cniVersion"] = self.version
        caps = plugin.get("capabilities") or {}
        granted = {k: v for k, v in (runtime_config or {}).items() if caps.get(k)}
        if granted:
            conf["runtimeConfig"] = granted
        else:
            conf.pop("runtimeConfig", None)
        if prev is not None:
            conf["prevResult"] = prev
        if extra:
            conf.update(extra)
        return json.dumps(conf).encode()

    def _env(self, command: str, container_id: str = "", netns: str = "", ifname: str = "",
             args: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
        # Our plugins start with `#!/usr/bin/env python3`: let that be the interpreter running
        # this runtime (a virtualenv's, with overlaynet's dependencies), not the system one.
        env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", os.defpath)])
        env["CNI_COMMAND"] = command
        env["CNI_PATH"] = os.pathsep.join(self.cni_path)
        if container_id:
            env["CNI_CONTAINERID"] = container_id
        if netns:
            env["CNI_NETNS"] = netns
        if ifname:
            env["CNI_IFNAME"] = ifname
        if args:
            env["CNI_ARGS"] = spec.format_cni_args(args)
        return env

    def _in_exec_netns(self, who: str) -> contextlib.AbstractContextManager[None]:
        """The calling thread inside ``exec_netns`` (a child it starts is born there), or as is."""
        if not self.exec_netns:
            return contextlib.nullcontext()
        from overlaynet.kernel import netns

        if not netns.exists(self.exec_netns):
            raise CniError(spec.ERR_PLUGIN, f"{who}: network namespace {netns.path(self.exec_netns)} does not exist")
        return netns.inside(self.exec_netns)

    def _exec(self, plugin: Mapping, command: str, env: dict[str, str], stdin: bytes) -> str:
        """Run one plugin; its stdout on success, else a ``CniError`` saying what went wrong."""
        plugin_type = plugin["type"]
        executable = self.find_plugin(plugin_type)
        who = f'network "{self.name}": plugin {plugin_type} {command}'
        try:
            with self._in_exec_netns(who):
                proc = subprocess.run([executable], check=False, input=stdin, capture_output=True, env=env,
                                      timeout=self.timeout, close_fds=True)
        except subprocess.TimeoutExpired as exc:
            raise CniError(spec.ERR_PLUGIN, f"{who}: no answer within {self.timeout:g} s (killed)",
                           _tail(exc.stderr or b"")) from None
        except OSError as exc:
            raise CniError(spec.ERR_PLUGIN, f"{who}: cannot run {executable}: {exc.strerror}") from None
        stdout = proc.stdout.decode("utf-8", "replace")
        if proc.returncode == 0:
            return stdout
        stderr = _tail(proc.stderr)
        if proc.returncode < 0:
            raise CniError(spec.ERR_PLUGIN, f"{who}: killed by signal {-proc.returncode}",
                           stderr or stdout.strip()[-STDERR_TAIL:])
        error = spec.parse_error_document(stdout)
        if error is None:
            shown = stdout.strip()[:STDERR_TAIL]
            parts = [f"stdout: {shown}" if shown else "", f"stderr: {stderr}" if stderr else ""]
            raise CniError(spec.ERR_PLUGIN, f"{who}: failed with exit status {proc.returncode} and no error object",
                           "; ".join(p for p in parts if p) or "no output")
        details = "; ".join(p for p in (error.details, f"stderr: {stderr}" if stderr else "") if p)
        raise CniError(error.code, f"{plugin_type}: {error.msg}", details)

    def _result(self, plugin: Mapping, stdout: str) -> dict:
        who = f'network "{self.name}": plugin {plugin["type"]} ADD'
        try:
            doc = json.loads(stdout)
        except ValueError:
            raise CniError(spec.ERR_PLUGIN, f"{who}: printed garbage instead of a result",
                           stdout.strip()[:STDERR_TAIL] or "(nothing)") from None
        try:
            return spec.convert_result(doc, self.version)
        except CniError as exc:
            raise CniError(spec.ERR_PLUGIN, f"{who}: printed a malformed result: {exc.msg}",
                           stdout.strip()[:STDERR_TAIL]) from None

    # -- the cache ----------------------------------------------------------------------------

    def cache_path(self, container_id: str, ifname: str) -> str:
        return os.path.join(self.cache_dir, "results", f"{self.name}-{container_id}-{ifname}")

    def cached(self, container_id: str, ifname: str) -> dict | None:
        """The cached document of an attachment (``result``, ``cniArgs``, ...), or None."""
        try:
            with open(self.cache_path(container_id, ifname), encoding="utf-8") as handle:
                doc = json.load(handle)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise CniError(spec.ERR_IO, f"cannot read the cached result of {container_id}/{ifname}", str(exc)) from None
        return doc if isinstance(doc, dict) and doc.get("kind") == CACHE_KIND else None

    def cached_result(self, container_id: str, ifname: str) -> dict | None:
        doc = self.cached(container_id, ifname)
        return doc.get("result") if doc else None

    def _write_cache(self, container_id: str, netns: str, ifname: str, args: Mapping[str, str],
                     runtime_config: Mapping | None, result: dict) -> None:
        path = self.cache_path(container_id, ifname)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        doc = {
            "kind": CACHE_KIND,
            "containerId": container_id,
            "config": base64.b64encode(json.dumps(self.conflist).encode()).decode(),
            "ifName": ifname,
            "networkName": self.name,
            "netns": netns,
            "cniArgs": [[k, v] for k, v in args.items()],
            "capabilityArgs": dict(runtime_config or {}),
            "result": result,
        }
        tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(doc, handle)
        os.replace(tmp, path)

    def _drop_cache(self, container_id: str, ifname: str) -> None:
        try:
            os.unlink(self.cache_path(container_id, ifname))
        except FileNotFoundError:
            pass

    def cached_attachments(self) -> list[tuple[str, str]]:
        """(containerID, ifname) of every cached attachment of this network."""
        out: list[tuple[str, str]] = []
        try:
            entries = os.listdir(os.path.join(self.cache_dir, "results"))
        except FileNotFoundError:
            return out
        for entry in entries:
            if not entry.startswith(self.name + "-") or entry.endswith(".tmp"):
                continue
            try:
                with open(os.path.join(self.cache_dir, "results", entry), encoding="utf-8") as handle:
                    doc = json.load(handle)
            except (OSError, ValueError):
                continue
            if isinstance(doc, dict) and doc.get("networkName") == self.name:
                out.append((str(doc.get("containerId")), str(doc.get("ifName"))))
        return sorted(out)

    # -- operations ---------------------------------------------------------------------------

    def add(self, container_id: str, netns_path: str, ifname: str, args: Mapping[str, str] | None = None,
            runtime_config: Mapping | None = None, cleanup: bool = True) -> dict:
        """ADD through the whole list; the final result (in the list's version), cached."""
        args = dict(args or {})
        env = self._env("ADD", container_id, netns_path, ifname, args)
        prev: dict | None = None
        try:
            for plugin in self.config.plugins:
                stdout = self._exec(plugin, "ADD", env, self._request(plugin, prev, runtime_config))
                prev = self._result(plugin, stdout)
        except CniError as exc:
            if cleanup:
                try:
                    self.delete(container_id, netns_path, ifname, args, runtime_config)
                except CniError as del_exc:
                    parts = (exc.details, f"and the DEL after it failed: {del_exc}")
                    raise CniError(exc.code, exc.msg, "; ".join(p for p in parts if p)) from None
            raise
        assert prev is not None
        self._write_cache(container_id, netns_path, ifname, args, runtime_config, prev)
        return prev

    def check(self, container_id: str, netns_path: str, ifname: str, args: Mapping[str, str] | None = None,
              runtime_config: Mapping | None = None) -> None:
        """CHECK in order with the cached result (nothing to do under ``disableCheck``)."""
        if self.config.disable_check:
            return
        cached = self.cached(container_id, ifname)
        if cached is None:
            raise CniError(spec.ERR_PLUGIN, f'network "{self.name}": no cached result for {container_id}/{ifname}',
                           "CHECK is only for attachments that were added")
        args = dict(args) if args is not None else dict(cached.get("cniArgs") or [])
        runtime_config = runtime_config if runtime_config is not None else cached.get("capabilityArgs")
        env = self._env("CHECK", container_id, netns_path, ifname, args)
        for plugin in self.config.plugins:
            self._exec(plugin, "CHECK", env, self._request(plugin, cached["result"], runtime_config))

    def delete(self, container_id: str, netns_path: str | None, ifname: str, args: Mapping[str, str] | None = None,
               runtime_config: Mapping | None = None) -> None:
        """DEL in reverse order with the cached result (if any); the cache goes on success."""
        cached = self.cached(container_id, ifname)
        if args is None:
            args = dict(cached.get("cniArgs") or []) if cached else {}
        if runtime_config is None and cached:
            runtime_config = cached.get("capabilityArgs")
        prev = cached.get("result") if cached else None
        env = self._env("DEL", container_id, netns_path or "", ifname, args)
        errors: list[CniError] = []
        for plugin in reversed(self.config.plugins):
            try:
                self._exec(plugin, "DEL", env, self._request(plugin, prev, runtime_config))
            except CniError as exc:
                errors.append(exc)  # keep going: one broken plugin must not strand the others' state
        if errors:
            first = errors[0]
            more = "; ".join(str(e) for e in errors[1:])
            raise CniError(first.code, first.msg, "; ".join(p for p in (first.details, more) if p))
        self._drop_cache(container_id, ifname)

    def status(self) -> None:
        """STATUS of every plugin (spec 1.1; nothing to ask of an older list)."""
        if spec.parse_version(self.version) < (1, 1, 0):
            return
        env = self._env("STATUS")
        for plugin in self.config.plugins:
            self._exec(plugin, "STATUS", env, self._request(plugin, None, None))

    def gc(self, valid: Iterable[tuple[str, str]]) -> None:
        """Remove every attachment not in ``valid``: DEL of cached ones, then GC of each plugin."""
        valid_set = {(str(cid), str(ifname)) for cid, ifname in valid}
        errors: list[str] = []
        for cid, ifname in self.cached_attachments():
            if (cid, ifname) not in valid_set:
                try:
                    self.delete(cid, None, ifname)
                except CniError as exc:
                    errors.append(f"DEL {cid}/{ifname}: {exc}")
        if spec.parse_version(self.version) >= (1, 1, 0) and not self.config.disable_gc:
            listed = [{"containerID": cid, "ifname": ifname} for cid, ifname in sorted(valid_set)]
            extra = {key: listed for key in spec.VALID_ATTACHMENTS_KEYS}
            env = self._env("GC")
            for plugin in self.config.plugins:
                try:
                    self._exec(plugin, "GC", env, self._request(plugin, None, None, extra))
                except CniError as exc:
                    errors.append(f"GC {plugin['type']}: {exc}")
        if errors:
            raise CniError(spec.ERR_PLUGIN, f'network "{self.name}": GC finished with errors', "; ".join(errors))

