"""sysctl knobs, written through /proc/sys (which is per network namespace for net.*)."""

from __future__ import annotations


def path(key: str) -> str:
    """ "net.ipv4.ip_forward" -> /proc/sys/net/ipv4/ip_forward. Keys naming a device
    with a dot in its name (flannel.1) cannot be spelled this way: write the path."""
    return "/proc/sys/" + key.replace(".", "/")


def read(key: str) -> str:
    with open(path(key)) as f:
        return f.read().strip()


def write(key: str, value: str | int) -> None:
    with open(path(key), "w") as f:
        f.write(str(value))
