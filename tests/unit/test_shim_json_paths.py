"""The shim's two JSON paths: CPython's private ``_json`` accelerator (fast) and the json
package (the fallback when the accelerator is not one the shim was checked on). Both must
give the json package's answers, byte for byte, and the fallback must be chosen on its own
when the private API changes or the interpreter is newer than the checked range.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import pytest

from minikubenet.cni import shim

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCS = [
    '{"cniVersion": "1.0.0", "name": "mkn", "type": "minikubenet", "mtu": 1450}',
    '{"a": [1, 2.5, -3e-7, null, true, false, "\\u00e9\\n", {"b": {}}], "c": []}',
    '  [ {"x": "y"} ]\n',
]
MALFORMED = ['{"a": }', '{"a": 1} trailing', '{"a": 1', ""]

PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
from minikubenet.cni import shim
docs, malformed = json.loads(sys.argv[2]), json.loads(sys.argv[3])
out = {"path": shim.JSON_PATH, "loads": [shim.json_loads(d) for d in docs],
       "dumps": [shim.json_dumps(json.loads(d)) for d in docs], "errors": []}
for m in malformed:
    try:
        shim.json_loads(m)
        out["errors"].append(None)
    except ValueError as e:
        out["errors"].append(type(e).__name__)
try:
    shim.json_loads("[" * 100 + "]" * 100)
    out["deep"] = None
except shim.TooDeep:
    out["deep"] = "TooDeep"
print(json.dumps(out))
"""


def run_shim_json(interpreter: str, force_stdlib: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "MINIKUBENET_SHIM_JSON"}
    if force_stdlib:
        env["MINIKUBENET_SHIM_JSON"] = "stdlib"
    # -S as the installed plugin runs (no site-packages); not -I, which would drop the env var
    p = subprocess.run(
        [interpreter, "-S", "-c", PROBE, ROOT, json.dumps(DOCS), json.dumps(MALFORMED)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    return json.loads(p.stdout)


INTERPRETERS = sorted({sys.executable, *(["/usr/bin/python3"] if os.path.exists("/usr/bin/python3") else [])})


@pytest.mark.parametrize("interpreter", INTERPRETERS)
@pytest.mark.parametrize("force_stdlib", [False, True], ids=["c-path", "stdlib-path"])
def test_both_paths_answer_as_the_json_package(interpreter, force_stdlib):
    got = run_shim_json(interpreter, force_stdlib)
    assert got["path"] == ("stdlib" if force_stdlib else "c")
    assert got["loads"] == [json.loads(d) for d in DOCS]
    assert got["dumps"] == [json.dumps(json.loads(d)) for d in DOCS]
    assert got["errors"] == ["JSONDecodeError"] * len(MALFORMED)
    assert got["deep"] == "TooDeep"


def test_an_interpreter_outside_the_checked_range_takes_the_fallback(monkeypatch):
    monkeypatch.setattr(shim, "JSON_C_CHECKED", ((3, 0), (3, 1)))
    assert shim._c_json() is None


def test_a_changed_private_api_takes_the_fallback(monkeypatch):
    # e.g. a future make_encoder with another argument list: TypeError at construction
    def changed(*args):
        raise TypeError("make_encoder() takes exactly 10 arguments")

    fake = types.SimpleNamespace(
        make_scanner=lambda ctx: None,
        make_encoder=changed,
        encode_basestring_ascii=json.encoder.encode_basestring_ascii,
    )
    monkeypatch.setitem(sys.modules, "_json", fake)
    assert shim._c_json() is None


def test_an_accelerator_that_answers_wrongly_takes_the_fallback(monkeypatch):
    fake = types.SimpleNamespace(
        make_scanner=lambda ctx: lambda s, i: ({}, len(s)),
        make_encoder=lambda *a: lambda v, level: iter(["{}"]),
        encode_basestring_ascii=json.encoder.encode_basestring_ascii,
    )
    monkeypatch.setitem(sys.modules, "_json", fake)
    assert shim._c_json() is None
