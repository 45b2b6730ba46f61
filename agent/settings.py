"""Agent settings: CLI > environment (``JOBENERGY_AGENT_<KEY>``) > TOML ``[agent]`` > defaults."""

from __future__ import annotations

import re
import socket
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from jobenergy.core.errors import ConfigError, settings_error_line
from jobenergy.core.log_fields import LogFormat, LogLevel


class _TomlTableSource(PydanticBaseSettingsSource):
    """The ``[agent]`` table of a TOML file as a settings source."""

    def __init__(self, settings_cls: type[BaseSettings], values: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._values = values

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._values)


#: 4 MiB: an eighth of the collector's default body limit (collector/settings.py).
DEFAULT_MAX_BATCH_BYTES = 4 * 1024 * 1024

_NODE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
#: Signals a job may be warned with (scancel --signal names).
_WARN_SIGNALS = ("USR1", "USR2", "HUP", "INT", "TERM", "CONT", "URG", "ALRM")


class AgentSettings(BaseSettings):
    """Settings of the node agent (``jobenergy agent --config FILE.toml``).

    The per-node paths default from the node name, so several agents on one host (one per
    slurmd, ``slurmd -N <node>``: multiple-slurmd, front ends, test rigs) never share a spool,
    a job map or an annotation socket:

    * ``spool_dir``         ``/var/spool/jobenergy/agent/<node>``
    * ``gpu_map_dir``       ``/run/jobenergy/gpus/<node>`` (the hooks' default too)
    * ``limit_dir``         ``/run/jobenergy/limits/<node>`` (the hooks' default too)
    * ``annotation_socket`` ``/run/jobenergy/<node>/agent.sock`` (``jobenergy.client``
      finds it from ``$SLURMD_NODENAME``, which Slurm sets in every job)

    ``metrics_port`` has no default (off); give each agent of a host its own.
    """

    model_config = SettingsConfigDict(env_prefix="JOBENERGY_AGENT_", extra="forbid")

    collector_url: str = "http://127.0.0.1:8080"
    cluster: str = "default"
    node: str = Field(default_factory=lambda: socket.gethostname().split(".")[0])
    interval_s: float = Field(default=1.0, gt=0, le=3600)
    # Consecutive sampled intervals are merged, exactly, into stored intervals of up to this
    # long before they are spooled (agent/coalesce.py): the collector stores one row per
    # source and job per stored interval. At least interval_s (equal: nothing is merged);
    # when unset and interval_s is longer, interval_s.
    store_interval_s: float = Field(default=10.0, gt=0, le=3600)
    push_interval_s: float = Field(default=10.0, gt=0, le=86400)
    spool_dir: Path | None = None  # per node: see the class docstring
    spool_max_bytes: int = Field(default=256 * 1024 * 1024, gt=0)
    sysfs_root: Path = Path("/sys")
    procfs_root: Path = Path("/proc")
    cgroup_root: Path = Path("/sys/fs/cgroup")
    nvml: Literal["auto", "off"] = "auto"
    gpu_map_dir: Path | None = None  # per node
    # Static (idle-floor) power per RAPL source for the shared-node split; learned when unset.
    cpu_static_power_w: float | None = Field(default=None, ge=0)
    dram_static_power_w: float | None = Field(default=None, ge=0)
    # Idle power per GPU, for the intervals a job starts or ends in; learned when unset.
    gpu_static_power_w: float | None = Field(default=None, ge=0)
    # Unix socket for in-job phase annotations (jobenergy.client); empty string disables it.
    annotation_socket: str | None = None  # per node
    # Prometheus /metrics of the agent's own health; "0.0.0.0" to let a central Prometheus in.
    metrics_addr: str = "127.0.0.1"
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    max_intervals_per_batch: int = Field(default=3600, gt=0, le=10_000)
    # Largest batch body, bytes of JSON before gzip (so the gzip body is smaller still):
    # intervals are spread over several batches below it. Keep it under the collector's
    # max_body_bytes (32 MiB by default), which it checks compressed and decompressed.
    max_batch_bytes: int = Field(default=DEFAULT_MAX_BATCH_BYTES, ge=4096, le=1 << 30)
    # How the agent proves it speaks for its node (README "Security model"): a MUNGE
    # credential made at push time (root on a host the server maps to this node), a static
    # token (jobenergy auth token --node N) in a 0600 file, or none (a loopback test rig).
    auth: Literal["munge", "token", "none"] = "munge"
    munge_socket: str = "/run/munge/munge.socket.2"
    token_file: Path | None = None
    # CA bundle to verify an https:// collector with (else the system store).
    ca_file: Path | None = None
    # Plain http:// to a collector that is not on loopback carries the token in clear.
    allow_insecure: bool = False
    # Per-job energy limits (--energy-limit, agent/energy_limits.py): what was done per job,
    # read by the node epilog; the signal at limit_warn_fraction of the limit; at 100 %:
    # cancel (scancel --signal=TERM --full, then scancel) or warn (the signal again).
    limit_dir: Path | None = None  # per node
    scancel_path: str = "/usr/bin/scancel"
    limit_policy: Literal["cancel", "warn"] = "cancel"
    limit_warn_fraction: float = Field(default=0.9, gt=0, le=1)
    limit_warn_signal: str = "USR1"
    # debug, info, warning, error, critical; auto (journal when stderr is the journal, else
    # text), text, journal or json (core/logs.py).
    log_level: LogLevel = "info"
    log_format: LogFormat = "auto"
    # The node's wall power from its BMC (agent/reconcile.py): off, redfish (bmc_url
    # https://host[:port]) or ipmi (bmc_url lanplus://host[:port], lan://host[:port] or
    # open:// for the in-band driver). Credentials: bmc_credentials_file holds one line
    # "user:password", mode 0600; they never go on a command line or into a log.
    bmc: Literal["off", "redfish", "ipmi"] = "off"
    bmc_url: str | None = None
    bmc_credentials_file: Path | None = None
    bmc_ca_file: Path | None = None  # CA bundle to verify an https:// BMC with
    bmc_interval_s: float = Field(default=5.0, ge=0.5, le=3600)
    bmc_timeout_s: float = Field(default=2.0, gt=0, le=60)
    bmc_chassis: str | None = None  # Redfish chassis id; the first member when unset
    bmc_ipmi_cipher_suite: int = Field(default=17, ge=0, le=255)
    # How the BMC's energy beyond cpu + dram + gpu ("other") is split over jobs: by their
    # measured energy in the window, or by allocated CPUs x time.
    bmc_other_policy: Literal["measured", "allocated"] = "measured"

    @field_validator("node")
    @classmethod
    def _node_name(cls, value: str) -> str:
        # The name becomes a path component of the per-node defaults and a wire key.
        if not _NODE_RE.fullmatch(value):
            raise ValueError(
                f"node {value[:80]!r}: use a Slurm node name (letters, digits, '_', '-', '.')"
            )
        return value

    @field_validator("limit_warn_signal")
    @classmethod
    def _signal_name(cls, value: str) -> str:
        # Goes to scancel --signal: a name Slurm knows, never text of the config's choosing.
        name = value.upper().removeprefix("SIG")
        if name not in _WARN_SIGNALS:
            raise ValueError(f"limit_warn_signal {value[:40]!r}: use one of "
                             f"{', '.join(_WARN_SIGNALS)}")
        return name

    @field_validator("scancel_path")
    @classmethod
    def _absolute_scancel(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"scancel_path {value[:80]!r}: give an absolute path (the agent "
                             "runs as root: no PATH lookup)")
        return value

    @model_validator(mode="after")
    def _store_interval(self) -> AgentSettings:
        if self.store_interval_s < self.interval_s:
            if "store_interval_s" in self.model_fields_set:
                raise ValueError(
                    f"store_interval_s ({self.store_interval_s}) must be at least interval_s "
                    f"({self.interval_s})"
                )
            self.store_interval_s = self.interval_s  # an older config sampling slowly
        return self

    @model_validator(mode="after")
    def _bmc_needs(self) -> AgentSettings:
        if self.bmc != "off" and not self.bmc_url:
            raise ValueError(f"bmc = \"{self.bmc}\" needs bmc_url")
        return self

    @model_validator(mode="after")
    def _auth_needs(self) -> AgentSettings:
        if self.auth == "token" and self.token_file is None:
            raise ValueError("auth = \"token\" needs token_file")
        return self

    @model_validator(mode="after")
    def _per_node_defaults(self) -> AgentSettings:
        if self.spool_dir is None:
            self.spool_dir = Path("/var/spool/jobenergy/agent") / self.node
        if self.gpu_map_dir is None:
            self.gpu_map_dir = Path("/run/jobenergy/gpus") / self.node
        if self.annotation_socket is None:
            self.annotation_socket = default_socket(self.node)
        if self.limit_dir is None:
            self.limit_dir = Path("/run/jobenergy/limits") / self.node
        return self

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ):
        toml_values = _TOML_VALUES.get(settings_cls, {})
        return (init_settings, env_settings, _TomlTableSource(settings_cls, toml_values))

    @classmethod
    def load(cls, config_file: str | Path | None = None, **overrides: Any) -> AgentSettings:
        """Build settings from a TOML file's ``[agent]`` table, the environment and overrides.

        Raises:
            ConfigError: The file is missing or invalid, or a value is out of range.
        """
        values: dict[str, Any] = {}
        if config_file is not None:
            path = Path(config_file)
            try:
                data = tomllib.loads(path.read_text())
            except OSError as err:
                raise ConfigError(f"cannot read agent config {path}: {err.strerror}") from err
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
                raise ConfigError(f"agent config {path} is not valid TOML: {err}") from err
            table = data.get("agent")
            if not isinstance(table, dict):
                raise ConfigError(f"agent config {path} has no [agent] table")
            values = table
        _TOML_VALUES[cls] = values
        try:
            return cls(**{k: v for k, v in overrides.items() if v is not None})
        except ValidationError as err:
            raise ConfigError(f"invalid agent settings: {settings_error_line(err)}") from err
        finally:
            _TOML_VALUES.pop(cls, None)


_TOML_VALUES: dict[type, dict[str, Any]] = {}

def default_socket(node: str) -> str:
    """Return the default annotation socket of the agent of ``node``."""
    return f"/run/jobenergy/{node}/agent.sock"

