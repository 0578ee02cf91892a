"""A tiny CNI runtime: what containerd or podman do when they call plugins, in ~100 lines.

The lab, the tests and the benchmarks create pods through this, so our plugin is always
driven exactly as a real runtime drives it (libcni, pkg/invoke and libcni/api.go):

- load a conflist; for each plugin derive its request by injecting ``cniVersion``,
  ``name`` and, from the second plugin on, ``prevResult`` (SPEC §4 "Deriving");
- find the plugin binary named by ``type`` in the CNI bin dirs;
- execute it with a bare environment (``CNI_COMMAND``, ``CNI_CONTAINERID``,
  ``CNI_NETNS``, ``CNI_IFNAME``, ``CNI_ARGS``, ``CNI_PATH``) and the JSON on stdin;
- ADD runs the list in order, DEL in reverse order with the cached ADD result as
  ``prevResult``; a non-zero exit is parsed as the spec's error JSON from stdout.

``node_netns`` runs the plugin inside a node's namespace (``ip netns exec``), as a
runtime on that node would.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field


class CniCallError(Exception):
    def __init__(self, plugin: str, command: str, code: int, msg: str, details: str = "", raw: str = ""):
        super().__init__(f"{plugin} {command} failed with code {code}: {msg}" + (f" ({details})" if details else ""))
        self.plugin, self.command, self.code, self.msg, self.details, self.raw = (
            plugin,
            command,
            code,
            msg,
            details,
            raw,
        )


@dataclass
class CniRuntime:
    conflist: dict
    bin_dirs: list[str]
    node_netns: str | None = None
    results: dict = field(default_factory=dict)  # (container_id, ifname) -> final ADD result

    @classmethod
    def from_file(cls, path: str, bin_dirs: list[str], node_netns: str | None = None) -> CniRuntime:
        with open(path) as f:
            return cls(json.load(f), bin_dirs, node_netns)

    def _find(self, plugin_type: str) -> str:
        for d in self.bin_dirs:
            p = os.path.join(d, plugin_type)
            if os.access(p, os.X_OK):
                return p
        raise FileNotFoundError(f"CNI plugin {plugin_type!r} not found in {':'.join(self.bin_dirs)}")

    def exec_plugin(
        self,
        plugin_conf: dict,
        command: str,
        container_id: str,
        netns: str,
        ifname: str,
        args: dict | None = None,
        timeout: float = 60.0,
    ) -> dict | None:
        env = {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": container_id,
            "CNI_NETNS": netns,
            "CNI_IFNAME": ifname,
            "CNI_PATH": ":".join(self.bin_dirs),
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        }
        if args:
            env["CNI_ARGS"] = ";".join(f"{k}={v}" for k, v in args.items())
        argv = [self._find(plugin_conf["type"])]
        if self.node_netns:
            argv = ["ip", "netns", "exec", self.node_netns] + argv
        p = subprocess.run(argv, input=json.dumps(plugin_conf).encode(), env=env, capture_output=True, timeout=timeout)
        out = p.stdout.decode(errors="replace").strip()
        if p.returncode != 0:
            try:
                err = json.loads(out)
            except ValueError:
                err = {"code": 999, "msg": out or p.stderr.decode(errors="replace").strip()}
            raise CniCallError(
                plugin_conf["type"], command, err.get("code", 999), err.get("msg", ""), err.get("details", ""), out
            )
        return json.loads(out) if out else None

    def _plugin_conf(self, plugin: dict, prev: dict | None) -> dict:
        conf = dict(plugin)
        conf["cniVersion"] = self.conflist["cniVersion"]
        conf["name"] = self.conflist["name"]
        if prev is not None:
            conf["prevResult"] = prev
        return conf

    def add(self, container_id: str, netns: str, ifname: str = "eth0", args: dict | None = None) -> dict:
        prev: dict | None = None
        for plugin in self.conflist["plugins"]:
            prev = self.exec_plugin(self._plugin_conf(plugin, prev), "ADD", container_id, netns, ifname, args)
        assert prev is not None, "a conflist has at least one plugin"
        self.results[(container_id, ifname)] = prev
        return prev

    def delete(self, container_id: str, netns: str, ifname: str = "eth0", args: dict | None = None) -> None:
        prev = self.results.pop((container_id, ifname), None)
        for plugin in reversed(self.conflist["plugins"]):
            self.exec_plugin(self._plugin_conf(plugin, prev), "DEL", container_id, netns, ifname, args)

    def check(self, container_id: str, netns: str, ifname: str = "eth0", args: dict | None = None) -> None:
        prev = self.results.get((container_id, ifname))
        for plugin in self.conflist["plugins"]:
            self.exec_plugin(self._plugin_conf(plugin, prev), "CHECK", container_id, netns, ifname, args)
