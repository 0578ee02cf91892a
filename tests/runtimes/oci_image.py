"""A container image without a registry: a busybox rootfs packed as an OCI image layout.

``ctr image import`` and ``podman import`` accept this; nothing is pulled. The rootfs is
Debian's ``busybox-static`` binary plus one symlink per applet the tests run (an
image must contain every command that is exec'd in it).

An OCI image layout is a tar of content-addressed blobs: one layer (a tar of the
rootfs), one config (the command, the env, the layer's digest), one manifest (config
+ layers), and ``index.json`` naming the manifest with the image's reference.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile

BUSYBOX = "/bin/busybox"
APPLETS = ("sh", "ip", "ping", "sleep", "cat", "wget", "nc", "httpd", "echo", "hostname", "ls", "mkdir", "true")


WWW_TEXT = "hello-from-the-pod\n"  # /www/index.html, for `httpd -h /www` (a sandbox's root is read-only)


def make_rootfs(path: str) -> str:
    os.makedirs(os.path.join(path, "bin"), exist_ok=True)
    for d in ("etc", "proc", "sys", "dev", "tmp", "www"):
        os.makedirs(os.path.join(path, d), exist_ok=True)
    with open(os.path.join(path, "www", "index.html"), "w") as f:
        f.write(WWW_TEXT)
    shutil.copy2(BUSYBOX, os.path.join(path, "bin", "busybox"))
    for applet in APPLETS:
        link = os.path.join(path, "bin", applet)
        if not os.path.lexists(link):
            os.symlink("busybox", link)
    return path


def _digest(blob: bytes) -> str:
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def _layer(rootfs: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name in sorted(os.listdir(rootfs)):
            t.add(os.path.join(rootfs, name), arcname=name)
    return buf.getvalue()


def make_oci_tar(rootfs: str, out: str, ref: str, cmd: list[str]) -> str:
    layer = _layer(rootfs)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": ["PATH=/bin"], "Cmd": cmd},
            "rootfs": {"type": "layers", "diff_ids": [_digest(layer)]},
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": _digest(config),
                "size": len(config),
            },
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": _digest(layer), "size": len(layer)}
            ],
        }
    ).encode()
    index = json.dumps(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": _digest(manifest),
                    "size": len(manifest),
                    "annotations": {
                        "io.containerd.image.name": ref,
                        "org.opencontainers.image.ref.name": ref.rsplit(":", 1)[-1],
                    },
                }
            ],
        }
    ).encode()
    with tarfile.open(out, "w") as t:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))

        add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        add("index.json", index)
        for blob in (layer, config, manifest):
            add("blobs/sha256/" + hashlib.sha256(blob).hexdigest(), blob)
    return out


def make_rootfs_tar(rootfs: str, out: str) -> str:
    """A plain rootfs tarball, for ``podman import``."""
    with tarfile.open(out, "w") as t:
        for name in sorted(os.listdir(rootfs)):
            t.add(os.path.join(rootfs, name), arcname=name)
    return out
