"""The API contract, checked the way a fuzzer and an attacker meet it, against the real processes.

Schemathesis takes each server's OpenAPI document (the one it serves at /openapi.json) and generates valid
and invalid requests for every operation: examples, coverage and fuzzing phases, plus stateful chains that
follow the document's links on the control plane. Every response must be a non-5xx, declared for its
operation, with the declared content type, headers and body schema; valid data must be accepted and invalid
data refused; authentication must be enforced. Then targeted tests: rate limits (429 + Retry-After, then
recovery), body limits (413 before the body is read, also for chunked bodies), header limits (431), inputs
that once were 5xx, and tenant isolation on every advertiser endpoint, including mass assignment of
server-owned fields.

The stack runs with tighter rate limits than the defaults so the limits can be reached in a few hundred
requests; the fuzzer paces itself under them (a fuzzer that trips the rate limit tests nothing else).
"""

from __future__ import annotations

import contextlib
import copy
import json
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import hypothesis
import pytest
import schemathesis
from schemathesis.core.failures import FailureGroup
from schemathesis.core.parameters import ParameterLocation
from schemathesis.generation.case import Case

from adserver.stack import LocalStack
from control_plane.limits import LimitSettings as CpLimitSettings
from control_plane.limits import TokenBuckets
from control_plane.openapi import OPENAPI as CP_OPENAPI
from edge.limits import LimitSettings as EdgeLimitSettings
from edge.openapi import OPENAPI as EDGE_OPENAPI
from edge.tcf import encode as encode_consent
from replication.settings import SettingsError

pytestmark = pytest.mark.e2e

# Limits for this module's stack: low enough to reach quickly, high enough for the paced fuzzer.
RATE_PER_TOKEN, BURST_PER_TOKEN = 200.0, 50
RATE_PER_IP, BURST_PER_IP = 400.0, 100
MAX_BODY = 65_536
LIMITS_ENV = {
    "ADSERVER_CP_RATE_PER_TOKEN": str(RATE_PER_TOKEN), "ADSERVER_CP_BURST_PER_TOKEN": str(BURST_PER_TOKEN),
    "ADSERVER_CP_RATE_PER_IP": str(RATE_PER_IP), "ADSERVER_CP_BURST_PER_IP": str(BURST_PER_IP),
    "ADSERVER_CP_MAX_BODY_BYTES": str(MAX_BODY), "ADSERVER_CP_MAX_HEADER_COUNT": "64",
    "ADSERVER_CP_MAX_HEADER_BYTES": "32768",
    "ADSERVER_EDGE_RATE_PER_IP": str(RATE_PER_IP), "ADSERVER_EDGE_BURST_PER_IP": str(BURST_PER_IP),
    "ADSERVER_EDGE_MAX_BODY_BYTES": "16384",
}
FUZZ_RPS = 150.0  # under both per-token and per-IP rates, with room for the probes some checks send
EXAMPLES_PER_OPERATION = 40
OTHER_IP = "127.0.0.2"  # loopback, but its own per-IP bucket: the IP-limit test leaves 127.0.0.1 alone


# --- fixtures -------------------------------------------------------------------------------------------------

@dataclass
class World:
    """The stack plus the objects the fuzzer is pointed at."""

    stack: LocalStack
    token: str  # advertiser A: the fuzzer's identity
    other_token: str  # advertiser B: tenant-isolation checks
    campaigns: dict[str, str] = field(default_factory=dict)  # status -> id, A's campaigns
    beacons: dict[str, list[str]] = field(default_factory=dict)  # kind -> real signed tokens
    adclids: list[str] = field(default_factory=list)


def api(stack: LocalStack, method: str, path: str, token: str | None, body: Any = None,
        headers: dict[str, str] | None = None) -> httpx.Response:
    h = {"Authorization": f"Bearer {token}"} if token else {}
    return stack.http.request(method, stack.cp_url + path, json=body, headers={**h, **(headers or {})}, timeout=10)


def campaign_body(keyword: str, **overrides: Any) -> dict[str, Any]:
    body = {
        "name": f"contract {keyword}", "bid_type": "cpm", "max_bid_micros": 3_000_000,
        "daily_budget_micros": 500_000_000, "total_budget_micros": 900_000_000, "pacing": "asap",
        "start": (datetime.now(UTC) - timedelta(hours=1)).isoformat(), "timezone": "UTC",
        "targeting": {"keywords": [keyword]},
        "creatives": [{"headline": f"Buy {keyword}", "image_url": "https://img.example.com/a.png",
                       "landing_url": f"https://shop.example.com/{keyword}", "size": "300x250"}],
    }
    body.update(overrides)
    return body


def create(stack: LocalStack, token: str, keyword: str, *actions: str) -> dict[str, Any]:
    r = api(stack, "POST", "/v1/campaigns", token, campaign_body(keyword))
    assert r.status_code == 201, r.text
    campaign = r.json()
    for action in actions:
        r = api(stack, "POST", f"/v1/campaigns/{campaign['id']}/{action}", token)
        assert r.status_code == 200, r.text
        campaign = r.json()
    return campaign


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with pytest.MonkeyPatch.context() as mp:
        for key, value in LIMITS_ENV.items():
            mp.setenv(key, value)
        with LocalStack(regions=("eu",)) as stack:
            w = World(stack, stack.create_advertiser("Fuzzer")[1], stack.create_advertiser("Other")[1])
            w.campaigns["draft"] = create(stack, w.token, "fuzzdraft")["id"]
            w.campaigns["active"] = create(stack, w.token, "fuzzactive", "submit")["id"]
            w.campaigns["paused"] = create(stack, w.token, "fuzzpaused", "submit", "pause")["id"]
            # Served to the edge fuzzer; kept out of the control-plane fuzzer's reach, which may complete it.
            _collect_beacons(w, create(stack, w.token, "edgeads", "submit"))
            yield w


