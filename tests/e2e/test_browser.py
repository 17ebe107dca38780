"""The publisher tag and the advertiser dashboard, tested the way their users meet them: in a real headless
Chromium (Debian's /usr/bin/chromium, driven by Playwright) against a LocalStack of real processes, with what
the browser did checked in ClickHouse.

Nothing leaves 127.0.0.1. Creative images (https://cdn.example.com/...) are served by a Playwright route.
Landing pages (https://*.example.com/landing) are reached through the edge's real 302, which Chromium follows
itself; Playwright cannot route a redirect's target, so Chromium resolves *.example.com to a local HTTPS stub
(--host-resolver-rules, a throwaway self-signed certificate made with openssl, certificate errors ignored).

Screenshots go to var/screenshots/ (git-ignored); their paths are printed.
"""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, Route, expect, sync_playwright

from adserver.demo import demo_campaigns
from adserver.stack import LocalStack
from edge.tcf import encode as tc_string_granting
from edge.tokens import SigningKeys, verify

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "var" / "screenshots"
VIEWPORT = {"width": 1280, "height": 720}
# What the demo page's tag sends: data-geo on its script tag, the inferred device, its meta keywords.
PAGE_TARGETING = {"geo": "DE-BE", "device": "desktop", "keywords": "running,shoes,marathon,training,football"}
# The demo page's slots as (placement, format) groups and how many slots each group has.
PAGE_GROUPS = {("article-top", "728x90"): 1, ("sidebar", "300x250"): 1, ("article-inline", "300x250"): 2,
               ("sidebar-sky", "160x600"): 1}
FILLED_SLOTS = ["slot-top", "slot-side", "slot-inline", "slot-bottom"]
# Records every data-adstate change with the page's clock, so the tests can read when each slot turned what.
ADSTATE_LOG = """
window.__adlog = [];
new MutationObserver((ms) => ms.forEach((m) => window.__adlog.push(
  [m.target.id, m.target.getAttribute('data-adstate'), performance.now()])))
  .observe(document, {attributes: true, attributeFilter: ['data-adstate'], subtree: true});
"""
SETTLED = "[...document.querySelectorAll('[data-adslot]')].every(e => " \
          "['empty', 'error', 'impression', 'viewable'].includes(e.dataset.adstate))"


# --- fixtures: the stack, the demo campaigns, a landing-page server, the browser ------------------------------

@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    with LocalStack(regions=("eu",)) as s:
        yield s


def api(stack: LocalStack, method: str, path: str, token: str, body: Any = None) -> httpx.Response:
    return stack.http.request(method, stack.cp_url + path, json=body, headers={"Authorization": f"Bearer {token}"},
                              timeout=10)


def new_advertiser(stack: LocalStack, name: str) -> str:
    """A bearer token for a new advertiser (LocalStack runs its NATS call beside Playwright's event loop)."""
    return stack.create_advertiser(name)[1]


def ask(stack: LocalStack, placement: str, fmt: str, slots: int, **params: str) -> list[dict[str, Any]]:
    query = {"placement": placement, "format": fmt, "slots": str(slots), **PAGE_TARGETING, **params}
    r = stack.http.get(f"{stack.edges[0].url}/v1/ads", params=query, timeout=10)
    assert r.status_code in (200, 204), r.text
    return r.json()["ads"] if r.status_code == 200 else []


