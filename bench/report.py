"""What a run leaves behind: a table for people, ``results.json``, BENCHMARKS.md's figures."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any

import msgspec
import zmq

from bench.harness import Result

BEGIN = "<!-- bench:begin (written by `make bench`; edit outside these markers) -->"
END = "<!-- bench:end -->"


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "msgspec": msgspec.__version__,
        "kernel": platform.release(),
    }


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.3g}"


def rows(results: list[Result]) -> list[list[str]]:
    out = []
    for r in results:
        p = r.params
        if "skipped" in p:
            verdict = "skipped: " + str(p["skipped"])
        elif "met" in p:
            verdict = ("met" if p["met"] else "MISSED") + f" ({p['target']})"
        else:
            verdict = ""
        if p.get("note"):
            verdict = (verdict + "; " if verdict else "") + str(p["note"])
        out.append(
            [
                r.name,
                f"{_fmt(r.value)} {r.unit}",
                r.reference or "",
                _fmt(r.reference_value),
                _fmt(r.ratio),
                verdict,
            ]
        )
    return out


HEADER = ["figure", "value", "reference", "ref value", "ratio", "target"]


def table(results: list[Result]) -> str:
    """A plain-text table for the terminal."""
    body = rows(results)
    widths = [max(len(h), *(len(r[i][:60]) for r in body)) for i, h in enumerate(HEADER)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(HEADER, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for r in body:
        lines.append("  ".join(c[:60].ljust(w) for c, w in zip(r, widths, strict=True)))
    return "\n".join(lines)


def markdown(results: list[Result], info: dict[str, Any], notes: list[str], mode: str) -> str:
    lines = [
        f"Run: `make {mode}` on {info['cores']} cores, {info['cpu']}; Python {info['python']},"
        f" pyzmq {info['pyzmq']} (libzmq {info['libzmq']}), msgspec {info['msgspec']},"
        f" kernel {info['kernel']}"
        + (f", Redis {info['redis']}" if info.get("redis") else "")
        + f"; {info.get('seconds', 0):.0f} s.",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
    ]
    for r in rows(results):
        lines.append("| " + " | ".join(c.replace("|", "/") for c in r) + " |")
    if notes:
        lines += ["", "Notes from this run:", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines)


def write_json(path: Path, results: list[Result]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_bytes(msgspec.json.format(msgspec.json.encode(results), indent=2) + b"\n")
    os.replace(tmp, path)


def refresh_markdown(path: Path, block: str) -> None:
    """Replace the figures between the markers; the prose around them stays."""
    text = path.read_text() if path.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text = text.rstrip() + f"\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{BEGIN}\n{block}\n{END}{tail}")


# The charts drawn from a run: file name, title, x label, y label, log x. A result
# belongs to one by ``params.chart`` and gives its point as ``params.x`` and its value,
# on the line ``params.series`` (a scenario module adds a chart by adding a line here).
CHARTS = {
    "claims_vs_held": (
        "BENCHMARKS-claims-vs-held.png",
        "Claim round trip against items held (fsync everysec)",
        "items held",
        "round trip (us)",
        True,
    ),
    "ingest_vs_senders": (
        "BENCHMARKS-ingest-vs-senders.png",
        "Unbatched heartbeat ingest against sender processes",
        "sender processes (one item per message)",
        "messages / s",
        False,
    ),
}


def chart_series(results: list[Result]) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """{chart: {series: sorted (x, value)}} from the results that name a chart."""
    out: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for r in results:
        p = r.params
        if r.value is None or "chart" not in p or "series" not in p:
            continue
        out.setdefault(str(p["chart"]), {}).setdefault(str(p["series"]), []).append(
            (float(p["x"]), float(r.value))
        )
    for lines in out.values():
        for points in lines.values():
            points.sort()
    return out


def draw_charts(results: list[Result], directory: Path) -> list[Path]:
    """One PNG per chart with points in this run; [] when matplotlib is missing."""
    data = chart_series(results)
    if not data:
        return []
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("charts: matplotlib is missing (pip install -e '.[bench]'); none drawn")
        return []
    directory.mkdir(parents=True, exist_ok=True)
    drawn = []
    for chart, lines in data.items():
        name, title, xlabel, ylabel, logx = CHARTS[chart]
        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
        for series, points in sorted(lines.items()):
            xs, ys = zip(*points, strict=True)
            style = "--" if "reference" in series or "Redis" in series else "-"
            ax.plot(xs, ys, style, marker="o", label=series)
        if logx:
            ax.set_xscale("log")
        else:
            ax.set_xticks(sorted({x for points in lines.values() for x, _ in points}))
        ax.set_ylim(bottom=0)
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = directory / name
        fig.savefig(path)
        plt.close(fig)
        drawn.append(path)
    return drawn


def validate(data: Any) -> None:
    """Raise ValueError unless ``data`` is a list of result objects (the smoke test's check)."""
    if not isinstance(data, list) or not data:
        raise ValueError("results.json must be a non-empty list")
    keys = set(Result.__struct_fields__)
    for r in data:
        if not isinstance(r, dict) or set(r) != keys:
            raise ValueError(f"bad result {r!r}; expected keys {sorted(keys)}")
    msgspec.convert(data, list[Result])


if __name__ == "__main__":
    print(machine(), file=sys.stderr)
