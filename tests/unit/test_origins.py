"""lematt.acme.origins: the URLs a CA sends are followed only on its directory's origin (or
one allowed in caAllowedOrigins), never from https to http (issue 10, section 4). The
transport calls ``check`` for every request; tests/e2e/faults/ proves that end to end."""

from __future__ import annotations

import pytest

from lematt.acme.origins import OriginPolicy, origin_of
from lematt.config.settings import _origins
from lematt.errors import AcmeError

HOME = "https://ca.example:14000/dir"


@pytest.mark.parametrize("url", [
    "https://ca.example:14000/order/1",
    "https://CA.example:14000/authz/2",
    "https://ca.example:014000/x",
])
def test_the_directory_origin_is_followed(url: str) -> None:
    assert OriginPolicy(HOME).check(url).host == "ca.example"


@pytest.mark.parametrize(("url", "why"), [
    ("https://evil.example:14000/order/1", "not on its directory's origin https://ca.example"),
    ("https://ca.example:14001/order/1", "not on its directory's origin"),
    ("https://ca.example/order/1", "not on its directory's origin"),  # port 443
    ("https://ca.example.:14000/order/1", "not on its directory's origin"),
    ("http://ca.example:14000/order/1", "never sends requests to the CA in cleartext"),
    ("https://user@ca.example:14000/x", "with a user name"),
    ("https://ca.example:14000\\@evil.example/x", "not an absolute http(s) URL"),
    ("/order/1", "not an absolute"),
    ("ftp://ca.example:14000/x", "not an absolute"),
    ("https://ca.example:14000/a\n[TEST] renewed x", "not an absolute"),
    ("https://ca.example:14000/\x1b[2J", "not an absolute"),
    ("https://ca.example:14000/caf\u00e9", "not an absolute"),
])
def test_anything_else_is_refused_with_one_printable_line(url: str, why: str) -> None:
    with pytest.raises(AcmeError, match="nothing there") as info:
        OriginPolicy(HOME).check(url, "fetching the authorization")
    message = str(info.value)
    assert why in message and message.isprintable()
    assert message.startswith("fetching the authorization: the CA sent")


def test_allowed_origins_widen_it_but_never_to_cleartext() -> None:
    policy = OriginPolicy(HOME, ("https://cdn.example:443", "http://ca.example:80"))
    assert policy.check("https://cdn.example/cert/1").host == "cdn.example"
    with pytest.raises(AcmeError, match="cleartext"):
        policy.check("http://ca.example/cert/1")
    # A plain-http loopback test CA may use plain http on its allowed origins too.
    local = OriginPolicy("http://127.0.0.1:4000/dir", ("http://127.0.0.2:4000",))
    assert local.check("http://127.0.0.2:4000/x").host == "127.0.0.2"


def test_origin_of() -> None:
    assert str(origin_of("https://[::1]:14000/x")) == "https://[::1]:14000"
    assert str(origin_of("https://A.example/x")) == "https://a.example:443"
    assert origin_of("mailto:x@example") is None


def test_the_config_key_takes_origins_only() -> None:
    assert _origins("https://a.example, https://B.example:8443/") == (
        "https://a.example:443", "https://b.example:8443")
    assert _origins(["http://127.0.0.1:14000"]) == ("http://127.0.0.1:14000",)
    for bad, why in (("http://a.example", "only allowed for a loopback"),
                     ("https://a.example/dir", "not an origin"),
                     ("https://u@a.example", "not an origin"),
                     ("[1]", "not an origin")):
        with pytest.raises(ValueError, match=why):
            _origins(bad)