def poll(what: str, check: Callable[[], Any], timeout: float = 15, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(every)


@dataclass
class Demo:
    tokens: list[str]
    owner: dict[str, str] = field(default_factory=dict)  # campaign id -> its advertiser's token


@pytest.fixture(scope="module")
def demo(stack: LocalStack) -> Demo:
    """The demo campaigns of ``adserver demo``, active, and serving every group of the demo page.

    They run with asap pacing so that a pacing throttle cannot make the page's fill random."""
    tokens = [new_advertiser(stack, "Acme Sports"), new_advertiser(stack, "Globetrotter")]
    out = Demo(tokens)
    for advertiser, body in demo_campaigns():
        token = tokens[advertiser]
        r = api(stack, "POST", "/v1/campaigns", token, {**body, "pacing": "asap"})
        assert r.status_code == 201, r.text
        r = api(stack, "POST", f"/v1/campaigns/{r.json()['id']}/submit", token)
        assert r.status_code == 200 and r.json()["status"] == "active", r.text
        out.owner[r.json()["id"]] = token
    for (placement, fmt), slots in PAGE_GROUPS.items():
        if fmt != "160x600":  # no demo campaign has a skyscraper: that slot must stay empty
            poll(f"{placement} {fmt} to fill {slots} slots",
                 lambda p=placement, f=fmt, n=slots: len(ask(stack, p, f, n)) == n)
    return out


@dataclass
class Landing:
    """A local HTTPS server standing in for every https://*.example.com landing page."""

    port: int
    hits: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def landing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Landing]:
    workdir = tmp_path_factory.mktemp("landing-tls")
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    try:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=*.example.com",
                        "-addext", "subjectAltName=DNS:*.example.com"], check=True, capture_output=True, timeout=30)
    except FileNotFoundError:
        pytest.fail("openssl is needed to make the landing pages' throwaway TLS certificate")
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(f"https://{self.headers['Host']}{self.path}")
            body = (f"<!doctype html><title>Landing</title><h1>Landing page of {self.headers['Host']}</h1>"
                    ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Landing(server.server_address[1], hits)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium package (the tests never download browsers)")
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright: Playwright, landing: Landing) -> Iterator[Browser]:
    args = [*CHROMIUM_ARGS, f"--host-resolver-rules=MAP *.example.com 127.0.0.1:{landing.port}"]
    b = playwright.chromium.launch(executable_path=str(CHROMIUM), args=args)
    try:
        yield b
    finally:
        b.close()


def creative_image(route: Route) -> None:
    """A stand-in creative: an SVG that fills whatever box the tag draws, labelled with the image's name."""
    name = urlsplit(route.request.url).path.rsplit("/", 1)[-1].split(".")[0]
    svg = ('<svg xmlns="http://www.w3.org/2000/svg" width="100%" height="100%">'
           '<defs><linearGradient id="g" x1="0" y1="0" x2="1" y2="1"><stop offset="0" stop-color="#ff7a45"/>'
           '<stop offset="1" stop-color="#c2185b"/></linearGradient></defs>'
           '<rect width="100%" height="100%" fill="url(#g)"/>'
           f'<text x="12" y="34" font-family="sans-serif" font-size="24" font-weight="700" fill="#fff">{name}</text>'
           '</svg>')
    route.fulfill(status=200, content_type="image/svg+xml", body=svg)


def new_context(browser: Browser, **options: Any) -> BrowserContext:
    ctx = browser.new_context(viewport=VIEWPORT, ignore_https_errors=True, **options)
    ctx.route("https://cdn.example.com/**", creative_image)
    return ctx


# --- reading back what the system stored ----------------------------------------------------------------

def settled_stats(stack: LocalStack, timeout: float = 30) -> dict[str, Any]:
    """Admin stats once ClickHouse holds every event the edges had JetStream acknowledge (and none is buffered)."""
    caught_up, published, stats = stack.wait_stored(timeout)
    assert caught_up, f"waited {timeout}s for ClickHouse to hold every published event: {stats['store']} != {published}"
    return stats


def campaign_totals(stack: LocalStack, token: str, campaign_id: str) -> dict[str, Any]:
    r = api(stack, "GET", f"/v1/campaigns/{campaign_id}/metrics?granularity=minute", token)
    assert r.status_code == 200, r.text
    return r.json()["totals"]


def adlog(page: Page, slot: str, state: str) -> float | None:
    """When (page clock, ms) the slot first turned ``state``."""
    for slot_id, value, at in page.evaluate("window.__adlog"):
        if slot_id == slot and value == state:
            return at
    return None


