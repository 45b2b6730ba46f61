"""The change primitives of ``jobenergy setup`` (cli/setup_files.py), in a staging root."""

from __future__ import annotations

import os

import pytest

from jobenergy.cli.setup_files import Installer, SetupError, pristine, with_marker


def _actions(inst: Installer) -> list[tuple[str, str]]:
    return [(c.action, c.what) for c in inst.changes]


def test_marker_goes_after_a_shebang_and_detects_edits():
    script = with_marker("#!/bin/bash\nexit 0\n")
    assert script.startswith("#!/bin/bash\n# jobenergy-setup: sha256=")
    assert pristine(script) and pristine(with_marker("a = 1\n"))
    assert not pristine(script.replace("exit 0", "exit 1"))
    assert not pristine("a = 1\n")  # no marker: not ours to overwrite


def test_file_lifecycle(tmp_path):
    first = Installer(tmp_path)
    first.file("/etc/x/a.toml", "a = 1\n", 0o600)
    assert _actions(first) == [("created", "/etc/x/a.toml")] and first.changed
    path = tmp_path / "etc/x/a.toml"
    assert path.stat().st_mode & 0o777 == 0o600

    same = Installer(tmp_path)
    same.file("/etc/x/a.toml", "a = 1\n", 0o600)
    assert _actions(same) == [("unchanged", "/etc/x/a.toml")] and not same.changed

    newer = Installer(tmp_path)  # setup's own file, new content: updated
    newer.file("/etc/x/a.toml", "a = 2\n", 0o600)
    assert _actions(newer) == [("updated", "/etc/x/a.toml")]

    path.write_text(path.read_text() + "b = 3\n")  # the admin's edit
    kept = Installer(tmp_path)
    kept.file("/etc/x/a.toml", "a = 4\n", 0o600)
    assert _actions(kept) == [("kept (differs)", "/etc/x/a.toml")] and not kept.changed
    assert path.read_text().endswith("a = 2\nb = 3\n")

    forced = Installer(tmp_path, force=True)
    forced.file("/etc/x/a.toml", "a = 4\n", 0o600)
    assert _actions(forced) == [("updated", "/etc/x/a.toml")]
    assert path.read_text().endswith("\na = 4\n")


def test_secret_file_is_never_readable_by_others_even_briefly(tmp_path):
    old_umask = os.umask(0)
    try:
        Installer(tmp_path).file("/etc/server.env", "X='secret'\n", 0o600)
    finally:
        os.umask(old_umask)
    assert (tmp_path / "etc/server.env").stat().st_mode & 0o777 == 0o600
    assert not list((tmp_path / "etc").glob(".server.env.*"))  # no temporary left


def test_folder_mode_is_restored_and_symlinks_are_left_alone(tmp_path):
    Installer(tmp_path).directory("/var/spool/x", 0o700)
    (tmp_path / "var/spool/x").chmod(0o755)
    fix = Installer(tmp_path)
    fix.directory("/var/spool/x", 0o700)
    assert fix.changes[0].action == "updated" and "mode, was 0755" in fix.changes[0].detail
    assert (tmp_path / "var/spool/x").stat().st_mode & 0o777 == 0o700

    (tmp_path / "shared").mkdir()
    (tmp_path / "shared").chmod(0o755)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/linked").symlink_to(tmp_path / "shared")
    linked = Installer(tmp_path)
    linked.directory("/etc/linked", 0o700)
    assert linked.changes[0].action == "unchanged"
    assert (tmp_path / "shared").stat().st_mode & 0o777 == 0o755  # not followed
    (tmp_path / "target.toml").write_text("mine\n")
    (tmp_path / "etc/link.toml").symlink_to(tmp_path / "target.toml")
    kept = Installer(tmp_path)
    kept.file("/etc/link.toml", "a = 1\n", 0o644)
    assert kept.changes[0].action == "kept (symlink)"
    assert (tmp_path / "target.toml").read_text() == "mine\n"


def test_staging_runs_no_host_command_and_creates_no_user(tmp_path):
    inst = Installer(tmp_path)
    inst.command(["systemctl", "daemon-reload"], "(units changed)")
    inst.system_user("jobenergy-no-such-user", "/var/lib/x", "test")
    assert [c.action for c in inst.changes] == ["skipped", "skipped"]
    assert "useradd --system" in inst.changes[1].detail


def test_a_file_where_a_folder_should_be_is_an_error(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/jobenergy").write_text("")
    with pytest.raises(SetupError, match="is not a folder"):
        Installer(tmp_path).directory("/etc/jobenergy", 0o755)
