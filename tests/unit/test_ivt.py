"""IVT rules (edge/ivt.py) with the shipped lists, the in-memory flood counter twin and the list reloader.

Each rule is tested on both sides of its line, then the order: a beacon that breaks every rule is peeled one
rule at a time and must report the reasons in the documented order. Hypothesis checks that classify is total
(never raises) on arbitrary input, and that the trie and interval structures agree with brute force.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.datastructures import Headers

from edge.ivt import (
    DEFAULT_POLICY,
    NO_ACTIVITY,
    VALID,
    Activity,
    BeaconContext,
    IpRanges,
    IvtListError,
    IvtLists,
    IvtPolicy,
    _Matcher,
    classify,
    client_ip,
    flood_ip_key,
    ua_hash,
)
from edge.ivt_store import DATA_DIR, IvtStoreUnavailable, ListsReloader, MemoryFloodCounter, load_lists
from replication.events import EventType, InvalidReason

NOW = 1_700_000_000.0
CHROME = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/124.0.0.0 Safari/537.36")
RESIDENTIAL_IP = "81.2.69.160"  # not in any shipped datacenter range
LISTS = load_lists()


def beacon(kind: EventType = EventType.IMPRESSION, *, ua: str = CHROME, ip: str = RESIDENTIAL_IP, geo: str = "",
           purpose: str = "", size: str = "", **claims: object) -> BeaconContext:
    base: dict[str, object] = {"imp": "auc-0", "geo": "US-CA", "fmt": "300x250", "iat": NOW - 30,
                               "uah": ua_hash(ua)}
    base.update(claims)
    return BeaconContext(kind=kind, claims=base, user_agent=ua, ip=ip, geo=geo, purpose=purpose,
                         rendered_size=size)


def reason(b: BeaconContext, history: Activity = NO_ACTIVITY, policy: IvtPolicy = DEFAULT_POLICY, now: float = NOW):
    return classify(b, now_s=now, lists=LISTS, history=history, policy=policy).reason


# --- the reasons are the event schema's --------------------------------------------------------------------


def test_every_ivt_reason_is_a_stored_invalid_reason():
    # The caller stores InvalidReason(verdict.reason.value): a value missing there would crash the beacon path.
    assert {r.value for r in InvalidReason} <= {r.value for r in InvalidReason}


# --- 1. dual-pass user agent -------------------------------------------------------------------------------

BOTS = [
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.6367.201 Mobile Safari/537.36 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
    "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
    "Mozilla/5.0 (compatible; SemrushBot/7~bl; +http://www.semrush.com/bot.html)",
    "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.1; +https://openai.com/gptbot)",
    "Mozilla/5.0 (compatible; YandexImages/3.0; +http://yandex.com/bots)",
    "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
    "python-requests/2.32.3",
    "python-httpx/0.28.1",
    "curl/8.5.0",
    "Wget/1.21.4",
    "Go-http-client/2.0",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/124.0.0.0 "
    "Safari/537.36",
    "Mozilla/5.0 (Linux; Android 10; CUBOT X30) Googlebot/2.1",  # the CUBOT exception does not shield a bot
]

BROWSERS = [
    CHROME,
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 "
    "Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 "
    "Safari/537.36 Edg/124.0.2478.80",
    "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/24.0 "
    "Chrome/117.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; WOW64; Trident/7.0; rv:11.0) like Gecko",
    # A phone brand containing "bot": the exception list keeps it a browser.
    "Mozilla/5.0 (Linux; Android 10; CUBOT X30) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 "
    "Mobile Safari/537.36",
    # An in-app web view (Facebook on iOS) is still a WebKit browser.
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Mobile/15E148 [FBAN/FBIOS;FBAV/460.0.0.41.105;FBBV/590000000]",
]


@pytest.mark.parametrize("ua", BOTS)
def test_known_bots_are_marked_known_bot(ua):
    verdict = classify(beacon(ua=ua), now_s=NOW, lists=LISTS)
    assert verdict.reason is InvalidReason.KNOWN_BOT
    assert "bot pattern" in verdict.detail


@pytest.mark.parametrize("ua", BROWSERS)
def test_real_browsers_pass_both_user_agent_passes(ua):
    assert classify(beacon(ua=ua), now_s=NOW, lists=LISTS) == VALID


@pytest.mark.parametrize("ua", ["", "   ", "Mozilla/4.0", "MyApp/1.0 (iOS)", "Mozilla/5.0", "okhttp/4.12.0"])
def test_user_agents_that_are_no_known_browser_are_invalid(ua):
    assert reason(beacon(ua=ua)) is InvalidReason.INVALID_USER_AGENT


def test_the_bot_pass_runs_before_the_browser_pass():
    # A Googlebot UA also matches the browser list's WebKit form: pass one must win.
    assert LISTS.browsers is not None and LISTS.browsers.match(BOTS[1])
    assert reason(beacon(ua=BOTS[1])) is InvalidReason.KNOWN_BOT


def test_matching_is_case_insensitive():
    assert reason(beacon(ua="Mozilla/5.0 (compatible; GOOGLEBOT/2.1)")) is InvalidReason.KNOWN_BOT
    assert reason(beacon(ua="mozilla/5.0 (x11; linux x86_64; rv:125.0) gecko/20100101 firefox/125.0")) \
        is InvalidReason.NONE


def test_a_huge_user_agent_is_classified_on_its_first_kilobyte():
    assert reason(beacon(ua=CHROME + " x" * 100_000)) is InvalidReason.NONE
    assert reason(beacon(ua="Mozilla/5.0 " + "a" * 5_000 + " Googlebot")) is InvalidReason.INVALID_USER_AGENT


@settings(max_examples=300, deadline=None)
@given(words=st.lists(st.text(alphabet="abcAB-/ .", min_size=1, max_size=6), min_size=1, max_size=12),
       text=st.text(alphabet="abcAB-/ .xyz", max_size=40))
def test_the_literal_trie_finds_exactly_the_substrings(words, text):
    matcher = _Matcher(words, [])
    found = matcher.search(text)
    expected = [w for w in words if w.lower() in text.lower()]
    assert (found is not None) == bool(expected)
    if found is not None:
        assert found.lower() in text.lower()


# --- list parsing ------------------------------------------------------------------------------------------


def test_shipped_lists_parse_and_are_not_trivial():
    assert LISTS.bots is not None and LISTS.bots.size >= 50
    assert LISTS.datacenters.count >= 100


def test_every_bad_line_is_named_at_once():
    with pytest.raises(IvtListError) as err:
        IvtLists.parse("googlebot\n# comment\nbad(regex\n", "^Mozilla/5\\.0\n[\n",
                       "3.5.0.1/16 aws\nnot-an-ip x\n10.0.0.0/8 lab\n")
    text = "\n".join(err.value.errors)
    assert "bots.txt:3" in text and "browsers.txt:2" in text
    assert "datacenters.txt:1" in text and "datacenters.txt:2" in text  # host bits set; not a network
    assert len(err.value.errors) == 4


def test_an_empty_browser_list_is_refused():
    # It would make every beacon invalid_user_agent: nothing would ever bill.
    with pytest.raises(IvtListError, match="no patterns"):
        IvtLists.parse("googlebot\n", "# nothing\n", "")


# --- 2. datacenter IPs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("ip", "provider"), [
    ("3.0.0.0", "aws"), ("3.127.255.255", "aws"), ("3.5.140.2", "aws"),
    ("35.192.0.1", "gcp"), ("66.249.66.1", "google-crawler"), ("40.76.4.15", "azure"),
    ("104.131.10.10", "digitalocean"), ("5.9.1.1", "hetzner"), ("51.68.0.1", "ovh"),
    ("2600:1f18:4a3:6900::1", "aws"), ("2001:4860:4801:10::1", "google-crawler"), ("2a01:4f8:c17:1::1", "hetzner"),
    ("2604:a880:800:10::1", "digitalocean"),
    ("::ffff:3.5.140.2", "aws"),  # a dual-stack socket's view of an IPv4 client
])
def test_datacenter_addresses_are_found_with_their_provider(ip, provider):
    assert LISTS.datacenters.lookup(ip) == provider
    verdict = classify(beacon(ip=ip), now_s=NOW, lists=LISTS)
    assert verdict.reason is InvalidReason.DATACENTER_IP
    assert provider in verdict.detail


@pytest.mark.parametrize("ip", ["3.128.0.0", "2.255.255.255", RESIDENTIAL_IP, "127.0.0.1", "192.168.1.10",
                                "2001:4860:4860::8888", "2a02:1810::1", "", "not-an-ip", "1.2.3.4.5"])
def test_other_addresses_are_not_datacenter(ip):
    assert LISTS.datacenters.lookup(ip) is None


def test_overlapping_ranges_merge_and_adjacent_ones_keep_their_labels():
    nets = [(ipaddress.ip_network(n), label) for n, label in [
        ("10.0.0.0/8", "a"), ("10.1.0.0/16", "b"), ("11.0.0.0/8", "c"), ("12.0.0.0/24", "d"),
        ("2001:db8::/32", "v6"), ("2001:db8:1::/48", "inner"),
    ]]
    ranges = IpRanges(nets)
    assert ranges.lookup("10.1.2.3") == "a"  # inside both: the merged range keeps the first label
    assert ranges.lookup("11.0.0.0") == "c"  # adjacent to 10/8, not inside it: keeps its own label
    assert ranges.lookup("12.0.0.255") == "d"
    assert ranges.lookup("12.0.1.0") is None
    assert ranges.lookup("2001:db8:1::5") == "v6"
    assert ranges.lookup("2001:db9::") is None
    assert ranges.lookup("10.0.0.0") == "a" and ranges.lookup("9.255.255.255") is None


@settings(max_examples=200, deadline=None)
@given(nets=st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(8, 32)), min_size=1, max_size=20),
       probes=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=30))
def test_ipv4_lookup_agrees_with_brute_force(nets, probes):
    networks = [ipaddress.IPv4Network((addr >> (32 - p) << (32 - p), p)) for addr, p in nets]
    ranges = IpRanges([(n, "x") for n in networks])
    # Probe the edges of every network too: that is where an off-by-one lives.
    edges = [int(n.network_address) + d for n in networks for d in (-1, 0)] + \
            [int(n.broadcast_address) + d for n in networks for d in (0, 1)]
    for value in probes + [e for e in edges if 0 <= e < 2**32]:
        addr = ipaddress.IPv4Address(value)
        assert (ranges.lookup(str(addr)) is not None) == any(addr in n for n in networks)


@settings(max_examples=100, deadline=None)
@given(nets=st.lists(st.tuples(st.integers(0, 2**128 - 1), st.integers(16, 128)), min_size=1, max_size=10),
       probes=st.lists(st.integers(0, 2**128 - 1), max_size=20))
def test_ipv6_lookup_agrees_with_brute_force(nets, probes):
    networks = [ipaddress.IPv6Network((addr >> (128 - p) << (128 - p), p)) for addr, p in nets]
    ranges = IpRanges([(n, "x") for n in networks])
    edges = [int(n.network_address) - 1 for n in networks] + [int(n.broadcast_address) + 1 for n in networks] + \
            [int(n.network_address) for n in networks] + [int(n.broadcast_address) for n in networks]
    for value in probes + [e for e in edges if 0 <= e < 2**128]:
        addr = ipaddress.IPv6Address(value)
        if addr.ipv4_mapped is not None:
            continue  # looked up as IPv4, by design
        assert (ranges.lookup(str(addr)) is not None) == any(addr in n for n in networks)


def test_client_ip_behind_trusted_proxies():
    assert client_ip("10.0.0.5") == "10.0.0.5"
    assert client_ip("10.0.0.5", "81.2.69.160", 0) == "10.0.0.5"  # untrusted header ignored
    assert client_ip("10.0.0.5", "81.2.69.160", 1) == "81.2.69.160"
    # The client forged a first entry; our one proxy appended the real peer: take the rightmost.
    assert client_ip("10.0.0.5", "3.5.140.2, 81.2.69.160", 1) == "81.2.69.160"
    assert client_ip("10.0.0.5", "81.2.69.160, 172.64.0.9", 2) == "81.2.69.160"  # CDN, then our balancer
    assert client_ip("10.0.0.5", "", 1) == "10.0.0.5"


# --- 3. sizes ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["0x0", "1x1", "300x1", "1x250", "0x600"])
def test_invisible_formats_in_the_token_are_invalid_size(fmt):
    assert reason(beacon(fmt=fmt)) is InvalidReason.INVALID_SIZE


@pytest.mark.parametrize("size", ["1x1", "0x0", "728x0"])
def test_an_invisible_rendered_size_is_invalid_size(size):
    assert reason(beacon(size=size)) is InvalidReason.INVALID_SIZE


@pytest.mark.parametrize("value", ["300x250", "2x2", "", "garbage", None, 7])
def test_visible_or_unknown_sizes_pass(value):
    assert reason(beacon(fmt=value, size=value if isinstance(value, str) else "")) is InvalidReason.NONE


# --- 4. click too fast -------------------------------------------------------------------------------------


def test_a_click_within_a_second_of_the_decision_is_too_fast():
    assert reason(beacon(EventType.CLICK, iat=NOW - 0.4)) is InvalidReason.CLICK_TOO_FAST
    assert reason(beacon(EventType.CLICK, iat=NOW - 0.999)) is InvalidReason.CLICK_TOO_FAST
    assert reason(beacon(EventType.CLICK, iat=NOW - 1.0)) is InvalidReason.NONE
    assert reason(beacon(EventType.CLICK, iat=int(NOW) - 5)) is InvalidReason.NONE


def test_click_speed_rule_is_configurable_and_skipped_without_iat():
    assert reason(beacon(EventType.CLICK, iat=NOW - 2), policy=IvtPolicy(min_click_delay_s=3)) \
        is InvalidReason.CLICK_TOO_FAST
    assert reason(beacon(EventType.CLICK, iat=NOW), policy=IvtPolicy(min_click_delay_s=0)) is InvalidReason.NONE
    for missing in (None, "soon", True):
        assert reason(beacon(EventType.CLICK, iat=missing)) is InvalidReason.NONE


def test_only_clicks_can_be_too_fast():
    assert reason(beacon(EventType.IMPRESSION, iat=NOW)) is InvalidReason.NONE
    assert reason(beacon(EventType.VIEWABLE, iat=NOW)) is InvalidReason.NONE


# --- 5. geo and user-agent mismatch ------------------------------------------------------------------------


@pytest.mark.parametrize(("decision", "event", "expected"), [
    ("US-CA", "US-CA", InvalidReason.NONE),
    ("US-CA", "US", InvalidReason.NONE),  # the event only knows the country: compare countries
    ("US", "US-NY", InvalidReason.NONE),
    ("US-CA", "us-ca", InvalidReason.NONE),
    ("US-CA", "US-NY", InvalidReason.GEO_MISMATCH),
    ("US-CA", "DE", InvalidReason.GEO_MISMATCH),
    ("DE", "FR-IDF", InvalidReason.GEO_MISMATCH),
    ("", "DE", InvalidReason.NONE),  # the decision had no geo
    ("US", "", InvalidReason.NONE),  # the event has none: rule skipped
    ("US", "garbage!", InvalidReason.NONE),
    (None, "DE", InvalidReason.NONE),
])
def test_geo_mismatch(decision, event, expected):
    b = BeaconContext(EventType.IMPRESSION, {"geo": decision}, user_agent=CHROME, ip=RESIDENTIAL_IP, geo=event)
    assert reason(b) is expected


def test_a_different_user_agent_than_the_ad_requests_is_ua_mismatch():
    firefox = BROWSERS[1]
    assert reason(beacon(ua=firefox, uah=ua_hash(CHROME))) is InvalidReason.UA_MISMATCH
    assert reason(beacon(ua=CHROME, uah=ua_hash(CHROME))) is InvalidReason.NONE
    assert reason(beacon(ua=firefox, uah=None)) is InvalidReason.NONE  # old tokens without uah: skipped


def test_ua_hash_is_short_stable_and_total():
    assert ua_hash(CHROME) == ua_hash(CHROME) and len(ua_hash(CHROME)) == 8
    int(ua_hash(CHROME), 16)
    assert ua_hash(CHROME) != ua_hash(CHROME + " ")
    assert ua_hash("\ud800 lone surrogate") != ua_hash("")


# --- 6. floods ---------------------------------------------------------------------------------------------


def test_ip_and_ua_floods_fire_above_their_limits():
    policy = IvtPolicy(ip_limit=100, ua_limit=1000)
    assert reason(beacon(), Activity(ip_count=100, ua_count=1000), policy) is InvalidReason.NONE
    assert reason(beacon(), Activity(ip_count=101, ua_count=1000), policy) is InvalidReason.IP_FLOOD
    assert reason(beacon(), Activity(ip_count=1, ua_count=1001), policy) is InvalidReason.UA_FLOOD
    assert reason(beacon(), Activity(ip_count=10**9, ua_count=10**9), IvtPolicy(ip_limit=0, ua_limit=0)) \
        is InvalidReason.NONE


def test_ipv6_floods_count_per_64():
    assert flood_ip_key("2a02:1810:1:2:aaaa::1") == flood_ip_key("2a02:1810:1:2:bbbb::9") == "2a02:1810:1:2::/64"
    assert flood_ip_key("2a02:1810:1:3::1") != flood_ip_key("2a02:1810:1:2::1")
    assert flood_ip_key("81.2.69.160") == "81.2.69.160"
    assert flood_ip_key("::ffff:81.2.69.160") == "81.2.69.160"


# --- 7. prefetch -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("purpose", ["prefetch", "prefetch;prerender", "Prefetch", "preview", "prefetch,x"])
def test_speculative_loads_are_prefetch(purpose):
    assert reason(beacon(purpose=purpose)) is InvalidReason.PREFETCH


def test_purpose_headers_are_read_from_the_request():
    for name, value in [("Sec-Purpose", "prefetch;prerender"), ("Purpose", "prefetch"), ("X-Moz", "prefetch"),
                        ("X-Purpose", "preview")]:
        ctx = BeaconContext.from_request(EventType.IMPRESSION, {"geo": "US"}, ip=RESIDENTIAL_IP,
                                         headers=Headers({"user-agent": CHROME, name: value}), params={})
        assert reason(ctx) is InvalidReason.PREFETCH, name
    ctx = BeaconContext.from_request(EventType.IMPRESSION, {"geo": "US"}, ip=RESIDENTIAL_IP,
                                     headers=Headers({"user-agent": CHROME}), params={})
    assert reason(ctx) is InvalidReason.NONE


def test_cdn_geo_header_wins_over_the_pages_geo_param():
    ctx = BeaconContext.from_request(EventType.CLICK, {"geo": "US"}, ip=RESIDENTIAL_IP,
                                     headers=Headers({"user-agent": CHROME, "X-Geo": "DE"}),
                                     params={"geo": "US", "sz": "300x250"})
    assert ctx.geo == "DE" and ctx.user_agent == CHROME and ctx.rendered_size == "300x250"
    assert reason(ctx) is InvalidReason.GEO_MISMATCH
    assert BeaconContext.from_request(EventType.CLICK, {}, ip="", headers=Headers({}), params={"geo": "FR"}).geo \
        == "FR"


# --- 8. click without impression ---------------------------------------------------------------------------


def test_click_without_a_recorded_impression():
    assert reason(beacon(EventType.CLICK), Activity(impression_seen=False)) is InvalidReason.CLICK_WITHOUT_IMPRESSION
    assert reason(beacon(EventType.CLICK), Activity(impression_seen=True)) is InvalidReason.NONE
    assert reason(beacon(EventType.CLICK), Activity(impression_seen=None)) is InvalidReason.NONE  # store unknown
    assert reason(beacon(EventType.IMPRESSION), Activity(impression_seen=False)) is InvalidReason.NONE


# --- kinds the rules do not apply to -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", [EventType.CONVERSION, EventType.DECISION])
def test_server_side_events_are_never_browser_ivt(kind):
    # A conversion postback comes from the advertiser's server: curl from AWS is normal there.
    b = beacon(kind, ua="curl/8.5.0", ip="3.5.140.2", fmt="1x1", iat=NOW, purpose="prefetch")
    assert classify(b, now_s=NOW, lists=LISTS, history=Activity(10**6, 10**6, False)) == VALID


# --- rule order --------------------------------------------------------------------------------------------


def test_rules_fire_in_the_documented_order():
    policy = IvtPolicy(min_click_delay_s=1, ip_limit=10, ua_limit=10)
    bad = beacon(EventType.CLICK, ua="curl/8.5.0", ip="3.5.140.2", fmt="1x1", iat=NOW, geo="DE", purpose="prefetch",
                 uah=ua_hash("something else"))
    history = Activity(ip_count=11, ua_count=11, impression_seen=False)
    fixes = [
        (InvalidReason.KNOWN_BOT, lambda b, h: (replace(b, user_agent="Mozilla/5.0 (Lynx)"), h)),
        (InvalidReason.INVALID_USER_AGENT, lambda b, h: (replace(b, user_agent=CHROME), h)),
        (InvalidReason.DATACENTER_IP, lambda b, h: (replace(b, ip=RESIDENTIAL_IP), h)),
        (InvalidReason.INVALID_SIZE, lambda b, h: (replace(b, claims={**b.claims, "fmt": "300x250"}), h)),
        (InvalidReason.CLICK_TOO_FAST, lambda b, h: (replace(b, claims={**b.claims, "iat": NOW - 5}), h)),
        (InvalidReason.GEO_MISMATCH, lambda b, h: (replace(b, geo="US"), h)),
        (InvalidReason.UA_MISMATCH, lambda b, h: (replace(b, claims={**b.claims, "uah": ua_hash(CHROME)}), h)),
        (InvalidReason.IP_FLOOD, lambda b, h: (b, replace(h, ip_count=1))),
        (InvalidReason.UA_FLOOD, lambda b, h: (b, replace(h, ua_count=1))),
        (InvalidReason.PREFETCH, lambda b, h: (replace(b, purpose=""), h)),
        (InvalidReason.CLICK_WITHOUT_IMPRESSION, lambda b, h: (b, replace(h, impression_seen=True))),
    ]
    seen = []
    for _, fix in fixes:
        seen.append(classify(bad, now_s=NOW, lists=LISTS, history=history, policy=policy).reason)
        bad, history = fix(bad, history)
    assert seen == [expected for expected, _ in fixes]
    assert classify(bad, now_s=NOW, lists=LISTS, history=history, policy=policy) == VALID
    # every IVT rule is in the order test (duplicate and over_budget are decided elsewhere, not by classify)
    assert set(seen) == set(InvalidReason) - {InvalidReason.NONE, InvalidReason.DUPLICATE, InvalidReason.OVER_BUDGET}


# --- classify is total -------------------------------------------------------------------------------------

_claim_values = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=40),
                          st.binary(max_size=8), st.lists(st.integers(), max_size=2))


@settings(max_examples=500, deadline=None)
@given(kind=st.sampled_from(list(EventType)), ua=st.text(max_size=300), ip=st.text(max_size=60),
       geo=st.text(max_size=10), purpose=st.text(max_size=30), size=st.text(max_size=12),
       claims=st.dictionaries(st.sampled_from(["geo", "fmt", "iat", "uah", "imp", "x"]), _claim_values),
       now=st.floats(allow_nan=True, allow_infinity=True), counts=st.tuples(st.integers(), st.integers()),
       seen=st.sampled_from([None, True, False]))
def test_classify_never_raises(kind, ua, ip, geo, purpose, size, claims, now, counts, seen):
    verdict = classify(BeaconContext(kind, claims, user_agent=ua, ip=ip, geo=geo, purpose=purpose,
                                     rendered_size=size),
                       now_s=now, lists=LISTS, history=Activity(*counts, impression_seen=seen),
                       policy=IvtPolicy(ip_limit=5, ua_limit=5))
    assert isinstance(verdict.reason, InvalidReason)
    flood_ip_key(ip)
    ua_hash(ua)


# --- the in-memory flood counter (the Redis adapter's twin; parity is checked against Redis in integration) --


def run(coro):
    return asyncio.run(coro)


def test_memory_counter_counts_per_ip_and_ua_with_a_sliding_window():
    async def scenario():
        store = MemoryFloodCounter(window_s=60)
        t0 = 60 * 1000.0  # a window boundary
        for _ in range(10):
            await store.hit("81.2.69.160", "ua1", t0 + 1)
        assert await store.hit("81.2.69.160", "ua1", t0 + 2) == (11, 11)
        assert await store.hit("81.2.69.161", "ua1", t0 + 3) == (1, 12)  # another IP, same UA
        # Half way into the next window: the previous window's 11 count half.
        assert await store.hit("81.2.69.160", "ua2", t0 + 90) == (1 + 5, 1)
        # Two windows later nothing is left.
        assert await store.hit("81.2.69.160", "ua1", t0 + 181) == (1, 1)
    run(scenario())


def test_memory_counter_remembers_impressions_for_one_to_two_buckets():
    async def scenario():
        store = MemoryFloodCounter(impression_ttl_s=100)
        await store.mark_impression("imp-1", 1050.0)
        assert await store.seen_impression("imp-1", 1050.0) is True
        assert await store.seen_impression("imp-2", 1050.0) is False
        assert await store.seen_impression("imp-1", 1199.0) is True  # previous bucket still looked at
        assert await store.seen_impression("imp-1", 1200.0) is False  # two buckets on: forgotten
        a = await store.observe("81.2.69.160", "ua", 1300.0, mark_impression="imp-3")
        assert a.impression_seen is None and a.ip_count == 1
        assert (await store.observe("81.2.69.160", "ua", 1301.0, check_impression="imp-3")).impression_seen
    run(scenario())


def test_memory_counter_without_impression_tracking_answers_unknown():
    async def scenario():
        store = MemoryFloodCounter(track_impressions=False)
        await store.mark_impression("imp-1", NOW)
        assert await store.seen_impression("imp-1", NOW) is None
    run(scenario())


def test_store_failure_fails_open_then_skips_until_retry():
    async def scenario():
        store = MemoryFloodCounter(retry_after_s=2.0)
        store.fail_next = ConnectionError("redis down")
        assert await store.observe("1.2.3.4", "ua", NOW, check_impression="imp") == Activity()
        assert store.stats.failures == 1 and "redis down" in store.stats.last_error
        assert await store.observe("1.2.3.4", "ua", NOW + 1, check_impression="imp") == Activity()
        assert store.stats.skipped == 1 and store.stats.calls == 0
        a = await store.observe("1.2.3.4", "ua", NOW + 2, check_impression="imp")
        assert a.impression_seen is False and a.ip_count == 1 and store.stats.calls == 1
    run(scenario())


def test_store_failure_fails_closed_when_configured():
    async def scenario():
        store = MemoryFloodCounter(fail_open=False)
        store.fail_next = TimeoutError("slow")
        with pytest.raises(IvtStoreUnavailable):
            await store.observe("1.2.3.4", "ua", NOW)
        with pytest.raises(IvtStoreUnavailable):
            await store.observe("1.2.3.4", "ua", NOW + 0.5)  # still inside the breaker's pause
        assert store.stats.failures == 1 and store.stats.skipped == 1
    run(scenario())


# --- list files and the reloader ---------------------------------------------------------------------------


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    target = tmp_path / "ivt"
    shutil.copytree(DATA_DIR, target)
    return target


def _touch_later(path: Path, text: str) -> None:
    path.write_text(text)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))  # a visibly newer mtime


def test_reloader_picks_up_changed_files_after_its_check_interval(data_dir: Path):
    reloader = ListsReloader(data_dir, check_every_s=30)
    first = reloader.current(NOW)
    ua = "Mozilla/5.0 (Windows NT 10.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 ExampleScanner/1.0"
    assert first.user_agent_verdict(ua).valid
    _touch_later(data_dir / "bots.txt", (data_dir / "bots.txt").read_text() + "\nexamplescanner\n")
    assert reloader.current(NOW + 10) is first  # not yet time to look
    second = reloader.current(NOW + 31)
    assert second is not first and reloader.reloads == 1
    assert second.user_agent_verdict(ua).reason is InvalidReason.KNOWN_BOT
    assert reloader.current(NOW + 62) is second  # unchanged files: no re-parse


def test_reloader_keeps_the_old_lists_when_a_file_is_broken(data_dir: Path):
    reloader = ListsReloader(data_dir, check_every_s=0)
    first = reloader.current(NOW)
    _touch_later(data_dir / "datacenters.txt", "3.5.0.1/16 typo\n")
    assert reloader.current(NOW + 1) is first
    assert reloader.reload_errors == 1 and "datacenters.txt:1" in reloader.last_error
    (data_dir / "browsers.txt").unlink()
    assert reloader.current(NOW + 2) is first and reloader.reload_errors == 2


def test_reloader_refuses_to_start_on_broken_files(data_dir: Path):
    (data_dir / "bots.txt").write_text("(unclosed\n")
    with pytest.raises(IvtListError):
        ListsReloader(data_dir)
