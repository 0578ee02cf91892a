"""A small CRI client: the pod-sandbox calls kubelet makes, over containerd's CRI socket.

There is no crictl here, and none is needed: the CRI is a gRPC API, so the messages
this project uses are declared in ``cri_subset.proto`` (upstream field numbers) and
compiled with grpcio-tools at test time into a scratch dir. RunPodSandbox is where
kubelet's pod networking happens: containerd's CRI plugin creates the namespace and
runs the CNI plugins (``loopback``, then the conflist) with the Kubernetes CNI_ARGS.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time
import uuid

PROTO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cri_subset.proto")


def compile_protos(out_dir: str):
    """(pb2, pb2_grpc) modules compiled from cri_subset.proto into ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{os.path.dirname(PROTO)}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            PROTO,
        ],
        capture_output=True,
        text=True,
    )
    if p.returncode != 0:
        raise RuntimeError(f"protoc failed: {p.stderr}")
    if out_dir not in sys.path:
        sys.path.insert(0, out_dir)
    return importlib.import_module("cri_subset_pb2"), importlib.import_module("cri_subset_pb2_grpc")


class CriClient:
    def __init__(self, socket_path: str, pb, pbg, timeout: float = 60.0):
        import grpc

        self.pb, self.timeout = pb, timeout
        self.channel = grpc.insecure_channel(f"unix://{socket_path}")
        self.rs = pbg.RuntimeServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def version(self):
        return self.rs.Version(self.pb.VersionRequest(version="v1"), timeout=self.timeout)

    def run_pod(self, name: str, namespace: str = "default", port_mappings=()) -> tuple[str, float]:
        """RunPodSandbox; returns (sandbox id, seconds it took)."""
        pb = self.pb
        config = pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=name, namespace=namespace, uid=str(uuid.uuid4())),
            hostname=name,
            port_mappings=[pb.PortMapping(protocol=pb.TCP, container_port=c, host_port=h) for c, h in port_mappings],
        )
        started = time.perf_counter()
        r = self.rs.RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=self.timeout)
        return r.pod_sandbox_id, time.perf_counter() - started

    def pod_ip(self, sandbox_id: str) -> str:
        st = self.rs.PodSandboxStatus(
            self.pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id), timeout=self.timeout
        ).status
        return st.network.ip

    def ready(self, sandbox_id: str) -> bool:
        st = self.rs.PodSandboxStatus(
            self.pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id), timeout=self.timeout
        ).status
        return st.state == self.pb.SANDBOX_READY

    def stop_pod(self, sandbox_id: str) -> None:
        self.rs.StopPodSandbox(self.pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=self.timeout)

    def remove_pod(self, sandbox_id: str) -> None:
        self.rs.RemovePodSandbox(self.pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=self.timeout)

    def pods(self) -> list[str]:
        return [p.id for p in self.rs.ListPodSandbox(self.pb.ListPodSandboxRequest(), timeout=self.timeout).items]
