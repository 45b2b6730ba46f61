"""Who is calling: credentials in, a :class:`Caller` out (README "Security model").

Mechanisms (``--auth``, any subset of ``munge,jwt,token``; ``none`` alone, loopback only):

* ``Authorization: MUNGE <credential>``: decoded by munged with the cluster's key; its payload
  must be :func:`jobenergy.core.request_auth.munge_payload` of this very request (method,
  target, SHA-256 of the body as received), so a credential cannot be moved to another request,
  and munged refuses a replay within its TTL. Gives uid, gid and the encoding host.
* ``X-SLURM-USER-NAME`` + ``X-SLURM-USER-TOKEN``: an HS256 JWT signed with Slurm's
  ``jwt_hs256.key``; ``exp`` and ``iat`` required, ``sun`` must name the header's user.
* ``Authorization: Bearer <token>``: a static token from ``auth_token`` (stored hashed).
* ``X-Remote-User: <name>`` (``proxy_user_header``): a user whom a site's reverse proxy has
  authenticated (Kerberos, OIDC, ...), taken only when the TCP peer is one of
  ``trusted_proxies``; from any other peer the header is ignored. Such a user's rights come
  from Slurm like a JWT user's, except that they never post events (writes stay with
  MUNGE, JWT and tokens) and are never root's (a name of uid 0 is refused). An empty or
  ``(null)`` header is no header; several are refused.

What a caller may then do is decided in ``api/access.py``; this module only establishes who it
is. Every failure is an :class:`AuthError` with a reason the client is shown (401).
"""

from __future__ import annotations

import copy
import ipaddress
import logging
import pwd
import re
from dataclasses import dataclass
from pathlib import Path

import jwt
from sqlalchemy.orm import Session, sessionmaker

from jobenergy.collector import tokens
from jobenergy.collector.settings import ServerSettings
from jobenergy.core import munge
from jobenergy.core.errors import ConfigError
from jobenergy.core.request_auth import is_loopback, munge_payload

logger = logging.getLogger(__name__)

#: Seconds of clock difference tolerated on a JWT's ``iat``/``exp``.
JWT_LEEWAY_S = 30
#: Longest credential header looked at (a MUNGE credential of our payload is ~250 bytes).
MAX_CREDENTIAL_CHARS = 8192
#: Authorization schemes a 401 may name when refusing them (anything else may be a secret).
_KNOWN_SCHEMES = frozenset({"basic", "digest", "negotiate", "ntlm", "token", "jwt", "dpop"})


#: User names a trusted proxy may pass on (POSIX portable names, plus ``@`` for realms).
_PROXY_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._@-]{0,255}")


#: What munged's credentials look like (armor prefix, base64, armor suffix).
_MUNGE_CREDENTIAL = re.compile(r"MUNGE:[A-Za-z0-9+/]+={0,2}:")


def _present(value: str | None) -> str | None:
    """Return a proxy's user header value, or None when it names nobody.

    Only blanks and tabs are trimmed (``str.strip`` would also eat control and non-ASCII
    spaces, turning ``"\\xa0root\\x1c"`` into ``root``); empty and ``(null)`` (what
    Apache's ``%{REMOTE_USER}`` gives for an unauthenticated request) are no header.
    """
    if value is None:
        return None
    value = value.strip(" \t")
    return None if value in ("", "(null)") else value


class AuthError(Exception):
    """The request carries no usable credential; ``str()`` says why (the 401's detail)."""


@dataclass(frozen=True)
class Caller:
    """An authenticated party.

    Attributes:
        mechanism: ``munge``, ``jwt``, ``token``, ``proxy`` (a trusted reverse proxy's user
            header) or ``none`` (no authentication configured).
        user: User name (MUNGE: from the uid; JWT: ``sun``; proxy: the header), None for
            tokens and unknown uids.
        uid: User id (MUNGE; JWT when the name resolves here).
        gid: Primary group id (MUNGE).
        host: The MUNGE credential's encoding host address.
        token: What a static token grants.
    """

    mechanism: str
    user: str | None = None
    uid: int | None = None
    gid: int | None = None
    host: str | None = None
    token: tokens.TokenGrant | None = None

    def describe(self) -> str:
        """Return the identity as the audit log and the logs show it."""
        if self.token is not None:
            where = f" {self.token.cluster}/{self.token.node}" if self.token.node else ""
            return f"token:{self.token.role}{where} id={self.token.token_id}"
        if self.mechanism == "none":
            return "none (authentication off)"
        who = self.user if self.user is not None else f"uid={self.uid}"
        if self.mechanism == "munge":
            return f"munge:{who}(uid={self.uid})@{self.host}"
        return f"{self.mechanism}:{who}"