def reveal(page: Page, selector: str, fraction: float) -> tuple[float, float]:
    """Scroll so that ``fraction`` of the element's height shows at the bottom of the viewport (1 = all of it).
    Returns the visible share actually measured and the page clock at that moment."""
    return tuple(page.evaluate("""([sel, f]) => {
        const el = document.querySelector(sel), r = el.getBoundingClientRect();
        window.scrollTo(0, Math.max(0, r.top + window.scrollY + f * r.height - window.innerHeight));
        const n = el.getBoundingClientRect();
        const shown = Math.max(0, Math.min(n.bottom, window.innerHeight) - Math.max(n.top, 0));
        return [shown / n.height, performance.now()];
    }""", [selector, fraction]))


def state_of(page: Page, slot: str) -> str:
    return page.get_attribute(f"#{slot}", "data-adstate") or ""


def screenshot(target: Page | Any, name: str, **options: Any) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    target.screenshot(path=str(path), **options)
    print(f"screenshot: {path}")
    return path


# --- the publisher tag ---------------------------------------------------------------------------------------

TAG_BUDGET_BYTES = 8 * 1024


def test_served_tag_is_small_and_never_turns_ad_data_into_markup(stack: LocalStack) -> None:
    r = httpx.get(f"{stack.edges[0].url}/tag.js", timeout=5)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/javascript")
    size = len(r.content)
    assert size < TAG_BUDGET_BYTES, f"the tag grew to {size} bytes"
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "Function("):
        assert sink not in r.text, sink
    print(f"tag.js: {size} bytes served")


