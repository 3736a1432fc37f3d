"""``python -m lematt`` runs the command-line interface."""

from lematt.cli import main

# Guarded: worker processes (RSA key generation) import this module as __mp_main__.
if __name__ == "__main__":
    raise SystemExit(main())
