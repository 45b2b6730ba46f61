"""Fixtures of the command-line tests."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def no_credentials(tmp_path, monkeypatch):
    """A login node with no credential to find (the tests' servers run without auth): no token
    file, no ``$SLURM_JWT``, no munged, and an ``scontrol`` that refuses at once. A real
    scontrol waits ~10 s for a controller that is not there, and a machine that ran the live
    Slurm tests has a slurm.conf naming one."""
    monkeypatch.setenv("JOBENERGY_TOKEN_FILE", "")
    monkeypatch.delenv("SLURM_JWT", raising=False)
    monkeypatch.setenv("JOBENERGY_MUNGE_SOCKET", str(tmp_path / "no-munged.socket"))
    fake_bin = tmp_path / "no-credentials-bin"
    fake_bin.mkdir()
    (fake_bin / "scontrol").write_text("#!/bin/sh\nexit 1\n")
    (fake_bin / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
