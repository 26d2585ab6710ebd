"""The summary `amqpy perf` prints for a person (`--json` prints the result
itself)."""

from __future__ import annotations

from typing import Any

_PERCENTILES = ("min", "p50", "p75", "p95", "p99", "p99.9", "max")


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _headline(result: dict[str, Any]) -> str:
    s = result["settings"]
    parts = [
        f"{_plural(s['producers'], 'producer')}, {_plural(s['consumers'], 'consumer')}",
        f"{s['size']:,} B",
    ]
    if s["persistent"]:
        parts.append("persistent")
    if s["confirm"]:
        parts.append(f"confirms (window {s['confirm']})")
    if s["consumers"]:
        if s["autoack"]:
            parts.append("no-ack")
        else:
            acks = "acks" if s["multi_ack"] == 1 else f"an ack per {s['multi_ack']}"
            prefetch = f"prefetch {s['prefetch']}" if s["prefetch"] else "no prefetch"
            parts.append(f"{acks}, {prefetch}")
    if s["rate"]:
        parts.append(f"{s['rate']:g} msg/s per producer")
    return f"amqpy perf: {', '.join(parts)}; {result['elapsed_s']:.1f} s\n"


def table(result: dict[str, Any]) -> str:
    lines = [_headline(result).rstrip("\n"), ""]
    rows: list[tuple[str, str, str, str]] = []
    if result["sent"] is not None:
        sent = result["sent"]
        rows.append(
            (
                "sent",
                f"{sent['messages']:,}",
                f"{sent['msg_per_s']:,}",
                f"{sent['mb_per_s']:.2f}",
            )
        )
        if sent["returned"]:
            rows.append(("returned", f"{sent['returned']:,}", "", ""))
    if result["confirmed"] is not None:
        confirmed = result["confirmed"]
        rows.append(("confirmed", f"{confirmed['messages']:,}", "", ""))
        if confirmed["nacked"]:
            rows.append(("nacked", f"{confirmed['nacked']:,}", "", ""))
    if result["received"] is not None:
        received = result["received"]
        rows.append(
            (
                "received",
                f"{received['messages']:,}",
                f"{received['msg_per_s']:,}",
                f"{received['mb_per_s']:.2f}",
            )
        )
    lines += _columns(("", "messages", "msg/s", "MB/s"), rows)
    latency = result["latency_ms"]
    latency_rows = [
        (name, *(f"{figures[p]:.3f}" for p in _PERCENTILES))
        for name, figures in (
            ("consumer", latency["consumer"]),
            ("confirm", latency["confirm"]),
        )
        if figures is not None
    ]
    if latency_rows:
        lines.append("")
        lines += _columns(("latency ms", *_PERCENTILES), latency_rows)
    cpu = result.get("client_cpu")
    if cpu is not None:
        lines += ["", f"amqpy perf used {cpu['percent']:.0f}% of a CPU core"]
    lines.append("")
    lines += _verdict(result)
    return "\n".join(lines) + "\n"


def _verdict(result: dict[str, Any]) -> list[str]:
    if result["errors"]:
        return ["FAILED", *(f"  {error}" for error in result["errors"])]
    received = result["received"]
    if received is not None and received["expected"] is not None:
        return [
            f"checked: all {received['expected']:,} messages arrived, "
            "intact, in order, no duplicates"
        ]
    if received is not None:
        return [
            f"checked: {received['messages']:,} messages intact, in order, "
            "no duplicates (no producers here: nothing to count against)"
        ]
    if result["queues"]:
        queue = result["queues"][0]
        return [f"checked: queue {queue['name']} gained all {queue['gained']:,}"]
    return ["checked: nothing to check (no consumers)"]


def _columns(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        first = row[0].ljust(widths[0])
        rest = (
            cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)
        )
        return "  ".join((first, *rest)).rstrip()

    return [line(header), *(line(row) for row in rows)]
