#!/usr/bin/env python3
"""Draws vmscope's dashboards as SVG from a live Prometheus: not Grafana.

    python3 mixin/render.py --prometheus http://127.0.0.1:9090 --out docs/dashboards \
        --var job=vmscope --var instance=127.0.0.1:9847 --var vm=web-1 [--range 120]

Grafana cannot run on the build machines (it is not packaged in Debian), so
the images in docs/dashboards.md are drawn by this script: it reads each
dashboard's JSON, substitutes the template variables, runs every panel's
queries against the Prometheus given (range queries over the last --range
seconds for time series, instant queries for stats and tables) and draws
the panels in their grid positions: lines for time series, a number for
stats, rows for tables. The figures are real; the look only resembles
Grafana's. The live test crates/vmscope/tests/real/mixin.rs calls it when
VMSCOPE_RENDER_DASHBOARDS=<dir> is set.

Reads: mixin/dashboards/*.json, the Prometheus HTTP API. Emits: one
<uid>.svg per dashboard. Fails: exit 1 naming the query whose request
failed (an empty answer is drawn as "No data", as Grafana does).
Standard library only.
"""

import argparse
import html
import json
import math
import os
import sys
import time
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
COL_W = 50          # px per grid column (24 columns)
ROW_H = 30          # px per grid row unit
PAD = 4
BG, PANEL_BG, FG, MUTED, GRID = "#111217", "#181b1f", "#d8d9da", "#8e8e8e", "#2c3235"
COLORS = ["#73bf69", "#f2cc0c", "#5794f2", "#ff9830", "#f2495c", "#b877d9", "#8ab8ff", "#ffb357", "#96d98d", "#fade2a"]
PREFERRED = ["vm_name", "alert", "collector", "task", "source", "mountpoint", "device", "user", "project",
             "owner_user", "owner_project", "hypervisor", "scope", "severity"]
BUILTINS = {"__rate_interval": "15s", "__interval": "5s", "__range": "5m"}


def substitute(expr, values):
    allv = dict(BUILTINS)
    allv.update(values)
    for name in sorted(allv, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", allv[name]).replace("$" + name, allv[name])
    return expr


def api(base, path, params):
    url = base.rstrip("/") + path + "?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=15) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise RuntimeError(f"{path} {params}: {body}")
    return body["data"]["result"]


def fmt(v, unit):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if unit == "percentunit":
        return f"{v * 100:.1f}%"
    if unit == "bool_yes_no":
        return "Yes" if v else "No"
    if unit in ("bytes", "Bps"):
        suffix = "/s" if unit == "Bps" else ""
        a = abs(v)
        for i, u in enumerate(["B", "KiB", "MiB", "GiB", "TiB"]):
            if a < 1024 ** (i + 1) or u == "TiB":
                return f"{v / 1024 ** i:.3g} {u}{suffix}"
    if unit == "s":
        a = abs(v)
        if a and a < 1e-3:
            return f"{v * 1e6:.3g} µs"
        if a and a < 1:
            return f"{v * 1e3:.3g} ms"
        if a >= 3600:
            return f"{v / 3600:.3g} h"
        return f"{v:.3g} s"
    suffix = {"reqps": " req/s", "pps": " p/s", "iops": " io/s"}.get(unit, "")
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:.3g}M{suffix}"
    if a >= 1e3:
        return f"{v / 1e3:.3g}k{suffix}"
    return f"{v:.3g}{suffix}"


def legend(fmt_str, labels, expr):
    if not fmt_str or fmt_str == "__auto":
        inner = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
        return labels.get("__name__", "") + ("{" + inner + "}" if inner else "") or expr[:40]
    out = fmt_str
    for k, v in labels.items():
        out = out.replace("{{" + k + "}}", v).replace("{{ " + k + " }}", v)
    # A label the series lacks renders as nothing, as in Grafana.
    while "{{" in out and "}}" in out[out.index("{{"):]:
        i = out.index("{{")
        out = out[:i] + out[out.index("}}", i) + 2:]
    return " ".join(out.split())


def esc(s):
    return html.escape(str(s), quote=True)


def text(x, y, s, size=11, color=FG, anchor="start", weight="normal"):
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" fill="{color}" text-anchor="{anchor}" '
            f'font-weight="{weight}">{esc(s)}</text>')


def clip(s, px, size=11):
    n = max(3, int(px / (size * 0.58)))
    return s if len(s) <= n else s[: n - 1] + "…"


