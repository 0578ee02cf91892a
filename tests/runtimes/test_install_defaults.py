"""``minikubenet install`` with its default paths, as an operator runs it on a node.

The defaults are the real ones (/opt/cni/bin, /etc/cni/net.d, /var/lib/minikubenet), so
the commands run in a private mount namespace whose /etc, /opt, /var/lib and /run are
overlays on a scratch dir (scratch_ns.py): the host's own directories never change.
"""

from __future__ import annotations

import subprocess
import sys

from tests.runtimes import scratch_ns

SCRIPT = """
set -e
{py} -m minikubenet install --chain portmap
echo "--- again"
{py} -m minikubenet install --chain portmap
echo "--- files"
ls /opt/cni/bin/minikubenet /opt/cni/bin/minikubenet-ipam /etc/cni/net.d/10-minikubenet.conflist
test -f /var/lib/minikubenet/install.json && echo manifest-ok
env -i CNI_COMMAND=VERSION /opt/cni/bin/minikubenet
echo
echo "--- uninstall"
{py} -m minikubenet uninstall
ls -A /opt/cni/bin | grep minikubenet || echo bin-clean
test -e /etc/cni/net.d/10-minikubenet.conflist || echo conf-clean
test -e /var/lib/minikubenet || echo state-clean
"""


def test_install_and_uninstall_with_the_default_paths(tmp_path):
    argv = scratch_ns.private_mounts(str(tmp_path), {}, ["sh", "-ec", SCRIPT.format(py=sys.executable)])
    p = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr + p.stdout
    out = p.stdout
    first, rest = out.split("--- again")
    assert first.count("create") == 3
    assert rest.split("--- files")[0].count("unchanged") == 3
    assert "manifest-ok" in out and '"supportedVersions"' in out
    assert out.count("removed") == 3
    assert "bin-clean" in out and "conf-clean" in out and "state-clean" in out
