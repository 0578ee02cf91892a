"""A node's policy plan as ``iptables-restore`` text (filter table).

    FORWARD -> MKN-POLICY                              (inserted at the top, commented)
    INPUT   -> MKN-POLICY                              (likewise: a pod's egress to its own node)
      ctstate RELATED,ESTABLISHED  -> RETURN           replies and the rest of allowed connections
      -s <pod>  -> MKN-PE-<hash>   one per local pod isolated for egress
      -d <pod>  -> MKN-PI-<hash>   one per local pod isolated for ingress
    MKN-PI-<hash> (MKN-PE- alike)
      clear mark bit 0x10000
      -> MKN-NP-<hash>             one per policy isolating the pod; a matching rule sets the bit
      bit set -> RETURN
      DROP                         "ns/pod ingress: isolated by ns/a, ns/b"
    MKN-NP-<hash>                  one rule per atom (plan.py), comment "ns/name ingress rule N"

The chains only RETURN or DROP, never ACCEPT, so whatever else FORWARD holds (the
proxy's KUBE-FORWARD, a host firewall) still decides about allowed traffic. Packets are
judged in FORWARD, i.e. after the proxy's DNAT in PREROUTING: a connection to a
ClusterIP is judged on the real endpoint. Traffic from the node itself (kubelet probes)
leaves through OUTPUT, never FORWARD, so it always passes. A pod's packets to its own
node's addresses go to INPUT, not FORWARD; the same chain is jumped to from INPUT so a
pod's egress policy judges them too, as Calico applies workload egress policy before
the host's (its ingress part matches pod addresses, which INPUT never sees). Pods of one node talk across
the bridge cni0; the kernel's br_netfilter (``net.bridge.bridge-nf-call-iptables=1``)
hands those bridged packets to FORWARD too (the daemon makes sure it is on).

This rendering grows with pods x policies (one jump per isolating policy per pod); the
nftables one does not (nft_render.py).
"""

from __future__ import annotations

from minikubenet.policy import naming
from minikubenet.policy.plan import DIRECTIONS, Atom, NodePlan

ALLOW_MARK = "0x10000"
JUMP_COMMENT = "minikubenet network policy"
JUMP_ARGS = ["-m", "comment", "--comment", JUMP_COMMENT, "-j", naming.POLICY_CHAIN]
HOOKS = ("FORWARD", "INPUT")  # the built-in chains that jump to ours, each at its top


def _q(text: str) -> str:
    return '"' + text.replace('"', "'") + '"'


def _atom_args(atom: Atom, direction: str) -> str:
    args = []
    if atom.peer is not None:
        args.append(("-s " if direction == "Ingress" else "-d ") + atom.peer)
    if atom.target is not None:
        args.append(f"-d {atom.target}/32")
    if atom.protocol is not None:
        proto = atom.protocol.lower()
        args.append(f"-p {proto}")
        if atom.ports is not None and atom.ports != (1, 65535):
            lo, hi = atom.ports
            args.append(f"-m {proto} --dport {lo}" + (f":{hi}" if hi != lo else ""))
    return " ".join(args)


def chains(plan: NodePlan) -> dict[str, list[str]]:
    """Every chain of ours -> its rules (``-A`` lines), MKN-POLICY first."""
    out: dict[str, list[str]] = {
        naming.POLICY_CHAIN: [f"-A {naming.POLICY_CHAIN} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"]
    }
    for direction in reversed(DIRECTIONS):  # egress of the sender first, then ingress
        flag = "-s" if direction == "Egress" else "-d"
        for pod, keys in sorted(plan.isolated[direction].items(), key=lambda kv: kv[0].key):
            chain = naming.pod_chain(pod.key, direction)
            out[naming.POLICY_CHAIN].append(
                f"-A {naming.POLICY_CHAIN} {flag} {pod.ip}/32 -m comment --comment "
                f"{_q(pod.key + ' ' + direction.lower())} -j {chain}"
            )
            rules = [f"-A {chain} -j MARK --set-xmark 0x0/{ALLOW_MARK}"]
            rules += [f"-A {chain} -m comment --comment {_q(k)} -j {naming.policy_chain(k, direction)}" for k in keys]
            rules.append(f"-A {chain} -m mark --mark {ALLOW_MARK}/{ALLOW_MARK} -j RETURN")
            rules.append(
                f"-A {chain} -m comment --comment "
                f"{_q(f'{pod.key} {direction.lower()} isolated by {chr(44).join(keys)}: drop')} -j DROP"
            )
            out[chain] = rules
    for pp in plan.policies:
        chain = naming.policy_chain(pp.key, pp.direction)
        rules = []
        for rule in pp.rules:
            comment = _q(f"{pp.key} {pp.direction.lower()} rule {rule.index}")
            for atom in rule.atoms:
                match = _atom_args(atom, pp.direction)
                rules.append(
                    f"-A {chain} {match + ' ' if match else ''}-m comment --comment {comment} "
                    f"-j MARK --set-xmark {ALLOW_MARK}/{ALLOW_MARK}"
                )
        out[chain] = rules
    return out


def render(
    table: dict[str, list[str]],
    write: set[str] | None = None,
    delete: tuple[str, ...] = (),
    jump: bool | tuple[str, ...] = False,
    move_jump: bool | tuple[str, ...] = False,
) -> str:
    """``iptables-restore --noflush`` text writing the chains ``write`` (all when None),
    deleting ``delete`` and, with ``jump``, inserting the jumps from FORWARD and INPUT at
    their top (``move_jump``: they exist lower down and are deleted there first). Either
    may name the hooks it means (a tuple of HOOKS); True means all of them.

    Why at the top: the agent's MINIKUBENET-FWD (masquerade.py) and the proxy's
    KUBE-FORWARD ACCEPT pod traffic in FORWARD; a rule above ours that accepts would
    bypass every policy. Our chain only RETURNs or DROPs, so being first takes nothing
    from the others."""
    names = [c for c in table if write is None or c in write]
    lines = ["*filter"] + [f":{c} - [0:0]" for c in names + list(delete)]
    for c in names:
        lines += table[c]
    spec = " ".join(_q(a) if " " in a else a for a in JUMP_ARGS)
    moved = HOOKS if move_jump is True else move_jump or ()
    inserted = HOOKS if jump is True else jump or ()
    for hook in HOOKS:
        if hook in moved:
            lines.append(f"-D {hook} " + spec)
        if hook in inserted or hook in moved:
            lines.append(f"-I {hook} 1 " + spec)
    lines += [f"-X {c}" for c in delete]
    return "\n".join(lines + ["COMMIT"]) + "\n"


def render_cleanup(present: set[str]) -> str:
    ours = sorted(c for c in present if naming.is_ours(c))
    return render({}, set(), tuple(ours)) if ours else ""
