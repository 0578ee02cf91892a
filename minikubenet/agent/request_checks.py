"""What the agent checks in a request from its socket before any work: pure functions.

The socket is root-only, but its client is not necessarily our shim (a confused tool, an
old shim, a hand-written test), and a request that fails half way through ADD leaves a
veth or an IP record behind. So the agent decodes and checks the whole request first,
with the shim's own checks and limits (cni/shim.py: size, nesting, cniVersion, name,
environment, mtu), and only then hands it to the handler. Every failure is a CniError
with the code the shim would have given, which the server sends back as the answer.

A request is ``{"command", "mode", "env", "config", "netnsFd"}`` (see cni/shim.py).
"""

from __future__ import annotations

from minikubenet.cni.shim import (
    ERR_DECODE,
    ERR_INVALID_CONFIG,
    ERR_INVALID_ENVIRONMENT,
    MAX_NESTING,
    MAX_REQUEST_BYTES,
    REQUIRED_ENV,
    CniError,
    check_config,
    check_env,
    check_mtu,
    check_version,
    json_loads,
)

MODES = ("main", "ipam")


def decode_request(raw: bytes) -> dict:
    """The request as a dict; CniError (code 6) if it is too large, too deep, not JSON
    or not an object. The envelope adds one level above the config's own limit."""
    if len(raw) > MAX_REQUEST_BYTES:
        raise CniError(
            ERR_DECODE, "agent could not decode the request", f"the request is larger than {MAX_REQUEST_BYTES} bytes"
        )
    try:
        request = json_loads(raw, MAX_NESTING + 1)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise CniError(ERR_DECODE, "agent could not decode the request", str(e)) from None
    if not isinstance(request, dict):
        raise CniError(
            ERR_DECODE, "agent could not decode the request", f"expected a JSON object, got {type(request).__name__}"
        )
    return request


def check_request(request: dict, node_mtu: int) -> None:
    """The request's shape and the config's required fields, as the shim checks them,
    plus what only the agent knows: the node's pod MTU."""
    command = request.get("command")
    # every verb but VERSION, which the shim answers itself
    if not isinstance(command, str) or command not in REQUIRED_ENV:
        raise CniError(
            ERR_INVALID_ENVIRONMENT, f"unknown CNI_COMMAND: {command!r}", f"the agent serves {', '.join(REQUIRED_ENV)}"
        )
    mode = request.get("mode") or "main"
    if not isinstance(mode, str) or mode not in MODES:
        raise CniError(ERR_INVALID_CONFIG, f"unknown plugin mode {mode!r}")
    env = request.get("env")
    if not (isinstance(env, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())):
        raise CniError(ERR_DECODE, "agent could not decode the request", "env must be an object of strings")
    config = request.get("config")
    if not isinstance(config, dict):
        raise CniError(ERR_DECODE, "agent could not decode the request", "config must be a JSON object")
    if not isinstance(request.get("netnsFd", False), bool):
        raise CniError(ERR_DECODE, "agent could not decode the request", "netnsFd must be true or false")
    check_version(config, command)
    check_config(config, mode)
    check_mtu(config, command)
    check_env(command, env)
    if "prevResult" in config and not isinstance(config["prevResult"], dict):
        raise CniError(ERR_INVALID_CONFIG, "prevResult must be a JSON object", "SPEC §5: a previous plugin's result")
    check_node_mtu(config, command, mode, node_mtu)


def check_node_mtu(config: dict, command: str, mode: str, node_mtu: int) -> None:
    """Our pods get the node's pod MTU (underlay − 50 with VXLAN): a config asking for
    another is refused, not ignored. Larger would stall big packets across the overlay
    (`minikubenet lab mtu-pitfall`); smaller is not something this plugin does. In IPAM
    mode the ``mtu`` belongs to the main plugin, which makes the interfaces."""
    if mode == "main" and command in ("ADD", "CHECK") and "mtu" in config and config["mtu"] != node_mtu:
        raise CniError(
            ERR_INVALID_CONFIG,
            f"mtu {config['mtu']} is not this node's pod MTU {node_mtu}",
            f"minikubenet gives pods the node's MTU (FLANNEL_MTU={node_mtu} in subnet.env); "
            f"remove mtu from the config or set it to {node_mtu}",
        )
