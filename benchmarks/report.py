"""Render results.json into docs/benchmarks.md and docs/benchmarks.png."""

from __future__ import annotations

import math
import statistics
from collections.abc import Set
from pathlib import Path
from typing import Any

SUBJECT = "s3fuse"
COMPETITORS = ("s3fs", "rclone")
#: results.json before limits: the one limit it had, under the metric it bounds
LEGACY_BASELINES = {"local_hot_read": ("read_hot", "`cat` of a local copy already in the "
                                                   "page cache")}

COUNTS = ("req", "files")  # units of counted (not timed) metrics: not in the time plot

Medians = dict[str, dict[str, float]]
Failures = dict[tuple[str, str], int]  # (filesystem, metric key) -> rounds it failed
Unsupported = Set[tuple[str, str]]  # (filesystem, metric key) it does not do at all


def medians(results: dict[str, Any]) -> Medians:
    """Median of every (filesystem, metric) that has at least one sample."""
    return {
        fs: {key: statistics.median(values) for key, values in metrics.items() if values}
        for fs, metrics in results["samples"].items()
    }


def reference(meds: Medians, key: str) -> tuple[str, float] | None:
    """Best (lowest) competitor median for ``key``; all filesystems if no competitor ran."""
    pool = [fs for fs in COMPETITORS if key in meds.get(fs, {})] or [
        fs for fs in meds if key in meds[fs]
    ]
    if not pool:
        return None
    best = min(pool, key=lambda fs: meds[fs][key])
    return best, meds[best][key]


def failures(results: dict[str, Any]) -> Failures:
    """How many rounds each (filesystem, metric) failed: the keys an error names, or every
    key of its workload (a workload that raised)."""
    keys = {w["name"]: [m["key"] for m in w["metrics"]] for w in results["workloads"]}
    counts: Failures = {}
    for e in results["errors"]:
        if e.get("unsupported"):
            continue
        for key in e.get("metrics") or keys.get(e["workload"], []):
            counts[(e["fs"], key)] = counts.get((e["fs"], key), 0) + 1
    return counts


def unsupported(results: dict[str, Any]) -> Unsupported:
    """The (filesystem, metric) pairs a filesystem was found not to do (``NotSupported``)."""
    return {(e["fs"], key) for e in results["errors"] if e.get("unsupported")
            for key in e.get("metrics", [])}