def test_publisher_page_counts_each_impression_once_measures_viewability_and_clicks_through(
        stack: LocalStack, demo: Demo, browser: Browser, landing: Landing) -> None:
    before = settled_stats(stack)["store"]["by_type"]
    totals_before = {cid: campaign_totals(stack, token, cid) for cid, token in demo.owner.items()}
    ctx = new_context(browser)
    ctx.add_init_script(ADSTATE_LOG)
    page = ctx.new_page()
    ad_responses, beacons = [], []
    page.on("response", lambda r: ad_responses.append(r) if "/v1/ads?" in r.url else None)
    # On the context: clicks are requested by the popup the ad opens, not by the article page.
    ctx.on("request", lambda r: beacons.append(r.url) if "/v1/track/" in r.url else None)

    page.goto(f"{stack.edges[0].url}/demo/publisher")
    page.wait_for_function(SETTLED, timeout=10_000)

    # One request per (placement, format) group, slots=N for the two article-inline slots, consent flags set.
    asked = [parse_qs(urlsplit(r.url).query) for r in ad_responses]
    assert sorted((q["placement"][0], q["format"][0], int(q["slots"][0])) for q in asked) == sorted(
        (p, f, n) for (p, f), n in PAGE_GROUPS.items())
    for q in asked:
        assert (q["geo"], q["device"], q["gdpr"], q["gpc"]) == (["DE-BE"], ["desktop"], ["0"], ["0"]), q
        assert "running" in q["keywords"][0].split(",") and "user" not in q
    ads: dict[str, dict[str, Any]] = {}
    for r in ad_responses:
        if r.status == 200:
            ads.update({ad["ad_id"]: ad for ad in r.json()["ads"]})

    # Every slot with an ad shows its image, loaded; the skyscraper (no campaign has one) collapsed.
    states = {s: state_of(page, s) for s in [*FILLED_SLOTS, "slot-sky"]}
    assert states["slot-sky"] == "empty" and page.is_hidden("#slot-sky")
    assert all(states[s] in ("impression", "viewable") for s in FILLED_SLOTS), states
    slot_ad = {s: ads[page.get_attribute(f"#{s}", "data-ad-id") or ""] for s in FILLED_SLOTS}
    for slot, ad in slot_ad.items():
        size = page.evaluate("s => { const i = document.querySelector(s + ' img');"
                             " return [i.naturalWidth > 0, i.getBoundingClientRect().width,"
                             " i.getBoundingClientRect().height, i.closest('a').href]; }", f"#{slot}")
        assert size == [True, *map(float, ad["creative"]["size"].split("x")), ad["click_url"]], (slot, size)
    assert len(ads) == len(FILLED_SLOTS) == 4

    # Above the fold: viewable once 1 s has passed since render, not before.
    page.wait_for_function("['slot-top', 'slot-side'].every(s => document.getElementById(s).dataset.adstate"
                           " === 'viewable')", timeout=5_000)
    for slot in ("slot-top", "slot-side"):
        in_view_for = adlog(page, slot, "viewable") - adlog(page, slot, "impression")  # type: ignore[operator]
        assert 1000 <= in_view_for < 2500, (slot, in_view_for)
    screenshot(page, "publisher-page.png", full_page=True)

    # Below the fold: 40% of the pixels in view for 1.5 s is not viewable (MRC: 50% for ads under 242,500 px).
    shown, _ = reveal(page, "#slot-inline a", 0.4)
    assert 0.35 < shown < 0.45, shown
    page.wait_for_timeout(1500)
    assert state_of(page, "slot-inline") == "impression"
    # In view three times for 0.5 s with gaps: 1.5 s in all but never 1 continuous second, still not viewable.
    for _ in range(3):
        reveal(page, "#slot-inline a", 1.0)
        page.wait_for_timeout(500)
        page.evaluate("window.scrollTo(0, 0)")
        page.wait_for_timeout(300)
    assert state_of(page, "slot-inline") == "impression"
    # Fully in view and held: viewable after one continuous second.
    shown, shown_at = reveal(page, "#slot-inline a", 1.0)
    assert shown == 1.0
    page.wait_for_function("document.getElementById('slot-inline').dataset.adstate === 'viewable'", timeout=5_000)
    waited = adlog(page, "slot-inline", "viewable") - shown_at  # type: ignore[operator]
    assert 1000 <= waited < 2500, waited
    # The bottom slot was never on screen: rendered and counted, never viewable.
    assert state_of(page, "slot-bottom") == "impression"
    assert adlog(page, "slot-bottom", "viewable") is None

    # A click goes through the signed click URL, the edge's 302, to the landing page with a signed adclid.
    clicked = slot_ad["slot-inline"]
    landed = []
    for _ in range(2):  # the second click lands too, but is not counted again
        with ctx.expect_page() as popup:
            page.click("#slot-inline a")
        target = popup.value
        target.wait_for_load_state()
        landed.append(target.url)
        assert target.locator("h1").inner_text().startswith("Landing page of ")
        target.close()
    parts = urlsplit(landed[0])
    assert parts.scheme == "https" and parts.hostname.endswith(".example.com") and parts.path == "/landing"
    adclid = parse_qs(parts.query)["adclid"][0]
    claims = verify(adclid, SigningKeys.parse(stack.signing_keys), now_s=time.time(), kind="v")
    assert claims.ok and (claims.claims["imp"], claims.claims["cmp"]) == (clicked["ad_id"], clicked["campaign_id"])
    assert [u for u in landing.hits if "/landing" in u][-2:] == landed

    # The browser sent each beacon once; ClickHouse counted each once.
    impression_beacons = [u for u in beacons if "/v1/track/impression" in u]
    viewable_beacons = [u for u in beacons if "/v1/track/viewable" in u]
    assert sorted(impression_beacons) == sorted(ad["impression_url"] for ad in ads.values())
    assert sorted(viewable_beacons) == sorted(slot_ad[s]["viewable_url"] for s in ("slot-top", "slot-side",
                                                                                     "slot-inline"))
    assert sum("/v1/track/click" in u for u in beacons) == 2
    after = settled_stats(stack)["store"]["by_type"]
    delta = {k: after[k] - before[k] for k in ("impression", "viewable", "click")}
    assert delta == {"impression": 4, "viewable": 3, "click": 1}, delta
    rendered_per_campaign: dict[str, int] = {}
    for ad in ads.values():
        rendered_per_campaign[ad["campaign_id"]] = rendered_per_campaign.get(ad["campaign_id"], 0) + 1
    for cid, rendered in rendered_per_campaign.items():
        now = campaign_totals(stack, demo.owner[cid], cid)
        # A campaign with no rows in the window has no counts in its totals, only its CTR (the API's contract).
        counted = now.get("gross_impressions", 0) - totals_before[cid].get("gross_impressions", 0)
        assert counted == rendered, (cid, counted, rendered)
    print(f"publisher page: {len(ads)} ads in {len(asked)} requests; ClickHouse +{delta}")
    ctx.close()


