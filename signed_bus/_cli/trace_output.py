"""``signed-bus trace`` output other than text: a JSON document and a Graphviz graph.

The graph has one node per link (the envelope's digest) and an edge from each parent to the
envelope that named it, so it reads in the direction the data flowed. Every label is record text
made printable first, then quoted for DOT (backslashes and double quotes escaped), so a signed
model name cannot end a label and add nodes, edges or attributes of its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from signed_bus._provenance import iso_ms
from signed_bus._text import printable

if TYPE_CHECKING:
    from signed_bus._provenance import TraceLink, TraceReport

__all__ = ["report_document", "report_dot"]

_COLORS = {"ok": "darkgreen"}


def _link_document(link: TraceLink) -> dict[str, Any]:
    message = link.message
    return {
        "depth": link.depth,
        "digest": link.digest.hex(),
        "status": link.status,
        "ok": link.ok,
        "reason": link.reason,
        "detail": link.detail,
        "child": None if link.child is None else link.child.hex(),
        "position": None
        if link.position is None
        else {
            "topic": link.position.topic,
            "partition": link.position.partition,
            "offset": link.position.offset,
        },
        "issuer": None if message is None else message.issuer,
        "kid": None if message is None else message.kid,
        "model": None if message is None else message.model,
        "created_at": None if message is None else message.created_at,
        "created_at_iso": None if message is None else iso_ms(message.created_at),
        "parents": [] if message is None else [parent.hex() for parent in message.parents],
    }


def report_document(report: TraceReport) -> dict[str, Any]:
    """The trace as one JSON-ready object: ``ok``, ``truncated`` and ``unchecked`` (the walk
    stopped at its link limit with that many parents, at least, not checked), ``links`` (walk
    order, the start first), ``origins``."""
    return {
        "ok": report.ok,
        "truncated": report.truncated,
        "unchecked": report.unchecked,
        "links": [_link_document(link) for link in report.links],
        "origins": [link.digest.hex() for link in report.origins],
    }


def _quoted(text: str) -> str:
    return '"' + printable(text).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _node(digest: bytes) -> str:
    return f'"d{digest.hex()}"'  # hex only: safe as an ID


def report_dot(report: TraceReport) -> str:
    """The trace as a Graphviz digraph (``dot -Tsvg`` renders it)."""
    lines = [
        "digraph provenance {",
        "  rankdir=LR;",
        '  node [shape=box, fontname="monospace"];',
    ]
    for link in report.links:
        rows = [f"#{link.depth} {link.digest.hex()[:16]}"]
        if link.position is not None:
            rows.append(str(link.position))
        if link.message is not None:
            rows.append(f"issuer={link.message.issuer}")
            rows.append(f"model={link.message.model}")
            rows.append(f"created_at={iso_ms(link.message.created_at)}")
        status = "OK" if link.ok else link.status + (f" ({link.reason})" if link.reason else "")
        rows.append(status)
        label = "\\n".join(_quoted(row)[1:-1] for row in rows)
        color = _COLORS.get(link.status, "red")
        lines.append(f'  {_node(link.digest)} [label="{label}", color={color}];')
        if link.child is not None:
            lines.append(f"  {_node(link.digest)} -> {_node(link.child)};")
    if report.truncated:
        note = (
            f"walk STOPPED at the limit of {report.max_links} link(s): at least "
            f"{report.unchecked} parent(s) not checked"
        )
        lines.append(f"  label={_quoted(note)}; labelloc=t; fontcolor=red;")
    lines.append("}")
    return "\n".join(lines) + "\n"
