"""jobenergy.core.munge against real, private munged servers (tests/mungeserver.py).

Every behaviour is checked through both backends (libmunge by ctypes, and the munge/unmunge
commands), and credentials cross from one backend to the other, since the point of the
command fallback is to behave exactly like the library.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jobenergy.core import munge

BACKENDS = ["libmunge", "command"]
DOTTED_QUAD = re.compile(r"^(25[0-5]|2[0-4]\d|1?\d?\d)(\.(25[0-5]|2[0-4]\d|1?\d?\d)){3}$")


def _munged_now() -> float:
    """Return the time as munged sees it.

    munged stamps and checks credentials with time(2), which glibc serves from the kernel's
    coarse clock: it lags time.time() by up to a tick, so just after a second boundary
    time.time() is already in the next second while munged is still in the previous one.
    """
    # CLOCK_REALTIME_COARSE is 5 on Linux; Python's time module does not name it.
    coarse = getattr(time, "CLOCK_REALTIME_COARSE", 5)
    try:
        return time.clock_gettime(coarse)
    except OSError:  # not Linux: no coarse clock, and time() is exact
        return time.time()


def _skip_or_fail(message: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def _require(backend: str) -> None:
    if backend == "libmunge" and munge._load_lib() is None:
        _skip_or_fail("libmunge.so.2 not loadable: apt-get install libmunge2")
    if backend == "command" and (shutil.which("munge") is None or shutil.which("unmunge") is None):
        _skip_or_fail("munge/unmunge commands not found: apt-get install munge")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Each test runs once through libmunge and once through the commands."""
    _require(request.param)
    return request.param


@pytest.fixture(params=BACKENDS)
def other_backend(request: pytest.FixtureRequest) -> str:
    """The backend that decodes, to cross credentials between backends."""
    _require(request.param)
    return request.param


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: a Unix socket path must fit in 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="jem-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize(
    "payload",
    [b"", b"hello", b"\0", b"a\0b\0\0", bytes(range(256)), os.urandom(64 * 1024)],
    ids=["empty", "text", "nul", "nuls", "all-bytes", "64KiB-random"],
)
def test_round_trip(munge_socket: str, backend: str, other_backend: str, payload: bytes) -> None:
    before = int(_munged_now())
    cred = munge.encode(payload, socket_path=munge_socket, backend=backend)
    after = int(_munged_now())
    assert cred.startswith("MUNGE:") and cred.endswith(":") and cred.isascii()
    assert "\n" not in cred

    got = munge.decode(cred, socket_path=munge_socket, backend=other_backend)

    assert got.payload == payload
    assert type(got.payload) is bytes
    assert (got.uid, got.gid) == (os.geteuid(), os.getegid())
    if os.geteuid() == 0:
        assert (got.uid, got.gid) == (0, 0)
    assert DOTTED_QUAD.match(got.addr)
    # The fixture's munged runs with --origin=127.0.0.1: checks ADDR4's byte order too.
    assert got.addr == "127.0.0.1"
    assert before <= got.encoded_at <= after
    assert got.ttl_s == 300  # munged's default TTL


def test_credential_is_frozen(munge_socket: str, backend: str) -> None:
    got = munge.decode(munge.encode(b"x", socket_path=munge_socket), socket_path=munge_socket,
                       backend=backend)
    with pytest.raises(AttributeError):
        got.uid = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("ttl_s", "expected"),
    [(None, 300), (0, 300), (1, 1), (60, 60), (-1, 3600), (99_999, 3600)],
)
def test_ttl(munge_socket: str, backend: str, ttl_s: int | None, expected: int) -> None:
    # -1 is munged's maximum; above it munged clamps to --max-ttl (3600 in the fixture).
    cred = munge.encode(b"ttl", socket_path=munge_socket, ttl_s=ttl_s, backend=backend)
    assert munge.decode(cred, socket_path=munge_socket, backend=backend).ttl_s == expected


def test_ttl_below_minus_one_is_a_value_error(munge_socket: str, backend: str) -> None:
    with pytest.raises(ValueError, match="ttl_s"):
        munge.encode(b"", socket_path=munge_socket, ttl_s=-2, backend=backend)


