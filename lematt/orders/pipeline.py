"""One job, from key to stored pair: key -> CSR -> ACME order -> check -> commit.

Contract: ``order_one(env, tools, job)`` returns the job's ``Outcome`` and never raises for a
failure of this job (a ``LemattError`` becomes its ``Failure``; any other exception is an
internal error of this job alone). Nothing live is touched before the certificate has been
downloaded and checked (``crypto.check_issued``: a chain, for our key and exactly the line's
names, valid now); then key, CSR and chain are stored together through the group committer
(shielded: a checked pair is stored and reported even when the run's deadline passes), with
the deploy the line owes when it has actions (written down in the same journal commit, so no
crash can lose it).
``report_outcome`` prints one line for it.
"""

from __future__ import annotations

import traceback

import anyio

from lematt.errors import LemattError
from lematt.model import Failure, Job, Outcome
from lematt.orders.context import OrderEnv, OrderTools
from lematt.orders.keys import key_for
from lematt.report import Reporter
from lematt.store.tree import NewPair


async def order_one(env: OrderEnv, tools: OrderTools, job: Job) -> Outcome:
    from lematt import crypto
    from lematt.acme.order import obtain

    outcome = Outcome(job)
    try:
        key, key_pem, new_key = await key_for(env.settings, env.store, job, tools.workers)
        names = job.line.names
        csr_der = crypto.make_csr(key, names, must_staple=job.line.ocsp_must_staple)
        deadline = anyio.current_time() + env.settings.order_timeout
        chain = await obtain(tools.client, names, csr_der, tools.solver, deadline=deadline,
                             replaces=job.replaces, profile=job.line.profile,
                             preferred_chain=env.settings.preferred_chain)
        # What is stored is what was checked: the chain's certificates and nothing else.
        chain_pem = crypto.normalized_chain(chain.encode())
        info = crypto.check_issued(chain_pem, key, names)
        # Once checked, the pair is stored even if the run's deadline passes meanwhile: the
        # commit is short, and a pair that went live must be reported (and deployed) as such.
        with anyio.CancelScope(shield=True):
            await tools.committer.commit(NewPair(
                job.line, job.key_type, key_pem, crypto.csr_pem(csr_der), chain_pem,
                owes_deploy=_owes_deploy(env, job)))
        outcome.changed, outcome.not_after, outcome.new_key = True, info.not_after, new_key
        outcome.cert_id = info.cert_id
    except LemattError as exc:
        outcome.failure = Failure.of(exc)
    except Exception as exc:  # a bug must fail its job, not the other orders
        outcome.failure = Failure.of(exc)
        if env.reporter.debug:
            traceback.print_exc()
    return outcome


def _owes_deploy(env: OrderEnv, job: Job) -> bool:
    """Whether the line has actions that deploy it: then storing it records the deploy it
    owes, in the same journal commit."""
    return any(s.upload_certs or s.upload_keys or s.update
               for s in env.config.actions.sections_for(job.line.names))


def report_outcome(reporter: Reporter, outcome: Outcome) -> None:
    job = outcome.job
    if outcome.failure is None:
        key_note = "new key" if outcome.new_key else "same key"
        until = outcome.not_after.strftime("%Y-%m-%d") if outcome.not_after else "?"
        reporter.change(f"renewed {job.label}: valid until {until} ({key_note})")
    else:
        reporter.failure(f"{job.label}: {outcome.failure}")