def test_cross_origin_page_sends_consent_and_large_ads_are_viewable_at_30_percent(
        stack: LocalStack, demo: Demo, browser: Browser) -> None:
    """A publisher on another origin with a TCF CMP and Global Privacy Control, and a 970x250 billboard
    (exactly 242,500 pixels: a large ad, viewable at 30% instead of 50%)."""
    token = new_advertiser(stack, "Billboard Co")
    body = {"name": "Billboard", "bid_type": "cpm", "max_bid_micros": 3_000_000, "pacing": "asap",
            "daily_budget_micros": 20_000_000, "total_budget_micros": 100_000_000, "timezone": "UTC",
            "start": "2024-01-01T00:00:00", "targeting": {"keywords": ["billboard-e2e"]},
            "creatives": [{"headline": "Big and bold", "size": "970x250", "cta": "See more",
                           "image_url": "https://cdn.example.com/ads/billboard.png",
                           "landing_url": "https://billboard.example.com/landing"}]}
    r = api(stack, "POST", "/v1/campaigns", token, body)
    assert r.status_code == 201, r.text
    campaign = api(stack, "POST", f"/v1/campaigns/{r.json()['id']}/submit", token).json()
    assert campaign["status"] == "active", campaign
    poll("the billboard to serve", lambda: ask(stack, "home-billboard", "970x250", 1, keywords="billboard-e2e"))
    before = settled_stats(stack)["store"]["by_type"]

    tcf_string = tc_string_granting([1, 3, 4]) + ".YAAAAAAAAAAA"  # core and publisher segments
    # Chromium's Local Network Access check treats a routed page as public and the PoP on 127.0.0.1 as
    # loopback; in production both are public, so the test grants what a real deployment never needs.
    ctx = new_context(browser, permissions=["local-network-access"])
    # A TCF v2 CMP that answers asynchronously, as real ones do, and a browser with GPC switched on.
    ctx.add_init_script(ADSTATE_LOG + f"window.__tc = {json.dumps(tcf_string)};" + """
        Object.defineProperty(Navigator.prototype, 'globalPrivacyControl', {get: () => true});
        window.__tcfapi = (cmd, version, cb) => {
          if (cmd === 'getTCData') setTimeout(() => cb({gdprApplies: true, tcString: window.__tc}, true), 20);
        };""")
    filler = "".join(f"<p>Paragraph {i} of the home page.</p>" for i in range(60))
    html = (f"<!doctype html><html><head><meta charset='utf-8'><meta name='keywords' content='billboard-e2e, News'>"
            f"<title>Another publisher</title></head><body style='margin:0'><h1>Home</h1>{filler}"
            "<div id='slot-bill' data-adslot='home-billboard' data-format='970x250'></div>"
            f"{filler}<script async src='{stack.edges[0].url}/tag.js' data-geo='fr-idf' data-device='desktop'"
            " data-user='reader-42'></script></body></html>")
    # Another origin than the PoP's: the tag, the ad request and the beacons all cross origins.
    ctx.route("http://news.localhost/**", lambda route: route.fulfill(status=200, content_type="text/html",
                                                                       body=html))
    page = ctx.new_page()
    requests: list[str] = []
    page.on("request", lambda req: requests.append(req.url) if "127.0.0.1" in req.url else None)
    page.goto("http://news.localhost/home")
    page.wait_for_function(SETTLED, timeout=10_000)
    assert state_of(page, "slot-bill") == "impression"

    [ad_request] = [parse_qs(urlsplit(u).query) for u in requests if "/v1/ads?" in u]
    assert ad_request["gdpr"] == ["1"] and ad_request["gdpr_consent"] == [tcf_string] and ad_request["gpc"] == ["1"]
    assert ad_request["geo"] == ["FR-IDF"] and ad_request["keywords"] == ["billboard-e2e,news"]
    assert "user" not in ad_request, "with Global Privacy Control the tag must not send the reader's id"

    shown, _ = reveal(page, "#slot-bill a", 0.25)
    assert 0.2 < shown < 0.3, shown
    page.wait_for_timeout(1500)
    assert state_of(page, "slot-bill") == "impression", "25% of a large ad is not viewable"
    shown, shown_at = reveal(page, "#slot-bill a", 0.35)
    assert 0.3 < shown < 0.4, shown
    page.wait_for_function("document.getElementById('slot-bill').dataset.adstate === 'viewable'", timeout=5_000)
    waited = adlog(page, "slot-bill", "viewable") - shown_at  # type: ignore[operator]
    assert 1000 <= waited < 2500, waited
    screenshot(page, "publisher-billboard.png")
    ctx.close()

    after = settled_stats(stack)["store"]["by_type"]
    assert {k: after[k] - before[k] for k in ("impression", "viewable")} == {"impression": 1, "viewable": 1}
    totals = campaign_totals(stack, token, campaign["id"])
    assert (totals["impressions"], totals["viewable"]) == (1, 1)


