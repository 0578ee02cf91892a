"""The conformance table (docs/conformance.md), generated from test results.

Tests that exercise a CNI verb through a runtime wrap the exercise in
``case(verb, runtime, cni_version, what)``: the case is recorded as passed when the
block completes and as failed when it raises. Recording is on when the environment
variable ``MINIKUBENET_CONFORMANCE_LOG`` names a file (one JSON object per line);
otherwise ``case`` just runs the block. Then::

    MINIKUBENET_CONFORMANCE_LOG=/tmp/conf.jsonl .venv/bin/python -m pytest tests/netns/test_cni11.py tests/runtimes
    .venv/bin/python -m tests.runtimes.conformance /tmp/conf.jsonl > docs/conformance.md

The table has one row per verb and one column per (runtime, cniVersion) seen in the
log; a cell counts the cases that passed, and says which failed.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import sys

LOG_ENV = "MINIKUBENET_CONFORMANCE_LOG"
VERBS = ("VERSION", "ADD", "DEL", "CHECK", "GC", "STATUS")

# What each runtime is, for the table's legend.
RUNTIMES = {
    "containerd-cri": "containerd 1.6 CRI plugin (the kubelet path), driven over gRPC (RunPodSandbox, "
    "StopPodSandbox, RemovePodSandbox)",
    "ctr": "`ctr run --cni` (containerd 1.6's client; go-cni in the client process)",
    "podman": "podman 4.3, CNI backend",
    "libcni-style": "minikubenet.cni.runtime.CniRuntime: a libcni-style driver that sends every verb, "
    "GC and STATUS included (no runtime packaged for Debian 12 sends those)",
    "bridge+ipam": "the reference `bridge` plugin (Debian 1.1.1) delegating to `minikubenet-ipam`",
}


def _log_path() -> str | None:
    return os.environ.get(LOG_ENV) or None


def record(
    verb: str, runtime: str, cni_version: str, what: str, passed: bool, detail: str = "", refusal: bool = False
) -> None:
    path = _log_path()
    if not path:
        return
    line = {
        "verb": verb,
        "runtime": runtime,
        "cniVersion": cni_version,
        "case": what,
        "passed": passed,
        "refusal": refusal,
        "detail": detail[:300],
        "time": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")


def measurement(what: str, text: str, figures: dict) -> None:
    """A figure measured during the run (shown under the table, not counted in it)."""
    path = _log_path()
    if not path:
        return
    line = {
        "measurement": what,
        "text": text,
        "figures": figures,
        "time": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")


@contextlib.contextmanager
def case(verb: str, runtime: str, cni_version: str, what: str, refusal: bool = False):
    """Record the block as one case. ``refusal``: the case shows the runtime refusing this
    combination cleanly (shown as such in the table, not as support)."""
    try:
        yield
    except BaseException as e:
        record(verb, runtime, cni_version, what, False, f"{type(e).__name__}: {e}", refusal)
        raise
    record(verb, runtime, cni_version, what, True, refusal=refusal)


# -- rendering -------------------------------------------------------------------------------------------


def load(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _version_key(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in v.split("."))


def render(rows: list[dict]) -> str:
    measurements = [r for r in rows if "measurement" in r]
    rows = [r for r in rows if "verb" in r]
    columns = sorted(
        {(r["runtime"], r["cniVersion"]) for r in rows},
        key=lambda c: (list(RUNTIMES).index(c[0]) if c[0] in RUNTIMES else 99, _version_key(c[1])),
    )
    cells: dict[tuple, list[dict]] = {}
    for r in rows:
        cells.setdefault((r["verb"], r["runtime"], r["cniVersion"]), []).append(r)
    when = max((r["time"] for r in rows + measurements), default="")
    out = [
        "# CNI conformance: verb × runtime × cniVersion",
        "",
        f"Generated from the test run of {when} by `tests/runtimes/conformance.py` (not written by hand). "
        "Each cell counts the test cases that drove that verb through that runtime with that cniVersion "
        "and passed; `—` means no case (the runtime does not send the verb, or the version was not run); "
        "🚫 means the combination must be refused (the runtime's libcni predates that cniVersion, or the "
        "verb is newer than the config's cniVersion) and the test checks that it fails cleanly, leaving nothing.",
        "",
        "Regenerate:",
        "",
        "```",
        f"{LOG_ENV}=/tmp/conf.jsonl .venv/bin/python -m pytest tests/netns/test_cni11.py tests/runtimes",
        ".venv/bin/python -m tests.runtimes.conformance /tmp/conf.jsonl > docs/conformance.md",
        "```",
        "",
    ]
    out.append("| verb | " + " | ".join(f"{rt}<br>{v}" for rt, v in columns) + " |")
    out.append("|---|" + "---|" * len(columns))
    for verb in VERBS:
        line = [f"**{verb}**"]
        for rt, v in columns:
            got = cells.get((verb, rt, v), [])
            ok = sum(r["passed"] for r in got)
            if not got:
                line.append("—")
            elif ok == len(got) and all(r.get("refusal") for r in got):
                line.append("🚫 refused")
            elif ok == len(got):
                line.append(f"✅ {ok}")
            else:
                line.append(f"❌ {ok}/{len(got)}")
        out.append("| " + " | ".join(line) + " |")
    out += ["", "Runtimes:", ""]
    out += [f"- **{rt}**: {RUNTIMES.get(rt, rt)}" for rt in dict.fromkeys(c[0] for c in columns)]
    if measurements:
        out += ["", "## Measured in the same run", ""]
        out += [f"- {m['measurement']}: {m['text']}" for m in measurements]
    out += ["", "## Cases", ""]
    for (verb, rt, v), got in sorted(
        cells.items(), key=lambda kv: (VERBS.index(kv[0][0]) if kv[0][0] in VERBS else 99, kv[0][1], kv[0][2])
    ):
        seen = set()
        for r in got:
            if (r["case"], r["passed"]) in seen:
                continue
            seen.add((r["case"], r["passed"]))
            mark = ("🚫" if r.get("refusal") else "✅") if r["passed"] else "❌"
            detail = f" — {r['detail']}" if r["detail"] else ""
            out.append(f"- {mark} {verb} · {rt} · {v}: {r['case']}{detail}")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tests.runtimes.conformance CONFORMANCE_LOG.jsonl > docs/conformance.md")
    sys.stdout.write(render(load(sys.argv[1])))
