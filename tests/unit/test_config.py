"""lematt.config: lematt.conf, domains and actions files -> Config (no network)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from lematt.config import LE_PRODUCTION, LE_STAGING, Actions, Config, Section, load
from lematt.config.domains import parse_domains
from lematt.config.loader import MUST_STAPLE_REFUSED
from lematt.errors import ConfigError
from lematt.model import CertLine

REPO_CONF = Path(__file__).resolve().parents[2] / "conf"

MINIMAL = "[config]\naccountKey: account.key\nchallengeDropDir: challenges\n"
MINIMAL_YAML = "accountKey: account.key\nchallengeDropDir: challenges\n"


def write(tmp_path: Path, conf: str = MINIMAL, domains: str | None = "example.com www\n",
          actions: str | None = None, *, conf_name: str = "lematt.conf",
          actions_name: str = "actions.conf") -> Path:
    """Write a conf dir; returns the path of the lematt.conf to load."""
    path = tmp_path / conf_name
    path.write_text(conf)
    if domains is not None:
        (tmp_path / "domains").write_text(domains)
    if actions is not None:
        (tmp_path / actions_name).write_text(actions)
    return path


def load_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load(path)
    return str(info.value)


def conf_error(tmp_path: Path, conf: str, **kw: object) -> str:
    return load_error(write(tmp_path, conf, **kw))  # type: ignore[arg-type]


# --- lematt.conf: defaults and every key ----------------------------------------------------


def test_minimal_conf_gives_the_documented_defaults(tmp_path: Path) -> None:
    config = load(write(tmp_path))
    s = config.settings
    base = tmp_path.resolve()
    assert s.conf_dir == base
    assert s.account_key == base / "account.key"
    assert s.challenge_drop_dir == base / "challenges"
    assert s.challenge_listen is None
    assert s.reauthorize_days is None  # unset: ARI or a third of the lifetime decides
    assert s.generate_new_certs_after_days is None
    assert s.key_bits_rsa == 2048
    assert s.curve == "prime256v1"
    assert s.always_generate_new_keys is False
    assert (s.rsa_tag, s.curve_tag) == ("rsa2048", "prime256v1")
    assert s.key_types == ("rsa", "ec")
    assert (s.directory_prod, s.directory_test) == (LE_PRODUCTION, LE_STAGING)
    assert s.ca_bundle is None and s.contact_email is None and s.rate_limits == ()
    assert config.config_path == base / "lematt.conf"
    assert config.domains_path == base / "domains"
    assert config.actions_path is None and config.actions == Actions()
    assert config.warnings == ()


FULL_INI = """\
[config]
reauthorizeDays: 20.5
generateNewCertsAfterDays = 45
challengeDropDir: /srv/www/acme
challengeListen: [::1]:5002
accountKey: keys/account.pem
keyBitsRSA: 3072
curve: secp256r1
alwaysGenerateNewKeys: on
rsaTag: r3k
curveTag: p256
keyTypes: ["ec", "rsa"]
directoryProd: https://ca.example.net/acme/directory
directoryTest: http://127.0.0.1:14000/dir
caBundle: ca.pem
contactEmail: mailto:Hostmaster@Example.COM
rateLimits: {"newOrder": 20, "newNonce": 5.5, "*": 50}
"""

FULL_YAML = """\
reauthorizeDays: 20.5
generateNewCertsAfterDays: 45
challengeDropDir: /srv/www/acme
challengeListen: "[::1]:5002"
accountKey: keys/account.pem
keyBitsRSA: 3072
curve: secp256r1
alwaysGenerateNewKeys: true
rsaTag: r3k
curveTag: p256
keyTypes: [ec, rsa]
directoryProd: https://ca.example.net/acme/directory
directoryTest: http://127.0.0.1:14000/dir
caBundle: ca.pem
contactEmail: mailto:Hostmaster@Example.COM
rateLimits:
  newOrder: 20
  newNonce: 5.5
  "*": 50