CONSENTED = tc_string_granting([1, 3, 4])  # a TC string with the purposes profiling needs


def test_without_a_cmp_the_script_attributes_carry_consent_and_the_reader_id_needs_it(
        stack: LocalStack, browser: Browser) -> None:
    ctx = new_context(browser, permissions=["local-network-access"])
    pages = {
        "no-consent": 'data-gdpr="1"',
        "consent": f'data-gdpr="1" data-gdpr-consent="{CONSENTED}"',
        "outside-gdpr": "",
    }
    ctx.route("http://blog.localhost/**", lambda route: route.fulfill(status=200, content_type="text/html", body=(
        "<!doctype html><div data-adslot='blog-top' data-format='300x250'></div><script async"
        f" src='{stack.edges[0].url}/tag.js' data-user='reader-7' {pages[urlsplit(route.request.url).path[1:]]}>"
        "</script>")))
    page = ctx.new_page()
    asked: list[dict[str, list[str]]] = []
    page.on("request", lambda r: asked.append(parse_qs(urlsplit(r.url).query)) if "/v1/ads?" in r.url else None)
    for name in pages:
        page.goto(f"http://blog.localhost/{name}")
        page.wait_for_function(SETTLED, timeout=10_000)
    ctx.close()
    no_consent, consent, outside = asked
    assert no_consent["gdpr"] == ["1"] and "gdpr_consent" not in no_consent and "user" not in no_consent
    assert consent["gdpr_consent"] == [CONSENTED] and consent["user"] == ["reader-7"]
    assert outside["gdpr"] == ["0"] and outside["gpc"] == ["0"] and outside["user"] == ["reader-7"]


# --- the advertiser dashboard ------------------------------------------------------------------------------

