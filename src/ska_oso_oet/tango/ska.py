"""The few SKA control-model conventions the OET device needs, with ska-control-model's names
and values (that package and ska-tango-base are not on the registries we reach).

:class:`SKADevice` gives a device ``adminMode``, ``healthState``, ``versionId``,
``buildState`` and ``loggingLevel`` as SKABaseDevice does, so that moving to the real base
class later means deleting this module and changing one base class.
"""

from __future__ import annotations

import enum
import logging
import logging.handlers
import platform
import sys
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlparse

import tango
from tango import AttrWriteType
from tango.server import Device, attribute, device_property

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

#: SKA's logging level -> the level of the device's Tango logger (the Tango Logging Service).
TANGO_LEVELS = {
    LoggingLevel.OFF: tango.LogLevel.LOG_OFF,
    LoggingLevel.FATAL: tango.LogLevel.LOG_FATAL,
    LoggingLevel.ERROR: tango.LogLevel.LOG_ERROR,
    LoggingLevel.WARNING: tango.LogLevel.LOG_WARN,
    LoggingLevel.INFO: tango.LogLevel.LOG_INFO,
    LoggingLevel.DEBUG: tango.LogLevel.LOG_DEBUG,
}

#: Python's level -> the Tango Logging Service's (log4tango) method of a device's logger.
_TANGO_LOG_METHODS = (
    (logging.CRITICAL, "fatal"),
    (logging.ERROR, "error"),
    (logging.WARNING, "warn"),
    (logging.INFO, "info"),
    (logging.DEBUG, "debug"),
)

#: Seconds a syslog::tcp:// target may take to accept the connection when it is set.
SYSLOG_CONNECT_TIMEOUT = 2.0

#: SKA's bound on loggingTargets, and its default (the Tango Logging Service).
MAX_LOGGING_TARGETS = 4
DEFAULT_LOGGING_TARGETS = ("tango::logger",)
LOGGING_TARGET_HELP = (
    "a logging target is kind::name, kind one of console (console::cout), file "
    "(file::/abs/path.log), syslog (syslog::udp://host:514 or syslog::file:///dev/log), "
    "device (device::<name of a Tango log consumer device>) or tango (tango::logger: the "
    "device's Tango Logging Service)"
)
#: SKA's log line: time, level, thread, function, file#line, message, split by "|".
LOG_FORMAT = (
    "%(asctime)s|%(levelname)s|%(threadName)s|%(funcName)s|%(filename)s#%(lineno)d|%(message)s"
)


TANGO_LOG_FORMAT = "%(threadName)s|%(funcName)s|%(filename)s#%(lineno)d|%(message)s"


def parse_logging_target(text: str) -> tuple[str, str]:
    """``"kind::name"`` -> ``(kind, name)``, as SKA's base device reads loggingTargets.

    A bare kind takes its default name (``console`` -> ``cout``, ``tango`` -> ``logger``).
    ValueError, saying what a target looks like, for anything else.
    """
    kind, sep, name = text.strip().partition("::")
    kind = kind.lower()
    if not sep:
        name = {"console": "cout", "tango": "logger"}.get(kind, "")
    if kind == "console" and name not in ("cout", ""):
        raise ValueError(f"{text!r}: the console target is console::cout; {LOGGING_TARGET_HELP}")
    if kind == "console":
        name = "cout"
    if kind == "tango" and name != "logger":
        raise ValueError(f"{text!r}: the Tango target is tango::logger; {LOGGING_TARGET_HELP}")
    if kind not in ("console", "file", "syslog", "device", "tango") or not name:
        raise ValueError(f"{text!r} is not a logging target: {LOGGING_TARGET_HELP}")
    if kind == "file" and not name.startswith("/"):
        raise ValueError(f"{text!r}: a file target needs an absolute path: file::/tmp/oet.log")
    if kind == "syslog":
        url = urlparse(name)
        if url.scheme not in ("udp", "tcp", "file") or (url.scheme != "file" and not url.hostname):
            raise ValueError(
                f"{text!r}: a syslog target is syslog::udp://host:514, syslog::tcp://host:601 "
                "or syslog::file:///dev/log"
            )
    return kind, name


