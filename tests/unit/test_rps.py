"""minikubenet.linux.rps: CPU masks in sysfs's spelling, written to every receive queue."""

from __future__ import annotations

import pytest

from minikubenet.linux import rps


@pytest.mark.parametrize(
    "cpus, mask",
    [
        ([], "0"),
        ([0], "1"),
        ([1], "2"),
        (range(1, 8), "fe"),
        (range(1, 32), "fffffffe"),
        (range(0, 36), "f,ffffffff"),
        ([32], "1,00000000"),
    ],
)
def test_cpu_masks_are_written_as_the_kernel_parses_them(cpus, mask):
    assert rps.cpu_mask(cpus) == mask


def test_the_lab_mask_leaves_cpu_0_to_the_sender():
    assert rps.all_but_first_cpu([0, 1]) == "2"
    assert rps.all_but_first_cpu([3, 0, 1, 2]) == "e"
    assert rps.all_but_first_cpu([2, 5]) == "20"  # a cpuset: the first usable CPU sends
    assert rps.all_but_first_cpu([0]) is None


@pytest.mark.parametrize("bad", ["xyz", "2,", ",2", "123456789", "-1"])
def test_a_bad_mask_is_refused_with_an_example(bad):
    with pytest.raises(rps.RpsError, match="e.g. 2"):
        rps.check_mask(bad)


def test_off_means_no_steering():
    assert rps.check_mask("off") == rps.check_mask("") == "0"
    assert rps.check_mask("f,ffffffff") == "f,ffffffff"


def test_every_receive_queue_gets_the_mask(tmp_path):
    for q in ("rx-0", "rx-1", "tx-0"):
        (tmp_path / "veth1" / "queues" / q).mkdir(parents=True)
        (tmp_path / "veth1" / "queues" / q / ("rps_cpus" if q.startswith("rx") else "xps_cpus")).write_text("0\n")
    assert rps.set_rps_cpus("veth1", "2", sysfs=str(tmp_path)) == 2
    assert (tmp_path / "veth1" / "queues" / "rx-1" / "rps_cpus").read_text() == "2"
    assert (tmp_path / "veth1" / "queues" / "tx-0" / "xps_cpus").read_text() == "0\n"


def test_a_device_that_is_not_there_is_named(tmp_path):
    with pytest.raises(rps.RpsError, match="nosuch: no receive queues"):
        rps.set_rps_cpus("nosuch", "2", sysfs=str(tmp_path))
