"""Settings from the environment: every bad value reported at once, secrets never echoed."""

from __future__ import annotations

import base64

import pytest

from control_plane.settings import ControlPlaneSettings
from edge.settings import EdgeSettings
from replication import settings as s
from replication.settings import SettingsError, Spec, load

SECRET_KEY = b"k" * 32
SECRET_B64 = base64.b64encode(SECRET_KEY).decode()
EDGE_OK = {"ADSERVER_EDGE_REGION": "eu", "ADSERVER_EDGE_SIGNING_KEYS": f"k1:{SECRET_B64}"}


def settings_errors(fn, *args) -> list[str]:
    with pytest.raises(SettingsError) as info:
        fn(*args)
    for e in info.value.errors:
        assert e in str(info.value)  # the exception's message lists every problem
    return info.value.errors


def keys_in(errors: list[str]) -> list[str]:
    return [e.split(":", 1)[0].split("=", 1)[0] for e in errors]


# --- load ----------------------------------------------------------------------------------------------------

SPECS = [
    Spec("PORT", s.parse_int(1, 65535), "8080", "port"),
    Spec("NAME", s.parse_nonempty, None, "name of the thing"),
    Spec("DEBUG", s.parse_bool, "false", "debug"),
    Spec("TOKEN", s.parse_nonempty, "", "api token", secret=True),
]


def test_load_parses_values_and_defaults_with_lowercased_names():
    assert load("X_", SPECS, {"X_NAME": " app ", "X_TOKEN": "t"}) == {
        "port": 8080, "name": "app", "debug": False, "token": "t"}


def test_load_collects_every_error_at_once():
    errors = settings_errors(load, "X_", SPECS, {"X_PORT": "70000", "X_DEBUG": "maybe", "X_TOKEN": " "})
    assert keys_in(errors) == ["X_PORT", "X_NAME", "X_DEBUG", "X_TOKEN"]
    assert errors[1] == "X_NAME: required (name of the thing)"
    assert errors[0] == "X_PORT='70000': must be <= 65535"


def test_load_masks_secret_values():
    errors = settings_errors(load, "X_", SPECS, {"X_NAME": "a", "X_TOKEN": "   "})
    assert errors == ["X_TOKEN=<secret>: invalid value"]


def test_load_ignores_unprefixed_keys():
    assert load("X_", SPECS, {"NAME": "other", "X_NAME": "mine", "X_TOKEN": "t"})["name"] == "mine"


def test_secret_is_not_echoed_even_when_the_parser_quotes_it():
    specs = [Spec("PIN", s.parse_int(), None, "a secret number", secret=True)]
    errors = settings_errors(load, "X_", specs, {"X_PIN": "hunter2"})
    assert "hunter2" not in " ".join(errors)


@pytest.mark.parametrize(("raw", "value"), [("1", True), ("TRUE", True), (" yes ", True), ("on", True),
                                            ("0", False), ("false", False), ("No", False), ("off", False),
                                            ("", False)])
def test_parse_bool(raw, value):
    assert s.parse_bool(raw) is value


def test_parse_bool_refuses_other_words():
    with pytest.raises(ValueError):
        s.parse_bool("maybe")


def test_parse_list_drops_blanks():
    assert s.parse_list(" eu, ,us ,") == ("eu", "us")


def test_parse_int_bounds():
    p = s.parse_int(1, 3)
    assert p("1") == 1 and p("3") == 3
    for bad in ("0", "4", "x", "1.5"):
        with pytest.raises(ValueError):
            p(bad)


def test_parse_float_lower_bound():
    assert s.parse_float(0.0)("0.5") == 0.5
    with pytest.raises(ValueError):
        s.parse_float(0.0)("-0.1")


def test_describe_lists_every_setting():
    text = s.describe("X_", SPECS)
    assert [line.split()[0] for line in text.splitlines()] == ["X_PORT", "X_NAME", "X_DEBUG", "X_TOKEN"]
    assert "(required)" in text.splitlines()[1]


# --- edge ----------------------------------------------------------------------------------------------------


