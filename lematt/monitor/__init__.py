"""What lematt tells operators about its certificates between runs and after each one.

Modules: ``owed`` (the one reader of the owed deploys), ``rows`` (one row per certificate:
expiry, next renewal and why, back-off, owed deploys; shared by ``status`` and ``metrics``),
``retries`` (a run's outcomes into the persistent back-off), ``status`` (``lematt status``:
table or JSON, Nagios-style exit status), ``metrics`` (the Prometheus textfile of
``metricsFile``). Nothing here talks to the CA or to a host.
"""
