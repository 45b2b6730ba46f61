"""The vendored files are the npm packages' own, as their SOURCE notes say, with licences."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from jobenergy.api.web.pages import STATIC_DIR

VENDOR = STATIC_DIR / "vendor"
PACKAGES = sorted(p for p in VENDOR.iterdir() if p.is_dir())


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.name)
def test_vendored_files_match_their_source_note(package: Path) -> None:
    note = (package / "SOURCE.md").read_text()
    assert re.search(r"`npm pack \S+@\d+\.\d+\.\d+`", note)
    assert re.search(r"tarball sha1 \(npm `dist.shasum`\): [0-9a-f]{40}", note)
    listed = dict(re.findall(r"^\| (?:\S+ → )?(\S+) \| ([0-9a-f]{64}) \|$", note, re.M))
    shipped = {p.name for p in package.iterdir() if p.name != "SOURCE.md"}
    assert set(listed) == shipped, "every file is listed in SOURCE.md, and only those"
    assert "LICENSE" in listed
    for name, digest in listed.items():
        assert hashlib.sha256((package / name).read_bytes()).hexdigest() == digest, name