def _collect_beacons(w: World, active: dict[str, Any]) -> None:
    """Real signed beacon tokens and an adclid, so the edge fuzzer's beacon calls reach their 204/302 paths."""
    edge = w.stack.edges[0].url
    deadline = time.monotonic() + 15
    ads: list[dict[str, Any]] = []
    while len(ads) < 4:
        assert time.monotonic() < deadline, "the active campaign never served"
        r = httpx.get(f"{edge}/v1/ads", params={"placement": "contract", "format": "300x250",
                                                  "keywords": "edgeads"}, timeout=10)
        if r.status_code == 200:
            ads.extend(a for a in r.json()["ads"] if a["campaign_id"] == active["id"])
        else:
            time.sleep(0.05)
    for ad in ads:
        for kind in ("impression_url", "click_url"):  # the viewable beacon carries the impression's token
            w.beacons.setdefault(kind, []).append(parse_qs(urlsplit(ad[kind]).query)["t"][0])
    click = httpx.get(ads[0]["click_url"], follow_redirects=False, timeout=10)
    assert click.status_code == 302, click.text
    w.adclids.append(parse_qs(urlsplit(click.headers["location"]).query)["adclid"][0])


# --- fuzzing ------------------------------------------------------------------------------------------------
# The documents are loaded from the modules the servers serve them from, because pytest collects the generated
# tests before the stack runs (test_documents_are_served_as_written_and_valid_openapi checks they are the same).
# Runtime values (base URLs, tokens, real campaign ids and beacon tokens) are put into each case as it is sent.

@dataclass
class Tally:
    """What the fuzzer sent and got, per API: printed at the end of the module for the closing note."""

    cases: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    throttled: int = 0


TALLY: dict[str, Tally] = {"control plane": Tally(), "edge": Tally()}


class Pacer:
    """Keeps one client under a request rate, so the fuzzer never trips the limits it is not testing."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self.next_at = 0.0

    def wait(self) -> None:
        now = time.monotonic()
        if now < self.next_at:
            time.sleep(self.next_at - now)
        self.next_at = max(now, self.next_at) + self.interval

    def charge(self, requests: int) -> None:
        """Count requests sent outside wait(): the auth check's probes (one without and one with a bad token
        after each 2xx of a secured operation)."""
        self.next_at = max(time.monotonic(), self.next_at) + requests * self.interval


PACER = Pacer(FUZZ_RPS)


def _config(operations: list[dict[str, Any]]) -> schemathesis.Config:
    return schemathesis.Config.from_dict({
        "generation": {"mode": "all", "max-examples": EXAMPLES_PER_OPERATION},
        "phases": {"coverage": {"enabled": True}, "examples": {"enabled": True}, "fuzzing": {"enabled": True},
                   # Chains are for reaching states; invalid input is the other phases' job.
                   "stateful": {"enabled": True, "max-steps": 8, "generation": {"mode": "positive"}}},
        "request-timeout": 15,
        # A body over the size limit is refused with 413 whatever it holds: a refusal for invalid data, and
        # an answer the document gives for valid data too (the schema cannot state a byte limit).
        "checks": {"negative_data_rejection": {"expected-statuses": [
                       "400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]},
                   "positive_data_acceptance": {"expected-statuses": ["2xx", "3xx", "401", "403", "404", "409",
                                                                       "413", "429"]}},
        "operations": operations,
    })


# Deep copies: schemathesis works on the dict it is given, and the originals are compared with what is served.
CP_SCHEMA = schemathesis.openapi.from_dict(copy.deepcopy(CP_OPENAPI), config=_config([
    # A PATCH is validated merged onto the stored campaign: a field valid on its own can still be a 422
    # against the stored values (a daily budget above the stored total). The document says so.
    {"include-operation-id": "patchCampaign",
     "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "404", "409", "413", "422", "429"]}}},
    # `to` must follow `from`: a cross-parameter rule the document describes but cannot state.
    {"include-operation-id": "campaignMetrics",
     "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "400", "404", "413", "429"]}}},
    {"include-operation-id": "attributionReport",
     "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "400", "401", "413", "429"]}}},
]))
EDGE_SCHEMA = schemathesis.openapi.from_dict(copy.deepcopy(EDGE_OPENAPI), config=_config([]))


def _rng_for(case: Case) -> random.Random:
    """A choice that follows from the generated data, so a reported case replays the same way."""
    return random.Random(repr((case.method, case.path_parameters, case.query, case.body)))


def _negated_at(case: Case, location: ParameterLocation) -> bool:
    """Whether the case's invalid part is at `location` (then it must be sent as generated)."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_negative:
        return False
    if meta.is_negative_at(location):
        return True
    where = getattr(meta.phase.data, "parameter_location", None)
    return where == location or (where is None and not meta.components)


