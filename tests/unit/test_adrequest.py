"""Publisher ad request parsing: a valid query becomes an AdRequest, anything else names its field."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.datastructures import QueryParams

from edge.adrequest import ParamError, RepeatedParameter, parse_ad_request, query_dict
from edge.auction import AdRequest
from edge.tcf import encode

BASE = {"placement": "home.top", "format": "300x250"}


def fields(params, max_slots=6) -> list[str]:
    result = parse_ad_request(params, max_slots)
    assert isinstance(result, list), result
    return [e.field for e in result]


def test_valid_request_is_parsed_and_normalized():
    got = parse_ad_request(
        {**BASE, "slots": "3", "user": "u-1", "geo": "us-ca", "device": "Mobile", "keywords": "Shoes, boots,,shoes",
         "interests": "running", "url": "https://www.News.example.com:8443/a", "explain": "1"},
        6,
    )
    assert got == AdRequest(placement="home.top", slots=3, format="300x250", user="u-1", geo="US-CA",
                            device="mobile", keywords=("shoes", "boots"), interests=("running",),
                            url="https://www.News.example.com:8443/a", site="news.example.com")
    assert got.country == "US"


@pytest.mark.parametrize(("url", "site"), [
    ("", ""), ("/relative/path", ""), ("javascript:alert(1)", ""), ("https://[::1", ""),
    ("http://user:pw@Shop.example/x?y#z", "shop.example"), ("https://" + "a" * 250 + ".example/", ""),
])
def test_the_site_is_the_pages_host_or_nothing(url, site):
    assert parse_ad_request({**BASE, "url": url}, 6).site == site


def test_minimal_request_defaults_to_one_slot():
    got = parse_ad_request(BASE, 6)
    assert isinstance(got, AdRequest)
    assert (got.slots, got.geo, got.device, got.keywords) == (1, "", "", ())


@pytest.mark.parametrize("fmt", ["1x1", "0x0"])
def test_tracking_pixel_formats_are_refused(fmt):
    result = parse_ad_request({**BASE, "format": fmt}, 6)
    assert result == [ParamError("format", "0x0 and 1x1 placements cannot show ads")]


def test_unknown_parameter_is_refused_by_name():
    assert fields({**BASE, "callback": "x"}) == ["callback"]


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("placement", ""),
        ("placement", "has space"),
        ("placement", "x" * 129),
        ("format", ""),
        ("format", "300by250"),
        ("format", "12345x1"),
        ("slots", "0"),
        ("slots", "7"),
        ("slots", "-1"),
        ("slots", "two"),
        ("slots", ""),
        ("geo", "USA"),
        ("geo", "US-"),
        ("geo", "US-CALI"),
        ("device", "watch"),
        ("user", "u" * 129),
        ("url", "h" * 2049),
        ("interests", "a" * 65),
    ],
)
def test_each_bad_parameter_is_named(param, value):
    assert fields({**BASE, param: value}) == [param]


def test_missing_required_parameters_are_named():
    assert fields({}) == ["placement", "format"]


def test_several_bad_parameters_are_reported_together():
    assert fields({"placement": "", "format": "1x1", "slots": "99", "geo": "x", "device": "fridge"}) == [
        "placement", "format", "slots", "geo", "device"]


def test_max_slots_is_the_upper_bound():
    assert isinstance(parse_ad_request({**BASE, "slots": "20"}, 20), AdRequest)
    assert fields({**BASE, "slots": "21"}, max_slots=20) == ["slots"]


@pytest.mark.parametrize("slots", ["\u00b2", "9" * 5000])  # superscript two; more digits than int() parses
def test_non_ascii_or_huge_slots_are_a_param_error(slots):
    assert fields({**BASE, "slots": slots}) == ["slots"]


@pytest.mark.parametrize("param", ["placement", "format", "geo"])
def test_trailing_newline_is_refused(param):
    value = {"placement": "home", "format": "300x250", "geo": "US"}[param] + "\n"
    assert fields({**BASE, param: value}) == [param]


@settings(max_examples=200, deadline=None)
@given(params=st.dictionaries(
    st.sampled_from(["placement", "slots", "format", "user", "geo", "device", "keywords", "interests", "url",
                     "other"]),
    st.text(alphabet=st.characters(codec="ascii"), max_size=40),
))
def test_ascii_input_gives_a_request_or_named_errors(params):
    result = parse_ad_request(params, 6)
    if isinstance(result, list):
        assert result
        assert all(isinstance(e, ParamError) and e.field and e.message for e in result)
    else:
        assert 1 <= result.slots <= 6
        assert result.format not in ("0x0", "1x1")


PERSONAL = {**BASE, "user": "u-1", "interests": "running", "keywords": "shoes"}


REFUSED = "COyfVVoOyfVVoADACHENAwCAAAAAAAAAAAAAE5QBgALgAqgD8AQACSwEygJyAnSAMABgAFkAgQCDASeAmYBOgAA"


@pytest.mark.parametrize(("extra", "vendor", "personalized"), [
    ({}, 0, True),
    ({"gdpr": "1", "gdpr_consent": encode([1, 3, 4])}, 0, True),
    ({"gdpr": "1"}, 0, False),  # GDPR applies and no consent string: contextual only
    ({"gdpr": "1", "gdpr_consent": encode([1, 3])}, 0, False),  # no consent to select personalised ads
    # A string from a CMP whose user refused everything (decoded by an independent implementation).
    ({"gdpr": "1", "gdpr_consent": REFUSED}, 0, False),
    ({"gdpr": "1", "gdpr_consent": encode([1, 3, 4], vendors=[12])}, 12, True),  # this ad server's vendor id
    ({"gdpr": "1", "gdpr_consent": encode([1, 3, 4], vendors=[11])}, 12, False),  # another vendor's consent
    ({"gdpr": "0", "gdpr_consent": encode([])}, 0, True),  # GDPR does not apply: the string decides nothing
    ({"gpc": "1"}, 0, False),  # Global Privacy Control opts out everywhere
    ({"gdpr": "0", "gpc": "1", "gdpr_consent": encode([1, 3, 4])}, 0, False),
])
def test_without_consent_user_signals_are_dropped_but_context_stays(extra, vendor, personalized):
    got = parse_ad_request({**PERSONAL, **extra}, 6, vendor)
    assert isinstance(got, AdRequest)
    assert got.personalized is personalized
    assert (got.user, got.interests) == (("u-1", ("running",)) if personalized else ("", ()))
    assert got.keywords == ("shoes",)  # contextual targeting survives


@pytest.mark.parametrize(("consent", "says"), [
    ("CPXxRfAPXx", "too short"),
    ("BOEFEAyOEFEAyAHABDENAI4AAAB9vABAASA", "TCF version 1"),
])
def test_a_consent_string_that_is_not_tcf_v2_is_refused_naming_why(consent, says):
    errors = parse_ad_request({**PERSONAL, "gdpr": "1", "gdpr_consent": consent}, 6)
    assert isinstance(errors, list) and errors[0].field == "gdpr_consent" and says in errors[0].message
    # Where GDPR does not apply the string decides nothing and is not read.
    assert parse_ad_request({**PERSONAL, "gdpr": "0", "gdpr_consent": consent}, 6).personalized


def test_consent_flags_are_validated():
    assert set(fields({**BASE, "gdpr": "yes", "gpc": "2", "gdpr_consent": "<script>"})) == {
        "gdpr", "gpc", "gdpr_consent"}


def test_page_keywords_keep_usable_terms_and_drop_the_rest():
    got = parse_ad_request({**BASE, "keywords": "Café, c++, -bad, fußball, " + ",".join(f"k{i}" for i in range(60))}, 6)
    assert isinstance(got, AdRequest)
    assert got.keywords[:2] == ("café", "fußball")  # "c++" and "-bad" dropped, not a 400
    assert len(got.keywords) == 50


# Query strings as browsers and bots send them: names and values with escapes, '+', '=' inside values, empty
# parts, repeats, and raw non-ASCII bytes.
_QUERY_BYTES = st.lists(st.sampled_from([b"a", b"b", b"=", b"&", b"+", b"%", b"%20", b"%C3%A9", b"%zz", b"\xe9",
                                         b"placement", b"x", b"0"]), max_size=30).map(b"".join)


@given(_QUERY_BYTES)
@settings(max_examples=400, deadline=None)
def test_query_dict_reads_a_query_exactly_as_starlette_does(raw):
    """The ad path parses its query itself (Starlette's QueryParams costs more per lookup): blanks are kept,
    escapes and '+' decode, as in ``dict(QueryParams(raw))``; a repeated name is refused, by name."""
    names = [name for name, _ in QueryParams(raw).multi_items()]
    if len(set(names)) == len(names):
        assert query_dict(raw) == dict(QueryParams(raw))
    else:
        with pytest.raises(RepeatedParameter) as refused:
            query_dict(raw)
        assert refused.value.name == next(n for i, n in enumerate(names) if n in names[:i])


def test_query_dict_keeps_blank_values_and_refuses_a_name_given_twice():
    assert query_dict(b"slots=2&user=&gpc") == {"slots": "2", "user": "", "gpc": ""}
    assert query_dict(b"keywords=caf%C3%A9+cr%C3%A8me") == {"keywords": "café crème"}
    with pytest.raises(RepeatedParameter, match="explain"):  # the first one, unchecked, used to slip through
        query_dict(b"placement=x&explain=%C2%91J&explain=")
