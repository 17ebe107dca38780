"""What the scenario files share: the vocabulary of a realistic page view and strict environment settings.

The leading underscore keeps locust from treating this as a locustfile when it is given the whole directory
(``-f loadtest/locustfiles/``); the scenario files import it by its bare name because locust puts a
locustfile's directory on ``sys.path``. Settings come from ``ADSERVER_LOCUST_*`` variables so a run's set-up
(tokens, rates, seed) can be handed to a headless locust without editing code; a bad value stops the import
with a message naming the variable, instead of silently running a different test.
"""

from __future__ import annotations

import os

PLACEMENTS = ("news-top", "news-side", "sports-top", "tech-inline", "blog-footer", "recipes-inline")
# Mostly medium rectangles, some leaderboards: the mix a real site sends.
FORMATS = ("300x250", "300x250", "300x250", "728x90")
GEOS = ("US-CA", "US-NY", "US-TX", "DE-BE", "FR-IDF", "GB-LND", "ES-MD", "")
DEVICES = ("desktop", "mobile", "mobile", "tablet")
KEYWORDS = ("shoes", "running", "travel", "laptops", "coffee", "finance", "news", "football")
SITES = ("news.example.com", "sports.example.org", "techblog.example.net", "recipes.example.com")


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default).strip()


def env_rate(name: str, default: float) -> float:
    """A probability from the environment, 0..1."""
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: must be a number from 0 to 1") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}={raw!r}: must be a number from 0 to 1")
    return value


def env_int(name: str, default: int, minimum: int = 0) -> int:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    if not raw.strip().isascii() or not raw.strip().isdigit() or int(raw) < minimum:
        raise ValueError(f"{name}={raw!r}: must be an integer >= {minimum}")
    return int(raw)


def env_wait(name: str, default: tuple[float, float]) -> tuple[float, float]:
    """A think-time range 'min,max' in seconds."""
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        low, high = (float(part) for part in raw.split(","))
    except ValueError:
        raise ValueError(f"{name}={raw!r}: must be 'min,max' seconds, e.g. 0.1,1.0") from None
    if not 0 <= low <= high:
        raise ValueError(f"{name}={raw!r}: need 0 <= min <= max")
    return low, high


def env_terms(name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    terms = tuple(t.strip().lower() for t in raw.split(",") if t.strip())
    if not terms:
        raise ValueError(f"{name}={raw!r}: must be a comma-separated list of terms")
    return terms