"""


def test_every_key_is_read(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    s = load(write(tmp_path, FULL_INI)).settings
    base = tmp_path.resolve()
    assert s.reauthorize_days == 20.5
    assert s.generate_new_certs_after_days == 45.0
    assert s.challenge_drop_dir == Path("/srv/www/acme")
    assert s.challenge_listen == ("::1", 5002)
    assert s.account_key == base / "keys" / "account.pem"
    assert s.key_bits_rsa == 3072
    assert s.curve == "prime256v1"  # secp256r1 is the same curve
    assert s.always_generate_new_keys is True
    assert (s.rsa_tag, s.curve_tag) == ("r3k", "p256")
    assert s.key_types == ("ec", "rsa")
    assert s.directory_prod == "https://ca.example.net/acme/directory"
    assert s.directory_test == "http://127.0.0.1:14000/dir"
    assert s.directory_url(test=True) == s.directory_test
    assert s.ca_bundle == base / "ca.pem"
    assert s.contact_email == "Hostmaster@example.com"
    assert s.rate_limits == (("newOrder", 20.0), ("newNonce", 5.5), ("*", 50.0))


def test_ini_and_yaml_with_the_same_content_give_equal_configs(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("x")
    ini = load(write(tmp_path, FULL_INI))
    yaml_cfg = load(write(tmp_path, FULL_YAML, conf_name="lematt.conf.yaml"))
    assert yaml_cfg.settings == ini.settings
    assert yaml_cfg.lines == ini.lines
    assert yaml_cfg.actions == ini.actions


def test_yaml_is_recognised_by_content_whatever_the_file_name(tmp_path: Path) -> None:
    config = load(write(tmp_path, MINIMAL_YAML + "keyBitsRSA: 4096\n"))
    assert config.settings.key_bits_rsa == 4096
    assert config.settings.rsa_tag == "rsa4096"


def test_yaml_keys_may_sit_under_one_config_key(tmp_path: Path) -> None:
    text = "config:\n  accountKey: a.key\n  challengeDropDir: /c\n  reauthorizeDays: 3\n"
    assert load(write(tmp_path, text)).settings.reauthorize_days == 3.0


def test_ini_keys_ignore_case_as_configparser_did(tmp_path: Path) -> None:
    config = load(write(tmp_path, MINIMAL + "REAUTHORIZEDAYS = 7\nkeybitsrsa: 4096\n"))
    assert config.settings.reauthorize_days == 7.0
    assert config.settings.key_bits_rsa == 4096


def test_empty_value_means_default(tmp_path: Path) -> None:
    s = load(write(tmp_path, MINIMAL + "reauthorizeDays:\ncaBundle =\n")).settings
    assert s.reauthorize_days is None and s.ca_bundle is None


@pytest.mark.parametrize(("written", "expected"), [("0", None), ("3.5", 3.5), ("90", 90.0)])
def test_generate_new_certs_after_days(tmp_path: Path, written: str,
                                       expected: float | None) -> None:
    conf = MINIMAL + f"generateNewCertsAfterDays: {written}\n"
    assert load(write(tmp_path, conf)).settings.generate_new_certs_after_days == expected


@pytest.mark.parametrize(
    ("written", "expected"),
    [("ec", ("ec",)), ("rsa,ec", ("rsa", "ec")), ("ec, rsa", ("ec", "rsa")),
     ('["rsa"]', ("rsa",)), ("ec ec", ("ec",)), ("rsa  ec", ("rsa", "ec"))],
)
def test_key_types_forms(tmp_path: Path, written: str, expected: tuple[str, ...]) -> None:
    assert load(write(tmp_path, MINIMAL + f"keyTypes: {written}\n")).settings.key_types == \
        expected


def test_key_types_yaml_list_and_string(tmp_path: Path) -> None:
    assert load(write(tmp_path, MINIMAL_YAML + "keyTypes: [ec]\n")).settings.key_types == \
        ("ec",)
    assert load(write(tmp_path, MINIMAL_YAML + "keyTypes: rsa\n")).settings.key_types == \
        ("rsa",)


@pytest.mark.parametrize(("written", "curve", "tag"),
                         [("prime256v1", "prime256v1", "prime256v1"),
                          ("secp256r1", "prime256v1", "secp256r1"),
                          ("secp384r1", "secp384r1", "secp384r1")])
def test_curve_and_its_default_tag(tmp_path: Path, written: str, curve: str, tag: str) -> None:
    s = load(write(tmp_path, MINIMAL + f"curve: {written}\n")).settings
    assert (s.curve, s.curve_tag, s.tag("ec")) == (curve, tag, tag)


@pytest.mark.parametrize("bits", [2048, 3072, 4096])
def test_rsa_bits_and_default_tag(tmp_path: Path, bits: int) -> None:
    s = load(write(tmp_path, MINIMAL + f"keyBitsRSA: {bits}\n")).settings
    assert (s.key_bits_rsa, s.rsa_tag, s.tag("rsa")) == (bits, f"rsa{bits}", f"rsa{bits}")


@pytest.mark.parametrize(("written", "expected"),
                         [("yes", True), ("No", False), ("true", True), ("FALSE", False),
                          ("on", True), ("off", False), ("1", True), ("0", False)])
def test_ini_booleans(tmp_path: Path, written: str, expected: bool) -> None:
    conf = MINIMAL + f"alwaysGenerateNewKeys: {written}\n"
    assert load(write(tmp_path, conf)).settings.always_generate_new_keys is expected


def test_paths_expand_home_and_keep_absolute(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    conf = "[config]\naccountKey: ~/acct.key\nchallengeDropDir: /abs/dir/\n"
    s = load(write(tmp_path, conf)).settings
    assert s.account_key == tmp_path / "home" / "acct.key"
    assert s.challenge_drop_dir == Path("/abs/dir")


@pytest.mark.parametrize(
    "url",
    ["https://acme.example.org/dir", "https://127.0.0.1:14000/dir", "http://localhost:4001/dir",
     "http://127.0.0.2/dir", "http://[::1]:14000/dir"],
)
def test_directory_urls_accepted(tmp_path: Path, url: str) -> None:
    assert load(write(tmp_path, MINIMAL + f"directoryTest: {url}\n")).settings.directory_test \
        == url


def test_challenge_listen_alone_is_enough(tmp_path: Path) -> None:
    s = load(write(tmp_path, "[config]\naccountKey: a\nchallengeListen: 127.0.0.1:5002\n")).settings
    assert s.challenge_listen == ("127.0.0.1", 5002)
    assert s.challenge_drop_dir is None


def test_challenge_listen_normalises_ipv6(tmp_path: Path) -> None:
    conf = "[config]\naccountKey: a\nchallengeListen: [0:0:0:0:0:0:0:1]:80\n"
    assert load(write(tmp_path, conf)).settings.challenge_listen == ("::1", 80)


# --- lematt.conf: errors name file:line and key ---------------------------------------------


@pytest.mark.parametrize(
    ("line", "fragments"),
    [
        ("reauthorizeDays: 0", ["reauthorizeDays", "greater than 0"]),
        ("parallel: 0", ["parallel", "at least 1"]),
        ("processes: two", ["processes"]),
        ("reauthorizeDays: -2", ["reauthorizeDays", "greater than 0"]),
        ("reauthorizeDays: soon", ["reauthorizeDays", "not a number"]),
        ("reauthorizeDays: nan", ["reauthorizeDays", "finite"]),
        ("generateNewCertsAfterDays: -1", ["generateNewCertsAfterDays", "0 (off)"]),
        ("keyBitsRSA: 1024", ["keyBitsRSA", "2048, 3072, 4096"]),
        ("keyBitsRSA: big", ["keyBitsRSA", "2048, 3072, 4096"]),
        ("curve: secp521r1", ["curve", "prime256v1, secp256r1, secp384r1"]),
        ("alwaysGenerateNewKeys: maybe", ["alwaysGenerateNewKeys", "yes/no"]),
        ("keyTypes: dsa", ["keyTypes", "rsa and/or ec"]),
        ("keyTypes: []", ["keyTypes", "one or both"]),
        ("keyTypes: [rsa", ["keyTypes", "JSON"]),
        ("rsaTag: a/b", ["rsaTag", "file names"]),
        ("directoryProd: http://acme.example.org/dir", ["directoryProd", "loopback"]),
        ("directoryProd: ftp://acme.example.org/dir", ["directoryProd", "https://"]),
        ("directoryTest: acme.example.org", ["directoryTest", "https://"]),
        ("directoryTest: https://h:99999/", ["directoryTest", "valid URL"]),
        ("caBundle: missing.pem", ["caBundle", "not an existing file"]),
        ("contactEmail: hostmaster", ["contactEmail", "email address"]),
        ("contactEmail: a@localhost", ["contactEmail", "email address"]),
        ("contactEmail: a b@example.com", ["contactEmail", "email address"]),
        ("challengeListen: ::1:80", ["challengeListen", "brackets"]),
        ("challengeListen: web.example.com:80", ["challengeListen", "not an IP address"]),
        ("challengeListen: 127.0.0.1:0", ["challengeListen", "1 to 65535"]),
        ("challengeListen: 127.0.0.1:65536", ["challengeListen", "1 to 65535"]),
        ("challengeListen: 127.0.0.1", ["challengeListen", "ADDRESS:PORT"]),
        ("challengeListen: [127.0.0.1]:80", ["challengeListen", "IPv6"]),
        ("rateLimits: {\"newOrdr\": 5}", ["rateLimits", "did you mean 'newOrder'"]),
        ("rateLimits: {\"newOrder\": 0}", ["rateLimits", "greater than 0"]),
        ("rateLimits: {\"newOrder\": true}", ["rateLimits", "not a number"]),
        ("rateLimits: {\"*\": 1, \"*\": 2}", ["rateLimits", "twice"]),
        ("rateLimits: [1, 2]", ["rateLimits", "not a JSON object"]),
        ("rateLimits: newOrder=5", ["rateLimits", "not a JSON object"]),
    ],
)
def test_bad_values_name_file_line_and_key(tmp_path: Path, line: str,
                                           fragments: list[str]) -> None:
    path = write(tmp_path, MINIMAL + "# a comment line\n" + line + "\n")
    message = load_error(path)
    assert message.startswith(f"{path.resolve()}:5: "), message
    for fragment in fragments:
        assert fragment in message


def test_tags_must_differ_when_both_key_types_are_used(tmp_path: Path) -> None:
    message = conf_error(tmp_path, MINIMAL + "rsaTag: same\ncurveTag: same\n")
    assert "rsaTag and curveTag" in message and ":5:" in message
    conf = MINIMAL + "rsaTag: same\ncurveTag: same\nkeyTypes: ec\n"
    assert load(write(tmp_path, conf)).settings.key_types == ("ec",)


def test_unknown_key_suggests_the_closest_known_key(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "reauthorizeDay: 3\n")
    assert load_error(path) == (
        f"{path.resolve()}:4: unknown key 'reauthorizeDay'; did you mean 'reauthorizeDays'?"
    )


def test_yaml_keys_are_case_sensitive_with_a_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL_YAML + "keybitsrsa: 4096\n")
    message = load_error(path)
    assert message.startswith(f"{path.resolve()}:3: unknown key 'keybitsrsa'")
    assert "did you mean 'keyBitsRSA'?" in message


def test_unknown_key_far_from_any_lists_the_known_keys(tmp_path: Path) -> None:
    message = conf_error(tmp_path, MINIMAL + "zzz: 1\n")
    assert "unknown key 'zzz'; known keys: reauthorizeDays," in message


@pytest.mark.parametrize(
    ("line", "fragment"),
    [("keyBitsRSA: 2048.5", "2048.5 is not allowed"),
     ("keyBitsRSA: true", "True is not allowed"),
     ("reauthorizeDays: false", "not a number"),
     ("accountKey: [a, b]", "not a string"),
     ("challengeDropDir: {a: 1}", "a mapping (line 2) is not a string"),
     ("challengeListen: [1, 80]", "quote it"),
     ("rateLimits: [1]", "not a mapping"),
     ("keyTypes: {rsa: 1}", "rsa, ec")],
)
def test_yaml_type_errors(tmp_path: Path, line: str, fragment: str) -> None:
    rest = "" if line.startswith(("acc", "cha")) else "accountKey: k\nchallengeDropDir: c\n"
    path = write(tmp_path, "contactEmail: a@example.com\n" + line + "\n" + rest)
    message = load_error(path)
    assert message.startswith(f"{path.resolve()}:2: {line.split(':')[0]}: "), message
    assert fragment in message, message


def test_yaml_bad_values_name_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL_YAML + "keyBitsRSA: true\n")
    message = load_error(path)
    assert message.startswith(f"{path.resolve()}:3: keyBitsRSA:")
    path = write(tmp_path, MINIMAL_YAML + "rateLimits:\n  newOrder: 1\n  newOrdr: 2\n")
    message = load_error(path)
    assert message.startswith(f"{path.resolve()}:5: rateLimits:")
    assert "did you mean 'newOrder'" in message


def test_trailing_comment_gets_a_hint(tmp_path: Path) -> None:
    message = conf_error(tmp_path, MINIMAL + "keyBitsRSA: 4096  # bigger\n")
    assert "keyBitsRSA" in message and "comment must be on its own line" in message


def test_account_key_is_required(tmp_path: Path) -> None:
    message = conf_error(tmp_path, "[config]\nchallengeDropDir: c\n")
    assert "accountKey is missing" in message


def test_a_challenge_method_is_required(tmp_path: Path) -> None:
    message = conf_error(tmp_path, "[config]\naccountKey: a\n")
    assert "challengeDropDir" in message and "challengeListen" in message


def test_ini_without_config_section(tmp_path: Path) -> None:
    message = conf_error(tmp_path, "[settings]\naccountKey: a\n")
    assert "no [config] section" in message


@pytest.mark.parametrize("text", ["", "just some words\n", "- a\n- b\n", "42\n"])
def test_neither_ini_nor_yaml_mapping_says_what_is_expected(tmp_path: Path, text: str) -> None:
    message = conf_error(tmp_path, text)
    assert "[config]" in message and "YAML mapping" in message


def test_duplicate_keys_are_errors_with_lines(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "curve: secp384r1\ncurve: prime256v1\n")
    message = load_error(path)
    assert message.startswith(f"{path.resolve()}:5: ") and "'curve' appears twice" in message
    path = write(tmp_path, MINIMAL_YAML + "curve: secp384r1\ncurve: prime256v1\n")
    message = load_error(path)
    assert message.startswith(f"{path.resolve()}:4: ") and "first on line 3" in message


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL_YAML + "keyTypes: [rsa\ncurve: x\n")
    message = load_error(path)
    assert message.startswith(f"{path.resolve()}:") and "not valid YAML" in message


def test_other_ini_sections_are_ignored_with_a_warning(tmp_path: Path) -> None:
    config = load(write(tmp_path, MINIMAL + "[extra]\nfoo: bar\n"))
    assert any("[extra] is ignored" in w for w in config.warnings)


def test_missing_config_file(tmp_path: Path) -> None:
    message = load_error(tmp_path / "nope.conf")
    assert "nope.conf" in message and "not found" in message


def test_conf_dir_follows_a_symlinked_config_like_the_original(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    write(real)
    link_dir = tmp_path / "elsewhere"
    link_dir.mkdir()
    (link_dir / "lematt.conf").symlink_to(real / "lematt.conf")
    config = load(link_dir / "lematt.conf")
    assert config.settings.conf_dir == real.resolve()
    assert config.lines[0].names == ("example.com", "www.example.com")


# --- domains ----------------------------------------------------------------------------------


def lines_of(tmp_path: Path, domains: str) -> tuple[CertLine, ...]:
    return load(write(tmp_path, domains=domains)).lines


def test_domains_shorthand_comments_blank_lines_and_case(tmp_path: Path) -> None:
    text = (
        "# whole-line comment\n"
        "\n"
        "   \n"
        "Example.COM www  api   # trailing comment\n"
        "  # indented comment\n"
        "mail.example.com\r\n"
        "dev.example.com dev2.example.com\tcdn.example.net #x y z\n"
    )
    lines = lines_of(tmp_path, text)
    assert [(line.lineno, line.names) for line in lines] == [
        (4, ("example.com", "www.example.com", "api.example.com")),
        (6, ("mail.example.com",)),
        (7, ("dev.example.com", "dev2.example.com", "cdn.example.net")),
    ]
    assert lines[0].primary == "example.com"


def test_duplicates_on_a_line_are_dropped_keeping_the_first(tmp_path: Path) -> None:
    text = "a.example.com b WWW.a.example.com b.a.example.com www a.example.com\n"
    (line,) = lines_of(tmp_path, text)
    assert line.names == ("a.example.com", "b.a.example.com", "www.a.example.com")
    # The file stem keeps the original's view of the line (first name repeated among SANs).
    assert line.file_stem == "a.example.com_a.example.com_b.a.example.com_www.a.example.com"


def test_cert_line_file_stem_without_duplicates(tmp_path: Path) -> None:
    (line,) = lines_of(tmp_path, "corp.example.com internal hr chat git web pikachu\n")
    assert line.written_names == ()
    assert line.file_stem.startswith("corp.example.com_chat.corp.example.com_git.")


def test_a_hundred_names_are_allowed_and_one_more_is_not(tmp_path: Path) -> None:
    # The domains parser's own limit; load() then refuses such a line for its file names
    # (test_config_hostile.py), which the upstream naming makes far longer than 255 bytes.
    names = "example.com " + " ".join(f"h{i}" for i in range(99))
    assert len(parse_domains(tmp_path / "domains", names + "\n")[0].names) == 100
    path = write(tmp_path, domains="# x\n" + names + " h99\n")
    message = load_error(path)
    assert message.startswith(f"{path.parent.resolve() / 'domains'}:2: 101 names")
    assert "https://letsencrypt.org/docs/rate-limits/" in message


def test_the_limit_counts_distinct_names(tmp_path: Path) -> None:
    names = "example.com " + " ".join(f"h{i}" for i in range(99)) + " h0 h1"
    assert len(parse_domains(tmp_path / "domains", names + "\n")[0].names) == 100


@pytest.mark.parametrize(
    ("token", "shown", "reason"),
    [
        ("*.example.com", "'*.example.com'", "wildcard"),
        ("192.0.2.7", "'192.0.2.7'", "IP address"),
        ("my_host.example.com", "'my_host.example.com'", "'_'"),
        ("-a.com", "'-a.com'", "starts or ends with '-'"),
        (f"{'x' * 64}.example.com", f"'{'x' * 64}.example.com'", "more than 63"),
        ("a.com;rm", "'a.com;rm'", "';'"),
        ("b.example.com.", "'b.example.com.'", "trailing dot"),
        ("bad_x", "'bad_x' (read as 'bad_x.example.com')", "'_'"),
    ],
)
def test_bad_names_are_errors_naming_domains_line(tmp_path: Path, token: str, shown: str,
                                                  reason: str) -> None:
    path = write(tmp_path, domains=f"ok.example.com\n\nexample.com {token} www\n")
    message = load_error(path)
    domains = path.parent.resolve() / "domains"
    assert message.startswith(f"{domains}:3: {shown} is not a valid DNS name (")
    assert reason in message


def test_the_first_name_needs_a_dot(tmp_path: Path) -> None:
    path = write(tmp_path, domains="www example.com\n")
    message = load_error(path)
    assert ":1: the first name 'www' has no dot" in message


def test_an_invalid_first_name_is_reported(tmp_path: Path) -> None:
    assert "'*.example.com' is not a valid DNS name (wildcard" in load_error(
        write(tmp_path, domains="*.example.com www\n"))


def test_the_same_name_set_twice_names_both_lines(tmp_path: Path) -> None:
    domains = "example.com www\nmail.example.com\nwww.example.com example.com\n"
    path = write(tmp_path, domains=domains)
    message = load_error(path)
    assert message.startswith(f"{path.parent.resolve() / 'domains'}:3: same names as line 1")


def test_a_name_may_appear_on_two_different_lines(tmp_path: Path) -> None:
    lines = lines_of(tmp_path, "mail.example.com\nexample.com mail\n")
    assert len(lines) == 2


def test_missing_domains_file_says_to_create_it(tmp_path: Path) -> None:
    message = load_error(write(tmp_path, domains=None))
    assert "domains: not found: create it" in message


def test_empty_domains_file_loads_with_a_warning(tmp_path: Path) -> None:
    config = load(write(tmp_path, domains="# nothing yet\n"))
    assert config.lines == ()
    assert any("no certificate lines" in w for w in config.warnings)


def test_ten_thousand_lines_parse(tmp_path: Path) -> None:
    # How fast is benchmarks/noop.py's business (a cron run over 10,000 lines); a wall-clock
    # bound here would fail on a busy machine without anything being wrong.
    text = "".join(
        f"site{i}.example.com www api static{i}.example.net  # c\n" if i % 2 else
        f"host{i}.example.org\n" for i in range(10_000))
    config = load(write(tmp_path, domains=text))
    assert len(config.lines) == 10_000
    assert config.lines[0].names == ("host0.example.org",)
    assert config.lines[9_999].names == ("site9999.example.com", "www.site9999.example.com",
                                         "api.site9999.example.com", "static9999.example.net")


def test_long_file_stem_is_refused_naming_the_line(tmp_path: Path) -> None:
    names = "example.com " + " ".join(f"host-number-{i}" for i in range(20))
    message = load_error(write(tmp_path, domains="ok.example.com\n" + names + "\n"))
    assert message.startswith(f"{tmp_path.resolve() / 'domains'}:2: ")
    assert "255-byte limit" in message and "split the line" in message


# --- actions ------------------------------------------------------------------------------------

DOMAINS = "example.com www\nmail.example.com\nshop.example.com cart\n"

ACTIONS_INI = """\
[default]
update: ["reload web"]
uploadCerts: ["copy CERTS web:/etc/ssl/"]
ocspStapleRequired: no

