"""The settings' field types for ``log_level`` and ``log_format`` (pydantic).

Apart from ``core/logs.py`` because the agent's daemon imports that and no pydantic
(``agent/settings_child.py``).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator

from jobenergy.core.logs import lower_name

#: Case-insensitive, with a clear message listing the choices (``core.logs.LEVELS``, ``FORMATS``).
LogLevel = Annotated[Literal["debug", "info", "warning", "error", "critical"],
                     BeforeValidator(lower_name)]
LogFormat = Annotated[Literal["auto", "text", "journal", "json"], BeforeValidator(lower_name)]
