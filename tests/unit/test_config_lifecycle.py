"""lematt.config: the lifecycle keys (profile, external account binding, terms of service,
preferredChain) and the per-section profile of actions.conf."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lematt.config import load
from lematt.errors import ConfigError

MINIMAL = "[config]\naccountKey: account.key\nchallengeDropDir: challenges\n"
HMAC = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"


def write(tmp_path: Path, extra: str = "", domains: str = "example.com www\nmail.example.com\n",
          actions: str | None = None) -> Path:
    (tmp_path / "lematt.conf").write_text(MINIMAL + extra)
    (tmp_path / "domains").write_text(domains)
    if actions is not None:
        (tmp_path / "actions.conf").write_text(actions)
    return tmp_path / "lematt.conf"


def error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load(path)
    return str(info.value)


def test_defaults(tmp_path: Path) -> None:
    s = load(write(tmp_path)).settings
    assert (s.profile, s.eab_kid, s.eab_hmac_key, s.preferred_chain) == (None,) * 4
    assert s.agree_terms_of_service is True
    assert s.reauthorize_days is None and s.generate_new_certs_after_days is None


def test_every_key_is_read_and_the_secret_stays_out_of_the_repr(tmp_path: Path) -> None:
    conf = write(tmp_path, f"profile: shortlived\neabKid: kid-1\neabHmacKey: {HMAC}\n"
                           "agreeTermsOfService: no\npreferredChain: ISRG Root X1\n")
    s = load(conf).settings
    assert (s.profile, s.eab_kid, s.eab_hmac_key) == ("shortlived", "kid-1", HMAC)
    assert s.agree_terms_of_service is False and s.preferred_chain == "ISRG Root X1"
    assert HMAC not in repr(s)
    assert s.where("profile") == f"{conf.resolve()}:4"
    lines = load(conf).lines
    assert {line.profile for line in lines} == {"shortlived"}


def test_the_hmac_key_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "eab.key").write_text(HMAC + "==\n")
    s = load(write(tmp_path, "eabKid: kid-1\neabHmacKeyFile: eab.key\n")).settings
    assert s.eab_hmac_key == HMAC
    (tmp_path / "eab.key").write_text("not base64url!\n")
    assert "eab.key" in error(write(tmp_path, "eabKid: kid-1\neabHmacKeyFile: eab.key\n"))


@pytest.mark.parametrize(("extra", "words"), [
    ("eabKid: kid-1\n", [":4:", "eabKid is set but eabHmacKey (or eabHmacKeyFile) is not"]),
    (f"eabHmacKey: {HMAC}\n", [":4:", "eabHmacKey is set but eabKid is not"]),
    (f"eabKid: k\neabHmacKey: {HMAC}\neabHmacKeyFile: x\n", [":6:", "both set"]),
    ("eabKid: k\neabHmacKey: short\n", [":5:", "eabHmacKey", "base64url"]),
    ("eabKid: two words\neabHmacKey: " + HMAC + "\n", [":4:", "eabKid", "no spaces"]),
    ("profile: ../etc\n", [":4:", "profile", "not a profile name"]),
    ("profile: a b\n", [":4:", "not a profile name"]),
    ("agreeTermsOfService: maybe\n", [":4:", "agreeTermsOfService"]),
    ("preferredChain: \x1b[31m\n", [":4:", "preferredChain", "printable"]),
])
def test_bad_values_name_the_line(tmp_path: Path, extra: str, words: list[str]) -> None:
    message = error(write(tmp_path, extra))
    for word in words:
        assert word in message


ACTIONS = """[default]
profile: classic
[override-mail]
domains: mail.example.com
profile: shortlived
"""


def test_profile_per_actions_section_overrides_lematt_conf(tmp_path: Path) -> None:
    config = load(write(tmp_path, "profile: tlsserver\n", actions=ACTIONS))
    profiles = {line.primary: line.profile for line in config.lines}
    assert profiles == {"example.com": "classic", "mail.example.com": "shortlived"}
    # Without [default]'s profile the others take lematt.conf's.
    actions = ACTIONS.replace("[default]\nprofile: classic\n", "")
    config = load(write(tmp_path, "profile: tlsserver\n", actions=actions))
    profiles = {line.primary: line.profile for line in config.lines}
    assert profiles == {"example.com": "tlsserver", "mail.example.com": "shortlived"}


def test_one_certificate_one_profile(tmp_path: Path) -> None:
    domains = "example.com mail\n"
    message = error(write(tmp_path, "", domains, actions=ACTIONS))
    assert f"{(tmp_path / 'domains').resolve()}:1:" in message
    assert "different profiles" in message and "classic" in message and "shortlived" in message


def test_profile_is_not_for_every(tmp_path: Path) -> None:
    message = error(write(tmp_path, actions="[every]\nprofile: classic\n"))
    assert "'profile' is not allowed in [every]" in message


def test_yaml_actions_take_a_profile(tmp_path: Path) -> None:
    (tmp_path / "actions.yaml").write_text("override-mail:\n  domains: mail.example.com\n"
                                           "  profile: shortlived\n")
    config = load(write(tmp_path))
    assert [line.profile for line in config.lines] == [None, "shortlived"]
    assert os.path.exists(tmp_path / "actions.yaml")
