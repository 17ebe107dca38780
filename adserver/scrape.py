"""Reading a process's Prometheus metrics, as the benchmarks, fault runs and local stack do."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def samples(text: str, name: str, label: str) -> dict[str, float]:
    """The values of the samples named ``name`` (as exposed: ``adserver_ad_requests_total``,
    ``adserver_edge_loop_hold_seconds_count``) in the exposition ``text``, by the value of their ``label``."""
    return {sample.labels[label]: sample.value for family in text_string_to_metric_families(text)
            for sample in family.samples if sample.name == name and label in sample.labels}
