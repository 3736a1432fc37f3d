"""lematt.names: DNS-name validation and the original's sort order and file-name stems."""

from __future__ import annotations

import pytest

from lematt.names import file_stem, sort_key, validate_dns_name


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("example.com", "example.com"),
        ("WWW.Example.COM", "www.example.com"),
        ("a.b", "a.b"),
        ("1password.example.com", "1password.example.com"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("a-b.example.com", "a-b.example.com"),
        ("www.example.test", "www.example.test"),
        (f"{'a' * 63}.example.com", f"{'a' * 63}.example.com"),
    ],
)
def test_valid_names_are_lowercased(name: str, expected: str) -> None:
    assert validate_dns_name(name) == expected


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "empty"),
        ("*.example.com", "wildcard"),
        ("192.0.2.1", "IP address"),
        ("[2001:db8::1]", "IP address"),
        ("2001:db8::1", "IP address"),
        ("my_host.example.com", "'_'"),
        ("-a.com", "starts or ends with '-'"),
        ("a-.com", "starts or ends with '-'"),
        ("a.com;rm", "';'"),
        ("a.com/x", "'/'"),
        ("example.com.", "trailing dot"),
        ("localhost", "two labels"),
        ("a..com", "empty label"),
        (".a.com", "empty label"),
        (f"{'a' * 64}.com", "more than 63"),
        (".".join(["abcdefghi"] * 26), "more than 253"),
        ("host.123", "all digits"),
        ("bücher.example", "non-ASCII"),
    ],
)
def test_invalid_names_say_why(name: str, reason: str) -> None:
    with pytest.raises(ValueError) as info:
        validate_dns_name(name)
    assert reason in str(info.value)


def test_name_of_exactly_253_characters_is_valid() -> None:
    name = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])
    assert len(name) == 253
    assert validate_dns_name(name) == name


def test_sort_key_reverses_labels_and_drops_the_top_level_label() -> None:
    assert sort_key("mail.hello.there.com") == ("there", "hello", "mail")
    assert sort_key("example.com") == ("example",)
    # Names differing only by TLD tie, as in the original.
    assert sort_key("www.example.com") == sort_key("www.example.net")


def test_file_stem_single_name_is_the_name() -> None:
    assert file_stem(["mail.example.com"]) == "mail.example.com"


def test_file_stem_matches_the_original_for_its_example_line() -> None:
    # upstream conf/domains: "corp.example.com internal hr chat git web pikachu", expanded.
    first = "corp.example.com"
    extra = ["internal", "hr", "chat", "git", "web", "pikachu"]
    names = [first] + [f"{n}.{first}" for n in extra]
    assert file_stem(names) == (
        "corp.example.com_chat.corp.example.com_git.corp.example.com_hr.corp.example.com"
        "_internal.corp.example.com_pikachu.corp.example.com_web.corp.example.com"
    )


def test_file_stem_sorts_by_registered_domain_then_subdomain() -> None:
    names = ["z.example.org", "b.alpha.net", "a.zulu.com", "alpha.net"]
    # keys: ("alpha","b") ("zulu","a") ("alpha",) -> alpha.net, b.alpha.net, a.zulu.com
    assert file_stem(names) == "z.example.org_alpha.net_b.alpha.net_a.zulu.com"


def test_file_stem_reorder_of_extra_names_keeps_the_stem() -> None:
    a = ["example.com", "www.example.com", "api.example.com"]
    b = ["example.com", "api.example.com", "www.example.com"]
    assert file_stem(a) == file_stem(b) == "example.com_api.example.com_www.example.com"


def test_file_stem_keeps_the_originals_duplicate_quirks() -> None:
    # Only names[1:] are deduplicated: a repeated first name stays in the stem (upstream did).
    assert file_stem(["a.example.com", "b.example.com", "a.example.com"]) == (
        "a.example.com_a.example.com_b.example.com"
    )
    assert file_stem(["x.example.com", "y.example.com", "y.example.com"]) == (
        "x.example.com_y.example.com"
    )
    # Two tokens naming one name: still the joined (list) form.
    assert file_stem(["x.example.com", "x.example.com"]) == "x.example.com_x.example.com"


def test_file_stem_breaks_sort_ties_by_name_so_it_is_stable() -> None:
    names = ["example.org", "www.example.net", "www.example.com"]
    assert file_stem(names) == "example.org_www.example.com_www.example.net"
    assert file_stem([names[0], names[2], names[1]]) == file_stem(names)


def test_file_stem_needs_a_name() -> None:
    with pytest.raises(ValueError):
        file_stem([])