def aim_at_real_objects(case: Case, w: World) -> None:
    """Point a case at real objects where its invalid part (if any) is elsewhere: most campaign ids become
    real campaigns, so PATCH, creatives, lifecycle and metrics run their validators and writes; half the
    beacon tokens and adclids become real signed ones, so the 204 and 302 paths are fuzzed; half the ad
    requests ask for the served campaign's keyword and size, so the 200 path is too. Done when the case is
    sent, because coverage and example cases are built when pytest collects, before the stack runs."""
    rng, path = _rng_for(case), case.operation.path
    real_id = rng.random() < 0.8
    if real_id and "campaign_id" in (case.path_parameters or {}) and not _negated_at(case, ParameterLocation.PATH):
        case.path_parameters["campaign_id"] = rng.choice(sorted(w.campaigns.values()))
    if rng.random() < 0.5 or _negated_at(case, ParameterLocation.QUERY if case.query else ParameterLocation.BODY):
        return
    if path in ("/v1/track/impression", "/v1/track/viewable") and case.query:
        case.query["t"] = rng.choice(w.beacons["impression_url"])
    elif path == "/v1/track/click" and case.query:
        case.query["t"] = rng.choice(w.beacons["click_url"])
    elif path == "/v1/track/conversion" and isinstance(case.body, dict) and "adclid" in case.body:
        case.body["adclid"] = rng.choice(w.adclids)  # only where the case has one: adclid excludes user_id
    elif path == "/v1/ads" and isinstance(case.query, dict):
        case.query.update(keywords="edgeads", format="300x250")


@CP_SCHEMA.hook("map_case")
def _follow_cross_field_rules(context: schemathesis.HookContext, case: Case) -> Case:
    """Valid creates that break a rule the schema cannot state (total >= daily, end after start, the counter
    baseline only where the server allows baselines) are made to follow it, so 'valid data is accepted' stays
    a strict check on everything the schema does state."""
    meta = case.meta
    if (meta is None or not meta.generation.mode.is_positive or case.method != "POST"
            or case.operation.path != "/v1/campaigns" or not isinstance(case.body, dict)):
        return case
    body = case.body
    daily, total = body.get("daily_budget_micros"), body.get("total_budget_micros")
    if isinstance(daily, int) and isinstance(total, int) and total < daily:
        body["daily_budget_micros"], body["total_budget_micros"] = total, daily
    if isinstance(body.get("end"), str) and isinstance(body.get("start"), str):
        with contextlib.suppress(ValueError):
            if datetime.fromisoformat(body["end"]) <= datetime.fromisoformat(body["start"]):
                del body["end"]
    if body.get("budget_mode") == "counter":  # this stack does not allow baselines: a documented 422
        body["budget_mode"] = "allowance"
    return case


@EDGE_SCHEMA.hook("map_case")
def _consent_is_a_tcf_v2_string(context: schemathesis.HookContext, case: Case) -> Case:
    """A valid ``gdpr_consent`` must also be a TCF v2 string, which no pattern can state (its bits say how long
    it must be): a valid case's becomes one, granting a random choice of purposes, so 'valid data is
    accepted' stays strict on what the document does state (a string that is not TCF v2 is a documented
    400; ``tests/unit/test_adrequest.py`` names why)."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or not isinstance(case.query, dict):
        return case
    if case.query.get("gdpr_consent"):
        rng = _rng_for(case)
        case.query["gdpr_consent"] = encode_consent([p for p in range(1, 11) if rng.random() < 0.7])
    return case


def run_case(case: Case, api_name: str, w: World, base_url: str, headers: dict[str, str]) -> None:
    """Send one generated case and apply every check; tally the outcome before failing on it."""
    tally = TALLY[api_name]
    aim_at_real_objects(case, w)
    PACER.wait()
    response = case.call(base_url=base_url, headers=headers, timeout=15)
    while response.status_code == 429:  # only another test's traffic gets here: honour the contract
        tally.throttled += 1
        time.sleep(float(response.headers.get("retry-after", "1")))
        response = case.call(base_url=base_url, headers=headers, timeout=15)
    label = case.operation.label
    tally.cases[label] += 1
    tally.statuses[f"{label} {response.status_code}"] += 1
    if response.status_code >= 500:
        tally.server_errors.append(f"{label}: {case.as_curl_command(headers=headers)} -> {response.status_code}")
    try:
        case.validate_response(response, headers=headers,
                               transport_kwargs={"base_url": base_url, "headers": headers, "timeout": 15})
    except FailureGroup as exc:
        tally.violations.append(f"{label}: {exc.exceptions[0].title}")
        raise
    finally:
        if headers and 200 <= response.status_code < 300:
            PACER.charge(2)


def cp_headers(w: World, case: Case) -> dict[str, str]:
    """The fuzzer's credentials, unless the case is about a missing or bad Authorization header."""
    meta = case.meta
    if meta is not None and _negated_at(case, ParameterLocation.HEADER):
        negated = getattr(meta.phase.data, "parameter", None)
        if negated is None or negated.lower() == "authorization":
            return {}
    token = w.stack.admin_token if case.operation.path.startswith("/v1/admin/") else w.token
    return {"Authorization": f"Bearer {token}"}


FUZZ_SETTINGS = hypothesis.settings(
    deadline=None, database=None, print_blob=True,
    phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],  # no shrinking: bounded runtime
    suppress_health_check=list(hypothesis.HealthCheck),
)


