"""MUNGE credentials: encode and decode through munged, the way Slurm authenticates.

Two backends that behave the same (same results, same error codes, same messages):

- ``"libmunge"``: libmunge.so.2 through ctypes, one round trip on munged's Unix socket per
  call. Used whenever the library loads.
- ``"command"``: the ``munge`` / ``unmunge`` programs (Debian package ``munge``), for hosts
  that have the programs but not the library's soname. A process per call: much slower.

Every public function takes ``backend=`` (``None``: the module's ``_backend``, which is
``None`` too, meaning libmunge when it loads, else the commands); tests set it to run both.

Each call uses its own libmunge context, so the functions are safe to call from many threads
at once; ctypes releases the GIL during the socket round trip.

Standard library only: the node agent may import this.
"""

from __future__ import annotations

import ctypes
import functools
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Literal

from jobenergy.core.errors import JobEnergyError

Backend = Literal["libmunge", "command"]

DEFAULT_SOCKET = "/run/munge/munge.socket.2"

#: ``None``: libmunge when it loads, else the commands. Tests and benchmarks may set it.
_backend: Backend | None = None

#: Seconds the command backend waits for ``munge`` / ``unmunge``. libmunge itself gives up
#: on a refused socket after about 2 s of retries, so this only catches a wedged process.
COMMAND_TIMEOUT_S = 30.0

# munge_opt_t, from /usr/include/munge.h (munge 0.5.15).
_MUNGE_OPT_TTL = 4
_MUNGE_OPT_ADDR4 = 5
_MUNGE_OPT_ENCODE_TIME = 6
_MUNGE_OPT_SOCKET = 8

# munge_err_t, from /usr/include/munge.h (munge 0.5.15).
EMUNGE_SUCCESS = 0
EMUNGE_SNAFU = 1
EMUNGE_BAD_ARG = 2
EMUNGE_BAD_LENGTH = 3
EMUNGE_OVERFLOW = 4
EMUNGE_NO_MEMORY = 5
EMUNGE_SOCKET = 6
EMUNGE_TIMEOUT = 7
EMUNGE_BAD_CRED = 8
EMUNGE_BAD_VERSION = 9
EMUNGE_BAD_CIPHER = 10
EMUNGE_BAD_MAC = 11
EMUNGE_BAD_ZIP = 12
EMUNGE_BAD_REALM = 13
EMUNGE_CRED_INVALID = 14
EMUNGE_CRED_EXPIRED = 15
EMUNGE_CRED_REWOUND = 16
EMUNGE_CRED_REPLAYED = 17
EMUNGE_CRED_UNAUTHORIZED = 18

#: libmunge's limit on one message to or from munged (MUNGE_MAXIMUM_REQ_LEN, 1 MiB).
MAX_MESSAGE_BYTES = 1024 * 1024

#: ``MungeError.code`` when munged could not be asked at all (no library and no command, the
#: command killed or hung), as opposed to an answer or a socket error from libmunge.
UNAVAILABLE = -1

# munge_strerror()'s texts (libmunge 0.5.15), for the command backend, which sees only the
# exit status when the program printed nothing; tests compare this with the library's.
_STRERROR = {
    EMUNGE_SUCCESS: "Success",
    EMUNGE_SNAFU: "Internal error",
    EMUNGE_BAD_ARG: "Invalid argument",
    EMUNGE_BAD_LENGTH: "Exceeded maximum message length",
    EMUNGE_OVERFLOW: "Buffer overflow",
    EMUNGE_NO_MEMORY: "Out of memory",
    EMUNGE_SOCKET: "Socket communication error",
    EMUNGE_TIMEOUT: "Socket timeout",
    EMUNGE_BAD_CRED: "Invalid credential format",
    EMUNGE_BAD_VERSION: "Invalid credential version",
    EMUNGE_BAD_CIPHER: "Invalid cipher type",
    EMUNGE_BAD_MAC: "Invalid MAC type",
    EMUNGE_BAD_ZIP: "Invalid compression type",
    EMUNGE_BAD_REALM: "Unrecognized security realm",
    EMUNGE_CRED_INVALID: "Invalid credential",
    EMUNGE_CRED_EXPIRED: "Expired credential",
    EMUNGE_CRED_REWOUND: "Rewound credential",
    EMUNGE_CRED_REPLAYED: "Replayed credential",
    EMUNGE_CRED_UNAUTHORIZED: "Unauthorized credential",
}


