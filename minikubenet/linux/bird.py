"""Running BIRD for the bgp backend: one ``bird`` per node, started, supervised,
reconfigured and stopped by the agent.

BIRD runs in the agent's own network namespace (the node's), in the foreground as our
child, with its config, control socket and log under the agent's run dir. A new config
is first checked with ``bird -p`` (parse only); BIRD refusing it keeps the last good one
running, and the error names the line. A good one replaces the file atomically and goes
in with ``birdc configure``: BIRD reloads, keeping every session whose settings did not
change (a restart would drop them all). If BIRD dies, a supervisor thread starts it
again after a second; meanwhile the kernel keeps the learned routes (``persist``) and
the peers keep ours (graceful restart).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import threading

from minikubenet import private_files

log = logging.getLogger(__name__)


class BirdError(Exception):
    pass


RTPROT_BIRD = 12  # the routing protocol number BIRD marks its kernel routes with


def routes_left() -> bool:
    """Did a previous BIRD leave routes in this (the node's) kernel (``persist``)? Then
    this start is a restart, and the new BIRD must recover them instead of pruning them."""
    from minikubenet.linux.netns import node_iproute

    with node_iproute() as ipr:
        return any(r["proto"] == RTPROT_BIRD for r in ipr.get_routes(family=socket.AF_INET))


def installed() -> str | None:
    """Why BIRD cannot run here, or None."""
    for tool in ("bird", "birdc"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (Debian: apt install bird2)"
    return None


class BirdDaemon:
    RESTART_DELAY_S = 1.0

    def __init__(self, run_dir: str):
        self.dir = run_dir
        self.conf = os.path.join(run_dir, "bird.conf")
        self.sock = os.path.join(run_dir, "bird.ctl")
        self.log_file = os.path.join(run_dir, "bird.log")
        self._proc: subprocess.Popen | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._supervisor: threading.Thread | None = None
        self.restarts = 0

    # -- config

    def check(self, text: str) -> None:
        """Raise BirdError with BIRD's own message (it names the line) if it refuses ``text``."""
        candidate = self.conf + ".candidate"
        private_files.write_atomic(candidate, text)
        try:
            p = subprocess.run(["bird", "-p", "-c", candidate], capture_output=True, text=True, timeout=30)
        finally:
            os.unlink(candidate)
        if p.returncode != 0:
            raise BirdError(f"BIRD refuses the config: {(p.stderr or p.stdout).strip()}")

    def apply(self, text: str) -> bool:
        """Check, then install ``text`` and reload BIRD; False (logged) if BIRD refuses it
        and the last good config stays in force."""
        try:
            self.check(text)
        except BirdError as e:
            log.error("%s; keeping the last good config", e)
            return False
        try:
            with open(self.conf) as f:
                if f.read() == text:
                    return True
        except FileNotFoundError:
            pass
        private_files.write_atomic(self.conf, text)
        if self.running():
            p = subprocess.run(["birdc", "-s", self.sock, "configure"], capture_output=True, text=True, timeout=30)
            if p.returncode != 0 or "Reconfigured" not in p.stdout and "Reconfiguration in progress" not in p.stdout:
                log.warning("birdc configure: %s", (p.stdout + p.stderr).strip())
        return True

    # -- the process

    def start(self, text: str, recover: bool = False) -> None:
        """Start BIRD with ``text``. ``recover``: a previous BIRD left routes in the
        kernel (an agent restart): start in graceful-restart recovery (see _spawn)."""
        private_files.make_dir(self.dir)
        self.check(text)
        private_files.write_atomic(self.conf, text)
        self._spawn(recover)
        self._supervisor = threading.Thread(target=self._supervise, name="bird-supervisor", daemon=True)
        self._supervisor.start()

    def _spawn(self, recover: bool) -> None:
        with self._lock:
            with private_files.open_file(self.log_file + ".stderr", "a") as err:
                # -R: start in graceful-restart recovery. The kernel keeps the routes the
                # previous BIRD installed (persist); without -R the new kernel protocol
                # would prune them at its first scan, before any session is back. With it,
                # BIRD waits for its peers' End-of-RIB (bounded by `graceful restart wait`
                # in bird.conf) and the peers keep our routes too (the restart bit). A
                # first start has nothing to keep and does not wait.
                argv = ["bird", "-f", *(["-R"] if recover else []), "-c", self.conf, "-s", self.sock]
                self._proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)
        log.info("bird started (pid %d), config %s, socket %s", self._proc.pid, self.conf, self.sock)

    def _supervise(self) -> None:
        while not self._stopping.is_set():
            proc = self._proc
            if proc is None:
                return
            code = proc.wait()
            if self._stopping.is_set():
                return
            log.warning(
                "bird (pid %d) exited with %s; the kernel keeps its routes (persist); restarting", proc.pid, code
            )
            if self._stopping.wait(self.RESTART_DELAY_S):
                return
            self.restarts += 1
            self._spawn(recover=True)  # its routes are still in the kernel (persist)

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def stop(self, graceful: bool = False) -> None:
        """Stop BIRD. Plainly (SIGTERM to its PID): it closes its sessions with a Cease,
        so the peers withdraw our subnet at once. ``graceful``: ``birdc graceful
        restart`` - BIRD exits without closing them properly, and the peers keep our
        routes as stale for the restart time we advertised (RFC 4724 section 4.2;
        overlay/bird_config.py GRACEFUL_RESTART_S), so an agent that comes back within
        it loses nothing; one that does not is withdrawn when the time runs out. Either
        way ``persist`` keeps the routes BIRD installed in this kernel."""
        self._stopping.set()
        with self._lock:
            proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        if graceful:
            try:
                subprocess.run(["birdc", "-s", self.sock, "graceful", "restart"], capture_output=True, timeout=10)
                proc.wait(timeout=10)
                return
            except (OSError, subprocess.SubprocessError) as e:
                log.warning("BIRD did not stop for a graceful restart (%s): stopping it plainly", e)
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def show(self, what: str) -> str:
        """``birdc show <what>`` (protocols, route ...), for STATUS and the lab report."""
        p = subprocess.run(
            ["birdc", "-s", self.sock, "show", *what.split()], capture_output=True, text=True, timeout=10
        )
        return p.stdout