@FUZZ_SETTINGS
@CP_SCHEMA.parametrize()
def test_control_plane_conforms_to_its_openapi(case: Case, world: World) -> None:
    run_case(case, "control plane", world, world.stack.cp_url, cp_headers(world, case))


@FUZZ_SETTINGS
@EDGE_SCHEMA.parametrize()
def test_edge_conforms_to_its_openapi(case: Case, world: World) -> None:
    run_case(case, "edge", world, world.stack.edges[0].url, {})


def test_control_plane_stateful_sequences_conform(world: World) -> None:
    """Chains that follow the document's links: create, then read, patch, add creatives, submit, pause..."""
    tally = TALLY["control plane"]
    w = world

    class Machine(CP_SCHEMA.as_state_machine()):  # type: ignore[misc]
        def get_call_kwargs(self, case: Case) -> dict[str, Any]:
            return {"base_url": w.stack.cp_url, "headers": cp_headers(w, case), "timeout": 15}

        def call(self, case: Case, **kwargs: Any) -> Any:
            PACER.wait()
            response = case.call(**kwargs)
            tally.cases[f"stateful {case.operation.label}"] += 1
            tally.statuses[f"stateful {case.operation.label} {response.status_code}"] += 1
            if response.status_code >= 500:
                tally.server_errors.append(f"stateful {case.method} {case.path} -> {response.status_code}")
            return response

        def validate_response(self, response: Any, case: Case, *args: Any, **kwargs: Any) -> None:
            try:
                super().validate_response(response, case, *args, **kwargs)
            except FailureGroup as exc:
                tally.violations.append(f"stateful {case.operation.label}: {exc.exceptions[0].title}")
                raise
            finally:
                if 200 <= response.status_code < 300:
                    PACER.charge(2)

    Machine.run(settings=hypothesis.settings(FUZZ_SETTINGS, max_examples=25, stateful_step_count=6))


def test_fuzzing_totals(capsys: pytest.CaptureFixture[str]) -> None:
    """The closing numbers: cases sent per API, server errors and contract violations (all must be 0)."""
    lines = []
    for name, tally in TALLY.items():
        lines.append(f"{name}: {sum(tally.cases.values())} generated cases over {len(tally.cases)} operations, "
                     f"{len(tally.server_errors)} server errors, {len(tally.violations)} violations, "
                     f"{tally.throttled} throttled")
        for label, n in sorted(tally.cases.items()):
            answers = ", ".join(f"{s.rsplit(' ', 1)[1]}x{k}" for s, k in sorted(tally.statuses.items())
                                if s.rsplit(" ", 1)[0] == label)
            lines.append(f"  {label}: {n} ({answers})" if answers else f"  {label}: {n}")
    with capsys.disabled():  # printed even when the module passes: the closing note cites these numbers
        print("\nAPI fuzzing totals\n" + "\n".join(lines))
    for name, tally in TALLY.items():
        assert tally.cases, f"the {name} fuzzer ran no case (run the whole module)"
        assert not tally.server_errors, tally.server_errors
        assert not tally.violations, tally.violations


def test_documents_are_served_as_written_and_valid_openapi(world: World) -> None:
    """The fuzzer used the modules' documents: each server serves exactly that document, and it is valid
    OpenAPI 3.0 (checked against the specification's own schema)."""
    for url, doc in ((world.stack.cp_url, CP_OPENAPI), (world.stack.edges[0].url, EDGE_OPENAPI)):
        served = httpx.get(f"{url}/openapi.json", timeout=10).json()
        assert served == json.loads(json.dumps(doc))
        schemathesis.openapi.from_dict(served).validate()


# --- request limits -----------------------------------------------------------------------------------------

def test_token_bucket_admits_its_burst_then_its_rate_and_refusals_cost_nothing() -> None:
    buckets = TokenBuckets(rate=10, burst=5)
    assert [buckets.take("a", 0.0) for _ in range(5)] == [0.0] * 5
    assert buckets.take("a", 0.0) == pytest.approx(0.1)  # one token's refill time
    for _ in range(100):  # a client that keeps knocking is refused, but does not dig itself deeper
        buckets.take("a", 0.05)
    assert buckets.take("a", 0.1) == 0.0
    assert buckets.take("a", 0.1) > 0
    assert buckets.take("b", 0.1) == 0.0  # another key has its own bucket
    assert [buckets.take("a", 60.0) for _ in range(6)].count(0.0) == 5  # idle time refills up to the burst only


def test_token_buckets_stay_bounded_in_memory() -> None:
    buckets = TokenBuckets(rate=1, burst=2, max_keys=100)
    for i in range(10_000):
        buckets.take(i, float(i) / 1000)
        assert len(buckets) <= 100


def test_limit_settings_report_every_bad_value_at_once() -> None:
    with pytest.raises(SettingsError) as cp:
        CpLimitSettings.from_env({"ADSERVER_CP_RATE_PER_TOKEN": "nan", "ADSERVER_CP_MAX_HEADER_COUNT": "500",
                                  "ADSERVER_CP_BURST_PER_IP": "0"})
    assert len(cp.value.errors) == 3
    with pytest.raises(SettingsError) as edge:
        EdgeLimitSettings.from_env({"ADSERVER_EDGE_RATE_PER_IP": "-1", "ADSERVER_EDGE_MAX_BODY_BYTES": "x"})
    assert len(edge.value.errors) == 2
    assert CpLimitSettings.from_env({}).rate_per_token == 50  # defaults stand alone
    assert EdgeLimitSettings.from_env({}).rate_per_ip == 10_000