class MungeError(JobEnergyError):
    """munged refused a request, or could not be reached.

    Attributes:
        code: libmunge's ``munge_err_t`` (the ``EMUNGE_*`` constants of this module), or
            ``UNAVAILABLE`` (-1) when munged could not be asked at all.
        message: munged's or libmunge's own words, e.g. ``Replayed credential``.
    """

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        self.message = " ".join(message.split()) or _STRERROR.get(code, "Unknown error")
        super().__init__(f"MUNGE: {self.message} ({code})")

    def __reduce__(self) -> tuple[type[MungeError], tuple[int, str]]:
        # The default would call MungeError(str(self)) and fail: keep it picklable.
        return (type(self), (self.code, self.message))

    @property
    def replayed(self) -> bool:
        """Return True when the credential had been decoded before (EMUNGE_CRED_REPLAYED)."""
        return self.code == EMUNGE_CRED_REPLAYED

    @property
    def expired(self) -> bool:
        """Return True when the credential is past its TTL, or dated in the future."""
        # REWOUND is an encode time beyond the clock skew munged allows: for the caller it is
        # the same "not valid now" as expired.
        return self.code in (EMUNGE_CRED_EXPIRED, EMUNGE_CRED_REWOUND)

    @property
    def unavailable(self) -> bool:
        """Return True when munged did not answer (socket missing or refused, no munge)."""
        return self.code in (EMUNGE_SOCKET, UNAVAILABLE)


@dataclass(frozen=True)
class MungeCredential:
    """A decoded, valid credential.

    Attributes:
        uid: UID of the process that encoded it.
        gid: GID of the process that encoded it.
        addr: IPv4 address of the encoding host as munged saw it (its origin), dotted quad.
        payload: the bytes given to :func:`encode`.
        encoded_at: encode time, seconds since the epoch (the encoding host's clock).
        ttl_s: time to live in seconds, after the encoding munged's clamping.
    """

    uid: int
    gid: int
    addr: str
    payload: bytes
    encoded_at: int
    ttl_s: int


# ---------------------------------------------------------------------------------------------
# libmunge through ctypes


class _InAddr(ctypes.Structure):
    # struct in_addr: one uint32 in network byte order; as bytes it is already a.b.c.d.
    _fields_ = [("s_addr", ctypes.c_ubyte * 4)]


# ctypes has c_time_t from Python 3.12 only; time_t is a long on glibc's 64-bit targets.
_c_time_t = getattr(ctypes, "c_time_t", ctypes.c_long)
_c_uid_t = ctypes.c_uint32
_c_gid_t = ctypes.c_uint32


