"""parse_cni_args: CNI_ARGS is "K=V;K2=V2" (reference A.2, A.3 "CNI_ARGS convention")."""

import pytest

from minikubenet.agent.cni_handler import parse_cni_args


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", {}),
        (None, {}),
        ("IgnoreUnknown=1", {"IgnoreUnknown": "1"}),
        # what kubelet / containerd send for a pod
        (
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=3f9a1c0de",
            {
                "IgnoreUnknown": "1",
                "K8S_POD_NAMESPACE": "default",
                "K8S_POD_NAME": "web-0",
                "K8S_POD_INFRA_CONTAINER_ID": "3f9a1c0de",
            },
        ),
        ("IP=10.244.1.42", {"IP": "10.244.1.42"}),
        ("IP=10.244.1.42/24", {"IP": "10.244.1.42/24"}),
        ("A=1;", {"A": "1"}),  # trailing separator
        (";;A=1;;B=2", {"A": "1", "B": "2"}),  # empty pairs
        (" A = 1 ; B=2 ", {"A": "1", "B": "2"}),  # surrounding whitespace
        ("A=", {"A": ""}),  # empty value
        ("A=b=c", {"A": "b=c"}),  # only the first '=' splits
        ("garbage;A=1", {"A": "1"}),  # a part without '=' is ignored
        ("A=1;A=2", {"A": "2"}),  # the last one wins
        ("MAC=aa:bb:cc:dd:ee:ff", {"MAC": "aa:bb:cc:dd:ee:ff"}),
    ],
)
def test_parse_cni_args(text, expected):
    assert parse_cni_args(text) == expected
