"""Label selectors: which objects a ``podSelector`` or ``namespaceSelector`` picks.

A LabelSelector (apimachinery pkg/apis/meta/v1 ``LabelSelector``) is the AND of its
``matchLabels`` (each ``key: value`` is shorthand for ``key In [value]``) and its
``matchExpressions``; the operators are In, NotIn, Exists and DoesNotExist
(apimachinery pkg/labels/selector.go ``Requirement.Matches``):

    In            the label is present and its value is one of ``values``
    NotIn         the label is absent, or its value is none of ``values``
    Exists        the label is present (``values`` must be empty)
    DoesNotExist  the label is absent (``values`` must be empty)

An empty selector ``{}`` matches everything; an absent one is a different thing and is
the caller's business (an absent ``namespaceSelector`` in a peer means "the policy's
own namespace", not "every namespace").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


class SelectorError(ValueError):
    """A selector that the API server would refuse; the message names the field path."""


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "In":
            return self.key in labels and labels[self.key] in self.values
        if self.operator == "NotIn":
            return self.key not in labels or labels[self.key] not in self.values
        if self.operator == "Exists":
            return self.key in labels
        return self.key not in labels  # DoesNotExist


@dataclass(frozen=True)
class Selector:
    """The AND of its requirements; no requirement at all matches everything."""

    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    @property
    def everything(self) -> bool:
        return not self.requirements

    def canonical(self) -> str:
        """A stable text for the selector (two equal selectors, one text): used to name
        the nftables set of the pods it selects, so policies with one selector share it."""
        return ",".join(
            f"{r.key} {r.operator} {'|'.join(sorted(r.values))}"
            for r in sorted(self.requirements, key=lambda r: (r.key, r.operator, sorted(r.values)))
        )


def parse_selector(doc: Any, path: str) -> Selector:
    """A LabelSelector document -> Selector; SelectorError (with ``path``) if malformed."""
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise SelectorError(f"{path}: must be an object")
    unknown = set(doc) - {"matchLabels", "matchExpressions"}
    if unknown:
        raise SelectorError(f"{path}.{sorted(unknown)[0]}: unknown field")
    reqs: list[Requirement] = []
    labels = doc.get("matchLabels") or {}
    if not isinstance(labels, dict):
        raise SelectorError(f"{path}.matchLabels: must be an object of strings")
    for k, v in labels.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise SelectorError(f"{path}.matchLabels[{k}]: keys and values must be strings")
        reqs.append(Requirement(k, "In", frozenset([v])))
    exprs = doc.get("matchExpressions") or []
    if not isinstance(exprs, list):
        raise SelectorError(f"{path}.matchExpressions: must be a list")
    for i, e in enumerate(exprs):
        where = f"{path}.matchExpressions[{i}]"
        if not isinstance(e, dict):
            raise SelectorError(f"{where}: must be an object")
        key, op, values = e.get("key"), e.get("operator"), e.get("values") or []
        if not isinstance(key, str) or not key:
            raise SelectorError(f"{where}.key: Required value")
        if op not in OPERATORS:
            raise SelectorError(
                f"{where}.operator: Unsupported value: {op!r}: supported values: "
                + ", ".join(f'"{o}"' for o in OPERATORS)
            )
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise SelectorError(f"{where}.values: must be a list of strings")
        if op in ("In", "NotIn") and not values:
            raise SelectorError(f"{where}.values: Required value: must be specified when `operator` is 'In' or 'NotIn'")
        if op in ("Exists", "DoesNotExist") and values:
            raise SelectorError(
                f"{where}.values: Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'"
            )
        reqs.append(Requirement(key, op, frozenset(values)))
    return Selector(tuple(reqs))
