"""Reading a Prometheus exposition page the way a scraper does (prometheus_client.parser)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(body: bytes) -> Samples:
    """Every sample of the page, keyed by its name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def series(samples: Samples, name: str, label: str) -> dict[str, float]:
    """The samples of one metric keyed by one label (the metric's only label)."""
    return {
        dict(key)[label]: sample
        for (sample_name, key), sample in samples.items()
        if sample_name == name
    }


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}
