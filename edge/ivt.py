"""Invalid-traffic (IVT) rules for beacons, after the MRC general-IVT list. Pure: no I/O, no clock, no randomness.

Mark, don't block: ``classify`` never raises and never refuses a beacon. It returns a ``Verdict`` whose
``reason`` the caller stores on the event (``replication.events.InvalidReason`` has the same values), so the
event is kept, counted in the gross and invalid columns of reports, and excluded from billing, pacing and
learning. The rules run in a fixed order and the first one that fires is the reason:

1. dual-pass user agent: a known-bot pattern matches -> ``known_bot``; else no valid-browser pattern matches
   (an empty user agent included) -> ``invalid_user_agent``
2. the client IP is in a datacenter range (IPv4 and IPv6) -> ``datacenter_ip``
3. the placement is invisible: the token's format (``fmt`` claim) or the size the tag measured (``sz`` param)
   has a side of 0 or 1 pixel -> ``invalid_size``
4. a click sooner than ``min_click_delay_s`` after its token was issued (``iat`` claim) -> ``click_too_fast``
5. the event's geo (CDN ``X-Geo`` header or ``geo`` param) or user agent (hashed, ``uah`` claim) differs from
   the decision's -> ``geo_mismatch`` / ``ua_mismatch``
6. per-IP or per-UA beacon counts in the flood window above their limits -> ``ip_flood`` / ``ua_flood``
7. a prefetch or prerender (``Sec-Purpose``, ``Purpose``, ``X-Purpose``, ``X-Moz`` headers) -> ``prefetch``
8. a click whose impression was never recorded -> ``click_without_impression``

Duplicate impressions and clicks are not a rule here: the event id already makes a repeat the same event.
State that needs a shared store (flood counts, which impressions were seen) comes in as ``Activity``, counted
by ``edge.ivt_store`` on the region's Redis, so this module stays a function of its arguments. A rule whose
input is missing (no ``iat`` claim, no event geo, the store unreachable) is skipped, never guessed.

Conversions arrive server to server from the advertiser, not from a browser, so none of the browser rules
apply to them: their validity rests on the signed click id they carry.

The lists (bot patterns, browser patterns, datacenter ranges) are data, parsed here by ``IvtLists.parse`` and
read from disk and refreshed by ``edge.ivt_store.ListsReloader``; the shipped files are in ``edge/ivt_data``.
"""

from __future__ import annotations

import bisect
import hashlib
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from replication.events import EventType, InvalidReason


@dataclass(frozen=True, slots=True)
class Verdict:
    reason: InvalidReason
    detail: str = ""  # for logs and debugging only: which pattern, range, count or claim made the call

    @property
    def valid(self) -> bool:
        return self.reason is InvalidReason.NONE


VALID = Verdict(InvalidReason.NONE)

# The beacons a browser fires. Decisions are the server's own; conversions are server-to-server postbacks.
BROWSER_KINDS = frozenset({EventType.IMPRESSION, EventType.CLICK, EventType.VIEWABLE})

# Headers that announce a speculative load no person asked for: Chrome and the Fetch spec (Sec-Purpose,
# "prefetch" or "prefetch;prerender"), older Chrome (Purpose), Safari's top-sites preview (X-Purpose: preview),
# Firefox (X-Moz: prefetch).
PURPOSE_HEADERS = ("sec-purpose", "purpose", "x-purpose", "x-moz")
_SPECULATIVE = re.compile(r"prefetch|prerender|preview", re.IGNORECASE)

_GEO = re.compile(r"[A-Z]{2}(-[A-Z0-9]{1,3})?")
_SIZE = re.compile(r"([0-9]{1,5})x([0-9]{1,5})")
# User agents longer than this are matched on their first part only: real ones are a few hundred characters,
# and a bounded input keeps the regex cost bounded whatever a client sends.
MAX_UA_CHARS = 1024