class _Lib:
    """libmunge's and libc's functions with their C signatures declared."""

    def __init__(self) -> None:
        lib = ctypes.CDLL("libmunge.so.2")
        # The process's global namespace holds libc on Linux: free() must be the one libmunge
        # allocated its buffers with.
        libc = ctypes.CDLL(None)

        self.free = libc.free
        self.free.argtypes = [ctypes.c_void_p]
        self.free.restype = None

        self.ctx_create = lib.munge_ctx_create
        self.ctx_create.argtypes = []
        self.ctx_create.restype = ctypes.c_void_p

        self.ctx_destroy = lib.munge_ctx_destroy
        self.ctx_destroy.argtypes = [ctypes.c_void_p]
        self.ctx_destroy.restype = None

        self.ctx_strerror = lib.munge_ctx_strerror
        self.ctx_strerror.argtypes = [ctypes.c_void_p]
        self.ctx_strerror.restype = ctypes.c_char_p

        self.strerror = lib.munge_strerror
        self.strerror.argtypes = [ctypes.c_int]
        self.strerror.restype = ctypes.c_char_p

        # munge_ctx_set/get are variadic: one foreign-function object per argument type
        # (lib[name] makes a new one each time, unlike attribute access). Declaring the
        # variadic argument as fixed is right on x86-64 and Linux aarch64, where both are
        # passed alike (libffi sets %al on x86-64 either way).
        self.ctx_set_str = lib["munge_ctx_set"]
        self.ctx_set_str.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p]
        self.ctx_set_str.restype = ctypes.c_int

        self.ctx_set_int = lib["munge_ctx_set"]
        self.ctx_set_int.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
        self.ctx_set_int.restype = ctypes.c_int

        # Every get takes a pointer to the result, whatever its type.
        self.ctx_get = lib["munge_ctx_get"]
        self.ctx_get.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
        self.ctx_get.restype = ctypes.c_int

        self.encode = lib.munge_encode
        self.encode.argtypes = [
            ctypes.POINTER(ctypes.c_void_p),  # char **cred (c_void_p: we must free it)
            ctypes.c_void_p,  # munge_ctx_t
            ctypes.c_void_p,  # const void *buf
            ctypes.c_int,  # int len
        ]
        self.encode.restype = ctypes.c_int

        self.decode = lib.munge_decode
        self.decode.argtypes = [
            ctypes.c_char_p,  # const char *cred
            ctypes.c_void_p,  # munge_ctx_t
            ctypes.POINTER(ctypes.c_void_p),  # void **buf
            ctypes.POINTER(ctypes.c_int),  # int *len
            ctypes.POINTER(_c_uid_t),  # uid_t *uid
            ctypes.POINTER(_c_gid_t),  # gid_t *gid
        ]
        self.decode.restype = ctypes.c_int


@functools.cache
def _load_lib() -> _Lib | None:
    """Return libmunge's bindings, or None when libmunge.so.2 cannot be loaded."""
    try:
        return _Lib()
    except (OSError, AttributeError):  # no library, or one without these symbols
        return None


def _lib_or_raise() -> _Lib:
    lib = _load_lib()
    if lib is None:
        raise MungeError(UNAVAILABLE, "libmunge.so.2 cannot be loaded (apt-get install libmunge2)")
    return lib


class _Context:
    """A libmunge context for one call, destroyed on exit."""

    def __init__(self, lib: _Lib, socket_path: str) -> None:
        self.lib = lib
        self.ctx = lib.ctx_create()
        if not self.ctx:
            raise MungeError(EMUNGE_NO_MEMORY, "munge_ctx_create failed")
        try:
            self.check(lib.ctx_set_str(self.ctx, _MUNGE_OPT_SOCKET, _path_bytes(socket_path)))
        except BaseException:
            lib.ctx_destroy(self.ctx)
            raise

    def __enter__(self) -> _Context:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.lib.ctx_destroy(self.ctx)

    def check(self, code: int) -> None:
        """Raise MungeError for a non-zero ``munge_err_t``, with the context's detail."""
        if code == EMUNGE_SUCCESS:
            return
        detail = self.lib.ctx_strerror(self.ctx) or self.lib.strerror(code) or b""
        raise MungeError(code, detail.decode("utf-8", "replace"))

    def get(self, opt: int, value: ctypes._SimpleCData | ctypes.Structure) -> None:
        """Read option ``opt`` of the context into ``value``."""
        self.check(self.lib.ctx_get(self.ctx, opt, ctypes.byref(value)))


def _lib_encode(payload: bytes, socket_path: str, ttl_s: int | None) -> str:
    lib = _lib_or_raise()
    with _Context(lib, socket_path) as ctx:
        if ttl_s is not None:
            ctx.check(lib.ctx_set_int(ctx.ctx, _MUNGE_OPT_TTL, ttl_s))
        cred = ctypes.c_void_p()
        code = lib.encode(ctypes.byref(cred), ctx.ctx, payload, len(payload))
        try:
            ctx.check(code)
            assert cred.value is not None
            return ctypes.string_at(cred.value).decode("ascii")
        finally:
            if cred.value:
                lib.free(cred.value)