def hammer(url: str, *, headers: dict[str, str] | None = None, local_address: str | None = None,
           max_requests: int = 5000, threads: int = 6) -> tuple[list[tuple[float, int]], httpx.Response | None]:
    """Send requests from several threads until one is a 429; return (time, status) per request and the 429."""
    results: list[tuple[float, int]] = []
    refused: list[httpx.Response] = []
    stop = threading.Event()

    def worker() -> None:
        transport = httpx.HTTPTransport(local_address=local_address) if local_address else None
        with httpx.Client(headers=headers, transport=transport, timeout=10) as client:
            while not stop.is_set() and len(results) < max_requests:
                r = client.get(url)
                results.append((time.monotonic(), r.status_code))
                if r.status_code == 429:
                    refused.append(r)
                    stop.set()

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return results, (refused[0] if refused else None)


def wait_admitted(url: str, retry_after: int, *, headers: dict[str, str] | None = None,
                  local_address: str | None = None) -> float:
    """Poll until the limit admits a request again; return how long that took."""
    transport = httpx.HTTPTransport(local_address=local_address) if local_address else None
    started = time.monotonic()
    with httpx.Client(headers=headers, transport=transport, timeout=10) as client:
        while client.get(url).status_code == 429:
            assert time.monotonic() - started < retry_after + 2, "still throttled long after Retry-After"
            time.sleep(0.05)
    return time.monotonic() - started


def check_429(response: httpx.Response, limit: str, rate: float) -> int:
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["limit"] == limit and f"{rate:g} requests/s" in body["error"], body
    retry_after = int(response.headers["retry-after"])
    assert retry_after == body["retry_after_s"] >= 1
    assert retry_after <= 1 + 1 / rate  # one token's refill time, rounded up to whole seconds
    return retry_after


def test_per_token_rate_limit_gives_429_with_retry_after_then_recovers(world: World) -> None:
    token = world.stack.create_advertiser("Hammer")[1]
    url = f"{world.stack.cp_url}/v1/campaigns/{world.campaigns['draft']}"
    auth = {"Authorization": f"Bearer {token}"}
    results, refused = hammer(url, headers=auth)
    assert refused is not None, f"no 429 after {len(results)} requests at {RATE_PER_TOKEN}/s"
    retry_after = check_429(refused, "per_token", RATE_PER_TOKEN)
    ok = [t for t, status in results if status != 429]
    assert {status for _, status in results} <= {404, 429}  # another tenant's campaign: 404, never a 5xx
    # A full bucket admits its burst, then about RATE_PER_TOKEN a second: never more than that.
    elapsed = ok[-1] - results[0][0] if ok else 0.0
    assert BURST_PER_TOKEN <= len(ok) <= BURST_PER_TOKEN + RATE_PER_TOKEN * elapsed + 8, (len(ok), elapsed)
    # Other tokens and other endpoints of this IP are not affected by this token's bucket.
    assert api(world.stack, "GET", "/v1/campaigns", world.other_token).status_code == 200
    waited = wait_admitted(url, retry_after, headers=auth)
    assert waited <= retry_after + 1


def test_per_ip_rate_limit_gives_429_then_recovers_and_never_throttles_health_checks(world: World) -> None:
    url = f"{world.stack.cp_url}/v1/campaigns"  # unauthenticated: only the IP's bucket applies
    results, refused = hammer(url, local_address=OTHER_IP)
    assert refused is not None, f"no 429 after {len(results)} requests at {RATE_PER_IP}/s"
    retry_after = check_429(refused, "per_ip", RATE_PER_IP)
    assert {status for _, status in results} <= {401, 429}
    transport = httpx.HTTPTransport(local_address=OTHER_IP)
    with httpx.Client(transport=transport, timeout=10) as client:
        # A probe from the throttled address still gets its answer.
        assert client.get(f"{world.stack.cp_url}/livez").status_code == 200
        assert client.get(f"{world.stack.cp_url}/readyz").status_code == 200
    # 127.0.0.1 has its own bucket.
    assert httpx.get(url, timeout=10).status_code == 401
    wait_admitted(url, retry_after, local_address=OTHER_IP)


def test_edge_per_ip_rate_limit_gives_429_with_cors(world: World) -> None:
    edge = world.stack.edges[0].url
    results, refused = hammer(f"{edge}/tag.js", local_address=OTHER_IP)
    assert refused is not None, f"no 429 from the edge after {len(results)} requests"
    retry_after = check_429(refused, "per_ip", RATE_PER_IP)
    assert refused.headers["access-control-allow-origin"] == "*"
    transport = httpx.HTTPTransport(local_address=OTHER_IP)
    with httpx.Client(transport=transport, timeout=10) as client:
        assert client.get(f"{edge}/readyz").status_code == 200
        assert client.get(f"{edge}/metrics").status_code == 200
    wait_admitted(f"{edge}/tag.js", retry_after, local_address=OTHER_IP)


