"""Real ACME and SSH services on loopback, for tests, benchmarks, the demo and load tests.

Contract
--------
Each module starts one kind of real peer in its own process group, waits (bounded) until it
answers, and returns a rig object whose ``stop()`` ends everything it started (bounded,
idempotent; rigs are context managers, and a Pebble or acme2certifier rig left running is
stopped at interpreter exit):

``lematt.testing.pebble``          Pebble + pebble-challtestsrv (its DNS) and a static http-01
                                   file server; ``python -m lematt.testing.pebble`` runs one
                                   until Ctrl-C and prints the lematt.conf lines that use it.
``lematt.testing.acme2certifier``  acme2certifier, a second, independent ACME CA (needs the
                                   ``test`` extra; imported only in its serving subprocess).
``lematt.testing.sshd``            OpenSSH sshd hosts, one per loopback address, and the
                                   client key, known_hosts and ssh config that reach them.
``lematt.testing.certs``           ``LocalCA``: certificates with chosen dates, no CA process.

Everything listens on and talks to loopback addresses only. The modules import the standard
library, cryptography and lematt itself, never pytest. Nothing in lematt's runtime imports
this package: a certificate run never loads it.

Finding a run's processes: every process a rig starts inherits the caller's environment, and
the sshd rig passes ``$LEMATT_TEST_RUN_ID`` (``RUN_ID_ENV``) on to its SSH sessions too. So
with that variable set to a value of one's own (.ci/run does), every process a test run
started, however indirectly - Pebble, challtestsrv, acme2certifier, sshd, a forwarder started
over SSH, lematt and its order processes - carries it in ``/proc/<pid>/environ``, and a check
after the run finds exactly that run's leftovers, not the services others run on the machine.
"""

RUN_ID_ENV = "LEMATT_TEST_RUN_ID"