NO_AUTH = Caller(mechanism="none")


def _user_of_uid(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def _uid_of_user(name: str) -> tuple[int | None, int | None]:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None, None
    return entry.pw_uid, entry.pw_gid


def resolve_mechanisms(settings: ServerSettings) -> tuple[str, ...]:
    """Return the mechanisms the server uses, checking that they can work here.

    Without ``--auth``, MUNGE when munged answers on ``munge_socket``; otherwise the server
    refuses to start rather than guess. ``none`` is refused off loopback.

    Raises:
        ConfigError: No choice and no munged, ``none`` off loopback, ``jwt`` without a key.
    """
    chosen = settings.auth
    if not chosen:
        if not munge.available(settings.munge_socket):
            raise ConfigError(
                f"no --auth given and munged does not answer at {settings.munge_socket}: pass "
                "--auth munge|jwt|token (or none, on a loopback address only)")
        chosen = ("munge",)
    if chosen == ("none",):
        if not is_loopback(settings.host):
            raise ConfigError(f"--auth none is allowed on a loopback address only, not "
                              f"{settings.host!r}: anyone who can reach it could forge energy")
        logger.warning("authentication is off (--auth none): anyone on this host can write "
                       "and read everything")
    if "jwt" in chosen:
        if settings.jwt_key is None:
            raise ConfigError("--auth jwt needs --jwt-key (Slurm's jwt_hs256.key)")
        _read_jwt_key(settings.jwt_key)
    if "munge" in chosen and not munge.available(settings.munge_socket):
        # Not fatal: munged may come up after us; requests answer 401 until it does.
        logger.warning("munged does not answer at %s yet: MUNGE requests fail until it does",
                       settings.munge_socket)
    return chosen


def _read_jwt_key(path: Path) -> bytes:
    try:
        key = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"cannot read the JWT key {path}: {err.strerror}") from err
    if not key:
        raise ConfigError(f"the JWT key {path} is empty")
    return key