def test_credential_from_another_user(munge_socket: str, backend: str) -> None:
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        _skip_or_fail("needs root and runuser to encode as nobody (CI runs as root)")
    result = subprocess.run(
        ["runuser", "-u", "nobody", "--", "munge", "-S", munge_socket],
        input=b"from nobody", capture_output=True, check=False, timeout=30,
    )
    assert result.returncode == 0, result.stderr

    got = munge.decode(result.stdout.decode(), socket_path=munge_socket, backend=backend)

    assert (got.uid, got.gid) == (65534, 65534)
    assert got.payload == b"from nobody"


def test_decode_ignores_surrounding_whitespace(munge_socket: str, backend: str) -> None:
    cred = munge.encode(b"ws", socket_path=munge_socket, backend=backend)
    assert munge.decode(f"  {cred}\n", socket_path=munge_socket, backend=backend).payload == b"ws"


def test_same_key_on_another_server_decodes(
    make_munged: Callable[..., Any], backend: str
) -> None:
    # Control for test_credential_from_another_key_is_refused: only the key matters.
    key = os.urandom(1024)
    first, second = make_munged(key=key), make_munged(key=key)
    cred = munge.encode(b"shared", socket_path=first.socket_path, backend=backend)
    assert munge.decode(cred, socket_path=second.socket_path, backend=backend).payload == b"shared"


# ---------------------------------------------------------------------------------------------
# Refusals


def test_replayed_credential(munge_socket: str, backend: str, other_backend: str) -> None:
    cred = munge.encode(b"once", socket_path=munge_socket, backend=backend)
    munge.decode(cred, socket_path=munge_socket, backend=backend)

    with pytest.raises(munge.MungeError) as info:
        munge.decode(cred, socket_path=munge_socket, backend=other_backend)

    err = info.value
    assert err.replayed and not err.expired and not err.unavailable
    assert err.code == munge.EMUNGE_CRED_REPLAYED == 17
    assert str(err) == "MUNGE: Replayed credential (17)"


