"""Deploying renewed certificates: ``plan`` (steps per host, pure), ``files`` (what an upload
carries), ``hosts`` (one host's steps in order), ``deployer`` (all hosts, owed deploys)."""
