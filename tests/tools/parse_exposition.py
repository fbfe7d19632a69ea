#!/usr/bin/env python3
"""Parse a metrics exposition from stdin with the reference Python parser.

Usage: parse_exposition.py openmetrics|text < body

openmetrics: prometheus_client.openmetrics.parser (strict OpenMetrics 1.0:
# EOF, metadata order, unit suffixes, histogram checks, label escaping).
text: prometheus_client.parser (Prometheus text 0.0.4).

On success prints one JSON document: {"families": [{"name", "type", "unit",
"help", "samples": [{"name", "labels", "value"}]}]}, values as Python repr
strings so NaN and infinities survive JSON. On a parse error prints the
error to stderr and exits 1, so a Rust test can show why.
"""
import json
import sys


def main() -> int:
    if len(sys.argv) != 2 or sys.argv[1] not in ("openmetrics", "text"):
        print(__doc__, file=sys.stderr)
        return 2
    if sys.argv[1] == "openmetrics":
        from prometheus_client.openmetrics.parser import text_string_to_metric_families
    else:
        from prometheus_client.parser import text_string_to_metric_families
    body = sys.stdin.buffer.read().decode("utf-8")
    try:
        families = list(text_string_to_metric_families(body))
    except Exception as e:  # the parser raises bare ValueError and friends
        print(f"parse error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    out = []
    for f in families:
        out.append({
            "name": f.name,
            "type": f.type,
            "unit": getattr(f, "unit", ""),
            "help": f.documentation,
            "samples": [
                {"name": s.name, "labels": s.labels, "value": repr(float(s.value))}
                for s in f.samples
            ],
        })
    json.dump({"families": out}, sys.stdout, ensure_ascii=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