def test_edge_settings_from_env():
    st = EdgeSettings.from_env({**EDGE_OK, "ADSERVER_EDGE_PUBLIC_URL": "https://ads.example.com/",
                                "ADSERVER_EDGE_REGION": " eu "})
    assert st.edge_region == "eu"
    assert st.edge_pop == "pop1"
    assert st.edge_public_url == "https://ads.example.com"
    assert st.edge_signing_keys.active_kid == "k1"
    assert st.edge_signing_keys.keys["k1"] == SECRET_KEY
    assert st.edge_max_slots == 6
    assert st.nats_url == "nats://127.0.0.1:4222"


def test_edge_settings_missing_required_values_are_reported_together():
    errors = settings_errors(EdgeSettings.from_env, {})
    assert keys_in(errors) == ["ADSERVER_EDGE_REGION", "ADSERVER_EDGE_SIGNING_KEYS"]


def test_edge_settings_report_several_bad_values_together():
    env = {
        **EDGE_OK,
        "ADSERVER_EDGE_REGION": "eu.west",
        "ADSERVER_EDGE_POP": "pop 1",
        "ADSERVER_EDGE_PUBLIC_URL": "ftp://ads.example.com",
        "ADSERVER_EDGE_IMPRESSION_TTL_S": "abc",
        "ADSERVER_EDGE_MAX_SLOTS": "0",
        "ADSERVER_NATS_URL": " ",
    }
    assert sorted(keys_in(settings_errors(EdgeSettings.from_env, env))) == sorted([
        "ADSERVER_EDGE_REGION", "ADSERVER_EDGE_POP", "ADSERVER_EDGE_PUBLIC_URL",
        "ADSERVER_EDGE_IMPRESSION_TTL_S", "ADSERVER_EDGE_MAX_SLOTS", "ADSERVER_NATS_URL"])


@pytest.mark.parametrize(
    "keys_spec",
    [
        f"k1:{base64.b64encode(b'short-secret-material').decode()}",  # too short
        f"k1:{SECRET_B64}!!",  # not base64
        SECRET_B64,  # no key id
        f"k.1:{SECRET_B64}",  # dotted key id
    ],
)
def test_edge_signing_key_errors_never_echo_the_secret(keys_spec):
    errors = settings_errors(EdgeSettings.from_env, {**EDGE_OK, "ADSERVER_EDGE_SIGNING_KEYS": keys_spec})
    assert len(errors) == 1
    assert errors[0].startswith("ADSERVER_EDGE_SIGNING_KEYS=<secret>: ")
    secret_part = keys_spec.rpartition(":")[2]
    assert secret_part not in errors[0]
    assert base64.b64encode(b"short-secret-material").decode() not in errors[0]


def test_edge_settings_repr_hides_keys():
    st = EdgeSettings.from_env(EDGE_OK)
    text = repr(st) + str(st)
    assert "eu" in text and "k1" in text
    assert SECRET_B64 not in text
    assert repr(SECRET_KEY) not in text
    assert "kkkkkkkk" not in text


# --- control plane -------------------------------------------------------------------------------------------


def test_control_plane_defaults():
    st = ControlPlaneSettings.from_env({})
    assert st.cp_regions == ("eu", "us")
    assert st.cp_embedded_collector is True
    assert st.cp_admin_token == ""
    assert st.cp_reserve_cpm_micros == 100_000
    assert st.cp_grant_slice == 0.05


def test_control_plane_reports_several_bad_values_together():
    env = {
        "ADSERVER_CP_REGIONS": "eu,us west",
        "ADSERVER_CP_GRANT_SLICE": "0",
        "ADSERVER_CP_MAX_BODY_BYTES": "10",
        "ADSERVER_CP_EMBEDDED_COLLECTOR": "maybe",
        "ADSERVER_CP_RESERVE_CPM_MICROS": "-1",
        "ADSERVER_CP_STORE_URL": "",
    }
    assert sorted(keys_in(settings_errors(ControlPlaneSettings.from_env, env))) == sorted(
        ["ADSERVER_CP_REGIONS", "ADSERVER_CP_GRANT_SLICE", "ADSERVER_CP_MAX_BODY_BYTES",
         "ADSERVER_CP_EMBEDDED_COLLECTOR", "ADSERVER_CP_RESERVE_CPM_MICROS", "ADSERVER_CP_STORE_URL"])