def _lib_decode(credential: str, socket_path: str) -> MungeCredential:
    lib = _lib_or_raise()
    with _Context(lib, socket_path) as ctx:
        buf = ctypes.c_void_p()
        length = ctypes.c_int()
        uid = _c_uid_t()
        gid = _c_gid_t()
        code = lib.decode(
            credential.encode("ascii"), ctx.ctx, ctypes.byref(buf), ctypes.byref(length),
            ctypes.byref(uid), ctypes.byref(gid),
        )
        try:
            # munge_decode allocates the payload even for some errors (expired, replayed).
            ctx.check(code)
            payload = ctypes.string_at(buf.value, length.value) if buf.value else b""
        finally:
            if buf.value:
                lib.free(buf.value)
        addr = _InAddr()
        encoded_at = _c_time_t()
        ttl = ctypes.c_int()
        ctx.get(_MUNGE_OPT_ADDR4, addr)
        ctx.get(_MUNGE_OPT_ENCODE_TIME, encoded_at)
        ctx.get(_MUNGE_OPT_TTL, ttl)
        return MungeCredential(
            uid=uid.value, gid=gid.value, addr=".".join(str(b) for b in addr.s_addr),
            payload=payload, encoded_at=encoded_at.value, ttl_s=ttl.value,
        )


# ---------------------------------------------------------------------------------------------
# The munge / unmunge commands

# "munge: Error: Failed to access ..." -> "Failed to access ...".
_COMMAND_ERROR = re.compile(r"^\S+: Error: ", re.MULTILINE)