[every]
uploadKeys: ["archive KEYS"]

[mail]
domains: mail.example.com
prepare: ["open DOMAIN"]
update: [
    "reload postfix",
    "reload dovecot"
    ]

[shop]
domains: cart.shop.example.com  shop.example.com
uploadKeys: []
"""

ACTIONS_YAML = """\
default:
  update: [reload web]
  uploadCerts: ["copy CERTS web:/etc/ssl/"]
  ocspStapleRequired: false
every:
  uploadKeys: [archive KEYS]
mail:
  domains: mail.example.com
  prepare: [open DOMAIN]
  update:
    - reload postfix
    - reload dovecot
shop:
  domains: [cart.shop.example.com, shop.example.com]
  uploadKeys: []
"""


def test_actions_sections_and_json_lists(tmp_path: Path) -> None:
    config = load(write(tmp_path, domains=DOMAINS, actions=ACTIONS_INI))
    a = config.actions
    assert config.actions_path == tmp_path.resolve() / "actions.conf"
    assert a.default == Section("default", update=("reload web",),
                                upload_certs=("copy CERTS web:/etc/ssl/",))
    assert a.every == Section("every", upload_keys=("archive KEYS",))
    assert [s.name for s in a.overrides] == ["mail", "shop"]
    mail, shop = a.overrides
    assert mail.domains == frozenset({"mail.example.com"})
    assert mail.prepare == ("open DOMAIN",)
    assert mail.update == ("reload postfix", "reload dovecot")
    assert mail.lineno == 9
    assert shop.domains == frozenset({"shop.example.com", "cart.shop.example.com"})
    assert shop.upload_keys == ()


def test_actions_yaml_equals_ini(tmp_path: Path) -> None:
    ini_dir, yaml_dir = tmp_path / "ini", tmp_path / "yaml"
    ini_dir.mkdir()
    yaml_dir.mkdir()
    ini = load(write(ini_dir, domains=DOMAINS, actions=ACTIONS_INI))
    yml = load(write(yaml_dir, domains=DOMAINS, actions=ACTIONS_YAML, actions_name="actions.yaml"))
    assert yml.actions == ini.actions
    assert yml.actions_path == yaml_dir.resolve() / "actions.yaml"


def test_actions_file_lookup_order(tmp_path: Path) -> None:
    write(tmp_path, domains=DOMAINS, actions=ACTIONS_YAML, actions_name="actions.yml")
    assert load(tmp_path / "lematt.conf").actions_path.name == "actions.yml"
    (tmp_path / "actions.conf").write_text("[every]\nupdate: [\"x\"]\n")
    config = load(tmp_path / "lematt.conf")
    assert config.actions_path.name == "actions.conf"
    assert config.actions.every == Section("every", update=("x",))
    assert any("actions.yml: ignored, actions.conf is used" in w for w in config.warnings)


def test_empty_yaml_actions_file_means_no_actions(tmp_path: Path) -> None:
    config = load(write(tmp_path, actions="# nothing\n", actions_name="actions.yaml"))
    assert config.actions == Actions()


def test_ocsp_staple_required_is_inherited_from_default(tmp_path: Path) -> None:
    actions = ("[default]\nocspStapleRequired: yes\n"
               "[mail]\ndomains: mail.example.com\n"
               "[shop]\ndomains: shop.example.com cart.shop.example.com\nocspStapleRequired: no\n")
    a = load(write(tmp_path, domains=DOMAINS, actions=actions)).actions
    assert a.default is not None and a.default.ocsp_staple_required is True
    assert [s.ocsp_staple_required for s in a.overrides] == [True, False]


def test_ocsp_defaults_to_no(tmp_path: Path) -> None:
    actions = "[mail]\ndomains: mail.example.com\n"
    a = load(write(tmp_path, domains=DOMAINS, actions=actions)).actions
    assert a.overrides[0].ocsp_staple_required is False


def test_must_staple_reaches_cert_lines_with_a_warning(tmp_path: Path) -> None:
    actions = ("[default]\nupdate: [\"r\"]\n"
               "[mail]\ndomains: mail.example.com\nocspStapleRequired: yes\n")
    config = load(write(tmp_path, domains=DOMAINS, actions=actions))
    flags = {line.primary: line.ocsp_must_staple for line in config.lines}
    assert flags == {"example.com": False, "mail.example.com": True, "shop.example.com": False}
    warning = next(w for w in config.warnings if "must-staple" in w)
    assert MUST_STAPLE_REFUSED in warning
    assert "2025-05-07" in MUST_STAPLE_REFUSED
    assert warning.startswith(f"{config.domains_path}:2:")


def test_mixed_must_staple_on_one_certificate_is_an_error(tmp_path: Path) -> None:
    domains = "example.com www\nshop.example.com cart\n"
    actions = ("[default]\nocspStapleRequired: no\n"
               "[cart]\ndomains: cart.shop.example.com\nocspStapleRequired: yes\n")
    path = write(tmp_path, domains=domains, actions=actions)
    message = load_error(path)
    assert message.startswith(f"{path.parent.resolve() / 'domains'}:2: ")
    assert "[cart] for cart.shop.example.com" in message
    assert "[default] for shop.example.com" in message


def test_two_overrides_disagreeing_on_one_certificate_is_an_error(tmp_path: Path) -> None:
    actions = ("[a]\ndomains: example.com\nocspStapleRequired: yes\n"
               "[b]\ndomains: www.example.com\nocspStapleRequired: no\n")
    assert "disagree on ocspStapleRequired" in load_error(
        write(tmp_path, domains=DOMAINS, actions=actions))


@pytest.mark.parametrize(
    ("actions", "line", "fragments"),
    [
        ("[default]\ndomains: example.com\n", 2, ["'domains' is not allowed in [default]"]),
        ("[every]\ndomains: example.com\n", 2, ["'domains' is not allowed in [every]"]),
        ("[every]\nocspStapleRequired: yes\n", 2,
         ["'ocspStapleRequired' is not allowed in [every]"]),
        ("[default]\nupdates: [\"x\"]\n", 2,
         ["unknown key 'updates' in [default]", "did you mean 'update'?"]),
        ("[default]\nupdate: reload nginx\n", 2, ["update in [default]: not valid JSON"]),
        ("[default]\nupdate: [\"a\",\n  \"b\" \"c\"]\n", 3, ["not valid JSON"]),
        ("[default]\nupdate: \"reload\"\n", 2, ["expected a list of command strings"]),
        ("[default]\nupdate: [\"ok\", 3]\n", 2, ["3 is not a command"]),
        ("[default]\nupdate: [\"\"]\n", 2, ["is not a command"]),
        ("[default]\nocspStapleRequired: sometimes\n", 2, ["ocspStapleRequired", "yes/no"]),
        ("# c\n[mail]\nupdate: [\"x\"]\n", 2, ["[mail] has no 'domains'"]),
        ("[Default]\nupdate: [\"x\"]\n", 1, ["did you mean [default]?"]),
        ("[mail]\ndomains: mail.example.con\n", 2,
         ["'mail.example.con' is not a name on any line of the domains file"]),
        ("[www]\ndomains: www\n", 2, ["'www' is not a valid DNS name", "shorthand"]),
        ("[default]\nupdate: [\"date +%s\"]\n", 2, ["'%%' for a literal '%'"]),
        ("[default]\nupdate: [\"a\"]\n[default]\nupdate: [\"b\"]\n", 3,
         ["[default] appears twice"]),
        ("[default]\nnot a key value line\n", 2, ["cannot read"]),
    ],
)
def test_actions_errors_name_file_line_and_key(tmp_path: Path, actions: str, line: int,
                                               fragments: list[str]) -> None:
    path = write(tmp_path, domains=DOMAINS, actions=actions)
    message = load_error(path)
    assert message.startswith(f"{path.parent.resolve() / 'actions.conf'}:{line}: "), message
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize(
    ("actions", "line", "fragment"),
    [
        ("default:\n  domains: [example.com]\n", 2, "not allowed in [default]"),
        ("default:\n  update: reload\n", 2, "expected a list of command strings"),
        ("default:\n  Update: [x]\n", 2, "did you mean 'update'?"),
        ("mail:\n  update: [x]\n", 1, "has no 'domains'"),
        ("mail: [x]\n", 1, "must be a mapping"),
        ("mail:\n  domains: {a: b}\n", 2, "expected names"),
        ("default:\n  update: [x]\ndefault:\n  update: [y]\n", 3, "appears twice"),
    ],
)
def test_yaml_actions_errors_name_the_line(tmp_path: Path, actions: str, line: int,
                                           fragment: str) -> None:
    path = write(tmp_path, domains=DOMAINS, actions=actions, actions_name="actions.yaml")
    message = load_error(path)
    assert message.startswith(f"{path.parent.resolve() / 'actions.yaml'}:{line}: "), message
    assert fragment in message


def test_default_section_of_configparser_is_an_ordinary_section(tmp_path: Path) -> None:
    # configparser would merge [DEFAULT] into every section; here it is just an override.
    message = load_error(write(tmp_path, domains=DOMAINS, actions="[DEFAULT]\nupdate: [\"x\"]\n"))
    assert "[DEFAULT] has no 'domains'" in message and "did you mean [default]?" in message


# --- sections_for ----------------------------------------------------------------------------


def test_sections_for_semantics(tmp_path: Path) -> None:
    domains = "example.com www\nmail.example.com\nshop.example.com cart\nother.example.org\n"
    actions = ("[default]\nupdate: [\"d\"]\n[every]\nupdate: [\"e\"]\n"
               "[cart]\ndomains: cart.shop.example.com\n[mail]\ndomains: mail.example.com\n"
               "[mail2]\ndomains: mail.example.com\n")
    config = load(write(tmp_path, domains=domains, actions=actions))
    by_primary = {line.primary: line for line in config.lines}

    def names_of(primary: str) -> list[str]:
        return [s.name for s in config.actions.sections_for(by_primary[primary].names)]

    assert names_of("example.com") == ["default", "every"]
    assert names_of("mail.example.com") == ["mail", "mail2", "every"]  # file order
    # Name by name, as the original: cart.shop.example.com -> [cart]; shop.example.com has no
    # override -> [default].
    assert names_of("shop.example.com") == ["default", "cart", "every"]
    assert Actions().sections_for(("x.example.com",)) == ()


# --- the original's example files and ours ----------------------------------------------------

# The settings of upstream lematt's conf/lematt.conf and conf/actions.conf (their values as
# published; the explanatory comments are left out), and its conf/domains example lines.
UPSTREAM_CONF = """\
[config]
# comments as upstream writes them
reauthorizeDays: 60
#generateNewCertsAfterDays: 7
challengeDropDir: /srv/web/challenges/
alwaysGenerateNewKeys: no
accountKey: /etc/ssl/private/lets-encrypt-account.key.pem
keyBitsRSA: 2048
curve: prime256v1
# rsaTag: rsa2048
# curveTag: prime256v1
"""

UPSTREAM_ACTIONS = """\
[default]
update: ["sudo service nginx reload"]
uploadCerts: ["rsync -avz --chmod=F644 CERTS /etc/ssl/"]
uploadKeys: ["rsync -avz --chmod=F640 KEYS /etc/ssl/private/"]


