"""results.json, results.md (markdown tables) and results.png (samples/s per scenario)."""

from __future__ import annotations

import json
import os
import platform

import psutil
import torch

COLUMNS = [("runner", "runner"), ("samples", "samples"), ("seconds", "seconds"),
           ("samples_per_s", "samples/s"),
           ("mb_per_s", "MB/s"), ("ttfb_s", "first batch s"), ("peak_rss_mb", "peak RSS MB"),
           ("cpu_s_per_sample", "CPU µs/sample"), ("bytes_read", "bytes read"),
           ("ratio_vs_baseline", "vs baseline"), ("note", "note")]


def hardware() -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "load_avg_1m": round(os.getloadavg()[0], 2), "gpu": gpu, "python": platform.python_version(), "torch": torch.__version__,
            "page_cache": "warm: every file read once before timing (no cold pass: dropping "
                          "caches needs root and a quiet machine)"}


def write_json(results: dict, out: str) -> str:
    path = os.path.join(out, "results.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=1)
    return path


def _cell(key: str, value) -> str:
    if value is None or value == "":
        return "–"
    if key == "cpu_s_per_sample":
        return f"{value * 1e6:.1f}"
    if key == "bytes_read":
        return f"{value / 1e6:.2f} MB"
    if key == "ratio_vs_baseline":
        return f"{value:.2f}x"
    if isinstance(value, float):
        return f"{value:,.3f}" if value < 10 else f"{value:,.0f}"
    return str(value)


def _extra(row: dict) -> str:
    parts = []
    if row.get("worker_peak_rss_mb"):
        parts.append(f"workers' peak RSS {row['worker_peak_rss_mb']:,.0f} MB")
    if row.get("peak_pss_mb"):
        parts.append(f"peak PSS {row['peak_pss_mb']:,.0f} MB")
    if "bytes_ratio" in row:
        parts.append(f"bytes {row['bytes_ratio']:.1%} of full scan")
    for k, v in (row.get("stats") or {}).items():
        parts.append(f"{k}={v}")
    for k in ("labels_per_batch", "wait_fraction", "h2d_gbps", "pin_then_copy_h2d_gbps", "plain_pinned_h2d_gbps",
              "versions", "mds_convert_s", "steady_samples_per_s", "requests", "bytes_served"):
        if k in row:
            parts.append(f"{k}={row[k]}")
    return "; ".join(parts)


def _stored(p: dict) -> str:
    from .datasets import image_shape

    source = p.get("image_source") or p["image_size"]
    w, h = image_shape(source, source == p["image_size"])
    return f"stored at {w}x{h} px"


def _headers(scenario: str) -> list[str]:
    """The column headers; `feed` counts batches, not samples (a simulated source of batches)."""
    heads = [h for _, h in COLUMNS]
    if scenario == "feed":
        heads = [h.replace("samples", "batches").replace("/sample", "/batch") for h in heads]
    return heads


def _built(results: dict) -> str:
    if results.get("build_s") is None:  # interrupted while the data were being built
        return "- data: not ready (the run was interrupted while building them)"
    return (f"- data built in {results['build_s']:.1f} s (0 = reused from the cache); WebDataset "
            f"tars: {results['webdataset']}")


def markdown(results: dict) -> str:
    hw, p = results["hardware"], results["params"]
    lines = ["# sparkfeed bench results", "",
             f"- hardware: {hw['cpu']}, {hw['cores']} cores, {hw['memory_gb']} GiB RAM, GPU: {hw['gpu']}, "
             f"load average {hw['load_avg_1m']} when the timings began (other work on the machine)",
             f"- page cache: {hw['page_cache']}",
             f"- params: {p['samples']:,} tabular rows, {p['images']:,} JPEG images "
             f"{_stored(p)} (decoded and centre-cropped to {p['image_size']} px), batch "
             f"{p['batch_size']}, {p['workers']} workers for every loader, median of {p['repeats']} "
             f"repeat(s)" + (f" (more, back to back, while a runner's runs add up to under "
                             f"{p['min_seconds']:g} s)" if p.get("min_seconds") else ""),
             _built(results), ""]
    if results.get("command"):
        lines[-1:] = [f"- rerun with: `{results['command']}`", ""]
    if results.get("interrupted"):
        lines[-1:] = [f"- **{results['interrupted']}** (Ctrl-C): the scenarios below finished", ""]
    for name, rows in results["scenarios"].items():
        lines += [f"## {name}", "", "| " + " | ".join(_headers(name)) + " |",
                  "|" + "---|" * len(COLUMNS)]
        for r in rows:
            note = "; ".join(x for x in (r.get("note"), _extra(r)) if x)
            cells = [_cell(k, note if k == "note" else r.get(k)) for k, _ in COLUMNS]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        baseline = (results.get("baselines") or {}).get(name)
        base_row = next((r for r in rows if r.get("baseline")), None)
        if baseline and base_row is None:
            lines += [f"No `vs baseline` figures: the baseline row, `{baseline}`, was not run "
                      f"(`--runners` left it out).", ""]
        elif base_row is not None and not base_row.get("samples_per_s"):
            # before, a skipped or failed baseline left every `vs baseline` cell empty unexplained
            lines += [f"No `vs baseline` figures: the baseline row, `{base_row['runner']}`, has no "
                      f"rate ({base_row.get('note') or 'no samples'}).", ""]
        summary = (results.get("summaries") or {}).get(name)
        if summary:
            lines += [summary, ""]
    return "\n".join(lines)


def write_markdown(results: dict, out: str) -> str:
    path = os.path.join(out, "results.md")
    with open(path, "w") as f:
        f.write(markdown(results))
    return path


_PLOT_COLUMNS = 3  # scenarios per row of the plot: a row of ten was too wide to read


def write_png(results: dict, out: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = {k: [r for r in v if r["samples_per_s"]] for k, v in results["scenarios"].items()}
    scenarios = {k: [r for r in v if not r["runner"].startswith("plan ")] for k, v in scenarios.items()}
    scenarios = {k: v for k, v in scenarios.items() if v and k != "plan"}  # plan: seconds, in the table
    cols = min(_PLOT_COLUMNS, max(1, len(scenarios)))
    grid_rows = -(-max(1, len(scenarios)) // cols)
    fig, axes = plt.subplots(grid_rows, cols, figsize=(6.0 * cols, 3.6 * grid_rows), squeeze=False)
    axes = list(axes.flat)
    for ax in axes[len(scenarios):]:
        ax.set_visible(False)  # the grid's empty cells
    if not scenarios:  # every row skipped or failed, or interrupted: say so, not a blank image
        fig.text(0.5, 0.5, "nothing timed: every row was skipped or failed, or the run was interrupted "
                 "(see results.md)", ha="center", va="center", wrap=True)
    for ax, (name, rows) in zip(axes, scenarios.items()):
        labels = [r["runner"] for r in rows]
        colors = ["tab:orange" if r["runner"].startswith("sparkfeed") else "tab:gray" for r in rows]
        values = [r["samples_per_s"] for r in rows]
        ax.barh(labels, values, color=colors)
        for y, (v, r) in enumerate(zip(values, rows)):
            text = f"{v:,.0f}"
            if name == "scaling" and r.get("peak_rss_mb"):
                text += f"\n{r['peak_rss_mb']:,.0f} MB RSS"  # the flat-memory question
            ax.annotate(text, (v, y), xytext=(3, 0), textcoords="offset points",
                        va="center", fontsize=7)
        if max(values) / min(values) > 50:
            ax.set_xscale("log")
            name += " (log scale)"
        ax.set_title(name)
        ax.set_xlabel("batches/s" if name.startswith("feed") else "samples/s")
        ax.invert_yaxis()
        ax.tick_params(axis="y", labelsize=8)
        ax.tick_params(axis="x", labelsize=7, labelrotation=30)
    fig.suptitle(f"sparkfeed bench — {results['hardware']['cores']} cores, GPU: {results['hardware']['gpu']}")
    fig.tight_layout()
    path = os.path.join(out, "results.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