class Authenticator:
    """Turns a request's credential into a :class:`Caller` (blocking: run in a thread)."""

    def __init__(self, settings: ServerSettings, mechanisms: tuple[str, ...],
                 sessions: sessionmaker[Session]) -> None:
        self.mechanisms = mechanisms
        self.munge_socket = settings.munge_socket
        self.jwt_key = _read_jwt_key(settings.jwt_key) if "jwt" in mechanisms else b""
        self.sessions = sessions
        self.proxies = tuple(ipaddress.ip_network(n) for n in settings.trusted_proxies)
        for network in self.proxies:
            if network.is_loopback:
                logger.warning(
                    "trusted_proxies holds %s (loopback): every process on this host may name "
                    "any user in %s; only the proxy may run here", network,
                    settings.proxy_user_header)
        self.proxy_header_name = settings.proxy_user_header
        self.proxy_header = self.proxy_header_name.lower()

    def with_sessions(self, sessions: sessionmaker[Session]) -> Authenticator:
        """The same authenticator, looking tokens up on ``sessions`` (ingest's own pool)."""
        other = copy.copy(self)
        other.sessions = sessions
        return other

    def from_proxy(self, peer: str | None) -> bool:
        """Return True when ``peer`` (the TCP peer's address) is a trusted proxy."""
        if not self.proxies or not peer:
            return False
        try:
            addr = ipaddress.ip_address(peer)
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in network for network in self.proxies)

    @property
    def enabled(self) -> bool:
        """Return False when authentication is off (``--auth none``)."""
        return self.mechanisms != ("none",)

    def signs_body(self, headers: dict[str, str]) -> bool:
        """Return True when the request's credential covers its body (MUNGE)."""
        return self.enabled and headers.get("authorization", "")[:6].lower() == "munge "

    def challenge(self) -> str:
        """Return the ``WWW-Authenticate`` value: the schemes this server accepts."""
        schemes = {"munge": "MUNGE", "token": "Bearer", "jwt": "Slurm-JWT"}
        return ", ".join(schemes[m] for m in self.mechanisms if m in schemes)

    def authenticate(self, method: str, target: str, headers: dict[str, str],
                     body: bytes, peer: str | None = None) -> Caller:
        """Return who sent the request.

        Args:
            method: HTTP method.
            target: Path and query as received.
            headers: Request headers, names lower-case.
            body: The body as received (before any gzip inflation).
            peer: The TCP peer's address (``trusted_proxies`` are matched against it).

        Raises:
            AuthError: No credential, or one that does not verify.
        """
        if not self.enabled:
            return NO_AUTH
        proxied = _present(headers.get(self.proxy_header))
        if proxied is not None and self.from_proxy(peer):
            return self._proxied(proxied)
        authorization = headers.get("authorization", "")
        scheme, _, credential = authorization.partition(" ")
        scheme = scheme.lower()
        credential = credential.strip()
        if len(credential) > MAX_CREDENTIAL_CHARS:
            raise AuthError("credential too long")
        if scheme == "munge":
            self._need("munge")
            return self._munge(method, target, credential, body)
        if scheme == "bearer":
            self._need("token")
            return self._token(credential)
        if "x-slurm-user-token" in headers:
            self._need("jwt")
            return self._jwt(headers.get("x-slurm-user-name", ""), headers["x-slurm-user-token"])
        if authorization:
            # Name only a well-known scheme: a bare secret (a token without "Bearer ") must
            # not be echoed to the client nor written to the log.
            shown = f" {scheme!r}" if scheme in _KNOWN_SCHEMES else ""
            raise AuthError(f"unsupported Authorization scheme{shown}; this server accepts "
                            f"{self.challenge()}")
        if proxied is not None:
            # Ignored, not trusted: anyone can send the header; say so to whoever set it up.
            raise AuthError(f"{self.proxy_header_name} is accepted only from a trusted proxy, not "
                            f"from {peer}; send {self.challenge()} credentials")
        raise AuthError(f"authentication required: send {self.challenge()} credentials")

    def _need(self, mechanism: str) -> None:
        if mechanism not in self.mechanisms:
            raise AuthError(f"{mechanism} authentication is not enabled on this server; it "
                            f"accepts {self.challenge()}")

    def _munge(self, method: str, target: str, credential: str, body: bytes) -> Caller:
        if not credential:
            raise AuthError("empty MUNGE credential")
        if not _MUNGE_CREDENTIAL.fullmatch(credential):
            # Refused here: garbage must not cost munged (often slurmctld's too) any work.
            raise AuthError("malformed MUNGE credential (expected MUNGE:<base64>:)")
        try:
            decoded = munge.decode(credential, socket_path=self.munge_socket)
        except munge.MungeError as err:
            if err.unavailable:
                logger.error("cannot decode MUNGE credentials: %s", err)
            raise AuthError(f"MUNGE credential refused: {err}") from err
        if decoded.payload != munge_payload(method, target, body):
            raise AuthError("MUNGE credential was made for another request (method, path or "
                            "body differ)")
        return Caller(mechanism="munge", user=_user_of_uid(decoded.uid), uid=decoded.uid,
                      gid=decoded.gid, host=decoded.addr)

    def _token(self, credential: str) -> Caller:
        if not credential:
            raise AuthError("empty Bearer token")
        with self.sessions() as session:
            grant = tokens.lookup(session.connection(), credential)
        if grant is None:
            raise AuthError("unknown or revoked token")
        return Caller(mechanism="token", token=grant)

    def _proxied(self, user: str) -> Caller:
        if "," in user:
            # Several headers (joined by api/authenticate.py, RFC 9110 5.3): the proxy appended
            # its own to the client's instead of replacing it; which one is true is unknowable.
            raise AuthError(f"more than one {self.proxy_header_name} header: the proxy must "
                            "replace the client's, not add its own")
        if not _PROXY_USER.fullmatch(user):
            raise AuthError(f"the trusted proxy's {self.proxy_header_name} is not a user name")
        uid, gid = _uid_of_user(user)
        if uid == 0 or user == "root":
            # A web login is no superuser: root's built-in rights stay with MUNGE credentials.
            raise AuthError(f"the trusted proxy's {self.proxy_header_name} names {user}, whose "
                            "uid is 0: a superuser is not taken from a web proxy")
        return Caller(mechanism="proxy", user=user, uid=uid, gid=gid)

    def _jwt(self, user: str, token: str) -> Caller:
        if not user:
            raise AuthError("X-SLURM-USER-TOKEN without X-SLURM-USER-NAME")
        if len(token) > MAX_CREDENTIAL_CHARS:
            raise AuthError("credential too long")
        try:
            claims = jwt.decode(token, self.jwt_key, algorithms=["HS256"],
                                options={"require": ["exp", "iat", "sun"]},
                                leeway=JWT_LEEWAY_S)
        except jwt.PyJWTError as err:
            raise AuthError(f"Slurm JWT refused: {err}") from err
        if claims.get("sun") != user:
            raise AuthError(f"Slurm JWT is for {str(claims.get('sun'))[:64]!r}, not the "
                            f"X-SLURM-USER-NAME {user[:64]!r}")
        uid, gid = _uid_of_user(user)
        return Caller(mechanism="jwt", user=user, uid=uid, gid=gid)
