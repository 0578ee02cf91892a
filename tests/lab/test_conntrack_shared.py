"""The netns half of the seed's conntrack experiment (bench/conntrack_shared.py) on a
small lab, so the one-command experiment cannot rot: every node's metrics show the
host's one limit (read-only in the node), one hash table, and entries rising on every
node together. The slab comparison is printed, not asserted: other labs on the machine
move the host's slab too.
"""

from __future__ import annotations

from bench.conntrack_shared import report, run
from tests.conftest import running_lab


def test_every_node_draws_on_the_hosts_one_conntrack_table(lab_root):
    with running_lab(lab_root, nodes=2, pods_per_node=1, proxy=False) as lab:
        r = run(lab, connections=50)
    text, findings = report(r)
    said = " ".join(findings)
    assert f"one limit: every node's limit metric is the host's nf_conntrack_max ({r['host_max']})" in said
    assert "read-only (0444) inside every node" in said
    assert "one hash table" in said
    assert "every node's entries rose together" in said, text