def test_control_plane_placement_reserves_and_quality_floor():
    st = ControlPlaneSettings.from_env({"ADSERVER_CP_PLACEMENT_RESERVES": " home=250000, sports.top=0 ",
                                        "ADSERVER_CP_MIN_CTR": "0.0005"})
    assert st.cp_placement_reserves == {"home": 250_000, "sports.top": 0}
    assert st.cp_min_ctr == 0.0005
    assert ControlPlaneSettings.from_env({}).cp_placement_reserves == {}
    defaults = ControlPlaneSettings.from_env({})
    assert (defaults.cp_max_prior_ctr, defaults.cp_max_prior_cvr) == (0.05, 0.2)


def test_a_quality_floor_at_or_above_the_prior_ceiling_is_refused():
    errors = settings_errors(ControlPlaneSettings.from_env, {"ADSERVER_CP_MIN_CTR": "0.06"})
    assert keys_in(errors) == ["ADSERVER_CP_MIN_CTR"] and "below ADSERVER_CP_MAX_PRIOR_CTR=0.05" in errors[0]
    assert ControlPlaneSettings.from_env({"ADSERVER_CP_MIN_CTR": "0.06", "ADSERVER_CP_MAX_PRIOR_CTR": "0.1"})


@pytest.mark.parametrize(("key", "raw", "says"), [
    ("ADSERVER_CP_PLACEMENT_RESERVES", "home", "'home': must be <placement>=<micros per mille>"),
    ("ADSERVER_CP_PLACEMENT_RESERVES", "ho me=5", "'ho me=5': must be <placement>=<micros per mille>"),
    ("ADSERVER_CP_PLACEMENT_RESERVES", "home=1.5", "'home=1.5': the reserve must be a whole number"),
    ("ADSERVER_CP_PLACEMENT_RESERVES", "home=-1", "'home=-1': the reserve must be >= 0"),
    ("ADSERVER_CP_PLACEMENT_RESERVES", "home=1,home=2", "placement 'home' is named twice"),
    ("ADSERVER_CP_MIN_CTR", "1", "must be in [0, 1)"),
    ("ADSERVER_CP_MIN_CTR", "-0.1", "must be in [0, 1)"),
    ("ADSERVER_CP_MAX_PRIOR_CTR", "0", "must be in (0, 1]"),
    ("ADSERVER_CP_MAX_PRIOR_CVR", "1.5", "must be in (0, 1]"),
])
def test_control_plane_bad_floors_are_named(key, raw, says):
    errors = settings_errors(ControlPlaneSettings.from_env, {key: raw})
    assert keys_in(errors) == [key] and says in errors[0]


@pytest.mark.parametrize("regions", ["", " , ", "eu,a.b", "eu,*"])
def test_control_plane_regions_must_be_subject_tokens(regions):
    errors = settings_errors(ControlPlaneSettings.from_env, {"ADSERVER_CP_REGIONS": regions})
    assert keys_in(errors) == ["ADSERVER_CP_REGIONS"]


@pytest.mark.parametrize("fraction", ["nan", "1.5", "-0.1", "x"])
def test_control_plane_grant_slice_must_be_a_fraction(fraction):
    errors = settings_errors(ControlPlaneSettings.from_env, {"ADSERVER_CP_GRANT_SLICE": fraction})
    assert keys_in(errors) == ["ADSERVER_CP_GRANT_SLICE"]


def test_control_plane_repr_hides_admin_token_and_store_password():
    st = ControlPlaneSettings.from_env({
        "ADSERVER_CP_ADMIN_TOKEN": "adm1n-t0ken-value",
        "ADSERVER_CP_STORE_URL": "https://reporter:pa55w0rd@ch.example.com:8443/ads",
    })
    text = repr(st) + str(st)
    assert "ch.example.com" in text
    assert "adm1n-t0ken-value" not in text
    assert "pa55w0rd" not in text
    assert "reporter" not in text
