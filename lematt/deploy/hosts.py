"""Running one host's deploy steps, in order.

Contract: ``run_host(execute, steps, upload_together)`` runs the steps of one host one after
the other; ``execute(step)`` returns a ``CommandResult`` (None for an upload) or raises
``LemattError`` when the step could not run at all. The host's SFTP uploads (its
certificates *and* keys) go to ``upload_together(steps)`` in one call, before any other
step, so that they are staged together and renamed in one final batch: a connection that
drops never leaves a new certificate beside an old key because the keys' upload had not
started. After a failed upload the host gets no updates. Every failure is a value in the
returned list (``HostStep``, in the order of ``steps``), never an exception.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from lematt.deploy.plan import Step
from lematt.errors import LemattError
from lematt.execution import CommandResult
from lematt.model import Failure, FailureKind, StepOutcome, VerifyResult


@dataclass(frozen=True)
class HostStep:
    step: Step
    result: CommandResult | None  # None: an upload, a skipped step or one that could not start
    failure: Failure | None = None
    verified: VerifyResult | None = None  # a "verify" step's result

    @property
    def ok(self) -> bool:
        return self.failure is None

    def outcome(self) -> StepOutcome:
        s = self.step
        return StepOutcome(s.section, s.kind, s.host, s.describe(), self.failure,
                           self.verified)


async def run_host(execute: Callable[[Step], Awaitable[CommandResult | None]],
                   steps: Sequence[Step],
                   upload_together: Callable[[list[Step]], Awaitable[None]] | None = None
                   ) -> list[HostStep]:
    together: dict[int, HostStep] = {}
    sftp = [s for s in steps if s.is_upload and s.remote_dir is not None]
    if upload_together is not None and sftp:
        failure = None
        try:
            await upload_together(sftp)
        except LemattError as exc:
            failure = Failure.of(exc)
        together = {id(s): HostStep(s, None, failure) for s in sftp}
    outcomes: list[HostStep] = []
    upload_failed = any(not h.ok for h in together.values())
    for step in steps:
        if id(step) in together:
            outcomes.append(together[id(step)])
            continue
        if upload_failed and not step.is_upload:
            outcomes.append(HostStep(step, None, Failure(
                FailureKind.DEPLOY,
                f"{step.host}: skipped {step.describe()} because an upload to this host failed")))
            continue
        try:
            result = await execute(step)
        except LemattError as exc:
            outcomes.append(HostStep(step, None, Failure.of(exc)))
        else:
            failure = None
            if isinstance(result, CommandResult) and not result.ok:
                failure = Failure(FailureKind.DEPLOY, result.describe_failure())
            outcomes.append(HostStep(step, result, failure))
        if outcomes[-1].failure is not None and step.is_upload:
            upload_failed = True
    return outcomes
