"""What a caller may do: roles from Slurm's own identities (README "Security model").

| role | recognised by | may |
|---|---|---|
| agent of node N | MUNGE uid 0 from a host mapped to N, or N's agent token | post N's batches |
| Slurm hooks | MUNGE uid 0 or SlurmUser, or a hooks token | post job events, read all |
| user | MUNGE/JWT uid → name, a trusted proxy's user header | read their own jobs |
| coordinator | ``sacctmgr show user withcoord`` (cached) | also their accounts' jobs |
| operator / admin | AdminLevel, ``admins``, ``admin_group``, root, admin token | read all,
  change factors |

With ``munge_cluster`` set, MUNGE agents and hooks post for that cluster only; Slurm JWT
callers for ``jwt_cluster`` (default: ``munge_cluster``); tokens for their own cluster
always. A proxied user is never root.

Reads follow ``private_data`` (Slurm's PrivateData words): ``jobs`` limits a user's job lists
and lookups to what they may see, ``usage`` their leaderboards and summaries, ``users`` and
``accounts`` hide other users' and accounts' names in summaries.
"""

from __future__ import annotations

import grp
import ipaddress
import logging
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field

from jobenergy.api.auth import Caller
from jobenergy.collector.settings import ServerSettings

logger = logging.getLogger(__name__)

#: How long a host's reverse lookup (its node names) is cached.
HOST_TTL_S = 300.0


@dataclass(frozen=True)
class Visible:
    """The jobs a user may read when they may not read everything."""

    user: str | None
    uid: int | None
    accounts: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Access:
    """What one caller may do.

    Attributes:
        caller: Who it is.
        admin: Change factors, issue nothing less than everything: read all.
        service: The Slurm hooks' rights: post job events, read all (the sync).
        agent_nodes: Nodes whose batches it may post: ``None`` any (no authentication),
            else ``(cluster or None, node)`` pairs (None: any cluster).
        events_cluster: The one cluster whose job events it may post (a hooks token's, or
            ``munge_cluster`` for MUNGE credentials); None: any.
        visible: What it may read of others' jobs when not everything.
        private_data: The server's PrivateData words.
    """

    caller: Caller
    admin: bool = False
    service: bool = False
    agent_nodes: frozenset[tuple[str | None, str]] | None = frozenset()
    events_cluster: str | None = None
    visible: Visible = field(default_factory=lambda: Visible(None, None))
    private_data: tuple[str, ...] = ()

    @property
    def reads_all(self) -> bool:
        """Return True for admins, operators and the hooks."""
        return self.admin or self.service

    @property
    def is_user(self) -> bool:
        """Return True when the caller is a person (MUNGE or JWT), not a node or a service."""
        return self.caller.mechanism in ("munge", "jwt", "proxy") and not self.reads_all

    def may_post_batch(self, cluster: str, node: str) -> bool:
        """Return True when the caller may post the batches of ``node`` of ``cluster``."""
        if self.agent_nodes is None:
            return True
        return (cluster, node) in self.agent_nodes or (None, node) in self.agent_nodes

    def scope(self, word: str) -> Visible | None:
        """Return the restriction of reads governed by PrivateData ``word`` (None: none)."""
        if self.reads_all or word not in self.private_data:
            return None
        return self.visible

    def sees_job(self, user: str | None, uid: int | None, account: str | None) -> bool:
        """Return True when the caller may read a job with this owner and account."""
        scope = self.scope("jobs")
        return scope is None or is_visible(scope, user, uid, account)

    def sees_name(self, word: str, name: str | None) -> bool:
        """Return True when a user (``users``) or account (``accounts``) name may be shown."""
        if self.reads_all or word not in self.private_data or name is None:
            return True
        if word == "users":
            return name == self.visible.user
        return name in self.visible.accounts


def is_visible(scope: Visible, user: str | None, uid: int | None, account: str | None) -> bool:
    """Return True when a job with this owner and account is in ``scope``."""
    return ((scope.user is not None and user == scope.user)
            or (scope.uid is not None and uid == scope.uid)
            or (account is not None and account in scope.accounts))


class SlurmRoles:
    """AdminLevel and coordinated accounts per user, from sacctmgr, cached for ``ttl_s``.

    One ``sacctmgr -nP show user withcoord`` answers for every user. Only the first lookup
    waits for it; later, a stale cache is refreshed by one background thread while requests
    go on with the roles last read, so a slow or hung slurmdbd never holds requests up. When
    sacctmgr fails, it is logged once and the roles last read stay in force (with none read
    yet: no Slurm roles, only ``admins``/``admin_group``).
    """

    def __init__(self, command: str, ttl_s: float) -> None:
        self.command = command
        self.ttl_s = ttl_s
        self._first = threading.Lock()
        self._refreshing = threading.Lock()
        self._fetched_at: float | None = None
        self._levels: dict[str, str] = {}
        self._coordinated: dict[str, frozenset[str]] = {}
        self._warned = False

    def _fetch(self) -> None:
        self._fetched_at = time.monotonic()
        if not self.command:
            return
        try:
            out = subprocess.run(
                [self.command, "-nP", "show", "user", "withcoord",
                 "format=user,adminlevel,coordinators"],
                capture_output=True, encoding="utf-8", errors="replace", timeout=15,
                check=True).stdout
        except (OSError, subprocess.SubprocessError) as err:
            if not self._warned:
                logger.warning("cannot read Slurm roles (AdminLevel, coordinators) with %s: "
                               "%s; the roles last read stay in force", self.command, err)
                self._warned = True
            return
        levels, coordinated = {}, {}
        for line in out.splitlines():
            parts = line.split("|")
            if len(parts) < 3 or not parts[0]:
                continue
            levels[parts[0]] = parts[1]
            coordinated[parts[0]] = frozenset(a for a in parts[2].split(",") if a)
        self._levels, self._coordinated = levels, coordinated
        self._warned = False

    def _refresh_in_background(self) -> None:
        try:
            self._fetch()
        finally:
            self._refreshing.release()

    def of(self, user: str) -> tuple[str, frozenset[str]]:
        """Return ``(AdminLevel, coordinated accounts)`` of ``user``."""
        if self._fetched_at is None:
            with self._first:
                if self._fetched_at is None:
                    self._fetch()
        elif (time.monotonic() - self._fetched_at >= self.ttl_s
              and self._refreshing.acquire(blocking=False)):
            threading.Thread(target=self._refresh_in_background, name="jobenergy-sacctmgr",
                             daemon=True).start()
        return self._levels.get(user, "None"), self._coordinated.get(user, frozenset())