class TangoLogHandler(logging.Handler):
    """Hands Python log records to a device's Tango logger (the Tango Logging Service), which
    sends them on to the device's Tango targets (``device::`` log consumers)."""

    def __init__(self, device: Device) -> None:
        super().__init__()
        self._device: Device | None = device

    def detach(self) -> None:
        """Hand the device nothing more (it is being deleted): a record logged from another
        thread must not reach a Tango logger that is going away. Waits for one in flight."""
        self.acquire()  # handle() holds the handler's lock around emit()
        try:
            self._device = None
        finally:
            self.release()

    def emit(self, record: logging.LogRecord) -> None:
        device = self._device
        if device is None:
            return
        try:
            message = self.format(record)
            logger = device.get_logger()
            method = next(
                (m for level, m in _TANGO_LOG_METHODS if record.levelno >= level), "debug"
            )
            getattr(logger, method)(message)
        except Exception:  # a logging target never breaks the code that logs
            self.handleError(record)


def make_handler(kind: str, name: str, device: Device) -> logging.Handler | None:
    """The Python handler of one target (None for ``device::``, which Tango itself serves)."""
    handler: logging.Handler
    if kind == "console":
        handler = logging.StreamHandler(sys.stdout)
    elif kind == "file":
        handler = logging.handlers.RotatingFileHandler(name, maxBytes=1024 * 1024, backupCount=1)
    elif kind == "syslog":
        url = urlparse(name)
        if url.scheme == "file":
            handler = logging.handlers.SysLogHandler(address=url.path)
        else:
            import socket

            address = (url.hostname or "127.0.0.1", url.port or 514)
            if url.scheme == "tcp":  # a host that does not answer must not hold the device
                socket.create_connection(address, timeout=SYSLOG_CONNECT_TIMEOUT).close()
            handler = logging.handlers.SysLogHandler(
                address=address,
                socktype=socket.SOCK_STREAM if url.scheme == "tcp" else socket.SOCK_DGRAM,
            )
    elif kind == "tango":
        handler = TangoLogHandler(device)
    else:
        return None
    # the Tango Logging Service stamps time, level and device itself
    handler.setFormatter(logging.Formatter(TANGO_LOG_FORMAT if kind == "tango" else LOG_FORMAT))
    return handler


#: Admin modes in which the device accepts work (ska-tango-base: ONLINE and ENGINEERING).
ACCEPTING_MODES = frozenset({AdminMode.ONLINE, AdminMode.ENGINEERING})


def build_state() -> str:
    return (
        f"ska-oso-oet-tango {ska_oso_oet.__version__}, Python {platform.python_version()}, "
        f"pytango {tango.__version__}"
    )


