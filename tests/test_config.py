"""Settings precedence (keyword > LLMP_* env > llmp.toml > defaults) and strictness: an
unknown key or a malformed value is an error that names the key and where it was set."""
from __future__ import annotations

from pathlib import Path

import pytest

from llmp.config import Settings, load_settings
from llmp.errors import ConfigError


def write_toml(home: Path, text: str) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    path = home / "llmp.toml"
    path.write_text(text)
    return path


def test_defaults(llmp_home):
    s = load_settings()
    assert s.home == llmp_home and s.port == 8000 and s.host == "127.0.0.1"
    assert s.webhook_allow_private is False and s.admin_key is None
    assert s.billing.payment_method is None


@pytest.mark.parametrize("text", ["port = 9001\nn_slots = 3\n",
                                  "[llmp]\nport = 9001\nn_slots = 3\n"])
def test_toml_top_level_or_llmp_table(llmp_home, text):
    write_toml(llmp_home, text)
    s = load_settings()
    assert (s.port, s.n_slots) == (9001, 3)


def test_precedence_keyword_env_toml_default(llmp_home, monkeypatch):
    write_toml(llmp_home, "port = 9001\nhost = '0.0.0.0'\nkeep_alive = 5\n")
    monkeypatch.setenv("LLMP_PORT", "9002")
    monkeypatch.setenv("LLMP_WEBHOOK_ALLOW_PRIVATE", "yes")
    s = load_settings()
    assert s.port == 9002  # env over toml
    assert s.host == "0.0.0.0" and s.keep_alive == 5.0  # toml over defaults
    assert s.webhook_allow_private is True
    assert s.queue_size == 256  # default
    s = load_settings(port=9003, host=None)  # keyword over env; None is "not given"
    assert s.port == 9003 and s.host == "0.0.0.0"
    assert Settings(port=9004).port == 9004


def test_home_picks_the_toml(tmp_path, llmp_home):
    other = tmp_path / "other-home"
    write_toml(other, "port = 9100\n")
    assert load_settings(other).port == 9100
    assert load_settings().port == 8000  # LLMP_HOME's has none
    assert Settings(home=other).port == 9100


def test_billing_payment_method(llmp_home):
    write_toml(llmp_home, "port = 8001\n[billing.payment_method]\ntype = 'credit_card'\n"
                          "last_four = '4242'\nexpires = '12/25'\n")
    pm = load_settings().billing.payment_method
    assert pm is not None and pm.model_dump() == {"type": "credit_card", "last_four": "4242",
                                                  "expires": "12/25"}


@pytest.mark.parametrize("where, setting, names", [
    ("toml", "prot = 9000\n", ["'prot'", "unknown setting", "llmp.toml"]),
    ("toml", "[llmp]\nqueue_sise = 3\n", ["'queue_sise'", "unknown setting"]),
    ("toml", "[billing.payment_method]\ntype = 'card'\ncvv = '123'\n",
     ["billing.payment_method.cvv"]),
    ("toml", "port = 'eighty'\n", ["'port'", "llmp.toml", "'eighty'"]),
    ("toml", "port = 70000\n", ["'port'", "70000"]),
    ("toml", "n_slots = 2.5\n", ["'n_slots'"]),
    ("toml", "webhook_allow_private = 'maybe'\n", ["'webhook_allow_private'", "'maybe'"]),
    ("toml", "port = 1\n[llmp]\nport = 2\n", ["port", "both"]),
    ("toml", "home = '/elsewhere'\n", ["'home'"]),
    ("toml", "port = \n", ["not valid TOML"]),
    ("env", ("LLMP_PORT", "abc"), ["'port'", "LLMP_PORT", "'abc'"]),
    ("env", ("LLMP_WEBHOOK_ALLOW_PRIVATE", "maybe"), ["'webhook_allow_private'",
                                                      "LLMP_WEBHOOK_ALLOW_PRIVATE"]),
    ("env", ("LLMP_KEEP_ALIVE", "soon"), ["'keep_alive'", "LLMP_KEEP_ALIVE"]),
    ("kw", {"queue_size": -1}, ["'queue_size'", "given"]),
    ("kw", {"nope": 1}, ["'nope'", "unknown setting"]),
])
def test_bad_settings_name_the_key(llmp_home, monkeypatch, where, setting, names):
    if where == "toml":
        write_toml(llmp_home, setting)
        kwargs = {}
    elif where == "env":
        monkeypatch.setenv(*setting)
        kwargs = {}
    else:
        kwargs = setting
    with pytest.raises(ConfigError) as e:
        load_settings(**kwargs)
    for name in names:
        assert name in e.value.message, e.value.message


def test_other_llmp_env_vars_are_not_settings(llmp_home, monkeypatch):
    """LLMP_URL and LLMP_API_KEY belong to the client, not to the settings: no error."""
    monkeypatch.setenv("LLMP_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("LLMP_API_KEY", "sk-x")
    assert load_settings().port == 8000


def test_replace_validates(llmp_home):
    s = load_settings()
    t = s.replace(n_slots=4, keep_alive="2.5")
    assert (t.n_slots, t.keep_alive, s.n_slots) == (4, 2.5, 0)
    with pytest.raises(ConfigError, match="n_slots"):
        s.replace(n_slots="many")
    with pytest.raises(ConfigError, match="unknown setting 'bogus'"):
        s.replace(bogus=1)


def test_cli_reports_a_bad_setting_in_one_line(llmp_home, cli):
    write_toml(llmp_home, "prot = 9000\n")
    r = cli("doctor")
    assert r.exit_code == 2
    assert "prot" in r.stderr and "Traceback" not in r.stderr + r.stdout
