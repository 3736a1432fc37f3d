"""lematt.acme.messages: parsing ACME objects and problem documents (no network)."""

from __future__ import annotations

from typing import Any

import pytest

from lematt.acme.messages import (
    Account,
    Authorization,
    Challenge,
    Directory,
    Order,
    Status,
    parse_problem,
)
from lematt.errors import AcmeError, AcmeProblem, ChallengeError
from lematt.names import MAX_TOKEN_LENGTH

DIR_URL = "https://ca.test/dir"
TOKEN = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"  # RFC 8555 section 8.3 example

DIRECTORY: dict[str, Any] = {
    "newNonce": "https://ca.test/new-nonce",
    "newAccount": "https://ca.test/new-account",
    "newOrder": "https://ca.test/new-order",
    "revokeCert": "https://ca.test/revoke-cert",
    "keyChange": "https://ca.test/key-change",
    "renewalInfo": "https://ca.test/renewal-info",
    "meta": {"termsOfService": "https://ca.test/tos.pdf", "website": "https://ca.test"},
    "aNewThing": 42,
}


def _challenge(token: Any = TOKEN, **extra: Any) -> dict[str, Any]:
    data = {"type": "http-01", "url": "https://ca.test/chall/1", "status": "pending"}
    if token is not None:
        data["token"] = token
    data.update(extra)
    return data


def test_directory_fields_and_endpoint_names() -> None:
    d = Directory.from_json(DIRECTORY, DIR_URL)
    assert d.new_nonce == "https://ca.test/new-nonce"
    assert d.new_account == "https://ca.test/new-account"
    assert d.new_order == "https://ca.test/new-order"
    assert d.revoke_cert == "https://ca.test/revoke-cert"
    assert d.key_change == "https://ca.test/key-change"
    assert d.terms_of_service == "https://ca.test/tos.pdf"
    assert d.endpoint_name(DIR_URL) == "directory"
    assert d.endpoint_name(d.new_nonce) == "newNonce"
    assert d.endpoint_name(d.new_account) == "newAccount"
    assert d.endpoint_name(d.new_order) == "newOrder"
    assert d.endpoint_name("https://ca.test/revoke-cert") == "revokeCert"
    assert d.endpoint_name("https://ca.test/renewal-info/abc.def") == "renewalInfo"
    assert d.endpoint_name("https://ca.test/authz/9") == "*"


def test_directory_without_new_order_names_url_and_field() -> None:
    data = {k: v for k, v in DIRECTORY.items() if k != "newOrder"}
    with pytest.raises(AcmeError, match=r"https://ca\.test/dir.*'newOrder' is missing"):
        Directory.from_json(data, DIR_URL)
    with pytest.raises(AcmeError, match="not a JSON object"):
        Directory.from_json(["not", "a", "dict"], DIR_URL)


def test_order_with_error_and_unknown_status() -> None:
    url = "https://ca.test/order/1"
    order = Order.from_json(
        {
            "status": "invalid",
            "expires": "2026-01-01T00:00:00Z",
            "identifiers": [{"type": "dns", "value": "a.test"}, {"type": "dns", "value": "b.test"}],
            "authorizations": ["https://ca.test/authz/1", "https://ca.test/authz/2"],
            "finalize": "https://ca.test/order/1/finalize",
            "error": {"type": "urn:ietf:params:acme:error:unauthorized", "detail": "no"},
        },
        url,
    )
    assert order.status is Status.INVALID
    assert order.names == ("a.test", "b.test")
    assert order.authorizations == ("https://ca.test/authz/1", "https://ca.test/authz/2")
    assert order.certificate is None
    assert order.error is not None and order.error.short_type == "unauthorized"
    with pytest.raises(AcmeError, match=r"order/1.*'status' has the unknown value 'cooking'"):
        Order.from_json(
            {"status": "cooking", "identifiers": [], "authorizations": [], "finalize": "f"}, url
        )
    with pytest.raises(AcmeError, match="'finalize' is missing"):
        Order.from_json({"status": "pending", "identifiers": [], "authorizations": []}, url)
    with pytest.raises(AcmeError, match="'authorizations' is not a list"):
        Order.from_json(
            {"status": "pending", "identifiers": [], "authorizations": [1], "finalize": "f"}, url
        )