def _run(program: str, args: list[str], stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    if len(stdin) >= MAX_MESSAGE_BYTES:
        # The programs refuse such input themselves ("Exceeded maximum memory allocation",
        # EMUNGE_SNAFU) before libmunge can: answer as the library does for it.
        raise MungeError(
            EMUNGE_BAD_LENGTH,
            f"Failed to send message: input of {len(stdin)} bytes exceeds max of "
            f"{MAX_MESSAGE_BYTES}",
        )
    path = shutil.which(program)
    if path is None:
        raise MungeError(UNAVAILABLE, f"{program} command not found (apt-get install munge)")
    try:
        return subprocess.run(
            [path, *args], input=stdin, capture_output=True, timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as err:
        raise MungeError(UNAVAILABLE, f"{program} did not answer in {err.timeout:g} s") from err
    except OSError as err:
        raise MungeError(UNAVAILABLE, f"cannot run {program}: {err}") from err


def _command_error(program: str, result: subprocess.CompletedProcess[bytes]) -> MungeError:
    if result.returncode < 0:  # killed by a signal: no munge answer at all
        return MungeError(UNAVAILABLE, f"{program} killed by signal {-result.returncode}")
    stderr = result.stderr.decode("utf-8", "replace")
    # The programs print libmunge's own detail (munge_ctx_strerror) after "Error: ", which
    # is what the library backend reports; when there is none, munge_strerror's text.
    errors = _COMMAND_ERROR.split(stderr)
    message = errors[-1].strip() if len(errors) > 1 else ""
    return MungeError(result.returncode, message)


def _command_encode(payload: bytes, socket_path: str, ttl_s: int | None) -> str:
    # The payload goes through stdin: -s would need it as text, without NULs.
    args = ["-S", socket_path]
    if ttl_s is not None:
        args += ["-t", str(ttl_s)]
    result = _run("munge", args, payload)
    if result.returncode != 0:
        raise _command_error("munge", result)
    return result.stdout.decode("ascii").strip()


def _command_decode(credential: str, socket_path: str) -> MungeCredential:
    # -N: numbers (addresses, epoch seconds, IDs) rather than names. The output is
    # "KEY:<spaces>VALUE" lines, an empty line, then exactly LENGTH payload bytes.
    result = _run("unmunge", ["-S", socket_path, "-N"], credential.encode("ascii"))
    if result.returncode != 0:
        raise _command_error("unmunge", result)
    head, sep, payload = result.stdout.partition(b"\n\n")
    meta: dict[str, str] = {}
    for line in head.decode("ascii", "replace").splitlines():
        key, _, value = line.partition(":")
        meta[key.strip()] = value.strip()
    try:
        length = int(meta["LENGTH"])
        if not sep or len(payload) != length:
            raise ValueError(f"payload of {len(payload)} bytes, LENGTH says {length}")
        return MungeCredential(
            uid=int(meta["UID"]), gid=int(meta["GID"]), addr=meta["ENCODE_HOST"],
            payload=payload, encoded_at=int(meta["ENCODE_TIME"]), ttl_s=int(meta["TTL"]),
        )
    except (KeyError, ValueError) as err:
        raise MungeError(EMUNGE_SNAFU, f"unexpected unmunge output: {err!r}") from err


# ---------------------------------------------------------------------------------------------
# Public API


def _path_bytes(socket_path: str) -> bytes:
    return os.fsencode(socket_path)


def _pick(backend: Backend | None) -> Backend:
    chosen = backend or _backend
    if chosen is None:
        return "libmunge" if _load_lib() is not None else "command"
    if chosen not in ("libmunge", "command"):
        raise ValueError(f"unknown MUNGE backend {chosen!r}: 'libmunge' or 'command'")
    return chosen


def encode(
    payload: bytes,
    *,
    socket_path: str = DEFAULT_SOCKET,
    ttl_s: int | None = None,
    backend: Backend | None = None,
) -> str:
    """Return a credential for ``payload``, vouching for this process's UID and GID.

    Args:
        payload: bytes carried inside the credential (any bytes, NULs included).
        socket_path: munged's socket.
        ttl_s: time to live in seconds; None or 0 for munged's default, -1 for its maximum.
            munged clamps it to its ``--max-ttl``.
        backend: ``"libmunge"`` or ``"command"``; None for the module's choice.

    Returns:
        The credential, ``MUNGE:...:`` (base64, ASCII, no newline).

    Note:
        munged takes payloads of up to about 1 MiB, but the credential is base64 and must
        itself fit in a 1 MiB message to be decoded: above about 768 KiB of (incompressible)
        payload, encode succeeds and every decode fails with EMUNGE_BAD_LENGTH.

    Raises:
        MungeError: munged refused or could not be reached (``.unavailable``).
        ValueError: ``ttl_s`` below -1.
    """
    if ttl_s is not None and ttl_s < -1:
        raise ValueError(f"ttl_s must be >= -1, got {ttl_s}")
    data = bytes(payload)
    if _pick(backend) == "libmunge":
        return _lib_encode(data, socket_path, ttl_s)
    return _command_encode(data, socket_path, ttl_s)


def decode(
    credential: str,
    *,
    socket_path: str = DEFAULT_SOCKET,
    backend: Backend | None = None,
) -> MungeCredential:
    """Validate ``credential`` with munged and return what it vouches for.

    munged accepts each credential once: a second decode anywhere on the same munged raises
    a replay error.

    Args:
        credential: as returned by :func:`encode` (surrounding whitespace is ignored).
        socket_path: munged's socket.
        backend: ``"libmunge"`` or ``"command"``; None for the module's choice.

    Returns:
        The encoder's UID, GID, address, encode time, TTL and the payload.

    Raises:
        MungeError: the credential is malformed, from another key, expired, replayed...
            or munged could not be reached (``.unavailable``).
    """
    text = credential.strip()
    # Both backends hand the credential over as a C string: one with a NUL or non-ASCII
    # bytes cannot be a credential, and libmunge would silently read only up to the NUL.
    if not text.isascii() or "\0" in text:
        raise MungeError(EMUNGE_BAD_CRED, "Credential is not ASCII text without NULs")
    if _pick(backend) == "libmunge":
        return _lib_decode(text, socket_path)
    return _command_decode(text, socket_path)


def available(socket_path: str = DEFAULT_SOCKET, *, backend: Backend | None = None) -> bool:
    """Return True when munged at ``socket_path`` encodes and decodes a credential.

    Args:
        socket_path: munged's socket.
        backend: ``"libmunge"`` or ``"command"``; None for the module's choice.
    """
    try:
        cred = encode(b"", socket_path=socket_path, backend=backend)
        decode(cred, socket_path=socket_path, backend=backend)  # marks it used: harmless
    except MungeError:
        return False
    return True