def draw_timeseries(p, box, results, unit):
    x0, y0, w, h = box
    out = []
    series = []
    for legend_fmt, res in results:
        for r in res:
            pts = [(float(t), float(v)) for t, v in r["values"] if v not in ("NaN", "+Inf", "-Inf")]
            if pts:
                series.append((legend(legend_fmt, r["metric"], ""), pts))
    if not series:
        return [text(x0 + w / 2, y0 + h / 2, "No data", 14, MUTED, "middle")]
    if p.get("fieldConfig", {}).get("defaults", {}).get("custom", {}).get("stacking", {}).get("mode") == "normal":
        # Stacked, as Grafana draws it: each series on top of the ones
        # before it (range queries share one step grid, so times align).
        below = {}
        stacked = []
        for name, pts in series:
            top = [(t, v + below.get(t, 0.0)) for t, v in pts]
            below.update(dict(top))
            stacked.append((name, top, pts[-1][1]))
        series_last = {name: last for name, _, last in stacked}
        series = [(name, top) for name, top, _ in stacked]
    else:
        series_last = {name: pts[-1][1] for name, pts in series}
    leg_rows = min(len(series), max(1, int((h - 60) / 3 / 13)))
    plot = (x0 + 58, y0 + 6, w - 66, h - 22 - leg_rows * 13)
    ts = [t for _, pts in series for t, _ in pts]
    vs = [v for _, pts in series for _, v in pts]
    t_lo, t_hi = min(ts), max(ts)
    v_lo, v_hi = min(0.0, min(vs)), max(vs)
    if v_hi == v_lo:
        v_hi = v_lo + (abs(v_lo) or 1.0)
    v_hi *= 1.05
    px, py, pw, ph = plot
    sx = lambda t: px + (t - t_lo) / ((t_hi - t_lo) or 1) * pw
    sy = lambda v: py + ph - (v - v_lo) / (v_hi - v_lo) * ph
    for i in range(5):
        v = v_lo + (v_hi - v_lo) * i / 4
        y = sy(v)
        out.append(f'<line x1="{px}" y1="{y:.1f}" x2="{px + pw}" y2="{y:.1f}" stroke="{GRID}" stroke-width="1"/>')
        out.append(text(px - 4, y + 4, fmt(v, unit), 9, MUTED, "end"))
    for i in range(4):
        t = t_lo + (t_hi - t_lo) * i / 3
        out.append(text(sx(t), py + ph + 11, time.strftime("%H:%M:%S", time.gmtime(t)), 9, MUTED, "middle"))
    for i, (name, pts) in enumerate(series):
        c = COLORS[i % len(COLORS)]
        d = " ".join(f"{sx(t):.1f},{sy(v):.1f}" for t, v in pts)
        out.append(f'<polyline points="{d}" fill="none" stroke="{c}" stroke-width="1.5"/>')
    # Legend: three columns, as many rows as fit.
    ly = py + ph + 24
    colw = w / 3
    for i, (name, pts) in enumerate(series[: leg_rows * 3]):
        lx = x0 + 8 + (i % 3) * colw
        yy = ly + (i // 3) * 13
        c = COLORS[i % len(COLORS)]
        out.append(f'<rect x="{lx:.1f}" y="{yy - 7:.1f}" width="10" height="3" fill="{c}"/>')
        out.append(text(lx + 14, yy, clip(f"{name}  {fmt(series_last[name], unit)}", colw - 20, 9), 9, FG))
    if len(series) > leg_rows * 3:
        out.append(text(x0 + w - 6, y0 + h - 4, f"+{len(series) - leg_rows * 3} more", 9, MUTED, "end"))
    return out


def draw_stat(p, box, results, unit):
    x0, y0, w, h = box
    vals = [(legend(lf, r["metric"], ""), float(r["value"][1])) for lf, res in results for r in res]
    if not vals:
        return [text(x0 + w / 2, y0 + h / 2 + 4, "No data", 14, MUTED, "middle")]
    if len(vals) == 1:
        shown = vals[0][0] if p.get("options", {}).get("textMode") == "name" else fmt(vals[0][1], unit)
        return [text(x0 + w / 2, y0 + h / 2 + 10, shown, 26, "#73bf69", "middle", "bold")]
    out = []
    for i, (name, v) in enumerate(vals[:3]):
        y = y0 + 18 + i * 20
        out.append(text(x0 + 8, y, clip(name, w / 2), 10, MUTED))
        out.append(text(x0 + w - 8, y, fmt(v, unit), 14, "#73bf69", "end", "bold"))
    return out


def draw_table(p, box, results, unit):
    x0, y0, w, h = box
    col_units = {o["matcher"]["options"]: o["properties"][0]["value"]
                 for o in p.get("fieldConfig", {}).get("overrides", [])
                 if o.get("matcher", {}).get("id") == "byName" and o.get("properties")}
    # One row per label set; one value column per query (merged, as the
    # dashboards' "merge" transformation does).
    rows = {}
    cols = []
    label_names = []
    for lf, res in results:
        col = lf if lf and lf != "__auto" else "Value"
        cols.append(col)
        for r in res:
            m = {k: v for k, v in r["metric"].items() if k not in ("__name__", "job")}
            key = tuple(sorted(m.items()))
            rows.setdefault(key, {})[col] = float(r["value"][1])
            for k in m:
                if k not in label_names:
                    label_names.append(k)
    if not rows:
        return [text(x0 + w / 2, y0 + h / 2, "No data", 14, MUTED, "middle")]
    # The labels that name a row first; instance last (one host, mostly).
    label_names.sort(key=lambda n: (PREFERRED.index(n) if n in PREFERRED else len(PREFERRED), n == "instance"))
    shown_labels = label_names[: max(2, 8 - len(cols))]
    headers = shown_labels + cols
    cw = (w - 12) / len(headers)
    out = []
    for i, hd in enumerate(headers):
        out.append(text(x0 + 6 + i * cw, y0 + 14, clip(hd, cw - 4, 10), 10, "#6e9fff", weight="bold"))
    max_rows = int((h - 24) / 14)
    for j, (key, vals) in enumerate(sorted(rows.items())[:max_rows]):
        y = y0 + 30 + j * 14
        d = dict(key)
        for i, ln in enumerate(shown_labels):
            out.append(text(x0 + 6 + i * cw, y, clip(d.get(ln, ""), cw - 4, 10), 10))
        for i, c in enumerate(cols):
            out.append(text(x0 + 6 + (len(shown_labels) + i) * cw, y, fmt(vals.get(c), col_units.get(c, unit)), 10))
    if len(rows) > max_rows:
        out.append(text(x0 + w - 6, y0 + h - 4, f"+{len(rows) - max_rows} rows", 9, MUTED, "end"))
    return out


def panels_of(panels):
    for p in panels:
        yield p
        if p.get("type") == "row":
            yield from panels_of(p.get("panels", []))


def render(dash, base, values, range_s, now):
    panels = list(panels_of(dash["panels"]))
    height = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels) * ROW_H + 40
    width = 24 * COL_W
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="Inter, Helvetica, Arial, sans-serif">',
           f'<rect width="100%" height="100%" fill="{BG}"/>',
           text(8, 22, dash["title"], 16, FG, weight="bold"),
           text(width - 8, 22, "drawn by mixin/render.py from a live Prometheus (not a Grafana screenshot); "
                + ", ".join(f"{k}={v}" for k, v in sorted(values.items()) if k in ("vm", "user", "project")),
                10, MUTED, "end")]
    for p in panels:
        g = p["gridPos"]
        x, y, w, h = g["x"] * COL_W + PAD, g["y"] * ROW_H + 32 + PAD, g["w"] * COL_W - 2 * PAD, g["h"] * ROW_H - 2 * PAD
        if p["type"] == "row":
            svg.append(text(x + 2, y + 16, p["title"], 13, FG, weight="bold"))
            continue
        svg.append(f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="3" fill="{PANEL_BG}" stroke="{GRID}"/>')
        svg.append(text(x + 8, y + 16, clip(p["title"], w - 16, 12), 12, FG, weight="bold"))
        unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
        results = []
        for t in p.get("targets", []):
            expr = substitute(t["expr"], values)
            try:
                if p["type"] == "timeseries":
                    res = api(base, "/api/v1/query_range", {"query": expr, "start": now - range_s, "end": now,
                                                            "step": max(1, range_s // 240)})
                else:
                    res = api(base, "/api/v1/query", {"query": expr, "time": now})
            except Exception as e:  # noqa: BLE001 - report which query and stop
                print(f"render.py: {dash['uid']}: {p['title']}: {expr}: {e}", file=sys.stderr)
                sys.exit(1)
            results.append((t.get("legendFormat", ""), res))
        inner = (x + 2, y + 22, w - 4, h - 24)
        draw = {"timeseries": draw_timeseries, "stat": draw_stat, "table": draw_table}[p["type"]]
        svg.extend(draw(p, inner, results, unit))
    svg.append("</svg>")
    return "\n".join(svg) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prometheus", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--var", action="append", default=[], help="name=value, a template variable")
    ap.add_argument("--range", type=int, default=120, help="seconds of history for time series")
    args = ap.parse_args()
    values = {}
    for v in args.var:
        k, sep, val = v.partition("=")
        if not sep:
            ap.error(f"--var {v}: expected name=value")
        values[k] = val
    os.makedirs(args.out, exist_ok=True)
    now = int(time.time())
    ddir = os.path.join(HERE, "dashboards")
    for name in sorted(os.listdir(ddir)):
        if not name.endswith(".json"):
            continue
        with open(os.path.join(ddir, name), encoding="utf-8") as f:
            dash = json.load(f)
        path = os.path.join(args.out, dash["uid"] + ".svg")
        with open(path, "w", encoding="utf-8") as f:
            f.write(render(dash, args.prometheus, values, args.range, now))
        print(f"render.py: wrote {path}")


if __name__ == "__main__":
    main()
