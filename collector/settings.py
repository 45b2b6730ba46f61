"""Collector/API server settings (DESIGN.md decision 11).

One pydantic-settings class, environment prefix ``JOBENERGY_SERVER_``. Nothing here is
instantiated at import time: the CLI builds a :class:`ServerSettings` and passes it to
``jobenergy.api.app.create_app``.
"""

from __future__ import annotations

import contextvars
import ipaddress
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from jobenergy.core.carbon import WORLD_AVERAGE_G_PER_KWH
from jobenergy.core.errors import ConfigError, settings_error_line
from jobenergy.core.log_fields import LogFormat, LogLevel

#: Default cap on one request body, compressed and decompressed: 32 MiB.
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
#: Default caps on one series import (``POST /api/v1/clusters/{c}/{factor}/series``): 16 MiB
#: and 200 000 points (22 years of hourly values).
DEFAULT_MAX_SERIES_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_SERIES_POINTS = 200_000

#: Authentication mechanisms ``--auth`` accepts (DESIGN.md, "Security model" in the README).
AUTH_MECHANISMS = ("munge", "jwt", "token", "none")
#: Slurm's PrivateData words this server honours, all on by default: a user reads only their
#: own jobs and usage (and their coordinated accounts'); ``private_data = ""`` opens it up
#: like Slurm's own default.
PRIVATE_DATA_WORDS = ("jobs", "usage", "users", "accounts")
DEFAULT_MUNGE_SOCKET = "/run/munge/munge.socket.2"
#: Widest ``trusted_proxies`` network per IP version: proxies are a few known hosts.
MIN_PROXY_PREFIX = {4: 8, 6: 16}
#: The system config file ``jobenergy server`` reads when present (``--config`` overrides).
DEFAULT_CONFIG_FILE = Path("/etc/jobenergy/server.toml")

_TOML_FILE: contextvars.ContextVar[Path | None] = contextvars.ContextVar(
    "jobenergy_server_toml", default=None)