class SKADevice(Device):
    """A Tango Device with adminMode, healthState, versionId, buildState, loggingLevel and
    loggingTargets.

    The device calls :meth:`init_ska` from ``init_device`` and implements
    :meth:`admin_mode_changed`. Its logger is the ``ska_oso_oet`` package logger.
    """

    _admin_mode = AdminMode.ONLINE
    _health_state = HealthState.OK
    _logging_level = LoggingLevel.INFO

    LoggingTargetsDefault = device_property(
        dtype=(str,),
        default_value=list(DEFAULT_LOGGING_TARGETS),
        doc=f"Start value of loggingTargets (at most {MAX_LOGGING_TARGETS}); "
        + LOGGING_TARGET_HELP,
    )
    LoggingLevelDefault = device_property(
        dtype=int,
        default_value=int(LoggingLevel.INFO),
        doc="Start value of loggingLevel: 0 OFF, 1 FATAL, 2 ERROR, 3 WARNING, 4 INFO, 5 DEBUG",
    )

    def init_ska(self) -> None:
        for name in ("adminMode", "healthState", "loggingLevel", "loggingTargets"):
            self.set_change_event(name, True, False)
            self.set_archive_event(name, True, False)
        self._handlers: dict[str, logging.Handler] = {}
        self._tango_targets: list[str] = []
        self._logging_targets: list[str] = []
        try:
            level = LoggingLevel(self.LoggingLevelDefault)
        except ValueError:
            level = LoggingLevel.INFO
        self._apply_logging_level(level)
        try:
            self._apply_logging_targets(self.LoggingTargetsDefault)
        except ValueError as exc:
            logging.getLogger("ska_oso_oet").error("LoggingTargetsDefault ignored: %s", exc)
        # a read-write attribute's set point says what is in force, so that a panel's Apply
        # writes back what it shows (adminMode's comes from the database: it is memorized)
        self.set_write_value("loggingLevel", int(self._logging_level))
        self.set_write_value("loggingTargets", list(self._logging_targets))

    def set_write_value(self, name: str, value: object) -> None:
        """Set the set point (``w_value``) of read-write attribute ``name``."""
        self.get_device_attr().get_w_attr_by_name(name).set_write_value(value)

    def delete_ska(self) -> None:
        """Take this device's logging handlers off the package logger (Init, shutdown)."""
        self._set_handlers({}, [])

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
        self._push_both("adminMode", mode)
        self.admin_mode_changed(mode)

    @attribute(dtype=HealthState, doc="SKA health state of the device")
    def healthState(self) -> HealthState:
        return self._health_state

    def _push_both(self, name: str, value: Any) -> None:
        """A change event of attribute ``name``, then an archive event, both of ``value``."""
        self.push_change_event(name, value)
        self.push_archive_event(name, value)

    def set_health(self, health: HealthState) -> None:
        if health != self._health_state:
            self._health_state = health
            self._push_both("healthState", health)

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
        self._push_both("loggingLevel", self._logging_level)

    def _apply_logging_level(self, level: LoggingLevel) -> None:
        self._logging_level = level
        logging.getLogger("ska_oso_oet").setLevel(PYTHON_LEVELS[level])
        self.get_logger().set_level(TANGO_LEVELS[level])

    @attribute(
        dtype=(str,),
        max_dim_x=MAX_LOGGING_TARGETS,
        access=AttrWriteType.READ_WRITE,
        doc=f"Where the device's log records go, at loggingLevel; {LOGGING_TARGET_HELP}. Its "
        "start value is the device property LoggingTargetsDefault",
    )
    def loggingTargets(self) -> list[str]:
        return list(self._logging_targets)

    @loggingTargets.write  # type: ignore[no-redef]
    def loggingTargets(self, value: Sequence[str]) -> None:
        try:
            self._apply_logging_targets(value)
        except ValueError as exc:
            tango.Except.throw_exception(
                "OET_InvalidRequest", str(exc), "ObservationExecutionTool.loggingTargets"
            )
        self._push_both("loggingTargets", list(self._logging_targets))

    def _apply_logging_targets(self, targets: Sequence[str] | None) -> None:
        """Replace the logging targets; ValueError (nothing changed) for a bad one."""
        wanted = [t for t in (targets or []) if t.strip()]
        if len(wanted) > MAX_LOGGING_TARGETS:
            raise ValueError(f"at most {MAX_LOGGING_TARGETS} logging targets, not {len(wanted)}")
        parsed = [parse_logging_target(t) for t in wanted]
        names = [f"{kind}::{name}" for kind, name in parsed]
        handlers = {key: handler for key, handler in self._handlers.items() if key in names}
        made: list[logging.Handler] = []
        try:
            for (kind, name), key in zip(parsed, names, strict=True):
                if key not in handlers:
                    try:
                        handler = make_handler(kind, name, self)
                    except OSError as exc:
                        raise ValueError(f"{key}: {exc}") from exc
                    if handler is not None:
                        handlers[key] = handler
                        made.append(handler)
            tango_targets = [key for key in names if key.startswith("device::")]
            self._add_tango_targets([t for t in tango_targets if t not in self._tango_targets])
        except ValueError:
            for handler in made:  # nothing changed: what was opened for it is closed
                handler.close()
            raise
        if tango_targets and "tango::logger" not in handlers:
            # records reach a log consumer device through the Tango Logging Service
            handlers["tango::logger"] = make_handler("tango", "logger", self)  # type: ignore[assignment]
        self._set_handlers(handlers, tango_targets)
        self._logging_targets = names

    def _set_handlers(
        self, handlers: dict[str, logging.Handler], tango_targets: list[str]
    ) -> None:
        logger = logging.getLogger("ska_oso_oet")
        for key, handler in self._handlers.items():
            if handlers.get(key) is not handler:
                logger.removeHandler(handler)
                if isinstance(handler, TangoLogHandler):
                    handler.detach()
                handler.close()
        for handler in handlers.values():
            if handler not in logger.handlers:
                logger.addHandler(handler)
        self._handlers = handlers
        me = self.get_name()
        for target in self._tango_targets:
            if target not in tango_targets:
                tango.Logging.remove_logging_target([me, target])
        self._tango_targets = list(tango_targets)

    def _add_tango_targets(self, targets: list[str]) -> None:
        """Give the device's Tango logger these ``device::`` targets; ValueError (none added)
        when Tango cannot reach one."""
        me = self.get_name()
        added: list[str] = []
        for target in targets:
            try:
                tango.Logging.add_logging_target([me, target])
            except tango.DevFailed as exc:
                for done in added:
                    tango.Logging.remove_logging_target([me, done])
                raise ValueError(
                    f"{target}: {exc.args[0].desc} (a device target names a running Tango "
                    "log consumer device, which has a Log command)"
                ) from None
            added.append(target)
