"""Text from the CA reaches the user escaped (issue 10, section 4): a newline in a problem
detail cannot forge a "[TEST] renewed ..." line, an ANSI escape cannot reach the terminal,
a huge detail is cut. Escaped where the text enters lematt's errors (``AcmeProblem``,
``AcmeError``, ``ChallengeError``), so every output path (stderr, --json, order processes)
gets the escaped text."""

from __future__ import annotations

import dataclasses
import json

from lematt.acme.messages import Challenge, parse_problem
from lematt.errors import MAX_CA_DETAIL, AcmeError, AcmeProblem, ChallengeError, printable
from lematt.model import Failure

FORGED = "\n[TEST] renewed www.example.test (RSA): valid until 2099-01-01 (new key)"
ANSI = "\x1b[2J\x1b[31mred\x1b[0m"


def test_a_problem_detail_cannot_forge_a_line_or_send_escapes() -> None:
    problem = parse_problem({
        "type": "urn:ietf:params:acme:error:malformed\r\n",
        "detail": f"bad{FORGED}{ANSI}\u202eevil",
        "identifier": {"type": "dns", "value": "a.test\nx"},
        "subproblems": [{"type": "urn:ietf:params:acme:error:dns", "detail": f"d{FORGED}",
                         "identifier": {"type": "dns", "value": f"b.test{ANSI}"}}],
    }, status=400, url="https://ca.test/x")
    text = str(problem)
    assert text.isprintable() and "\x1b" not in text
    assert "bad\\n[TEST] renewed" in text and "\\u202eevil" in text
    assert "b.test\\x1b[2J" in text
    failure = Failure.of(dataclasses.replace(problem, context="creating an order\n"))
    assert failure.message.isprintable()
    assert json.loads(json.dumps(failure.to_json()))["message"] == failure.message


def test_the_title_stands_in_for_a_missing_detail_and_long_text_is_cut() -> None:
    assert parse_problem({"type": "about:blank", "title": "Busy\n"}).detail == "Busy\\n"
    long = parse_problem({"type": "x", "detail": "y" * 100_000})
    assert len(long.detail) == MAX_CA_DETAIL and long.detail.endswith("...")


def test_subproblems_are_bounded_and_one_level_deep() -> None:
    nested = {"type": "t", "detail": "d", "subproblems": [{"type": "inner"}]}
    problem = parse_problem({"type": "t", "subproblems": [nested] * 1000})
    assert len(problem.subproblems) == 20
    assert all(sub.subproblems == () for sub in problem.subproblems)


def test_acme_and_challenge_errors_escape_what_they_quote() -> None:
    assert str(AcmeError(f"x{FORGED}")).isprintable()
    assert str(ChallengeError(f"y{ANSI}")) == "y\\x1b[2J\\x1b[31mred\\x1b[0m"
    # A challenge whose type is hostile: the error that names it is escaped.
    challenge = Challenge.from_json({"type": f"http-02{FORGED}", "url": "https://ca.test/c",
                                     "status": "pending"}, "https://ca.test/a")
    assert str(ChallengeError(f"offered: {challenge.type}")).isprintable()


def test_printable_is_idempotent_and_keeps_plain_text() -> None:
    assert printable("plain text: café, 名前") == "plain text: café, 名前"
    assert printable(printable(FORGED)) == printable(FORGED)


def test_every_code_point_comes_out_printable() -> None:
    """The whole BMP (controls, surrogates, bidi and format characters) and the tag and
    private-use planes: nothing that is not printable gets through."""
    ranges = [range(0, 0x10000), range(0xE0000, 0xE0100), range(0x10FF00, 0x110000)]
    text = "".join(chr(c) for r in ranges for c in r)
    assert printable(text).isprintable()
    assert len(printable(text, 200)) <= 200
    assert AcmeProblem("t", text[:4000]).detail.isprintable()