def _words(value: Any, allowed: tuple[str, ...]) -> tuple[str, ...]:
    """Normalise a comma list (or a list) of words, refusing unknown ones."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    words = tuple(dict.fromkeys(str(w).strip().lower() for w in items if str(w).strip()))
    unknown = [w for w in words if w not in allowed]
    if unknown:
        raise ValueError(f"unknown {', '.join(map(repr, unknown))}; use "
                         f"{', '.join(allowed)}")
    return words


class ServerSettings(BaseSettings):
    """Settings of the central collector + read API.

    Attributes:
        db_url: SQLAlchemy URL. ``sqlite:///path`` (embedded default) or
            ``postgresql+psycopg://user@host/db`` (production; ``postgresql://`` is accepted
            and mapped to psycopg 3).
        host: Address the HTTP server binds to.
        port: TCP port of the HTTP server.
        pue: Power usage effectiveness (>= 1) of clusters without their own. Seeds the
            stored default while the database holds no energy yet; after that the stored
            factors stay whatever this says (a difference is logged at start) and change
            only through ``jobenergy cluster`` (collector/clusters.py: seed_defaults).
        carbon_intensity_g_per_kwh: Grid carbon intensity, g CO2e/kWh, seeded the same way.
            ``None`` means unknown: the world average is used and reported as a fallback.
        migrate: Run the Alembic migrations to head when the app starts.
        log_level: debug, info, warning, error or critical (any case).
        log_format: auto (journal when stderr is the journal, else text), text, journal or
            json (core/logs.py).
        access_log: Log one line per HTTP request (uvicorn's access log; off by default).
        max_body_bytes: Largest accepted request body, checked on the compressed bytes and
            again while decompressing.
        max_series_bytes: Largest series import body (JSON or CSV), checked the same way.
        max_series_points: Most points one series import may hold; a CSV is parsed row by
            row and refused (413) at the first point beyond.
        auth: Accepted authentication mechanisms (``munge``, ``jwt``, ``token``; ``none``
            alone, loopback only). Empty: ``munge`` when munged answers, else the server
            refuses to start (``api/auth.py``).
        munge_socket: munged's socket, for decoding MUNGE credentials.
        jwt_key: Slurm's ``jwt_hs256.key`` (the file slurmrestd and slurmctld use).
        admins: User names with the admin role (besides Slurm's AdminLevel and
            ``admin_group``).
        admin_group: Unix group whose members have the admin role.
        slurm_user: Slurm's SlurmUser: its MUNGE credentials may post job events and read
            every job (``jobenergy slurm sync``), as root's may.
        nodes: ``[server.nodes]``: host (name or address) -> the Slurm nodes its root may post
            batches for. Without an entry, a host may post for its own short hostname.
        munge_cluster: The Slurm cluster whose ``munge.key`` this server's munged holds:
            MUNGE agents (root) and hooks (root, SlurmUser) may post batches and job events
            for this cluster only (403 naming it otherwise). None (the default): for any
            cluster name, so root on any host holding the key may post its nodes' batches
            under another cluster's name. Tokens are bound to their own cluster regardless.
        jwt_cluster: The Slurm cluster whose ``jwt_hs256.key`` is ``jwt_key``: SlurmUser's
            JWTs may post job events for this cluster only. None: ``munge_cluster``.
        private_data: Slurm's PrivateData words this server applies to users' reads.
        sacctmgr: The ``sacctmgr`` command (coordinators and AdminLevel); empty: do not ask.
        slurm_roles_ttl_s: How long coordinators and AdminLevels from sacctmgr are cached.
        rate_limit_per_s: Requests per second one user identity may make (token bucket;
            agents, hooks and admins are not limited); 0 turns it off.
        rate_limit_burst: Bucket size of that limit.
        max_live_aggregates: Live leaderboards and summaries (read every job of their window)
            this server computes at once, and how many more may wait (``api/live_slots.py``);
            a person computes one at a time, with one more waiting (429 beyond).
        live_aggregate_wait_s: How long a live leaderboard or summary waits for a slot before
            it is answered 503 with ``Retry-After``.
        db_pool_size: PostgreSQL connections each server process (each worker) keeps open for
            everything but ingest, and never exceeds; a request beyond waits for one up to
            ``db_pool_timeout_s``, then is answered 503. Kept rather than opened per request:
            with SQLAlchemy's default (5 kept, 10 more opened and closed as needed), 3 rounds
            of 8 concurrent batches opened 13 connections, each a new PostgreSQL backend
            (``tests/api/test_db_pool.py``). Size ``workers × (db_pool_size +
            db_ingest_pool_size)`` (× collectors) within PostgreSQL's ``max_connections``.
            At least 2: the leaderboard roll-up holds two while it runs.
        db_ingest_pool_size: PostgreSQL connections, and worker threads, kept apart for agents'
            batches and the Slurm hooks' job events, on top of ``db_pool_size``: reads never
            take them, so a flood of reads (a user within the rate limit can have 200 in
            flight) cannot hold ingest up until the pool timeout.
        ingest_group_batches: Agents' batches stored in one transaction at most (group
            commit, ``collector/group_commit.py``): batches that arrive while others are
            being stored wait and go in together, one per node. 1: a transaction per batch.
            At most 256: each batch's node is one advisory lock of the transaction, and
            PostgreSQL's lock table is shared (64 × ``max_connections`` entries).
        db_pool_timeout_s: How long a request waits for a free connection before 503. Keep
            it below the agents' request timeout (10 s), so that they get the 503 and its
            ``Retry-After`` instead of giving up and sending the batch again.
        tls_cert: PEM certificate chain; with ``tls_key``, the server speaks HTTPS.
        tls_key: PEM private key of ``tls_cert``.
        allow_insecure: Allow plain HTTP on an address other than loopback.
        read_only: Serve reads only, e.g. from a PostgreSQL streaming replica: nothing is
            written at start (no migration whatever ``migrate`` says, no partitions, no
            default factors; the schema revision is checked) and every request other than
            GET/HEAD/OPTIONS is answered 503 (``api/app.py``).
        rollup_interval_s: How often at most the all-time model leaderboard is recomputed
            while jobs change, and how often the last 24h/7d/30d leaderboards are
            (``collector/rollups.py``; answers say ``as_of``), and how often the details of
            jobs that settled are materialised (``collector/job_details.py``); 0: never (then
            ``jobenergy db maintain`` does). Never on a ``read_only`` server.
        trusted_proxies: Addresses or networks (``10.1.2.3``, ``10.1.0.0/24``) of reverse
            proxies that authenticate web users themselves: a request whose TCP peer is one
            of them may name its user in ``proxy_user_header``. Empty (the default): that
            header is ignored from everyone. A network with host bits set (``10.0.0.6/24``)
            is refused, as is one wider than /8 (IPv4) or /16 (IPv6): it would trust
            strangers. A loopback entry is logged at start (every local process could name
            any user).
        proxy_user_header: The header a trusted proxy names the user in (Apache's
            ``REMOTE_USER`` passed on as ``X-Remote-User``, by default).
        budget_state_file: Where this server keeps the budget state file of the Slurm
            submit script (``slurm_plugins/job_submit.lua``), on a collector that runs on
            the Slurm controller: written atomically (0644) every
            ``budget_state_interval_s``. None (the default): not written here (the
            ``jobenergy budget write-state`` timer does it). Never on a ``read_only`` server.
            The folder must be writable by the server's user (``ReadWritePaths=``).
        budget_state_interval_s: How often that file is rewritten, and how often the usage
            of the budgets enforced on running jobs (``running_policy`` warn|cancel) is
            recomputed for the agents' batch answers (``collector/budget_running.py``): a
            budget is enforced within this plus the agents' push interval.
        budget_state_cluster: Write only this cluster's budgets (None: every cluster's).
        metrics_allow: Addresses or networks that may scrape ``GET /metrics`` (Prometheus;
            no credentials, and it holds no job ids or user names: cluster and node names,
            counts and energy totals). Everyone by default; empty: nobody (403). The peer is
            the TCP peer: behind a load balancer, that balancer.
    """

    model_config = SettingsConfigDict(env_prefix="JOBENERGY_SERVER_", extra="forbid")

    db_url: str = "sqlite:///./jobenergy.db"
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    pue: float = Field(default=1.0, ge=1.0)
    carbon_intensity_g_per_kwh: float | None = Field(default=None, ge=0.0)
    migrate: bool = True
    log_level: LogLevel = "info"
    log_format: LogFormat = "auto"
    access_log: bool = False
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, ge=1024)
    max_series_bytes: int = Field(default=DEFAULT_MAX_SERIES_BYTES, ge=1024)
    max_series_points: int = Field(default=DEFAULT_MAX_SERIES_POINTS, ge=1, le=1_000_000)
    # NoDecode: comma lists in the environment (JOBENERGY_SERVER_AUTH=munge,token), not JSON.
    auth: Annotated[tuple[str, ...], NoDecode] = ()
    munge_socket: str = DEFAULT_MUNGE_SOCKET
    jwt_key: Path | None = None
    admins: Annotated[tuple[str, ...], NoDecode] = ()
    admin_group: str | None = None
    slurm_user: str = "slurm"
    nodes: dict[str, list[str]] = Field(default_factory=dict)
    munge_cluster: str | None = Field(default=None, min_length=1, max_length=255,
                                      pattern=r"^[^\x00/]+$")
    jwt_cluster: str | None = Field(default=None, min_length=1, max_length=255,
                                    pattern=r"^[^\x00/]+$")
    private_data: Annotated[tuple[str, ...], NoDecode] = PRIVATE_DATA_WORDS
    sacctmgr: str = "sacctmgr"
    slurm_roles_ttl_s: float = Field(default=300.0, ge=0)
    rate_limit_per_s: float = Field(default=20.0, ge=0)
    rate_limit_burst: int = Field(default=200, ge=1)
    max_live_aggregates: int = Field(default=4, ge=1, le=1000)
    live_aggregate_wait_s: float = Field(default=10.0, ge=0, le=3600)
    db_pool_size: int = Field(default=15, ge=2, le=1000)
    db_ingest_pool_size: int = Field(default=4, ge=1, le=1000)
    ingest_group_batches: int = Field(default=64, ge=1, le=256)
    db_pool_timeout_s: float = Field(default=5.0, gt=0, le=3600)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    allow_insecure: bool = False
    read_only: bool = False
    rollup_interval_s: float = Field(default=300.0, ge=0)
    trusted_proxies: Annotated[tuple[str, ...], NoDecode] = ()
    proxy_user_header: str = Field(default="X-Remote-User", pattern=r"^[A-Za-z0-9-]{1,64}$")
    metrics_allow: Annotated[tuple[str, ...], NoDecode] = ("0.0.0.0/0", "::/0")
    budget_state_file: Path | None = None
    budget_state_interval_s: float = Field(default=60.0, gt=0)
    budget_state_cluster: str | None = Field(default=None, min_length=1, max_length=255,
                                             pattern=r"^[^\x00/]+$")

    @field_validator("db_url")
    @classmethod
    def _db_url(cls, value: str) -> str:
        # A malformed URL or an unknown dialect is a settings error, said before anything
        # starts; the messages never hold the URL (it may hold a password).
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        from jobenergy.collector.db import normalise_url

        try:
            make_url(normalise_url(value)).get_dialect()
        except ArgumentError as err:  # NoSuchModuleError is one
            raise ValueError(f"unusable database URL: {err}") from None
        return value

    @field_validator("auth", mode="before")
    @classmethod
    def _auth(cls, value: Any) -> tuple[str, ...]:
        words = _words(value, AUTH_MECHANISMS)
        if "none" in words and len(words) > 1:
            raise ValueError("'none' cannot be combined with other mechanisms")
        return words

    @field_validator("private_data", mode="before")
    @classmethod
    def _private_data(cls, value: Any) -> tuple[str, ...]:
        return _words(value, PRIVATE_DATA_WORDS)

    @field_validator("admins", mode="before")
    @classmethod
    def _admins(cls, value: Any) -> tuple[str, ...]:
        if value is None:
            return ()
        items = value.split(",") if isinstance(value, str) else list(value)
        return tuple(str(v).strip() for v in items if str(v).strip())

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _trusted_proxies(cls, value: Any) -> tuple[str, ...]:
        if value is None:
            return ()
        items = value.split(",") if isinstance(value, str) else list(value)
        networks = []
        for item in (str(v).strip() for v in items):
            if not item:
                continue
            try:
                network = ipaddress.ip_network(item, strict=False)
            except ValueError as err:
                raise ValueError(f"trusted proxy {item!r} is not an address or network "
                                 "(10.1.2.3, 10.1.0.0/24, fd00::/64)") from err
            address = ipaddress.ip_address(item.partition("/")[0])
            if address != network.network_address:
                # 10.0.0.6/0 is a typo for 10.0.0.6, not a wish to trust everyone.
                raise ValueError(f"trusted proxy {item!r} has host bits set: give the proxy's "
                                 f"address alone ({address}) or a network by its first address")
            widest = MIN_PROXY_PREFIX[network.version]
            if network.prefixlen < widest:
                raise ValueError(f"trusted proxy {item!r} is wider than /{widest}: every "
                                 "address in it could name any user; list the proxies")
            networks.append(str(network))
        return tuple(networks)

    @field_validator("metrics_allow", mode="before")
    @classmethod
    def _metrics_allow(cls, value: Any) -> tuple[str, ...]:
        if value is None:
            return ()
        items = value.split(",") if isinstance(value, str) else list(value)
        networks = []
        for item in (str(v).strip() for v in items):
            if item:
                try:
                    networks.append(str(ipaddress.ip_network(item, strict=False)))
                except ValueError as err:
                    raise ValueError(f"metrics_allow {item!r} is not an address or network "
                                     "(10.1.2.3, 10.1.0.0/24, fd00::/64)") from err
        return tuple(networks)

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """CLI (init) > ``JOBENERGY_SERVER_*`` > the TOML file's ``[server]`` > defaults."""
        toml_file = _TOML_FILE.get()
        if toml_file is None:
            return (init_settings, env_settings)
        return (init_settings, env_settings,
                TomlConfigSettingsSource(settings_cls, toml_file, toml_table_header=("server",)))

    @classmethod
    def load(cls, config_file: Path | None = None, **overrides: Any) -> ServerSettings:
        """Build settings from overrides (the CLI), the environment and a TOML ``[server]``.

        Raises:
            ConfigError: The file is unreadable or invalid, or a value is.
        """
        if config_file is not None:
            try:
                config_file.read_bytes()
            except OSError as err:
                raise ConfigError(f"cannot read server config {config_file}: "
                                  f"{err.strerror}") from err
        token = _TOML_FILE.set(config_file)
        try:
            return cls(**{k: v for k, v in overrides.items() if v is not None})
        except ValidationError as err:
            raise ConfigError(f"invalid server settings: {settings_error_line(err)}") from err
        except KeyError as err:
            raise ConfigError(f"server config {config_file} has no [server] table") from err
        except (ValueError, SettingsError) as err:  # bad TOML
            raise ConfigError(f"server config {config_file}: {err}") from err
        finally:
            _TOML_FILE.reset(token)

    @property
    def tls(self) -> bool:
        """Return True when the server speaks HTTPS."""
        return self.tls_cert is not None and self.tls_key is not None

    @property
    def effective_carbon_intensity_g_per_kwh(self) -> float:
        """Return the configured intensity, or the world average when none is configured."""
        if self.carbon_intensity_g_per_kwh is None:
            return WORLD_AVERAGE_G_PER_KWH
        return self.carbon_intensity_g_per_kwh

    @property
    def carbon_intensity_fallback(self) -> bool:
        """Return True when the world-average fallback is in use."""
        return self.carbon_intensity_g_per_kwh is None
