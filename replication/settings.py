"""Settings read once per process from prefixed environment variables.

Like prebid's ``validate()``: every bad value is collected and reported together at start-up, so an
operator fixes a deployment in one pass instead of one crash per variable.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


class SettingsError(ValueError):
    def __init__(self, errors: list[str]) -> None:
        super().__init__("invalid settings:\n  " + "\n  ".join(errors))
        self.errors = errors


@dataclass(frozen=True, slots=True)
class Spec:
    """One setting: its name (without prefix), parser, default (None means required), and a description."""

    name: str
    parse: Callable[[str], Any]
    default: str | None
    help: str
    secret: bool = False


def parse_int(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = int(raw)
        if low is not None and value < low:
            raise ValueError(f"must be >= {low}")
        if high is not None and value > high:
            raise ValueError(f"must be <= {high}")
        return value

    return parse


def parse_float(low: float | None = None) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        value = float(raw)
        if low is not None and value < low:
            raise ValueError(f"must be >= {low}")
        return value

    return parse


def parse_str(raw: str) -> str:
    return raw


def parse_nonempty(raw: str) -> str:
    if not raw.strip():
        raise ValueError("must not be empty")
    return raw.strip()


def parse_bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


def parse_list(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def load(prefix: str, specs: list[Spec], env: Mapping[str, str]) -> dict[str, Any]:
    """Parse every spec from ``env``; raise SettingsError listing all problems at once."""
    values: dict[str, Any] = {}
    errors: list[str] = []
    for spec in specs:
        key = prefix + spec.name
        raw = env.get(key, spec.default)
        if raw is None:
            errors.append(f"{key}: required ({spec.help})")
            continue
        try:
            values[spec.name.lower()] = spec.parse(raw)
        except ValueError as exc:
            if spec.secret:
                # The parser's message may quote its input (int() does): never let it carry the secret.
                errors.append(f"{key}=<secret>: invalid value")
            else:
                errors.append(f"{key}={raw!r}: {exc}")
    if errors:
        raise SettingsError(errors)
    return values


def describe(prefix: str, specs: list[Spec]) -> str:
    """A table of every setting, for ``--help`` and the README."""
    return "\n".join(
        f"{prefix}{s.name:<28} default={'(required)' if s.default is None else repr(s.default):<24} {s.help}"
        for s in specs
    )