def test_authorization_wildcard_challenges_and_problem() -> None:
    authz = Authorization.from_json(
        {
            "status": "invalid",
            "identifier": {"type": "dns", "value": "example.test"},
            "wildcard": True,
            "challenges": [
                {
                    "type": "dns-01",
                    "url": "https://ca.test/chall/2",
                    "status": "pending",
                    "token": "dns-token_1",
                },
                _challenge(
                    status="invalid",
                    error={
                        "type": "urn:ietf:params:acme:error:connection",
                        "detail": "Connection refused",
                        "status": 400,
                    },
                ),
            ],
        },
        "https://ca.test/authz/1",
    )
    assert authz.name == "*.example.test"
    assert authz.identifier.value == "example.test"
    http = authz.challenge("http-01")
    assert http is not None and http.token == TOKEN and http.status is Status.INVALID
    assert authz.challenge("tls-alpn-01") is None
    problem = authz.problem()
    assert problem is not None
    assert (problem.short_type, problem.detail, problem.status) == (
        "connection",
        "Connection refused",
        400,
    )


@pytest.mark.parametrize(
    "token",
    [
        "../etc",
        "a b",
        "tok%2e",
        "",
        "tok\n",
        "a/b",
        "tok.en",
        "x" * (MAX_TOKEN_LENGTH + 1),
        None,
        7,
    ],
)
def test_hostile_tokens_are_refused_at_parse_time(token: Any) -> None:
    data = _challenge(token)
    if token is None:
        data.pop("token", None)
    with pytest.raises(ChallengeError, match="the CA sent an invalid token"):
        Challenge.from_json(data, "https://ca.test/authz/1")
    # The same token inside an authorization stops the whole authorization.
    with pytest.raises(ChallengeError, match="the CA sent an invalid token"):
        Authorization.from_json(
            {
                "status": "pending",
                "identifier": {"type": "dns", "value": "a.test"},
                "challenges": [data],
            },
            "https://ca.test/authz/1",
        )


def test_valid_tokens_pass() -> None:
    assert Challenge.from_json(_challenge(TOKEN), "u").token == TOKEN
    longest = "A-_9" * (MAX_TOKEN_LENGTH // 4)
    assert Challenge.from_json(_challenge(longest), "u").token == longest
    # A challenge type without a token (none of lematt's) is still parsed.
    other = Challenge.from_json({"type": "x-new", "url": "u2", "status": "pending"}, "u")
    assert other.token is None


def test_problem_document_with_subproblems() -> None:
    # RFC 8555 section 6.7.1 example, shortened.
    problem = parse_problem(
        {
            "type": "urn:ietf:params:acme:error:malformed",
            "detail": "Some of the identifiers requested were rejected",
            "subproblems": [
                {
                    "type": "urn:ietf:params:acme:error:malformed",
                    "detail": 'Invalid underscore in DNS name "_example.org"',
                    "identifier": {"type": "dns", "value": "_example.org"},
                },
                {
                    "type": "urn:ietf:params:acme:error:rejectedIdentifier",
                    "detail": 'This CA will not issue for "example.net"',
                    "identifier": {"type": "dns", "value": "example.net"},
                },
            ],
        },
        status=400,
        url="https://ca.test/new-order",
    )
    assert isinstance(problem, AcmeProblem)
    assert problem.status == 400
    assert problem.short_type == "malformed"
    assert [(s.identifier, s.short_type) for s in problem.subproblems] == [
        ("_example.org", "malformed"),
        ("example.net", "rejectedIdentifier"),
    ]
    text = str(problem)
    assert "Some of the identifiers requested were rejected" in text
    assert "example.net: rejectedIdentifier" in text


def test_problem_defaults_and_status_from_body() -> None:
    problem = parse_problem({"detail": "odd", "status": 503})
    assert problem.type == "about:blank"  # RFC 7807 section 4.2
    assert problem.status == 503
    with pytest.raises(AcmeError, match="not a JSON object"):
        parse_problem("nope", url="https://ca.test/x")


def test_account() -> None:
    account = Account.from_json(
        {"status": "valid", "contact": ["mailto:a@b.test"], "orders": "https://ca.test/o"}, "k"
    )
    assert account.status is Status.VALID
    assert account.contact == ("mailto:a@b.test",)
    with pytest.raises(AcmeError, match="'contact'"):
        Account.from_json({"status": "valid", "contact": "mailto:a@b.test"}, "k")