[every]
uploadCerts: ["rsync -avz --chmod=F644 CERTS change-management-server:/srv/repos/manager/tls/"]
uploadKeys: ["rsync -avz --chmod=F640 KEYS change-management-server:/srv/repos/manager/tls/private/"]


[override-mail]
domains: mail.example.com
prepare: ["ssh -t mailmash-forward http://example.com"]
uploadCerts: ["rsync -avz --chmod=F644 CERTS mailmash-upload:/etc/ssl/"]
uploadKeys: ["rsync -avz --chmod=F640 KEYS mailmash-upload:/etc/ssl/private/"]
update: ["ssh mailmash-reload-postfix", "ssh mailmash-reload-dovecot"]
"""  # noqa: E501 - upstream's values, kept on their original lines

UPSTREAM_DOMAIN_LINES = [
    "example.com www",
    "mail.example.com",
    "dev.example.com dev2.example.com dev3.example.com",
    "corp.example.com internal hr chat git web pikachu",
]


def test_upstream_examples_load_unchanged(tmp_path: Path) -> None:
    # Upstream ships its domains file with every example line commented out.
    domains = "# Put your names here\n" + "".join(f"# {line}\n" for line in UPSTREAM_DOMAIN_LINES)
    config = load(write(tmp_path, UPSTREAM_CONF, domains=domains, actions=UPSTREAM_ACTIONS))
    s = config.settings
    assert s.reauthorize_days == 60.0
    assert s.challenge_drop_dir == Path("/srv/web/challenges")
    assert s.account_key == Path("/etc/ssl/private/lets-encrypt-account.key.pem")
    assert (s.rsa_tag, s.curve_tag, s.always_generate_new_keys) == ("rsa2048", "prime256v1",
                                                                    False)
    assert config.lines == ()
    (mail,) = config.actions.overrides
    assert mail.update == ("ssh mailmash-reload-postfix", "ssh mailmash-reload-dovecot")
    # With no domains lines yet, the override typo check is only a warning.
    assert any("'mail.example.com' is not a name on any line" in w for w in config.warnings)


def test_upstream_examples_with_their_lines_enabled(tmp_path: Path) -> None:
    domains = "".join(f"{line}\n" for line in UPSTREAM_DOMAIN_LINES)
    config = load(write(tmp_path, UPSTREAM_CONF, domains=domains, actions=UPSTREAM_ACTIONS))
    assert [line.names[0] for line in config.lines] == [
        "example.com", "mail.example.com", "dev.example.com", "corp.example.com"]
    assert config.lines[0].names == ("example.com", "www.example.com")
    assert config.lines[3].file_stem == (
        "corp.example.com_chat.corp.example.com_git.corp.example.com_hr.corp.example.com"
        "_internal.corp.example.com_pikachu.corp.example.com_web.corp.example.com")
    assert [s.name for s in config.actions.sections_for(config.lines[1].names)] == [
        "override-mail", "every"]
    assert not any("mail.example.com" in w for w in config.warnings)


def test_repository_examples_load(tmp_path: Path) -> None:
    for name in ("lematt.conf", "domains", "actions.conf"):
        shutil.copy(REPO_CONF / name, tmp_path / name)
    config = load(tmp_path / "lematt.conf")
    assert config.warnings == ()
    assert len(config.lines) >= 3
    assert config.actions.default is not None and config.actions.every is not None
    assert config.actions.overrides


def test_repository_yaml_examples_equal_the_ini_ones(tmp_path: Path) -> None:
    ini_dir, yaml_dir = tmp_path / "ini", tmp_path / "yaml"
    ini_dir.mkdir()
    yaml_dir.mkdir()
    for name in ("lematt.conf", "domains", "actions.conf"):
        shutil.copy(REPO_CONF / name, ini_dir / name)
    for name in ("lematt.conf.yaml", "domains", "actions.yaml"):
        shutil.copy(REPO_CONF / name, yaml_dir / name)
    ini: Config = load(ini_dir / "lematt.conf")
    yml: Config = load(yaml_dir / "lematt.conf.yaml")
    assert yml.warnings == ()
    assert yml.actions_path is not None and yml.actions_path.name == "actions.yaml"
    assert yml.settings == ini.settings.__class__(
        **{**ini.settings.__dict__, "conf_dir": yaml_dir.resolve(),
           "account_key": yaml_dir.resolve() / ini.settings.account_key.name})
    assert yml.lines == ini.lines
    assert yml.actions == ini.actions


def test_repository_examples_load_in_place() -> None:
    # conf/ holds both actions files; the INI one wins and the other is reported.
    config = load(REPO_CONF / "lematt.conf")
    assert config.actions_path == (REPO_CONF / "actions.conf").resolve()
    assert any("actions.yaml: ignored" in w for w in config.warnings)
    assert load(REPO_CONF / "lematt.conf.yaml").settings == config.settings


def test_config_file_may_be_a_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) \
        -> None:
    write(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert load(Path("lematt.conf")).settings.conf_dir == Path(os.getcwd()).resolve()