class Roles:
    """Maps callers to :class:`Access` with the server's settings."""

    def __init__(self, settings: ServerSettings, slurm: SlurmRoles | None = None) -> None:
        self.settings = settings
        self.slurm = slurm or SlurmRoles(settings.sacctmgr, settings.slurm_roles_ttl_s)
        self._hosts: dict[str, tuple[float, frozenset[str]]] = {}
        self._slurm_uid = _uid_of(settings.slurm_user)

    def access(self, caller: Caller) -> Access:
        """Return what ``caller`` may do."""
        private = self.settings.private_data
        if caller.mechanism == "none":
            return Access(caller, admin=True, service=True, agent_nodes=None,
                          private_data=private)
        if caller.token is not None:
            grant = caller.token
            if grant.role == "agent" and grant.node is not None:
                return Access(caller, agent_nodes=frozenset({(grant.cluster, grant.node)}),
                              private_data=private)
            return Access(caller, admin=grant.role == "admin", service=grant.role == "hooks",
                          events_cluster=grant.cluster, private_data=private)
        proxied = caller.mechanism == "proxy"
        # A web proxy's user reads (and an admin changes factors) but never posts events:
        # writes from Slurm stay bound to MUNGE, Slurm's JWT and tokens. Nor is it ever root
        # (api/auth.py refuses uid 0 there): its rights come from Slurm and the settings.
        root = not proxied and (caller.uid == 0 or caller.user == "root")
        service = not proxied and (
            root or (caller.uid is not None and caller.uid == self._slurm_uid)
            or (caller.user is not None and caller.user == self.settings.slurm_user))
        # munged vouches for a uid and a host, not for a cluster: without munge_cluster, root
        # of any host holding the key may post for its nodes under any cluster name. Slurm's
        # JWT key is one cluster's too (jwt_hs256.key): a SlurmUser token from `scontrol
        # token` speaks for that cluster only (jwt_cluster, else munge_cluster).
        cluster = {"munge": self.settings.munge_cluster,
                   "jwt": self.settings.jwt_cluster or self.settings.munge_cluster,
                   }.get(caller.mechanism)
        agent_nodes: frozenset[tuple[str | None, str]] = frozenset()
        if caller.mechanism == "munge" and caller.uid == 0 and caller.host:
            agent_nodes = frozenset((cluster, node) for node in self.nodes_of_host(caller.host))
        accounts: frozenset[str] = frozenset()
        admin = root
        if caller.user is not None and not root:
            level, accounts = self.slurm.of(caller.user)
            admin = (level in ("Administrator", "Operator")
                     or caller.user in self.settings.admins
                     or self._in_admin_group(caller))
        return Access(caller, admin=admin, service=service, agent_nodes=agent_nodes,
                      events_cluster=cluster, visible=Visible(caller.user, caller.uid, accounts),
                      private_data=private)

    def _in_admin_group(self, caller: Caller) -> bool:
        group = self.settings.admin_group
        if not group or caller.user is None:
            return False
        try:
            entry = grp.getgrnam(group)
        except KeyError:
            return False
        return caller.user in entry.gr_mem or (caller.gid is not None
                                               and caller.gid == entry.gr_gid)

    def nodes_of_host(self, addr: str) -> frozenset[str]:
        """Return the nodes whose batches root on host ``addr`` may post.

        ``[server.nodes]`` entries keyed by the address, the host's name or its short name;
        without one, the short hostname itself (one slurmd per host, named after it).
        """
        now = time.monotonic()
        cached = self._hosts.get(addr)
        if cached is not None and now - cached[0] < HOST_TTL_S:
            return cached[1]
        names = {addr}
        try:
            hostname, aliases, _ = socket.gethostbyaddr(addr)
            names |= {hostname, *aliases}
        except OSError:
            pass
        short = {n.split(".")[0] for n in names if not _is_address(n)}
        keys = names | short
        mapped = [node for key in sorted(keys) for node in self.settings.nodes.get(key, [])]
        nodes = frozenset(mapped) if any(k in self.settings.nodes for k in keys) else \
            frozenset(short)
        self._hosts[addr] = (now, nodes)
        return nodes


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _uid_of(user: str) -> int | None:
    import pwd

    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None
