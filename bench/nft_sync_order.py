#!/usr/bin/env python3
"""Where the time of a full nftables sync goes (issue 13 item 7): the same ruleset fed
to ``nft -f`` in different shapes, in a throwaway namespace, alternating rounds.

    as-is       what the syncer writes: one ``add element`` command per map element
    elem-last   the same commands, all elements after all chains and rules
    grouped     elements last, one ``add element <map> { e1, e2, ... }`` per map
    two-tx      chains and rules in one transaction, all elements in a second one
    staged      what the syncer applies above 1 500 service ports: NftPlan.render_staged's
                transactions (the table's objects; 500 ports' chains per transaction; the
                fixed part, every element and the stale chains)
    no-flush    as-is without ``flush chain`` for the (new) per-service chains
    no-anon     (for the evidence only, not a valid ruleset) numgen vmaps replaced by a goto
    named       each numgen vmap a named map (same semantics, not kube-proxy's layout)

Every variant leaves the kernel with the same table (checked by counting ``nft list``
lines). A namespace ``mknnftorder<pid>`` is made and removed (also on failure).

    sudo .venv/bin/python -m bench.nft_sync_order --sizes 2000,4000 --repeat 3
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import time

from bench.services import CLUSTER_CIDR, SERVICE_NET, cluster


def _plan(n: int):
    from minikubenet.proxy.nft_render import plan_nft

    services, endpoints = cluster(n)
    flat = {pk: eps for by_port in endpoints.values() for pk, eps in by_port.items()}
    return plan_nft(services.values(), flat, (), CLUSTER_CIDR, service_cidr=str(SERVICE_NET))


def render(n: int) -> str:
    return _plan(n).render()


def staged(n: int) -> list[str]:
    """What the syncer applies for a large full sync: NftPlan.render_staged's transactions."""
    return _plan(n).render_staged()


_ELEMENT = re.compile(r"^add element (\S+ \S+) (\S+) \{ (.*) \}$")


def _split(text: str) -> tuple[list[str], list[str]]:
    lines = text.splitlines()
    return [x for x in lines if not x.startswith("add element")], [x for x in lines if x.startswith("add element")]


def elements_last(text: str) -> str:
    """The same commands, every element after every chain and rule."""
    objects, elements = _split(text)
    return "\n".join(objects + elements) + "\n"


def _group(elements: list[str]) -> list[str]:
    by_map: dict[tuple[str, str], list[str]] = {}
    for line in elements:
        m = _ELEMENT.match(line)
        assert m, line
        by_map.setdefault((m[1], m[2]), []).append(m[3])
    return [f"add element {t} {name} {{ {', '.join(es)} }}" for (t, name), es in by_map.items()]


def grouped(text: str) -> str:
    """Elements last, one add-element command per map."""
    objects, elements = _split(text)
    return "\n".join(objects + _group(elements)) + "\n"


def no_new_chain_flush(text: str) -> str:
    """Without ``flush chain`` for the per-service chains (right for chains the table
    does not have yet: a syncer that remembers what it wrote knows which)."""
    return "\n".join(x for x in text.splitlines() if not (x.startswith("flush chain") and "/" in x)) + "\n"


_NUMGEN = re.compile(r"numgen random mod \d+ vmap \{ 0 : (goto \S+)[^}]*\}")


def no_anonymous_maps(text: str) -> str:
    """NOT a valid proxy (one endpoint only): each ``numgen ... vmap { ... }`` becomes its
    first ``goto``, to see what the anonymous maps (one per service) cost."""
    return _NUMGEN.sub(lambda m: m[1], text)


_NUMGEN_FULL = re.compile(r"^add rule (\S+ \S+) (\S+) numgen random mod (\d+) vmap \{ (.*) \}$")


def named_maps(text: str) -> str:
    """Each service's anonymous ``numgen`` vmap becomes a named map ``lb-<i>`` (same
    semantics): the kernel then need not find a free ``__map%d`` name per service."""
    out, i = [], 0
    for line in text.splitlines():
        m = _NUMGEN_FULL.match(line)
        if m:
            table, chain, mod, elements = m[1], m[2], m[3], m[4]
            name = f"lb-{i}"
            i += 1
            out.append(f"add map {table} {name} {{ typeof numgen random mod {mod} : verdict ; }}")
            out.append(f"add element {table} {name} {{ {elements} }}")
            out.append(f"add rule {table} {chain} numgen random mod {mod} vmap @{name}")
        else:
            out.append(line)
    return "\n".join(out) + "\n"


def two_transactions(text: str) -> tuple[str, str]:
    objects, elements = _split(text)
    return "\n".join(objects) + "\n", "\n".join(_group(elements)) + "\n"


CPU: dict[str, list[float]] = {}


def nft(ns: str, text: str, name: str = "") -> float:
    """Wall time; user and system CPU of the nft process go to CPU[name]."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    p = subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=text, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(p.stderr[:2000])
    elapsed = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU.setdefault(name + " user", []).append(after.ru_utime - before.ru_utime)
    CPU.setdefault(name + " sys", []).append(after.ru_stime - before.ru_stime)
    return elapsed


def fresh(ns: str) -> None:
    subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    subprocess.run(["ip", "netns", "add", ns], check=True)


def listing_size(ns: str) -> int:
    out = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "ruleset"], capture_output=True, text=True).stdout
    return len(out.splitlines())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="2000,4000")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="only as-is, staged, no-anon and named")
    args = p.parse_args(argv)
    ns = f"mknnftorder{os.getpid()}"
    try:
        for n in (int(x) for x in args.sizes.split(",")):
            text = render(n)
            variants = (
                {
                    "as-is": [text],
                    "staged": staged(n),
                    "no-anon": [no_anonymous_maps(text)],
                    "named": [named_maps(text)],
                }
                if args.quick
                else {
                    "as-is": [text],
                    "staged": staged(n),
                    "elem-last": [elements_last(text)],
                    "grouped": [grouped(text)],
                    "two-tx": list(two_transactions(text)),
                    "no-flush": [no_new_chain_flush(text)],
                    "no-anon": [no_anonymous_maps(text)],
                    "named": [named_maps(text)],
                }
            )
            times: dict[str, list[float]] = {k: [] for k in variants}
            sizes = {}
            for r in range(args.repeat):
                order = list(variants) if r % 2 == 0 else list(reversed(variants))
                for name in order:
                    fresh(ns)
                    times[name].append(sum(nft(ns, t, f"{n} {name} tx") for t in variants[name]))
                    # CPU per round (a staged variant is several nft processes)
                    for kind in ("user", "sys"):
                        per_tx = CPU.pop(f"{n} {name} tx {kind}")
                        CPU.setdefault(f"{n} {name} {kind}", []).append(sum(per_tx))
                    sizes[name] = listing_size(ns)
            base = statistics.median(times["as-is"])
            for name, ts in times.items():
                med = statistics.median(ts)
                print(
                    f"N={n:<6} {name:8} median {med * 1000:8.0f} ms  (spread {min(ts) * 1000:.0f}-"
                    f"{max(ts) * 1000:.0f}; {med / base:.2f}x as-is; listing {sizes[name]} lines; "
                    f"nft user {statistics.median(CPU[f'{n} {name} user']) * 1000:.0f} ms, "
                    f"sys {statistics.median(CPU[f'{n} {name} sys']) * 1000:.0f} ms)",
                    flush=True,
                )
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
