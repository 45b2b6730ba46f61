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
from jobenergy.core.logs import LogFormat, LogLevel


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


class AgentSettings(BaseSettings):
    """Settings of the node agent (``jobenergy agent --config FILE.toml``).

    The per-node paths default from the node name, so several agents on one host (one per
    slurmd, ``slurmd -N <node>``: multiple-slurmd, front ends, test rigs) never share a spool,
    a job map or an annotation socket:

    * ``spool_dir``         ``/var/spool/jobenergy/agent/<node>``
    * ``gpu_map_dir``       ``/run/jobenergy/gpus/<node>`` (the hooks' default too)
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
    # debug, info, warning, error, critical; auto (journal when stderr is the journal, else
    # text), text, journal or json (core/logs.py).
    log_level: LogLevel = "info"
    log_format: LogFormat = "auto"

    @field_validator("node")
    @classmethod
    def _node_name(cls, value: str) -> str:
        # The name becomes a path component of the per-node defaults and a wire key.
        if not _NODE_RE.fullmatch(value):
            raise ValueError(
                f"node {value[:80]!r}: use a Slurm node name (letters, digits, '_', '-', '.')"
            )
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

