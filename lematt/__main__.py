"""``python -m lematt`` runs the command-line interface."""

from lematt.cli import main

raise SystemExit(main())