def test_dashboard_campaign_created_in_the_browser_serves_and_charts_its_spend(
        stack: LocalStack, demo: Demo, browser: Browser) -> None:
    token = demo.tokens[0]  # Acme: the list already holds its demo campaigns
    own = len(api(stack, "GET", "/v1/campaigns", token).json()["campaigns"])
    ctx = new_context(browser, timezone_id="Europe/Berlin")
    page = ctx.new_page()
    page.goto(stack.cp_url + "/")
    csp = page.evaluate("fetch('/').then(r => r.headers.get('content-security-policy'))")
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    page.fill("#token", "adv0000.not-a-token")
    page.click("#signin-form button")
    expect(page.locator("#signin-error")).to_have_text(re.compile(r"\S"))
    assert page.is_hidden("#app")
    page.fill("#token", token)
    page.click("#signin-form button")
    page.wait_for_selector("#app", state="visible")
    expect(page.locator("#campaigns tbody tr")).to_have_count(own)
    assert token not in page.url and page.evaluate("sessionStorage.getItem('edge-adserver.token')") == token

    # Create a campaign with two bad fields: each shows the API's own 422 message next to its input.
    name = 'Trail <img src=x onerror="window.__xss = 1"> shoes'
    page.click("#new-campaign")
    page.fill("#f-name", name)
    page.fill("#f-max_bid", "six")
    page.fill("#f-daily", "50")
    page.fill("#f-total", "500")
    page.select_option("#f-pacing", "asap")
    page.fill("#f-timezone", "Mars/Olympus")
    page.fill("#t-keywords", "trail-e2e")
    page.fill("#c0-headline", "Trail shoes that grip")
    page.fill("#c0-image_url", "https://cdn.example.com/ads/trail.png")
    page.fill("#c0-landing_url", "https://trail.example.com/landing")
    with page.expect_response(lambda r: r.url.endswith("/v1/campaigns") and r.request.method == "POST") as sent:
        page.click("#save")
    assert sent.value.status == 422
    fields = {f["field"]: f["message"] for f in sent.value.json()["fields"]}
    assert set(fields) == {"max_bid_micros", "timezone"}, fields
    for field_name, message in fields.items():
        shown = page.locator(f'[data-error-for="{field_name}"]')
        assert shown.inner_text() == message
        assert shown.locator("xpath=..").locator("input").get_attribute("aria-invalid") == "true"
    assert len(api(stack, "GET", "/v1/campaigns", token).json()["campaigns"]) == own, "nothing half-written"
    screenshot(page.locator("#editor"), "dashboard-form-errors.png")

    page.fill("#f-max_bid", "6")
    page.fill("#f-timezone", "Europe/Berlin")
    with page.expect_response(lambda r: r.url.endswith("/v1/campaigns") and r.request.method == "POST") as sent:
        page.click("#save")
    assert sent.value.status == 201, sent.value.text()
    created = sent.value.json()
    assert (created["max_bid_micros"], created["daily_budget_micros"]) == (6_000_000, 50_000_000)
    page.wait_for_selector("#detail", state="visible")
    expect(page.locator("#d-name")).to_have_text(name)
    assert page.evaluate("window.__xss") is None and page.locator("#campaigns img, #detail h2 img").count() == 0

    # The advertiser submits it; the review approves it and the edge serves it for its keyword.
    page.click('#d-actions button[data-action="submit"]')
    expect(page.locator("#d-status")).to_have_text("active")
    row = page.locator(f'#campaigns tr[data-campaign-id="{created["id"]}"]')
    row.locator(".badge.active").wait_for()

    def serve() -> list[dict[str, Any]]:
        return [ad for ad in ask(stack, "trail-page", "300x250", 3, keywords="trail-e2e")
                if ad["campaign_id"] == created["id"]]

    served = [poll("the dashboard's campaign to serve on the edge", serve)[0] for _ in range(5)]
    for ad in served:
        assert httpx.get(ad["impression_url"], timeout=5).status_code == 204
    assert httpx.get(served[0]["click_url"], timeout=5).status_code == 302
    settled_stats(stack)
    api_totals = campaign_totals(stack, token, created["id"])
    assert (api_totals["impressions"], api_totals["clicks"]) == (5, 1) and api_totals["spend_micros"] > 0

    # The open campaign refreshes by itself: spend, counts and charts appear without a reload. A refresh can
    # land between the impressions' and the click's arrival in ClickHouse (seen in CI: 5 impressions, 0
    # clicks), so each figure is awaited until the page shows the settled totals.
    spend_text = f"{api_totals['spend_micros'] / 1e6:.4f}"
    for kpi, text in (("clicks", "1"), ("impressions", "5"), ("spend", spend_text), ("ctr", "CTR 20.00%")):
        expect(page.locator(f"#kpi-{kpi}")).to_have_text(text, timeout=15_000)
    spend_path = page.locator('#chart-spend path[data-series="spend"]')
    assert int(spend_path.get_attribute("data-points") or 0) >= 1
    assert int(float(spend_path.get_attribute("data-last") or 0)) == api_totals["spend_micros"]
    assert page.locator('#chart-spend path[data-series="plan"]').get_attribute("data-points") == "2"
    assert page.locator('#chart-traffic path[data-series="impressions"]').get_attribute("data-sum") == "5"
    assert page.locator('#chart-traffic path[data-series="clicks"]').get_attribute("data-sum") == "1"
    row.locator('[data-col="spend"]').filter(has_text=spend_text).wait_for(timeout=10_000)
    page.evaluate("window.scrollTo(0, 0)")
    screenshot(page.locator("main section").first, "dashboard-list.png")
    screenshot(page.locator("#detail"), "dashboard-campaign.png")

    # A second creative: a javascript: landing URL is refused at its input, then a good one is listed.
    page.fill("#n-headline", "Grip in the wet")
    page.select_option("#n-size", "728x90")
    page.fill("#n-image_url", "https://cdn.example.com/ads/trail-lb.png")
    page.fill("#n-landing_url", "javascript:alert(1)")
    with page.expect_response(lambda r: r.url.endswith("/creatives")) as sent:
        page.click("#creative-form button[type=submit]")
    assert sent.value.status == 422
    [problem] = sent.value.json()["fields"]
    assert problem["field"] == "landing_url"
    expect(page.locator('#creative-form [data-error-for="landing_url"]')).to_have_text(problem["message"])
    page.fill("#n-landing_url", "https://trail.example.com/wet")
    with page.expect_response(lambda r: r.url.endswith("/creatives")) as sent:
        page.click("#creative-form button[type=submit]")
    assert sent.value.status == 201
    expect(page.locator("#creatives tbody tr")).to_have_count(2)
    expect(page.locator("#creatives tbody tr").nth(1)).to_contain_text("Grip in the wet")

    # Pause and resume from the dashboard reach the API.
    page.click('#d-actions button[data-action="pause"]')
    expect(page.locator("#d-status")).to_have_text("paused")
    assert api(stack, "GET", f"/v1/campaigns/{created['id']}", token).json()["status"] == "paused"
    page.click('#d-actions button[data-action="resume"]')
    expect(page.locator("#d-status")).to_have_text("active")

    # Editing: a total budget below the daily one is refused with the API's message at that input.
    page.click("#d-edit")
    page.fill("#f-total", "10")
    with page.expect_response(lambda r: r.request.method == "PATCH") as sent:
        page.click("#save")
    assert sent.value.status == 422
    [problem] = sent.value.json()["fields"]
    assert page.inner_text(f'[data-error-for="{problem["field"]}"]') == problem["message"]
    page.fill("#f-total", "800")
    with page.expect_response(lambda r: r.request.method == "PATCH") as sent:
        page.click("#save")
    assert sent.value.status == 200 and sent.value.json()["total_budget_micros"] == 800_000_000
    assert set(json.loads(sent.value.request.post_data or "{}")) == {"total_budget_micros"}, "only what changed"
    ctx.close()
