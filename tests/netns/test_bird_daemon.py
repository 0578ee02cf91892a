"""linux/bird.py with the real BIRD: a config BIRD refuses is named by its line and the
last good one stays; a good one goes in with ``birdc configure``, not a restart."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess

import pytest

from minikubenet.linux.bird import BirdDaemon, BirdError
from minikubenet.linux.netns import path_of, run_in
from minikubenet.overlay import bird_config
from minikubenet.waiting import wait_until

pytestmark = pytest.mark.skipif(shutil.which("bird") is None, reason="bird2 is not installed (./setup.sh installs it)")

A, N = ipaddress.IPv4Address, ipaddress.IPv4Network


@pytest.fixture
def netns():
    name = "mknbird" + str(id(object()))[-5:]
    subprocess.run(["ip", "netns", "add", name], check=True)
    yield name
    subprocess.run(["ip", "netns", "del", name], check=False)


def conf(daemon, peers=()):
    return bird_config.render(
        A("192.0.2.1"),
        64512,
        N("10.244.1.0/24"),
        bird_config.mesh_peers(A("192.0.2.1"), [A(p) for p in peers], 64512),
        daemon.log_file,
    )


def test_a_refused_config_keeps_the_last_good_one_and_names_the_line(tmp_path):
    d = BirdDaemon(str(tmp_path / "bird"))
    (tmp_path / "bird").mkdir()
    good = conf(d)
    assert d.apply(good)
    with pytest.raises(BirdError, match=r"bird\.conf\.candidate:\d+:\d+"):
        d.check(good.replace("router id 192.0.2.1;", "router id not-an-address;"))
    assert not d.apply(good + "protocol bgp broken {\n")
    assert (tmp_path / "bird" / "bird.conf").read_text() == good


def test_a_running_bird_is_reconfigured_not_restarted(tmp_path, netns):
    d = BirdDaemon(str(tmp_path / "bird"))
    # BIRD runs in a namespace of the test's own (the agent runs it in the node's): its
    # BGP connection attempts to the made-up peer never leave that namespace
    subprocess.run(["ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up"], check=True)
    run_in(path_of(netns), lambda: d.start(conf(d)))
    first = d.pid
    try:
        assert d.running()
        assert d.apply(conf(d, ["192.0.2.2"]))
        assert wait_until(lambda: "node_192_0_2_2" in d.show("protocols"), 5)
        assert d.pid == first  # the same process, reloaded
    finally:
        d.stop()
    assert not d.running()