def ua_hash(user_agent: str) -> str:
    """The short user-agent hash the decision signs into tokens (``uah`` claim) and flood counters key on:
    8 hex characters of BLAKE2b over the exact header value. 32 bits is plenty to notice a different browser
    and keeps the token (a URL) short."""
    # Most traffic comes from a few thousand browser builds: remember those (a long header is hashed each
    # time, so the cache stays small).
    return _ua_hash_cached(user_agent) if len(user_agent) <= 512 else _ua_hash(user_agent)


def _ua_hash(user_agent: str) -> str:
    return hashlib.blake2b(user_agent.encode("utf-8", "surrogatepass"), digest_size=4).hexdigest()


_ua_hash_cached = lru_cache(maxsize=4096)(_ua_hash)


def _parse_ip(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        addr = ipaddress.ip_address(ip.strip())
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped  # ::ffff:1.2.3.4 from a dual-stack socket is the IPv4 client
    return addr


def flood_ip_key(ip: str) -> str:
    """The key an IP's flood counter uses. IPv6 counts per /64: one subscriber or one server usually holds a
    whole /64 and can rotate through it, so per-address counts would never add up."""
    addr = _parse_ip(ip)
    if addr is None:
        return ip[:64]
    if isinstance(addr, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((int(addr) >> 64 << 64, 64)))
    return str(addr)


def client_ip(peer: str, forwarded_for: str = "", trusted_hops: int = 0) -> str:
    """The client's address behind ``trusted_hops`` proxies of our own (load balancer, CDN). Each proxy appends
    the address it received the request from to ``X-Forwarded-For``, so the client is the entry ``trusted_hops``
    places from the right; everything left of it was written by the client and proves nothing. Without trusted
    proxies the TCP peer is the client. Behind a load balancer that must be configured, or every beacon comes
    from the balancer's few addresses and the flood and datacenter rules judge the balancer."""
    if trusted_hops <= 0:
        return peer
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
    if len(hops) < trusted_hops:
        return hops[0] if hops else peer  # fewer hops than configured: the leftmost is the best we have
    return hops[-trusted_hops]


class IvtListError(ValueError):
    """One or more lines of the list files are wrong; every bad line is named, not only the first."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("invalid IVT lists:\n  " + "\n  ".join(errors))
        self.errors = errors


def _lines(text: str) -> list[tuple[int, str]]:
    out = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line and not line.startswith("#"):
            out.append((number, line))
    return out


_METACHARS = re.compile(r"[\\^$.|?*+()\[\]{}]")


def _trie_regex(words: list[str]) -> str:
    """A regex matching any of ``words`` built as a trie (``goo(?:gle(?:bot|other))``...): the regex engine then
    tests one branch per character instead of every word at every position of the user agent."""
    root: dict[str, dict] = {}
    for word in words:
        node = root
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}

    def emit(node: dict[str, dict]) -> str:
        branches = [re.escape(ch) + emit(child) for ch, child in sorted(node.items()) if ch]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        if "" in node:  # a word ends here and longer ones continue: the rest is optional (greedy, so the
            return f"(?:{body})?"  # longest listed word wins)
        return body

    return emit(root)


class _Matcher:
    """A list of case-insensitive patterns searched in a user agent. Plain-text lines (nearly all of a bot list)
    are one trie regex over the lower-cased text; real regexes are searched one by one, each with its own
    literal-prefix fast path. Tens of alternatives in a single regex cost ~0.5 ms per user agent; this ~3 us."""

    def __init__(self, literals: list[str], regexes: list[tuple[str, re.Pattern[str]]]) -> None:
        self._by_text = {lit.lower(): lit for lit in literals}
        self._trie = re.compile(_trie_regex(sorted(self._by_text))) if literals else None
        self._regexes = regexes
        self.size = len(literals) + len(regexes)

    def __repr__(self) -> str:
        return f"<{self.size} patterns>"

    def search(self, ua: str) -> str | None:
        """The pattern (as written in the file) that matches somewhere in ``ua``, or None."""
        if self._trie is not None:
            m = self._trie.search(ua.lower())
            if m is not None:
                return self._by_text.get(m.group(0), m.group(0))
        for source, regex in self._regexes:
            if regex.search(ua) is not None:
                return source
        return None

    def match(self, ua: str) -> bool:
        """Whether a pattern matches at the start of ``ua`` (the browser list)."""
        if self._trie is not None and self._trie.match(ua.lower()):
            return True
        return any(regex.match(ua) is not None for _, regex in self._regexes)

    def sub(self, ua: str) -> str:
        """``ua`` with every match blanked out (the exceptions)."""
        for _, regex in self._regexes:
            ua = regex.sub(" ", ua)
        for lit in self._by_text:
            ua = re.sub(re.escape(lit), " ", ua, flags=re.IGNORECASE)
        return ua


def _compile(patterns: list[tuple[int, str]], source: str, errors: list[str]) -> _Matcher | None:
    literals: list[str] = []
    regexes: list[tuple[str, re.Pattern[str]]] = []
    for number, pattern in patterns:
        if _METACHARS.search(pattern) is None:
            literals.append(pattern)
            continue
        try:
            regexes.append((pattern, re.compile(pattern, re.IGNORECASE)))
        except re.error as exc:
            errors.append(f"{source}:{number}: bad pattern {pattern!r}: {exc}")
    if not literals and not regexes:
        return None
    return _Matcher(literals, regexes)


class IpRanges:
    """Datacenter networks as sorted, merged integer intervals per address family: a lookup is one bisect."""

    def __init__(self, networks: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]]) -> None:
        self._starts: dict[int, list[int]] = {4: [], 6: []}
        self._ends: dict[int, list[int]] = {4: [], 6: []}
        self._labels: dict[int, list[str]] = {4: [], 6: []}
        for version in (4, 6):
            spans = sorted((int(n.network_address), int(n.broadcast_address), label)
                           for n, label in networks if n.version == version)
            starts, ends, labels = self._starts[version], self._ends[version], self._labels[version]
            for start, end, label in spans:
                if ends and start <= ends[-1]:
                    # Overlapping: merge, so the intervals stay disjoint and bisect stays correct. The earlier
                    # range's label names the merged one. (Adjacent ranges stay apart and keep their labels.)
                    ends[-1] = max(ends[-1], end)
                    continue
                starts.append(start)
                ends.append(end)
                labels.append(label)
        self.count = len(networks)

    def __repr__(self) -> str:
        return f"<{self.count} networks>"

    def lookup(self, ip: str) -> str | None:
        """The provider label of the range holding ``ip``, or None (also for a string that is not an IP)."""
        addr = _parse_ip(ip)
        if addr is None:
            return None
        value = int(addr)
        starts = self._starts[addr.version]
        i = bisect.bisect_right(starts, value) - 1
        if i >= 0 and value <= self._ends[addr.version][i]:
            return self._labels[addr.version][i]
        return None


@dataclass(frozen=True)
class IvtLists:
    """The parsed, compiled lists. Immutable: a refresh builds a new one and swaps it in whole."""

    bots: _Matcher | None
    bot_exceptions: _Matcher | None
    browsers: _Matcher | None
    datacenters: IpRanges
    version: str = ""
    # Verdicts of the user-agent pass by exact user agent: the same few thousand strings make up nearly all
    # traffic, so the regex scan runs once per string. Bounded; a cache only, it never changes an answer.
    _ua_cache: dict[str, Verdict] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def parse(cls, bots: str, browsers: str, datacenters: str, *, version: str = "") -> IvtLists:
        """Parse the three list files' texts (formats in their headers). Raises ``IvtListError`` naming every
        bad line."""
        errors: list[str] = []
        bot_lines = _lines(bots)
        exceptions = [(n, line[1:].strip()) for n, line in bot_lines if line.startswith("!")]
        patterns = [(n, line) for n, line in bot_lines if not line.startswith("!")]
        bot_re = _compile(patterns, "bots.txt", errors)
        exception_re = _compile(exceptions, "bots.txt", errors)
        browser_re = _compile(_lines(browsers), "browsers.txt", errors)
        if browser_re is None and not errors:
            # An empty browser list would mark every beacon invalid: refuse it rather than bill nothing.
            errors.append("browsers.txt: no patterns (every user agent would be invalid)")
        networks = []
        for number, line in _lines(datacenters):
            cidr, _, label = line.partition(" ")
            try:
                networks.append((ipaddress.ip_network(cidr.strip(), strict=True), label.strip() or "datacenter"))
            except ValueError as exc:
                errors.append(f"datacenters.txt:{number}: {exc}")
        if errors:
            raise IvtListError(errors)
        return cls(bots=bot_re, bot_exceptions=exception_re, browsers=browser_re, datacenters=IpRanges(networks),
                   version=version)

    def user_agent_verdict(self, user_agent: str) -> Verdict:
        """Pass one (known bots) then pass two (valid browsers)."""
        cached = self._ua_cache.get(user_agent)
        if cached is not None:
            return cached
        verdict = self._classify_ua(user_agent[:MAX_UA_CHARS])
        if len(self._ua_cache) >= 50_000:
            self._ua_cache.clear()
        self._ua_cache[user_agent] = verdict
        return verdict

    def _classify_ua(self, ua: str) -> Verdict:
        if not ua.strip():
            return Verdict(InvalidReason.INVALID_USER_AGENT, "empty user agent")
        if self.bots is not None:
            pattern = self.bots.search(ua)
            if pattern is not None and self.bot_exceptions is not None:
                # Only a user agent that looks like a bot pays for the exceptions: mask them, look again.
                pattern = self.bots.search(self.bot_exceptions.sub(ua))
            if pattern is not None:
                return Verdict(InvalidReason.KNOWN_BOT, f"bot pattern {pattern!r}")
        if self.browsers is None or not self.browsers.match(ua):
            return Verdict(InvalidReason.INVALID_USER_AGENT, "matches no valid-browser pattern")
        return VALID


@dataclass(frozen=True, slots=True)
class IvtPolicy:
    """Thresholds. 0 turns a rule off."""

    min_click_delay_s: float = 1.0  # a person needs about a second to see an ad and decide to click it
    ip_limit: int = 300  # beacons per IP (IPv6: per /64) per flood window; generous for carrier-grade NAT
    # Beacons per user agent per flood window, over the region. Off by default: it must be sized above the
    # busiest real browser's rate in the region (one Chrome release can be a fifth of all traffic), and then
    # catches one odd user agent spread over many IPs.
    ua_limit: int = 0


DEFAULT_POLICY = IvtPolicy()


@dataclass(frozen=True, slots=True)
class Activity:
    """What the shared store knew when the beacon arrived (``edge.ivt_store`` fills it in)."""

    ip_count: int = 0  # beacons from this IP in the sliding flood window, this one included
    ua_count: int = 0  # beacons with this user agent in the window, this one included
    impression_seen: bool | None = None  # clicks: was the impression recorded? None: not asked, or unknown


NO_ACTIVITY = Activity()


@dataclass(frozen=True, slots=True)
class BeaconContext:
    """One beacon, as the rules see it: the verified token claims and what the request said about itself."""

    kind: EventType
    claims: Mapping[str, Any]
    user_agent: str = ""
    ip: str = ""
    geo: str = ""  # the event's geo from the CDN or the page; "" when unknown (the geo rule is then skipped)
    purpose: str = ""  # the speculative-load headers' values, joined
    rendered_size: str = ""  # "WxH" the tag measured on the slot, "" when not sent

    @classmethod
    def from_request(cls, kind: EventType, claims: Mapping[str, Any], *, ip: str, headers: Mapping[str, str],
                     params: Mapping[str, str]) -> BeaconContext:
        """Build from a request's parts (starlette's ``Headers`` is a case-insensitive mapping; pass lower-case
        names otherwise). The CDN's ``X-Geo`` wins over the page's ``geo`` param: the page also wrote the
        decision's geo, so only the CDN's can disagree with it honestly."""
        purpose = ",".join(v for v in (headers.get(h) for h in PURPOSE_HEADERS) if v)
        return cls(kind=kind, claims=claims, user_agent=headers.get("user-agent", ""), ip=ip,
                   geo=headers.get("x-geo") or params.get("geo", ""), purpose=purpose,
                   rendered_size=params.get("sz", ""))


def _size_invisible(size: object) -> bool:
    if not isinstance(size, str):
        return False
    m = _SIZE.fullmatch(size.strip().lower())
    return m is not None and (int(m.group(1)) <= 1 or int(m.group(2)) <= 1)


def _geo_mismatch(decision: object, event: str) -> str | None:
    """Compare at the precision both sides have: "US-CA" vs "US" compares countries only."""
    if not isinstance(decision, str) or not decision:
        return None
    decision, event = decision.strip().upper(), event.strip().upper()
    if not _GEO.fullmatch(event) or not _GEO.fullmatch(decision):
        return None  # unparsable on either side: skip the rule rather than guess
    if decision[:2] != event[:2] or ("-" in decision and "-" in event and decision != event):
        return f"decision {decision}, event {event}"
    return None


def classify(beacon: BeaconContext, *, now_s: float, lists: IvtLists, history: Activity = NO_ACTIVITY,
             policy: IvtPolicy = DEFAULT_POLICY) -> Verdict:
    """The first IVT rule the beacon breaks, in the order of the module docstring, or ``VALID``."""
    if beacon.kind not in BROWSER_KINDS:
        return VALID
    claims = beacon.claims
    # 1. dual-pass user agent
    verdict = lists.user_agent_verdict(beacon.user_agent if isinstance(beacon.user_agent, str) else "")
    if not verdict.valid:
        return verdict
    # 2. datacenter IP
    provider = lists.datacenters.lookup(beacon.ip)
    if provider is not None:
        return Verdict(InvalidReason.DATACENTER_IP, f"{beacon.ip} is in a {provider} range")
    # 3. invisible placement
    for source, size in (("token format", claims.get("fmt")), ("rendered size", beacon.rendered_size)):
        if _size_invisible(size):
            return Verdict(InvalidReason.INVALID_SIZE, f"{source} {size}")
    # 4. click too soon after the ad was decided (an upper bound on the time since it rendered)
    issued = claims.get("iat")
    if (beacon.kind is EventType.CLICK and policy.min_click_delay_s > 0 and isinstance(issued, int | float)
            and not isinstance(issued, bool)):
        delay = now_s - issued
        if delay < policy.min_click_delay_s:
            return Verdict(InvalidReason.CLICK_TOO_FAST, f"{delay:.3f}s after the ad was served")
    # 5. the event does not come from where, or from what, the ad was served to
    if beacon.geo:
        mismatch = _geo_mismatch(claims.get("geo"), beacon.geo)
        if mismatch:
            return Verdict(InvalidReason.GEO_MISMATCH, mismatch)
    signed_uah = claims.get("uah")
    if isinstance(signed_uah, str) and signed_uah and signed_uah != ua_hash(beacon.user_agent):
        return Verdict(InvalidReason.UA_MISMATCH, "user agent differs from the ad request's")
    # 6. floods
    if policy.ip_limit and history.ip_count > policy.ip_limit:
        return Verdict(InvalidReason.IP_FLOOD, f"{history.ip_count} beacons in the window, limit {policy.ip_limit}")
    if policy.ua_limit and history.ua_count > policy.ua_limit:
        return Verdict(InvalidReason.UA_FLOOD, f"{history.ua_count} beacons in the window, limit {policy.ua_limit}")
    # 7. speculative loads: nobody saw the page (yet)
    if beacon.purpose and _SPECULATIVE.search(beacon.purpose):
        return Verdict(InvalidReason.PREFETCH, beacon.purpose[:64])
    # 8. a click on an ad that was never rendered
    if beacon.kind is EventType.CLICK and history.impression_seen is False:
        return Verdict(InvalidReason.CLICK_WITHOUT_IMPRESSION, "impression not recorded")
    return VALID
