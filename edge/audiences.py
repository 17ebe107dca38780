"""Real-time audiences: the behavioural segments a consenting user is in. Pure: the profile store
(``edge.profile_store``) keeps when the user was last seen in each segment; this module names segments,
says what to record and which segments are fresh.

Two kinds of behaviour put a user in a segment, and campaigns target segments through ``interests``:

- **page keywords**: an ad request from a page about "running shoes" puts its reader in ``kw-running shoes``
  for ``SEGMENT_TTL_S``, so a campaign targeting that segment reaches them on other pages later. Only
  segments some live campaign targets are recorded (data minimisation, and one write fewer per request).
- **retargeting pixel**: an advertiser's page fires ``/v1/pixel?adv=<id>&seg=<name>&user=...``; the user
  joins ``rt-<advertiser id>-<name>``. A campaign targets its own lists as ``rt-<name>``: the control plane
  writes its advertiser id in, so no advertiser can target another's visitors.

A fresh segment joins the request's interests before retrieval, so targeting needs no new machinery.
Without consent there is no user key: nothing is recorded or read.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from replication.segments import KEYWORD_PREFIX

SEGMENT_TTL_S = 30 * 86_400
SEGMENT_FIELD = "s:"  # a segment's field in the profile (the others are caps: edge.frequency)
MAX_SEGMENTS_PER_USER = 200  # the freshest are used: a profile cannot blow up the interest dimension


def segment_field(segment: str) -> str:
    return SEGMENT_FIELD + segment


def keyword_segments(keywords: Iterable[str], in_use: frozenset[str]) -> list[str]:
    """The page's keyword segments worth recording: those some live campaign targets."""
    return [s for s in (KEYWORD_PREFIX + k for k in keywords) if s in in_use]


def to_record(segments: Iterable[str]) -> list[tuple[str, int, int]]:
    """Profile fields for the store: one time kept per segment (when last seen), living ``SEGMENT_TTL_S``."""
    return [(segment_field(s), 1, SEGMENT_TTL_S) for s in segments]


def fresh_segments(history: Mapping[str, Sequence[float]], now_s: float) -> tuple[str, ...]:
    """The segments the user was seen in within ``SEGMENT_TTL_S``, freshest first."""
    seen = [(max(times), name[len(SEGMENT_FIELD):]) for name, times in history.items()
            if name.startswith(SEGMENT_FIELD) and times and max(times) > now_s - SEGMENT_TTL_S]
    seen.sort(reverse=True)
    return tuple(name for _, name in seen[:MAX_SEGMENTS_PER_USER])


