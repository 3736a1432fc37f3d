#!/usr/bin/env bash
# Quick start, step 1: install what a fresh Debian machine lacks, then run the demo
# (lematt against a local Pebble CA on loopback, started and stopped for you).
# Run as root (it installs Debian packages).
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
if ! command -v pebble >/dev/null || ! command -v pebble-challtestsrv >/dev/null; then
    apt-get update
    apt-get install -y pebble
fi
# Debian's python3 is "externally managed" (PEP 668): lematt goes into a virtualenv.
if ! python3 -c 'import ensurepip' 2>/dev/null; then
    apt-get update
    apt-get install -y python3-venv
fi
[ -x .venv/bin/python3 ] || python3 -m venv .venv
.venv/bin/python3 -m pip install --quiet -e .
.venv/bin/python3 scripts/demo.py
