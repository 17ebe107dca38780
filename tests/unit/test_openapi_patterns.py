"""The documents' term patterns accept exactly what the servers accept, read as a JSON Schema validator reads them.

JSON Schema patterns are ECMA-262 regular expressions, where \\w is ASCII only; the servers check terms with
Python's Unicode \\w. A pattern written in Python's dialect therefore told a fuzzer that "ÿ" is invalid while the
edge accepted it (a CI failure). These tests sweep the code points, as a term's first and as a later
character, through jsonschema_rs (the validator schemathesis uses) and through the servers' own parsers: all of
them for the edge, and for the slower control-plane parser all below U+3000 and every 13th above.
"""

from __future__ import annotations

import random
import subprocess
import sys
import unicodedata
from collections.abc import Callable

import jsonschema_rs
import pytest

from control_plane.models import FieldError, validate_targeting
from control_plane.openapi import OPENAPI as CP_OPENAPI
from edge.adrequest import parse_ad_request, parse_pixel
from edge.openapi import OPENAPI as EDGE_OPENAPI


def _edge_seg_schema() -> dict[str, object]:
    params = EDGE_OPENAPI["paths"]["/v1/pixel"]["get"]["parameters"]
    return next(p["schema"] for p in params if p["name"] == "seg")


def _edge_accepts(term: str) -> bool:
    return not isinstance(parse_pixel({"adv": "acme", "seg": term, "user": "u1"}), list)


def _cp_accepts(term: str) -> bool:
    errors: list[FieldError] = []
    validate_targeting({"interests": [term]}, errors)
    return not errors


def _code_points(stride_above: int = 0x10FFFF) -> list[str]:
    """Every code point up to ``stride_above``, then every 13th (the control plane's parser is slower)."""
    return [chr(cp) for cp in range(sys.maxunicode + 1)
            if not 0xD800 <= cp <= 0xDFFF and (cp <= stride_above or cp % 13 == 0)]


@pytest.mark.parametrize(("schema", "accepts", "stride_above"), [
    pytest.param(_edge_seg_schema, _edge_accepts, 0x10FFFF, id="edge-pixel-seg"),
    pytest.param(lambda: CP_OPENAPI["components"]["schemas"]["Targeting"]["properties"]["interests"]["items"],
                 _cp_accepts, 0x3000, id="control-plane-interests"),
])
def test_term_pattern_matches_the_server_on_every_code_point(
    schema: Callable[[], dict[str, object]], accepts: Callable[[str], bool], stride_above: int,
) -> None:
    validator = jsonschema_rs.validator_for(schema())
    disagree: list[tuple[str, bool, bool]] = []
    for c in _code_points(stride_above):
        for term in (c, "a" + c):
            documented = validator.is_valid(term)
            if documented != accepts(term):
                disagree.append((term, documented, accepts(term)))
    # The validator knows a newer Unicode than this Python: letters assigned since are documented as letters
    # and refused by the server. Those are the only disagreement allowed, and only in that direction.
    real = [(t, d, s) for t, d, s in disagree
            if not (d and not s and any(unicodedata.category(ch) == "Cn" for ch in t))]
    assert not real, real[:10]
    assert validator.is_valid("Fußball") and validator.is_valid(" café ") and validator.is_valid("中文 新闻")
    assert not validator.is_valid("_x") and not validator.is_valid("a.b") and not validator.is_valid("a" * 65)


def _edge_interests_pattern() -> str:
    params = EDGE_OPENAPI["paths"]["/v1/ads"]["get"]["parameters"]
    return next(p["schema"]["pattern"] for p in params if p["name"] == "interests")


def test_the_interests_pattern_accepts_the_lists_the_edge_accepts() -> None:
    validator = jsonschema_rs.validator_for({"type": "string", "pattern": _edge_interests_pattern()})
    rng = random.Random(5)
    alphabet = ["a", "Z", "5", "é", " ", "\t", "\xa0", "_", "-", ",", "\u0130", "!"]
    lists = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))) for _ in range(20_000)]
    lists += [f"x,{'a' * n}{tail}" for n in (63, 64, 65) for tail in ("", " ", "-", " b")]
    # At the limit of 50: empty segments count as the pattern counts them.
    lists += [",".join(["a"] * n) + tail for n in (49, 50, 51) for tail in ("", ",", ", ", ",,")]
    for interests in lists:
        served = not isinstance(parse_ad_request({"placement": "p", "format": "300x250", "interests": interests}, 6),
                                list)
        assert validator.is_valid(interests) == served, repr(interests)


def test_the_interests_pattern_refuses_a_long_bad_list_without_backtracking() -> None:
    """Each interest must match the pattern's segment in one way only: with "ws* (term)? ws*" (and terms that
    may end in spaces) a run of spaces matched in several ways, so a list that fails at its end made a
    backtracking engine try every combination: a dozen segments took Python's re 11 s, and the fuzzer hung
    in a regex no timeout interrupts. In a child process, so a regression fails instead of hanging."""
    pattern = _edge_interests_pattern().replace(r"[\p{L}\p{N}]", r"[^\W_]").replace(r"[\p{L}\p{N}_ -]", r"[\w -]")
    pattern = pattern.replace(r"[\p{L}\p{N}_-]", r"[\w-]")
    assert r"\p" not in pattern  # Python's dialect: \w is \p{L}, \p{N} and '_' (the test above)
    bad = ",".join(["a   "] * 49) + ",!"
    code = f"import re; print(bool(re.search({pattern!r}, {bad!r})), bool(re.search({pattern!r}, {bad[:-2]!r})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["False", "True"], out.stderr