def raw_http(url: str, head: bytes, body_chunks: list[bytes] | None = None, *, read_first: bool = False,
             timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 exchange on a raw socket, so a test controls exactly what is (not) sent. The body chunks
    are sent without a terminating chunk unless given: a server that waits for the end of the body never
    answers, and the read times out."""
    parts = urlsplit(url)
    assert parts.hostname and parts.port
    data = b""
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        try:
            sock.sendall(head)
            if read_first:  # the answer must come before any of the body is sent
                data = sock.recv(65536)
            else:
                for chunk in body_chunks or []:
                    sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before taking everything: read what it said
        with contextlib.suppress(ConnectionResetError, TimeoutError):
            while b"\r\n\r\n" not in data or not _complete(data):
                more = sock.recv(65536)
                if not more:
                    break
                data += more
    head_text, _, payload = data.partition(b"\r\n\r\n")
    lines = head_text.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, payload


def _complete(data: bytes) -> bool:
    head, _, payload = data.partition(b"\r\n\r\n")
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            return len(payload) >= int(value)
    return True


def _request_head(url: str, method: str, path: str, headers: dict[str, str]) -> bytes:
    host = urlsplit(url).netloc
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    return "\r\n".join(lines).encode()


def test_oversized_body_with_content_length_is_413_before_it_is_sent(world: World) -> None:
    # Only the head goes out: a 413 that arrives anyway was decided without reading the body.
    head = _request_head(world.stack.cp_url, "POST", "/v1/campaigns", {
        "Authorization": f"Bearer {world.token}", "Content-Type": "application/json",
        "Content-Length": str(50 * 1024 * 1024)})
    status, headers, payload = raw_http(world.stack.cp_url, head, read_first=True)
    assert status == 413 and headers["connection"] == "close"
    assert json.loads(payload) == {"error": f"request body larger than {MAX_BODY} bytes", "limit": "body_bytes"}
    # The edge's conversion postback, the same way.
    head = _request_head(world.stack.edges[0].url, "POST", "/v1/track/conversion", {
        "Content-Type": "application/json", "Content-Length": str(10 * 1024 * 1024)})
    status, headers, payload = raw_http(world.stack.edges[0].url, head, read_first=True)
    assert status == 413 and json.loads(payload)["limit"] == "body_bytes"
    assert headers["access-control-allow-origin"] == "*"


def _chunked(total: int, size: int = 16_384) -> list[bytes]:
    piece = b"[" + b" " * (size - 1)
    return [f"{len(piece):x}\r\n".encode() + piece + b"\r\n" for _ in range(total // size)]


def test_oversized_chunked_body_without_content_length_is_413(world: World) -> None:
    before = len(api(world.stack, "GET", "/v1/campaigns", world.token).json()["campaigns"])
    head = _request_head(world.stack.cp_url, "POST", "/v1/campaigns", {
        "Authorization": f"Bearer {world.token}", "Content-Type": "application/json",
        "Transfer-Encoding": "chunked"})
    # Four times the limit, never terminated: the server must answer once it has seen more than the limit.
    status, _, payload = raw_http(world.stack.cp_url, head, _chunked(4 * MAX_BODY))
    assert status == 413 and json.loads(payload)["limit"] == "body_bytes"
    assert len(api(world.stack, "GET", "/v1/campaigns", world.token).json()["campaigns"]) == before
    # Just under the limit, chunked, is read whole and judged on its content (not JSON: 400).
    small = b"{" + b" " * 1000
    chunks = [f"{len(small):x}\r\n".encode() + small + b"\r\n", b"0\r\n\r\n"]
    status, _, payload = raw_http(world.stack.cp_url, head, chunks)
    assert status == 400 and "JSON" in json.loads(payload)["error"]
    edge = world.stack.edges[0].url
    head = _request_head(edge, "POST", "/v1/track/conversion", {"Transfer-Encoding": "chunked"})
    status, _, payload = raw_http(edge, head, _chunked(4 * 16_384))
    assert status == 413 and json.loads(payload)["limit"] == "body_bytes"


@pytest.mark.parametrize("target", ["control plane", "edge"])
def test_huge_headers_are_refused_with_431_never_a_5xx(world: World, target: str) -> None:
    url = world.stack.cp_url if target == "control plane" else world.stack.edges[0].url
    path = "/v1/campaigns" if target == "control plane" else "/v1/ads?placement=p&format=300x250"
    cases = {
        # Over this server's own limits: a JSON 431 naming the limit.
        "70 headers": ({f"X-Pad-{i}": "x" for i in range(70)}, "header_count"),
        "one 40 KiB header": ({"X-Pad": "x" * 40_000}, "header_bytes"),
        "headers adding up to 40 KiB": ({f"X-Pad-{i}": "x" * 1000 for i in range(40)}, "header_bytes"),
        # Over granian's own limits (100 headers, ~400 KiB): it answers 431 itself, with an empty body.
        "150 headers": ({f"X-Pad-{i}": "x" for i in range(150)}, None),
        "one 1 MiB header": ({"X-Pad": "x" * 1024 * 1024}, None),
    }
    for name, (headers, limit) in cases.items():
        status, _, payload = raw_http(url, _request_head(url, "GET", path, headers))
        assert status == 431, (name, status, payload[:200])
        if limit is not None:
            assert json.loads(payload)["limit"] == limit, name
    # Under the limits, the same request is served as usual.
    status, _, _ = raw_http(url, _request_head(url, "GET", path, {"X-Pad": "x" * 4000, "Connection": "close"}))
    assert status in (200, 204, 401)


# --- inputs the fuzzer found (or could) that once were 5xx: each pinned, so none comes back ----------------

DEEP_JSON = b"[" * 60_000  # well under the body limit, deeper than Python's recursion limit
HUGE_INT = b'{"max_bid_micros": ' + b"9" * 5000 + b"}"  # past Python's 4300-digit int parsing limit


def _malformed_cases(w: World) -> list[tuple[str, str, str, dict[str, Any]]]:
    cid = w.campaigns["draft"]
    body = campaign_body("malformed")
    creative = body["creatives"][0]
    return [
        ("POST", "/v1/campaigns", "nested JSON", {"content": DEEP_JSON}),
        ("POST", "/v1/campaigns", "5000-digit number", {"content": HUGE_INT}),
        ("POST", "/v1/campaigns", "object as objective", {"json": {**body, "objective": {}}}),
        ("POST", "/v1/campaigns", "array as bid_type", {"json": {**body, "bid_type": []}}),
        ("POST", "/v1/campaigns", "object as device", {"json": {**body, "targeting": {"devices": [{}]}}}),
        ("POST", "/v1/campaigns", "object as size", {"json": {**body, "creatives": [{**creative, "size": {}}]}}),
        ("POST", "/v1/campaigns", "unbalanced IPv6 host", {"json": {
            **body, "creatives": [{**creative, "landing_url": "https://[::1/x"}]}}),
        ("POST", "/v1/campaigns", "NFKC slash in host", {"json": {
            **body, "creatives": [{**creative, "image_url": "https://cdn\uff0fexample.com/a.png"}]}}),
        ("POST", f"/v1/campaigns/{cid}/creatives", "unbalanced IPv6 host", {"json": {
            **creative, "image_url": "http://[abc"}}),
        ("PATCH", f"/v1/campaigns/{cid}", "superscript revision", {"json": {"name": "x"},
                                                                 "headers": {"If-Match": b'"\xb2"'}}),
        ("PATCH", f"/v1/campaigns/{cid}", "revision past uint64", {"json": {"name": "x"},
                                                                 "headers": {"If-Match": '"' + "9" * 30 + '"'}}),
        ("GET", f"/v1/campaigns/{cid}/metrics?from=%C2%B2", "superscript epoch", {}),
        ("GET", f"/v1/campaigns/{cid}/metrics?from={'9' * 5000}", "5000-digit epoch", {}),
        ("GET", "/v1/campaigns/%2A", "wildcard id", {}),
        ("GET", "/v1/campaigns/a%20b", "id with a space", {}),
    ]


def test_malformed_advertiser_requests_are_4xx_never_5xx(world: World) -> None:
    results = {}
    for method, path, name, kwargs in _malformed_cases(world):
        headers = {"Authorization": f"Bearer {world.token}", **kwargs.pop("headers", {})}
        if "content" in kwargs:
            headers["Content-Type"] = "application/json"
        r = httpx.request(method, world.stack.cp_url + path, headers=headers, timeout=10, **kwargs)
        results[f"{method} {name}"] = r.status_code
    assert all(400 <= status < 500 for status in results.values()), results
    # The ones that are malformed JSON or malformed values name the problem: 400 for the body, 422 for a field.
    assert results["POST nested JSON"] == results["POST 5000-digit number"] == 400, results
    assert all(results[f"POST {k}"] == 422 for k in ("object as objective", "array as bid_type",
                                                      "object as device", "object as size",
                                                      "unbalanced IPv6 host", "NFKC slash in host")), results


def test_malformed_publisher_requests_are_4xx_never_5xx(world: World) -> None:
    edge = world.stack.edges[0].url
    for content in (DEEP_JSON[:15_000], b'{"value_micros": ' + b"9" * 5000 + b"}"):
        r = httpx.post(f"{edge}/v1/track/conversion", content=content, timeout=10,
                       headers={"Content-Type": "application/json"})
        assert r.status_code == 400, (content[:20], r.status_code, r.text)


def test_a_405_lists_every_method_of_the_path(world: World) -> None:
    """Allow must name all the methods a path has, or a client cannot discover them (RFC 9110 15.5.6)."""
    for path, methods in (("/v1/campaigns", {"GET", "POST"}),
                          (f"/v1/campaigns/{world.campaigns['draft']}", {"GET", "PATCH"})):
        r = httpx.request("DELETE", world.stack.cp_url + path, timeout=10,
                          headers={"Authorization": f"Bearer {world.token}"})
        assert r.status_code == 405
        assert {m.strip() for m in r.headers["allow"].split(",")} - {"HEAD"} == methods, r.headers["allow"]


# --- tenant isolation -----------------------------------------------------------------------------------------

READ_ONLY = {"id": "cmp0000000000000000", "advertiser_id": "advaaaaaaaaaaaaaaaa", "status": "active",
             "review": {"approved": True, "reasons": []}, "revision": 1, "created_at": "2020-01-01T00:00:00",
             "updated_at": "2020-01-01T00:00:00"}


def test_every_advertiser_endpoint_refuses_another_tenants_campaign(world: World) -> None:
    """Each campaign endpoint, for a campaign in a status where the action would succeed for its owner, is a
    404 for another advertiser (not a 403: that would confirm the id exists) and changes nothing."""
    stack, owner, intruder = world.stack, world.token, world.other_token
    draft = create(stack, owner, "tenantdraft")
    active = create(stack, owner, "tenantactive", "submit")
    paused = create(stack, owner, "tenantpaused", "submit", "pause")
    creative = campaign_body("x")["creatives"][0]
    attempts = [
        ("GET", draft, "", None, {}),
        ("PATCH", draft, "", {"name": "hijacked"}, {}),
        ("PATCH", draft, "", {"name": "hijacked"}, {"If-Match": f'"{draft["revision"]}"'}),
        ("POST", draft, "/creatives", creative, {}),
        ("POST", draft, "/submit", None, {}),
        ("POST", active, "/pause", None, {}),
        ("POST", active, "/complete", None, {}),
        ("POST", paused, "/resume", None, {}),
        ("POST", paused, "/complete", None, {}),
        ("GET", active, "/metrics", None, {}),
        ("GET", active, "/metrics?granularity=minute&from=0", None, {}),
    ]
    for method, campaign, suffix, body, headers in attempts:
        r = api(stack, method, f"/v1/campaigns/{campaign['id']}{suffix}", intruder, body, headers)
        assert r.status_code == 404, (method, suffix, r.status_code, r.text)
        assert r.json() == {"error": f"campaign {campaign['id']!r} not found"}  # the same as for no campaign
    listed = api(stack, "GET", "/v1/campaigns", intruder).json()["campaigns"]
    assert not {c["id"] for c in listed} & {draft["id"], active["id"], paused["id"]}
    # The owner's campaigns are exactly as they were: same revision, same status.
    for before in (draft, active, paused):
        after = api(stack, "GET", f"/v1/campaigns/{before['id']}", owner).json()
        assert (after["revision"], after["status"], after["name"], len(after["creatives"])) == (
            before["revision"], before["status"], before["name"], len(before["creatives"]))
    # An advertiser token is no admin token.
    assert api(stack, "GET", "/v1/admin/stats", owner).status_code == 401


def test_server_owned_fields_cannot_be_mass_assigned_anywhere(world: World) -> None:
    stack, token = world.stack, world.token
    before_list = len(api(stack, "GET", "/v1/campaigns", token).json()["campaigns"])
    # On create: every server-owned field is named and nothing is stored.
    r = api(stack, "POST", "/v1/campaigns", token, {**campaign_body("massnew"), **READ_ONLY})
    assert r.status_code == 422
    assert {f["field"] for f in r.json()["fields"]} == set(READ_ONLY)
    assert len(api(stack, "GET", "/v1/campaigns", token).json()["campaigns"]) == before_list
    # On PATCH, alone or hidden among valid fields: refused whole, nothing changes (not even the name).
    campaign = create(stack, token, "massedit")
    for body in ({**READ_ONLY}, {"name": "renamed", "advertiser_id": "advaaaaaaaaaaaaaaaa"},
                 {"name": "renamed", "status": "active"}, {"name": "renamed", "id": "cmp1111111111111111"},
                 {"name": "renamed", "review": {"approved": True, "reasons": []}},
                 {"name": "renamed", "creatives": [campaign_body("x")["creatives"][0]]}):
        r = api(stack, "PATCH", f"/v1/campaigns/{campaign['id']}", token, body)
        assert r.status_code == 422, (body, r.text)
        assert {f["field"] for f in r.json()["fields"]} == set(body) - {"name"}
    after = api(stack, "GET", f"/v1/campaigns/{campaign['id']}", token).json()
    assert after == campaign
    # On a creative: its id and status are the server's too.
    r = api(stack, "POST", f"/v1/campaigns/{campaign['id']}/creatives", token,
            {**campaign_body("x")["creatives"][0], "id": "cr1", "status": "active"})
    assert r.status_code == 422 and {f["field"] for f in r.json()["fields"]} == {"id", "status"}
    assert api(stack, "GET", f"/v1/campaigns/{campaign['id']}", token).json() == campaign


def test_documents_are_served_and_describe_every_route(world: World) -> None:
    """Each server serves its document, and every route it has is in it (a new route must be documented)."""
    cp = httpx.get(f"{world.stack.cp_url}/openapi.json", timeout=10).json()
    edge = httpx.get(f"{world.stack.edges[0].url}/openapi.json", timeout=10).json()
    from control_plane.api import ROUTES as CP_ROUTES
    from edge.app import ROUTES as EDGE_ROUTES

    for doc, routes in ((cp, CP_ROUTES), (edge, EDGE_ROUTES)):
        assert doc["openapi"] == "3.0.3"
        for route in routes:
            path = getattr(route, "path", "")
            methods = getattr(route, "methods", None)
            if not methods:  # a Mount (static files): documented as its file route
                assert any(p.startswith(path + "/") for p in doc["paths"]), path
                continue
            for method in methods - {"HEAD"}:
                assert method.lower() in doc["paths"].get(path, {}), f"{method} {path} is not documented"


def test_no_process_logged_an_unhandled_error(world: World) -> None:
    """Runs last: nothing above made a process log a traceback (a 5xx the checks missed, or a background task
    that crashed on something the API accepted, such as a date far in the future), and all are still ready."""
    for proc in (world.stack.control_plane, *(edge.proc for edge in world.stack.edges)):
        assert proc is not None and proc.alive()
        assert "Traceback" not in proc.log_path.read_text(errors="replace"), proc.tail(60)
    ready = httpx.get(f"{world.stack.cp_url}/readyz", timeout=10)
    assert ready.status_code == 200 and not ready.json()["crashes"], ready.text
    for edge in world.stack.edges:
        assert httpx.get(f"{edge.url}/readyz", timeout=10).status_code == 200
