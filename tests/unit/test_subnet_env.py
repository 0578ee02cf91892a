"""minikubenet.subnet_env: flannel's subnet.env (reference C.3), rendered, parsed, written atomically."""

import os
from ipaddress import IPv4Network as N

import pytest

from minikubenet import subnet_env
from minikubenet.subnet_env import SubnetEnv

ENV = SubnetEnv(network=N("10.244.0.0/16"), subnet=N("10.244.1.0/24"), mtu=1450, ipmasq=True)

TEXT = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"


def test_render_matches_flannels_file():
    assert ENV.render() == TEXT


@pytest.mark.parametrize(
    "subnet, line",
    [
        ("10.244.1.0/24", "FLANNEL_SUBNET=10.244.1.1/24"),
        ("10.244.0.64/26", "FLANNEL_SUBNET=10.244.0.65/26"),
        ("10.5.52.0/24", "FLANNEL_SUBNET=10.5.52.1/24"),  # flannel's doc example
    ],
)
def test_flannel_subnet_is_the_gateway_with_the_subnet_prefix(subnet, line):
    env = SubnetEnv(N("10.0.0.0/8"), N(subnet), 1450, False)
    assert line in env.render().splitlines()


def test_ipmasq_false_renders_false():
    env = SubnetEnv(N("10.244.0.0/16"), N("10.244.1.0/24"), 1500, False)
    assert "FLANNEL_IPMASQ=false" in env.render().splitlines()
    assert "FLANNEL_MTU=1500" in env.render().splitlines()


@pytest.mark.parametrize(
    "env",
    [
        ENV,
        SubnetEnv(N("10.244.0.0/16"), N("10.244.200.0/24"), 8950, False),
        SubnetEnv(N("172.16.0.0/12"), N("172.16.4.0/22"), 1400, True),
    ],
)
def test_parse_round_trips(env):
    assert subnet_env.parse(env.render()) == env


def test_parse_reads_the_subnet_back_from_the_gateway_address():
    assert subnet_env.parse(TEXT).subnet == N("10.244.1.0/24")


def test_parse_tolerates_comments_blank_lines_spaces_order_and_extra_keys():
    text = (
        "# written by flanneld\n\n"
        "FLANNEL_IPMASQ = TRUE\n"
        "  FLANNEL_MTU=1450  \n"
        "FLANNEL_IPV6_NETWORK=fd00::/48\n"
        "FLANNEL_SUBNET=10.244.1.1/24\n"
        "FLANNEL_NETWORK=10.244.0.0/16\n"
    )
    assert subnet_env.parse(text) == ENV


@pytest.mark.parametrize("drop", ["FLANNEL_NETWORK", "FLANNEL_SUBNET", "FLANNEL_MTU", "FLANNEL_IPMASQ"])
def test_parse_names_a_missing_variable(drop):
    text = "\n".join(line for line in TEXT.splitlines() if not line.startswith(drop + "="))
    with pytest.raises(ValueError, match=drop):
        subnet_env.parse(text)


def test_write_then_read(tmp_path):
    path = str(tmp_path / "subnet.env")
    subnet_env.write(path, ENV)
    with open(path) as f:
        assert f.read() == TEXT
    assert subnet_env.read(path) == ENV


def test_write_creates_the_directory(tmp_path):
    path = str(tmp_path / "run" / "minikubenet" / "subnet.env")
    subnet_env.write(path, ENV)
    assert subnet_env.read(path) == ENV


def test_write_replaces_the_file_atomically_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "subnet.env"
    subnet_env.write(str(path), ENV)
    new = SubnetEnv(N("10.244.0.0/16"), N("10.244.7.0/24"), 1400, False)
    with open(path) as reader:  # a reader that opened the old file...
        subnet_env.write(str(path), new)
        assert reader.read() == TEXT  # ...still sees the whole old file, never a mix
    assert subnet_env.read(str(path)) == new
    assert sorted(os.listdir(tmp_path)) == ["subnet.env"]


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = str(tmp_path / "subnet.env")
    subnet_env.write(path, ENV)

    def no_space(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError):
        subnet_env.write(path, SubnetEnv(N("10.244.0.0/16"), N("10.244.7.0/24"), 1400, False))
    assert subnet_env.read(path) == ENV


def test_a_failed_write_leaves_no_temp_file(tmp_path, monkeypatch):
    path = str(tmp_path / "subnet.env")

    def no_space(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError):
        subnet_env.write(path, ENV)
    assert os.listdir(tmp_path) == []


def test_read_missing_file_is_none(tmp_path):
    assert subnet_env.read(str(tmp_path / "nope" / "subnet.env")) is None


def test_read_a_directory_is_none(tmp_path):
    assert subnet_env.read(str(tmp_path)) is None


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"garbage\n",
        b"\x00\xff\xfe binary \x81",
        b"FLANNEL_NETWORK=10.244.0.0/16\n",  # incomplete
        TEXT.replace("10.244.0.0/16", "ten-two-four-four").encode(),  # bad network
        TEXT.replace("10.244.1.1/24", "10.244.1.1/99").encode(),  # bad subnet
        TEXT.replace("1450", "fourteen-fifty").encode(),  # bad MTU
    ],
)
def test_read_garbage_is_none(tmp_path, content):
    path = tmp_path / "subnet.env"
    path.write_bytes(content)
    assert subnet_env.read(str(path)) is None
