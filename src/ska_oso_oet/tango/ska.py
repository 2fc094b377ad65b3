"""The few SKA control-model conventions the OET device needs, with ska-control-model's names
and values (that package and ska-tango-base are not on the registries we reach).

:class:`SKADevice` gives a device ``adminMode``, ``healthState``, ``versionId``,
``buildState`` and ``loggingLevel`` as SKABaseDevice does, so that moving to the real base
class later means deleting this module and changing one base class.
"""

from __future__ import annotations

import enum
import logging
import platform

import tango
from tango import AttrWriteType
from tango.server import Device, attribute

import ska_oso_oet


class AdminMode(enum.IntEnum):
    ONLINE = 0
    OFFLINE = 1
    ENGINEERING = 2
    NOT_FITTED = 3
    RESERVED = 4


class HealthState(enum.IntEnum):
    OK = 0
    DEGRADED = 1
    FAILED = 2
    UNKNOWN = 3


class LoggingLevel(enum.IntEnum):
    OFF = 0
    FATAL = 1
    ERROR = 2
    WARNING = 3
    INFO = 4
    DEBUG = 5


PYTHON_LEVELS = {
    LoggingLevel.OFF: logging.CRITICAL + 10,
    LoggingLevel.FATAL: logging.CRITICAL,
    LoggingLevel.ERROR: logging.ERROR,
    LoggingLevel.WARNING: logging.WARNING,
    LoggingLevel.INFO: logging.INFO,
    LoggingLevel.DEBUG: logging.DEBUG,
}

#: Admin modes in which the device accepts work (ska-tango-base: ONLINE and ENGINEERING).
ACCEPTING_MODES = frozenset({AdminMode.ONLINE, AdminMode.ENGINEERING})


def build_state() -> str:
    return (
        f"ska-oso-oet-tango {ska_oso_oet.__version__}, Python {platform.python_version()}, "
        f"pytango {tango.__version__}"
    )


class SKADevice(Device):
    """A Tango Device with adminMode, healthState, versionId, buildState and loggingLevel.

    The device calls :meth:`init_ska` from ``init_device`` and implements
    :meth:`admin_mode_changed`. Its logger is the ``ska_oso_oet`` package logger.
    """

    _admin_mode = AdminMode.ONLINE
    _health_state = HealthState.OK
    _logging_level = LoggingLevel.INFO

    def init_ska(self) -> None:
        for name in ("adminMode", "healthState"):
            self.set_change_event(name, True, False)
            self.set_archive_event(name, True, False)
        self._apply_logging_level(self._logging_level)

    def admin_mode_changed(self, mode: AdminMode) -> None:  # pragma: no cover - overridden
        pass

    @attribute(
        dtype=AdminMode,
        access=AttrWriteType.READ_WRITE,
        memorized=True,
        hw_memorized=True,
        doc="SKA admin mode. OFFLINE disables the device: it then refuses Prepare and Start.",
    )
    def adminMode(self) -> AdminMode:
        return self._admin_mode

    @adminMode.write  # type: ignore[no-redef]
    def adminMode(self, value: int) -> None:
        mode = AdminMode(value)
        self._admin_mode = mode
        self.push_change_event("adminMode", mode)
        self.push_archive_event("adminMode", mode)
        self.admin_mode_changed(mode)

    @attribute(dtype=HealthState, doc="SKA health state of the device")
    def healthState(self) -> HealthState:
        return self._health_state

    def set_health(self, health: HealthState) -> None:
        if health != self._health_state:
            self._health_state = health
            self.push_change_event("healthState", health)
            self.push_archive_event("healthState", health)

    @attribute(dtype=str, doc="Version of the device software")
    def versionId(self) -> str:
        return ska_oso_oet.__version__

    @attribute(dtype=str, doc="Build state: package, Python and pytango versions")
    def buildState(self) -> str:
        return build_state()

    @attribute(
        dtype=LoggingLevel,
        access=AttrWriteType.READ_WRITE,
        doc="Logging level of the device and the procedure service",
    )
    def loggingLevel(self) -> LoggingLevel:
        return self._logging_level

    @loggingLevel.write  # type: ignore[no-redef]
    def loggingLevel(self, value: int) -> None:
        self._apply_logging_level(LoggingLevel(value))

    def _apply_logging_level(self, level: LoggingLevel) -> None:
        self._logging_level = level
        logging.getLogger("ska_oso_oet").setLevel(PYTHON_LEVELS[level])