def limits(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The machine's limits by metric key: ``{"title": ..., "samples": [...]}``
    (benchmarks/limits.py); an older results.json's baseline counts as one."""
    found = {key: {"title": title, "samples": list(results.get("baseline", {}).get(old, []))}
             for old, (key, title) in LEGACY_BASELINES.items()
             if results.get("baseline", {}).get(old)}
    return {**found, **results.get("limits", {})}


def limit_medians(results: dict[str, Any]) -> dict[str, float]:
    """Median of every limit that has samples, by metric key."""
    return {key: statistics.median(entry["samples"])
            for key, entry in limits(results).items() if entry["samples"]}


def ratio_to_best(meds: Medians, key: str) -> tuple[float, str] | None:
    """s3fuse median / best competitor median (and the competitor's name); None when the
    best is 0 (a count: no ratio)."""
    ref = reference(meds, key)
    if ref is None or ref[0] == SUBJECT or key not in meds.get(SUBJECT, {}) or not ref[1]:
        return None
    return meds[SUBJECT][key] / ref[1], ref[0]


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "s":
        return f"{value:.3f} s" if value >= 0.1 else f"{value * 1000:.1f} ms"
    if unit == "x":
        return f"{value:.2f}x"
    if unit in COUNTS:
        return f"{value:,.0f}" if value == int(value) else f"{value:,.1f}"
    return f"{value:.1f} {unit}"


def cell(meds: Medians, fails: Failures, fs: str, metric: dict[str, Any],
         unsupported: Unsupported = frozenset()) -> str:
    """A median, ``failed`` when it never worked, or both when it failed in some rounds;
    ``not supported`` when the filesystem does not do it."""
    value, failed = meds.get(fs, {}).get(metric["key"]), fails.get((fs, metric["key"]), 0)
    if value is None:
        if (fs, metric["key"]) in unsupported:
            return "not supported"
        return "**failed**" if failed else "—"
    shown = fmt(value, metric["unit"])
    return f"{shown} (failed {failed}x)" if failed else shown


def compared(workload: dict[str, Any]) -> bool:
    """False for workloads only the subject runs (shown alone, not in the plot)."""
    return workload.get("compare_filesystems", True)


def all_metrics(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Metrics compared between filesystems (the plot's)."""
    return [m for w in results["workloads"] if compared(w) for m in w["metrics"]
            if m.get("compare", True)]


def spec_text(text: str, spec: dict[str, Any]) -> str:
    """A title or note with the data-set spec's fields filled in (``{shard_members:,}``)."""
    try:
        return text.format_map(spec)
    except (KeyError, ValueError, IndexError):
        return text


# -- markdown --------------------------------------------------------------------


def markdown(results: dict[str, Any], image_name: str) -> str:
    meta, fss = results["meta"], list(results["filesystems"])
    meds, fails, unsup = medians(results), failures(results), unsupported(results)
    machine, spec = meta["machine"], meta["spec"]
    out = [
        "# Benchmarks",
        "",
        f"s3fuse compared with s3fs-fuse and rclone mount, all three mounting the same bucket "
        f"of a local SeaweedFS S3 server ({meta['seaweedfs']}, volumes of "
        f"{meta.get('volume_mib', 64)} MiB) over loopback, so the numbers "
        "show the cost of each FUSE layer and its caching rather than of a network.",
        "",
        f"- Machine: {machine['nproc']} cores ({machine['cpu']}), {machine['mem_gib']} GiB RAM, "
        f"Linux {machine['kernel']}; run {meta['date']}.",
        f"- {meta['rounds']} round{'s' * (meta['rounds'] != 1)}; the order of the filesystems "
        "rotates every round (A,B,C then B,C,A, ...); tables show the **median** per "
        "filesystem.",
        f"- Data: one {spec['big_mib']} MiB object; {spec['small_files']} files of "
        f"{spec['small_size']} bytes in one directory; a tree of {spec['tree_keys']:,} keys "
        f"({spec['tree_dirs']} dirs x {spec['tree_subdirs']} subdirs x {spec['tree_files']} "
        "files)." + (" **Quick (reduced) data sets.**" if meta["quick"] else ""),
        "- Every timing is the wall time of a plain tool (`cat`, `ls -l`, `find`). "
        "*Cold* = the filesystem's own cache wiped, fresh mount, and "
        "`sync; echo 3 > /proc/sys/vm/drop_caches`.",
        *_offline_bullet(results),
        f"- **Ratio** = {SUBJECT} time / best of {' and '.join(COMPETITORS)}; "
        f"below 1 means {SUBJECT} is faster (or smaller, for memory).",
        *_limit_bullet(results),
        *_floor_bullet(results),
        "- Regenerate with `make bench` (`.venv/bin/python benchmarks/run.py`); raw data in "
        "`benchmarks/results.json`.",
        *_subject_only_bullet(results),
        "",
        f"![relative times]({image_name})",
        "",
        "## Filesystems",
        "",
        "Versions and mount commands, each run as its users run it (`$WORK` is the scratch "
        "directory).",
        "",
        "| filesystem | version | status | mount command |",
        "| --- | --- | --- | --- |",
    ]
    for name, info in results["filesystems"].items():
        status = info["status"] + (f": {info['reason']}" if info.get("reason") else "")
        command = " ".join(info["command"])
        out.append(f"| {name} | {info['version']} | {_cell(status)} | `{command}` |")
    why = [f"- **{name}**: {info['why']}" for name, info in results["filesystems"].items()
           if info.get("why")]
    if why:
        out += ["", "Why these flags:", "", *why]
    lims = limit_medians(results)
    families = scale_families(results["workloads"], spec)
    for w in results["workloads"]:
        family = families.get((w.get("scale") or {}).get("family", ""))
        if family and w is not family[0]:
            continue  # shown with the family's first member
        if family and len(family) > 1:
            out += _scale_section(family, spec, meds, fails, meta)
            continue
        out += ["", f"## {spec_text(w['title'], spec)}", ""]
        if w.get("notes"):
            out += [spec_text(w["notes"], spec), ""]
        out += _run_note(w, meta)
        out += (_comparison(w, fss, meds, fails, unsup, lims) if compared(w)
                else _subject_table(w, meds, fails))
        out += _limit_notes(w, results, meds) if compared(w) else []
        out += _failure_notes(w, results)
        out += _growth(w, results, fss, meds, fails)
    errors = [e for e in results["errors"] if not e.get("metrics")]
    if errors:
        out += ["", "## Errors", "", "Harness or filesystem errors; the affected measurements "
                "have fewer samples (or none).", ""]
        out += [f"- round {e['round'] + 1}, {e['fs']}, {e['workload']}: "
                f"{_cell(e['error'])[:300]}"
                for e in errors]
    return "\n".join(out) + "\n"


# -- scale families: one workload at several sizes ----------------------------------


class _Symbol(str):
    """A spec value shown as a name whatever its format (``{entries:,}`` -> ``N``)."""

    def __format__(self, format_spec: str) -> str:
        return str(self)


def scale_families(workloads: list[dict[str, Any]],
                   spec: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The workloads of each scale family (``Workload.scale``), smallest size first."""
    families: dict[str, list[dict[str, Any]]] = {}
    for w in workloads:
        if w.get("scale") and w["scale"]["size"] in spec:
            families.setdefault(w["scale"]["family"], []).append(w)
    for members in families.values():
        members.sort(key=lambda w: spec[w["scale"]["size"]])
    return families


def _scale_section(family: list[dict[str, Any]], spec: dict[str, Any], meds: Medians,
                   fails: Failures, meta: dict[str, Any]) -> list[str]:
    """One table for a family: each metric at every size, then its cost per unit between
    consecutive sizes (the growth divided by the units added: flat = linear)."""
    first = family[0]
    named = {**spec, first["scale"]["size"]: _Symbol("N")}
    sizes = [spec[w["scale"]["size"]] for w in family]
    unit = first["scale"]["unit"]
    out = ["", f"## Scale: {spec_text(first['title'], named)}", ""]
    if first.get("notes"):
        out += [spec_text(first["notes"], named), ""]
    out += [f"N = {', '.join(f'{n:,}' for n in sizes)}; *per {unit}* = the growth from one "
            "size to the next divided by the number added (the same at every step: linear; "
            "less at the larger step: better than linear).", ""]
    for w, n in zip(family, sizes):
        run = w.get("run") or meta
        if (run["date"], run["rounds"]) != (meta["date"], meta["rounds"]):
            out += [f"_N = {n:,}: measured {run['date']}, {run['rounds']} "
                    f"round{'s' * (run['rounds'] != 1)}._", ""]
    steps = list(zip(sizes, sizes[1:]))
    cols = ["measurement", *(f"N = {n:,}" for n in sizes),
            *(f"per {unit}, {a:,} → {b:,}" for a, b in steps)]
    out += ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    for row in zip(*(w["metrics"] for w in family)):
        values = [meds.get(SUBJECT, {}).get(m["key"]) for m in row]
        cells = [_cell(row[0]["title"]), *(cell(meds, fails, SUBJECT, m) for m in row)]
        for (a, b), (va, vb) in zip(steps, zip(values, values[1:])):
            cells.append(per_unit(va, vb, b - a, row[0]["unit"]))
        out.append("| " + " | ".join(cells) + " |")
    return out


def per_unit(before: float | None, after: float | None, added: int, unit: str) -> str:
    """The growth from ``before`` to ``after`` per unit added: µs for times, bytes for MiB."""
    if before is None or after is None or added <= 0:
        return "—"
    grown = (after - before) / added
    if unit == "s":
        return f"{grown * 1e6:,.1f} µs"
    if unit == "MiB":
        return f"{grown * 2**20:,.0f} B"
    return fmt(grown, unit)


def _offline_bullet(results: dict[str, Any]) -> list[str]:
    if not any(w["name"].startswith("offline") for w in results["workloads"]):
        return []
    return ["- *Offline* sections mount through a TCP proxy in front of SeaweedFS that is "
            "then cut: open connections reset, new ones refused (as when the network drops)."]


def _failure_notes(workload: dict[str, Any], results: dict[str, Any]) -> list[str]:
    """What failed (the failures that are results), one line per filesystem."""
    by_fs: dict[tuple[str, bool], list[dict[str, Any]]] = {}
    for e in results["errors"]:
        if e["workload"] == workload["name"] and e.get("metrics"):
            by_fs.setdefault((e["fs"], bool(e.get("unsupported"))), []).append(e)
    out = []
    for (fs, unsup), errors in by_fs.items():
        rounds = ", ".join(str(e["round"] + 1) for e in errors)
        what = "not supported" if unsup else "failed"
        out.append(f"- {fs} {what} in round{'s' * (len(errors) > 1)} {rounds}: "
                   f"{_cell(errors[0]['error'])[:400]}")
    return ["", *out] if out else []


def _growth(last: dict[str, Any], results: dict[str, Any], fss: list[str], meds: Medians,
            fails: Failures) -> list[str]:
    """After the last workload of a series: its metrics at every size side by side, per
    filesystem, and how they grow (exponent k of value ~ size^k between the smallest and
    the largest size measured: 1 = linear, below 1 = better)."""
    series = [w for w in results["workloads"] if last.get("series")
              and w.get("series") == last["series"]]
    if len(series) < 2 or series[-1] is not last:
        return []
    spec = results["meta"]["spec"]
    sizes = [int(spec_text(w["size"], spec)) for w in series]
    cols = ["measurement", "filesystem", *(f"{n:,}" for n in sizes), "growth (1 = linear)"]
    out = ["", f"### {spec_text(last['series'], spec)}: growth with size", "",
           "| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    for row, metric in enumerate(last["metrics"]):
        for fs in fss:
            at = [(n, w["metrics"][row]) for n, w in zip(sizes, series)]
            cells = [cell(meds, fails, fs, m) for _, m in at]
            if all(c == "—" for c in cells):
                continue
            out.append("| " + " | ".join([_cell(metric["title"]), fs, *cells,
                                          _exponent(meds.get(fs, {}), at)]) + " |")
    return out


def _exponent(mine: dict[str, float], at: list[tuple[int, dict[str, Any]]]) -> str:
    """log(value ratio) / log(size ratio) between the smallest and largest size measured."""
    known = [(n, mine[m["key"]]) for n, m in at if mine.get(m["key"])]
    if len(known) < 2 or known[0][0] == known[-1][0]:
        return "—"
    (n0, v0), (n1, v1) = known[0], known[-1]
    return f"{math.log(v1 / v0) / math.log(n1 / n0):.2f}"


def _run_note(workload: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    """When and over how many rounds, for a section measured apart (``run.py --merge``)."""
    run = workload.get("run") or meta
    if (run["date"], run["rounds"]) == (meta["date"], meta["rounds"]):
        return []
    return [f"_Measured {run['date']}, {run['rounds']} round{'s' * (run['rounds'] != 1)}._", ""]


def _subject_only_bullet(results: dict[str, Any]) -> list[str]:
    alone = [w for w in results["workloads"] if not compared(w)]
    if not alone:
        return []
    exchange = [w for w in alone if w.get("baseline") == "s3exchange"
                or "manifest" in w["name"]]
    version = results["meta"].get("s3exchange", "")
    what = []
    if exchange:
        what.append("the s3exchange ones (s3fs and rclone cannot read manifests; reads are "
                    f"compared with s3exchange {version} itself, in this process)")
    if len(exchange) < len(alone):
        what.append("offline detection and recovery (the others report no link state)")
    return [f"- Some sections run on {SUBJECT} alone: {' and '.join(what)}."]


def _limit_bullet(results: dict[str, Any]) -> list[str]:
    if not limit_medians(results):
        return []
    return ["- **Limit** = the same bytes read without a FUSE layer, measured at the start of "
            "every round of this run (parallel ranged GETs straight from S3 for a cold read, "
            "`cat` of a local copy for cached reads; for a big write, the same upload straight "
            "to S3; for a stat of every key, the HEADs alone, by curl; each table says how); "
            f"**{SUBJECT} / limit** = how far {SUBJECT} is from it (1 = no overhead)."]


def _floor_bullet(results: dict[str, Any]) -> list[str]:
    if not any(entry.get("samples") for entry in results.get("floors", {}).values()):
        return []
    return ["- **Floor** (under some tables) = the same tool run on a pyfuse3 + trio file "
            "system that answers from a dict, measured at the start of every round: what "
            f"FUSE requests cost through {SUBJECT}'s own stack with nothing behind them, "
            "where a metric is bound by requests rather than bytes."]


def _limit_notes(workload: dict[str, Any], results: dict[str, Any],
                 meds: Medians) -> list[str]:
    """How each limit shown in the workload's table was measured; and the floor of each
    metric that has one (benchmarks/limits.py FLOORS), with s3fuse's median over it."""
    found = limits(results)
    out = [f"- Limit of *{_cell(m['title'])}*: {found[m['key']]['title']} "
           f"({len(found[m['key']]['samples'])} samples)"
           for m in workload["metrics"] if found.get(m["key"], {}).get("samples")]
    floors = results.get("floors", {})
    for m in workload["metrics"]:
        samples = floors.get(m["key"], {}).get("samples")
        if not samples:
            continue
        floor = statistics.median(samples)
        mine = meds.get(SUBJECT, {}).get(m["key"])
        ratio = f"; **{SUBJECT} / floor: {mine / floor:.2f}**" if mine is not None and floor else ""
        out.append(f"- Floor of *{_cell(m['title'])}*: {fmt(floor, m['unit'])}{ratio}: "
                   f"{floors[m['key']]['title']} ({len(samples)} samples)")
    return ["", *out] if out else []


def _comparison(workload: dict[str, Any], fss: list[str], meds: Medians,
                fails: Failures, unsup: Unsupported,
                lims: dict[str, float] | None = None) -> list[str]:
    """The filesystems side by side; with limit columns when a metric of it has a limit."""
    lims = lims or {}
    with_limit = any(m["key"] in lims for m in workload["metrics"])
    return [_table_header(fss, with_limit)] + [
        _metric_row(m, fss, meds, fails, unsup, lims if with_limit else None)
        for m in workload["metrics"]]


def _subject_table(workload: dict[str, Any], meds: Medians, fails: Failures) -> list[str]:
    """The subject's medians; a ``vs`` metric's baseline in the same row with the speed-up."""
    mine = meds.get(SUBJECT, {})
    metrics = workload["metrics"]
    baselines = {m["vs"] for m in metrics if m.get("vs")}
    rows = [m for m in metrics if m["key"] not in baselines]
    name = workload.get("baseline") or "baseline"
    cols = ["measurement", SUBJECT]
    if baselines:
        cols += [name, f"{name} / {SUBJECT}"]
    with_targets = any(m.get("min_speedup") or m.get("max_value") for m in rows)
    if with_targets:
        cols.append("target")
    out = ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    for m in rows:
        value, base = mine.get(m["key"]), mine.get(m.get("vs") or "")
        speedup = base / value if value and base else None
        cells = [_cell(m["title"]), cell(meds, fails, SUBJECT, m)]
        if baselines:
            cells += [fmt(base, m["unit"]), _speedup(speedup, m["unit"])]
        if with_targets:
            cells.append(_target(m, value, speedup))
        out.append("| " + " | ".join(cells) + " |")
    return out


def _speedup(speedup: float | None, unit: str) -> str:
    """``**2.9x** faster``, or ``**1.72x** slower`` below 1 (never "0.58x faster")."""
    if not speedup:
        return "—"
    better, worse = ("faster", "slower") if unit == "s" else ("less", "more")  # bytes, requests
    if speedup >= 1:
        return f"**{_times(speedup)}** {better}"
    return f"**{_times(1 / speedup)}** {worse}"


def _target(metric: dict[str, Any], value: float | None, speedup: float | None) -> str:
    """``≥ 50x: met`` / ``< 300 MiB: **missed**`` (or — when the metric has no target)."""
    if metric.get("min_speedup"):
        goal, ok = f"≥ {metric['min_speedup']:g}x", speedup and speedup >= metric["min_speedup"]
    elif metric.get("max_value"):
        goal = f"< {metric['max_value']:g} {metric['unit']}"
        ok = value is not None and value < metric["max_value"]
    else:
        return "—"
    return f"{goal}: {'met' if ok else '**missed**'}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table_header(fss: list[str], with_limit: bool = False) -> str:
    cols = ["measurement", *fss, f"{SUBJECT} / best other"]
    if with_limit:
        cols += ["limit", f"{SUBJECT} / limit"]
    return "| " + " | ".join(cols) + " |\n|" + " --- |" * len(cols)


def limit_cells(metric: dict[str, Any], meds: Medians, lims: dict[str, float]) -> list[str]:
    """The limit of ``metric`` and s3fuse's median over it (— where either is missing)."""
    limit, mine = lims.get(metric["key"]), meds.get(SUBJECT, {}).get(metric["key"])
    ratio = f"**{mine / limit:.2f}**" if limit and mine is not None else "—"
    return [fmt(limit, metric["unit"]), ratio]


def _metric_row(metric: dict[str, Any], fss: list[str], meds: Medians, fails: Failures,
                unsup: Unsupported, lims: dict[str, float] | None = None) -> str:
    """One metric across the filesystems; ``lims``: add the limit columns."""
    key = metric["key"]
    cells = [_cell(metric["title"])] + [cell(meds, fails, fs, metric, unsup) for fs in fss]
    ratio = ratio_to_best(meds, key) if metric.get("compare", True) else None
    if ratio:
        cells.append(f"**{ratio[0]:.2f}** (vs {ratio[1]})")
    elif not metric.get("compare", True):
        cells.append("—")
    elif key in meds.get(SUBJECT, {}) and any(fails.get((fs, key)) for fs in COMPETITORS):
        cells.append("n/a (the others failed)")
    else:
        cells.append("n/a")
    if lims is not None:
        cells += limit_cells(metric, meds, lims)
    return "| " + " | ".join(cells) + " |"


# -- plot --------------------------------------------------------------------------


def plot(results: dict[str, Any], path: Path) -> None:
    """Grouped bars: each filesystem's median divided by the best competitor's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    meds, fails = medians(results), failures(results)
    fss = [fs for fs in results["filesystems"] if meds.get(fs)]
    others_ran = any(fs in COMPETITORS for fs in fss)
    refs = {m["key"]: ref[1] for m in all_metrics(results)
            if m["unit"] not in COUNTS and (ref := reference(meds, m["key"]))
            and ref[1] and (ref[0] in COMPETITORS or not others_ran)}
    metrics = [m for m in all_metrics(results) if m["key"] in refs]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(metrics) + 2), 4.8), dpi=110)
    width = 0.8 / max(1, len(fss))
    for i, fs in enumerate(fss):
        xs, ys = [], []
        for j, m in enumerate(metrics):
            value, x = meds[fs].get(m["key"]), j + (i - (len(fss) - 1) / 2) * width
            if value is not None:
                xs.append(x)
                ys.append(value / refs[m["key"]])
            elif fails.get((fs, m["key"])):
                ax.text(x, 0.02, "failed", transform=ax.get_xaxis_transform(), rotation=90,
                        ha="center", va="bottom", fontsize=8, color=_color(fs),
                        fontweight="bold")
        bars = ax.bar(xs, ys, width, label=fs, color=_color(fs))
        ax.bar_label(bars, labels=[f"{y:.2g}" for y in ys], fontsize=7, padding=1)
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks(range(len(metrics)))
    ax.set_xticklabels([m["key"].replace("_", "\n", 1) for m in metrics], fontsize=8)
    ax.set_ylabel("median / best of s3fs, rclone (log)")
    ax.set_title("Relative time (and peak RSS) — lower is better", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _color(fs: str) -> str:
    """The same colour for a filesystem in every plot."""
    known = (SUBJECT, *COMPETITORS)
    return f"C{known.index(fs)}" if fs in known else "C7"


def render(results: dict[str, Any], docs_dir: Path) -> None:
    docs_dir.mkdir(parents=True, exist_ok=True)
    image = docs_dir / "benchmarks.png"
    plot(results, image)
    (docs_dir / "benchmarks.md").write_text(markdown(results, image.name))


def _times(ratio: float) -> str:
    """A speedup as people read it: whole numbers from 10x, two decimals below (0.41x)."""
    return f"{ratio:.0f}x" if ratio >= 10 else f"{ratio:.2f}x"