def _garbage(cred: str) -> dict[str, str]:
    body = cred[len("MUNGE:"):-1]
    flipped = body[:40] + ("A" if body[40] != "A" else "B") + body[41:]
    return {
        "word": "garbage",
        "empty": "",
        "prefix-only": "MUNGE:",
        "empty-body": "MUNGE::",
        "truncated": cred[: len(cred) // 2],
        "truncated-closed": cred[: len(cred) // 2] + ":",
        "no-suffix": cred[:-1],
        "one-char-changed": f"MUNGE:{flipped}:",
        "not-base64": "MUNGE:!!!!****:",
        "non-ascii": "MUNGE:é:",
        "nul-inside": cred[:20] + "\0" + cred[20:],
    }


@pytest.mark.parametrize("kind", list(_garbage("MUNGE:" + "x" * 100 + ":")))
def test_garbage_credential_raises_munge_error(munge_socket: str, backend: str, kind: str) -> None:
    cred = munge.encode(b"payload", socket_path=munge_socket)
    bad = _garbage(cred)[kind]

    with pytest.raises(munge.MungeError) as info:
        munge.decode(bad, socket_path=munge_socket, backend=backend)

    err = info.value
    assert err.code > 0
    assert not (err.replayed or err.expired or err.unavailable)
    assert str(err).startswith("MUNGE: ") and "\n" not in str(err)


@pytest.mark.parametrize("kind", ["truncated", "one-char-changed", "not-base64", "non-ascii"])
def test_garbage_gives_the_same_error_on_both_backends(munge_socket: str, kind: str) -> None:
    for name in BACKENDS:
        _require(name)
    errors = []
    for name in BACKENDS:
        cred = munge.encode(b"payload", socket_path=munge_socket)
        with pytest.raises(munge.MungeError) as info:
            munge.decode(_garbage(cred)[kind], socket_path=munge_socket, backend=name)
        errors.append(str(info.value))
    assert errors[0] == errors[1]


def test_credential_from_another_key_is_refused(
    munge_socket: str, make_munged: Callable[..., Any], backend: str
) -> None:
    other = make_munged()
    cred = munge.encode(b"elsewhere", socket_path=other.socket_path, backend=backend)
    with pytest.raises(munge.MungeError) as info:
        munge.decode(cred, socket_path=munge_socket, backend=backend)
    assert info.value.code == munge.EMUNGE_CRED_INVALID
    assert str(info.value) == "MUNGE: Invalid credential (14)"

    # And the other way round.
    cred = munge.encode(b"here", socket_path=munge_socket, backend=backend)
    with pytest.raises(munge.MungeError) as info:
        munge.decode(cred, socket_path=other.socket_path, backend=backend)
    assert info.value.code == munge.EMUNGE_CRED_INVALID


def test_expired_credential(munge_socket: str) -> None:
    # One wait for both backends. munged refuses a credential once its clock is past
    # encode time + TTL in whole seconds, so with TTL 1 it takes until munged's clock reaches
    # (encode second + 2): between 1 and 2 s, which no test-side trick can shorten.
    for name in BACKENDS:
        _require(name)
    creds = {
        name: munge.encode(b"soon stale", socket_path=munge_socket, ttl_s=1, backend=name)
        for name in BACKENDS
    }
    stale_at = int(_munged_now()) + 2  # munged's encode second is at most int(_munged_now())
    while (left := stale_at - _munged_now()) > 0:
        time.sleep(max(left, 0.001))  # the coarse clock may still lag when time.time() is due
    for name, cred in creds.items():
        with pytest.raises(munge.MungeError) as info:
            munge.decode(cred, socket_path=munge_socket, backend=name)
        err = info.value
        assert err.expired and not err.replayed and not err.unavailable, name
        assert err.code == munge.EMUNGE_CRED_EXPIRED
        assert str(err) == "MUNGE: Expired credential (15)"


def test_oversized_payload_is_refused(munge_socket: str, backend: str) -> None:
    with pytest.raises(munge.MungeError) as info:
        munge.encode(os.urandom(munge.MAX_MESSAGE_BYTES), socket_path=munge_socket,
                     backend=backend)
    assert info.value.code == munge.EMUNGE_BAD_LENGTH


def test_payload_too_big_to_decode(munge_socket: str, backend: str) -> None:
    # munged encodes it, but the base64 credential exceeds the 1 MiB message limit.
    cred = munge.encode(os.urandom(800_000), socket_path=munge_socket, backend=backend)
    with pytest.raises(munge.MungeError) as info:
        munge.decode(cred, socket_path=munge_socket, backend=backend)
    assert info.value.code == munge.EMUNGE_BAD_LENGTH


# ---------------------------------------------------------------------------------------------
# munged unreachable


def test_missing_socket(short_dir: Path, backend: str) -> None:
    path = str(short_dir / "no-munged.socket")
    cred = "MUNGE:AwQFAAB:"

    for call in (
        lambda: munge.encode(b"x", socket_path=path, backend=backend),
        lambda: munge.decode(cred, socket_path=path, backend=backend),
    ):
        with pytest.raises(munge.MungeError) as info:
            call()
        err = info.value
        assert err.unavailable and not (err.replayed or err.expired)
        assert err.code == munge.EMUNGE_SOCKET
        assert path in str(err)
        assert "\n" not in str(err)


def test_refused_socket(short_dir: Path, backend: str) -> None:
    # A socket file nobody listens on (munged died without cleaning up). libmunge retries
    # a refused connection for about 2 s before giving up.
    path = short_dir / "stale.socket"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))
    with pytest.raises(munge.MungeError) as info:
        munge.encode(b"x", socket_path=str(path), backend=backend)
    assert info.value.unavailable
    assert info.value.code == munge.EMUNGE_SOCKET
    assert str(path) in str(info.value)


def test_available(munge_socket: str, short_dir: Path, backend: str) -> None:
    assert munge.available(munge_socket, backend=backend) is True
    assert munge.available(str(short_dir / "none.socket"), backend=backend) is False


