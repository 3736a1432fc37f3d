"""``python3 -m forwarder``: run the redirector; same CLI and exit statuses as leforward.py."""

import sys

from .leforward import main

if __name__ == "__main__":
    sys.exit(main())
