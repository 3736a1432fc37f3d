"""challenge solvers: token checks, files appear and vanish (the built-in server, on a real
socket, is tests/e2e/test_challenges.py)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from lematt.challenges.drop_dir import DropDirSolver
from lematt.errors import ChallengeError


@pytest.mark.anyio
async def test_drop_dir_writes_then_removes(tmp_path: Path) -> None:
    solver = DropDirSolver(tmp_path / "drop")
    solver.prepare()
    async with solver.present("a.example.test", "tok_EN-1", "tok_EN-1.thumb"):
        path = tmp_path / "drop" / "tok_EN-1"
        assert path.read_text() == "tok_EN-1.thumb"
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert not path.exists()


@pytest.mark.anyio
async def test_drop_dir_removes_on_failure(tmp_path: Path) -> None:
    solver = DropDirSolver(tmp_path)
    with pytest.raises(RuntimeError):
        async with solver.present("a.example.test", "tok", "tok.x"):
            raise RuntimeError("order failed")
    assert not (tmp_path / "tok").exists()


@pytest.mark.anyio
@pytest.mark.parametrize("token", ["../evil", "a/b", "a b", "tok%2e", "", "x" * 600, "..", "ü"])
async def test_hostile_tokens_are_refused(tmp_path: Path, token: str) -> None:
    """A hostile CA token cannot come from Pebble, so the solver is called directly."""
    with pytest.raises(ChallengeError, match="the CA sent an invalid token"):
        async with DropDirSolver(tmp_path).present("a.example.test", token, "k"):
            pass
    assert list(tmp_path.iterdir()) == []
