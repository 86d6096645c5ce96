"""bench.json (every number) and bench.md (the same as Markdown tables)."""

from __future__ import annotations

import json
from pathlib import Path

TARGETS = {
    "http_overhead_ratio": ("<=", 1.10, "HTTP latency (batching-on server) / in-process latency, one page alone"),
    "served_over_inprocess_b8": (">=", 0.90, "served pages/s (8 clients, batching on) / in-process pages/s (batch 8)"),
    "batching_gain_served_vs_inprocess": (">=", 0.90, "served batching gain / in-process batching gain"),
}


def check_targets(result: dict) -> dict:
    checks = {}
    for key, (op, bound, meaning) in TARGETS.items():
        value = result.get(key)
        met = None if value is None else (value <= bound if op == "<=" else value >= bound)
        checks[key] = {"value": value, "target": f"{op} {bound}", "met": met, "meaning": meaning}
    return checks


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"# Picture Book benchmark ({'quick' if result['quick'] else 'full'} run, tiny profile)",
        "",
        f"Measured {m['date']} on {m['cpu_count']} × {m['cpu_model']}, {m['ram_gb']} GB RAM, "
        f"GPU: {m['gpu'] or 'none'}; "
        f"torch {m['torch']}, diffusers {m['diffusers']}, bentoml {m['bentoml']}, Python {m['python']}; "
        f"commit {m['git_commit'] or '?'}; load average at start {m['load_average_at_start']}, "
        f"at end {m.get('load_average_at_end')}; "
        f"took {result['duration_s']:.0f} s.",
        "",
        f"Request shape everywhere: {result['request_shape']}.",
        "",
        "## Throughput (pages/s)",
        "",
        "| | 1 | 2 | 4 | 8 |",
        "| --- | --- | --- | --- | --- |",
        "| in-process, batch size | "
        + " | ".join(_fmt(result["inprocess_pages_per_s"].get(str(b))) for b in (1, 2, 4, 8))
        + " |",
    ]
    for config in ("batching_on", "batching_off"):
        served = result["served_pages_per_s"][config]
        lines.append(
            f"| served, {config.replace('_', ' ')}, clients | "
            + " | ".join(_fmt(served.get(str(c))) for c in (1, 2, 4, 8))
            + " |"
        )
    lines += [
        "",
        "| served | clients | pages | failures | wall s | pages/s | median latency ms | mean batch size |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for config, detail in result["served_details"].items():
        for clients, row in detail.get("by_clients", {}).items():
            lines.append(
                f"| {config} | {clients} | {row['pages']} | {row['failures']} | {_fmt(row['wall_s'], 1)} | "
                f"{_fmt(row['pages_per_s'])} | {_fmt(row['median_latency_ms'], 0)} | {_fmt(row['mean_batch_size'])} |"
            )
    lines += [
        "",
        "## Ratios and targets",
        "",
        "| metric | value | target | met | meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    for key, check in result["targets"].items():
        met = {True: "yes", False: "**no**", None: "–"}[check["met"]]
        lines.append(f"| `{key}` | {_fmt(check['value'])} | {check['target']} | {met} | {check['meaning']} |")
    lines += [
        f"| `batching_gain_inprocess` | {_fmt(result['batching_gain_inprocess'])} | | | in-process batch 8 / batch 1 |",
        f"| `batching_gain_served` | {_fmt(result['batching_gain_served'])} | | "
        "| served 8 clients, batching on / off |",
        f"| `http_overhead_ratio_no_batcher` | {_fmt(result['http_overhead_ratio_no_batcher'])} | | | "
        "HTTP latency (batching-off server) / in-process latency, one page alone |",
        "",
        f"One page alone (medians, alternating): in-process {_fmt(result['inprocess_latency_ms'], 0)} ms, "
        f"over HTTP {_fmt(result['http_latency_ms'], 0)} ms with the batcher, "
        f"{_fmt(result['http_latency_no_batcher_ms'], 0)} ms without. Where the time goes (medians, ms; the "
        "pipeline part is the `timings_ms` the model service reports, the rest is HTTP, JSON, PNG coding, the "
        "front service and any batcher wait):",
        "",
        "| side | wall | in the pipeline | outside it |",
        "| --- | --- | --- | --- |",
        *(
            f"| {side} | {_fmt(result['latency_medians_ms'][side], 0)} | "
            f"{_fmt(parts['pipeline_ms'], 0)} | {_fmt(parts['outside_pipeline_ms'], 0)} |"
            for side, parts in result["latency_breakdown_ms"].items()
        ),
        "",
        "## Latency by number of characters (in-process, one page, median ms)",
        "",
        "| characters | " + " | ".join(str(k) for k in result["latency_by_characters_ms"]) + " |",
        "| --- |" + " --- |" * len(result["latency_by_characters_ms"]),
        "| ms | " + " | ".join(_fmt(v, 0) for v in result["latency_by_characters_ms"].values()) + " |",
        "",
        "## By page size (in-process)",
        "",
        "| size | one page, median ms | batch-8 ÷ batch-1 pages/s |",
        "| --- | --- | --- |",
    ]
    for size, ms in result["latency_by_size_ms"].items():
        gain = result["inprocess_batch_gain_by_size"].get(str(size))
        lines.append(f"| {size}×{size} | {_fmt(ms, 0)} | {_fmt(gain)} |")
    lines += [
        "",
        "## Start-up and memory (served)",
        "",
        "| server | start → /readyz 200, s | peak RSS of the process tree, MB | processes |",
        "| --- | --- | --- | --- |",
    ]
    for config, detail in result["served_details"].items():
        lines.append(
            f"| {config} | {_fmt(detail.get('ready_s'), 1)} | {_fmt(detail.get('peak_rss_mb'), 0)} | "
            f"{_fmt(detail.get('processes'))} |"
        )
    lines += ["", "## Server configurations", ""]
    for config, detail in result["served_details"].items():
        lines.append(f"- {config}: {detail.get('mode', '?')}")
        if detail.get("note"):
            lines.append(f"  - note: {detail['note']}")
        if detail.get("error"):
            lines.append(f"  - **failed**: {detail['error']}")
    return "\n".join(lines) + "\n"


def write(result: dict, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "bench.json", out_dir / "bench.md"
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    md_path.write_text(markdown(result))
    return json_path, md_path
