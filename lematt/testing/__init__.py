"""Real ACME and SSH services on loopback, for tests, benchmarks, the demo and load tests.

Contract
--------
Each module starts one kind of real peer in its own process group, waits (bounded) until it
answers, and returns a rig object whose ``stop()`` ends everything it started (bounded,
idempotent; rigs are context managers, and a rig left running is stopped at interpreter
exit):

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
"""
