"""Parse an OpenMetrics page (stdin) with the prometheus_client package's parser and print its
families as JSON: [{"name", "type", "samples": [{"name", "labels", "value"}]}]. The parser
rejects malformed pages, so a page that prints here is valid OpenMetrics."""

import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families

families = [
    {
        "name": f.name,
        "type": f.type,
        "samples": [{"name": s.name, "labels": s.labels, "value": s.value} for s in f.samples],
    }
    for f in text_string_to_metric_families(sys.stdin.read())
]
json.dump(families, sys.stdout)