def test_available_after_munged_stops(make_munged: Callable[..., Any], backend: str) -> None:
    server = make_munged()
    path = server.socket_path
    assert munge.available(path, backend=backend)
    server.stop()
    assert not munge.available(path, backend=backend)


def test_no_library_falls_back_to_commands(
    munge_socket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _require("command")
    monkeypatch.setattr(munge, "_load_lib", lambda: None)
    monkeypatch.setattr(munge, "_backend", None)
    assert munge._pick(None) == "command"
    cred = munge.encode(b"fallback", socket_path=munge_socket)
    assert munge.decode(cred, socket_path=munge_socket).payload == b"fallback"

    with pytest.raises(munge.MungeError) as info:
        munge.encode(b"x", socket_path=munge_socket, backend="libmunge")
    assert info.value.code == munge.UNAVAILABLE and info.value.unavailable
    assert "libmunge.so.2" in str(info.value)


def test_module_backend_setting(munge_socket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _require("libmunge")
    assert munge._pick(None) == "libmunge"  # the library loads here
    monkeypatch.setattr(munge, "_backend", "command")
    assert munge._pick(None) == "command"
    assert munge._pick("libmunge") == "libmunge"
    with pytest.raises(ValueError, match="backend"):
        munge.encode(b"", socket_path=munge_socket, backend="nope")  # type: ignore[arg-type]


def test_no_commands(
    munge_socket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    for call in (
        lambda: munge.encode(b"", socket_path=munge_socket, backend="command"),
        lambda: munge.decode("MUNGE:x:", socket_path=munge_socket, backend="command"),
    ):
        with pytest.raises(munge.MungeError) as info:
            call()
        assert info.value.code == munge.UNAVAILABLE and info.value.unavailable
        assert "apt-get install munge" in str(info.value)


# ---------------------------------------------------------------------------------------------
# The error type and the library's own texts


def test_error_texts_match_munge_strerror() -> None:
    _require("libmunge")
    lib = munge._load_lib()
    assert lib is not None
    for code, text in munge._STRERROR.items():
        assert lib.strerror(code).decode() == text, code


def test_munge_error_pickles_and_defaults_its_message() -> None:
    err = munge.MungeError(munge.EMUNGE_CRED_REWOUND, "")
    assert str(err) == "MUNGE: Rewound credential (16)"
    assert err.expired
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.code, str(copy)) == (err.code, str(err))
    assert munge.MungeError(-1, "no munge").unavailable


# ---------------------------------------------------------------------------------------------
# Threads: the server decodes from many threads at once


def test_concurrent_decodes(munge_socket: str) -> None:
    _require("libmunge")
    creds = [
        (munge.encode(str(i).encode(), socket_path=munge_socket), str(i).encode())
        for i in range(400)
    ]
    errors: list[BaseException] = []
    decoded: list[bytes] = []
    lock = threading.Lock()

    def work(part: list[tuple[str, bytes]]) -> None:
        for cred, payload in part:
            try:
                got = munge.decode(cred, socket_path=munge_socket, backend="libmunge")
                assert got.payload == payload
                with lock:
                    decoded.append(got.payload)
            except BaseException as err:  # noqa: BLE001 - collected and re-raised below
                with lock:
                    errors.append(err)

    threads = [threading.Thread(target=work, args=(creds[i::16],)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors[:3]
    assert sorted(decoded) == sorted(p for _, p in creds)


# ---------------------------------------------------------------------------------------------
# The fixture itself


def test_fixture_reports_munged_refusing_to_start(make_munged: Callable[..., Any]) -> None:
    # A start failure must name munged's own reason (its log), not just time out.
    with pytest.raises(RuntimeError, match="Keyfile must be at least 32 bytes"):
        make_munged(key=b"short")


def test_fixture_socket_is_reachable_by_other_users(munge_socket: str) -> None:
    # munged needs every directory above its socket searchable by all (0755).
    path = Path(munge_socket)
    for directory in [path.parent, *path.parent.parents]:
        assert directory.stat().st_mode & 0o001, directory
