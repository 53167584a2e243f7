"""The config's closed sets of words. StrEnums: a TOML string and JSON round-trip as they are."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal


class Driver(StrEnum):
    """How coolctl talks to a device."""

    MODBUS = "modbus"
    MQTT = "mqtt"
    REDFISH = "redfish"
    SNMP = "snmp"


class DeviceKind(StrEnum):
    """What a Redfish service is: a server's BMC, a CDU or a PDU."""

    SERVER = "server"
    CDU = "cdu"
    PDU = "pdu"

    @property
    def literal(self) -> Literal["server", "cdu", "pdu"]:
        """The kind as the Redfish driver and simulators spell it."""
        return self.value


class SnmpVersion(StrEnum):
    """`2c`: a community; `3`: a user with authentication and privacy (authPriv)."""

    V2C = "2c"
    V3 = "3"


class SnmpAuthProtocol(StrEnum):
    SHA = "sha"
    SHA224 = "sha224"
    SHA256 = "sha256"
    SHA384 = "sha384"
    SHA512 = "sha512"


class SnmpPrivProtocol(StrEnum):
    AES = "aes"
    AES192 = "aes192"
    AES256 = "aes256"


class Feed(StrEnum):
    """Which of a rack's two power feeds a PDU (and the branches on it) belongs to."""

    A = "a"
    B = "b"


class Auth(StrEnum):
    """How coolctl signs in to a Redfish service."""

    SESSION = "session"
    BASIC = "basic"
    NONE = "none"

    @property
    def literal(self) -> Literal["session", "basic", "none"]:
        """The scheme as the Redfish driver spells it."""
        return self.value


class Controller(StrEnum):
    """`pid`: the loops as configured; `mpc`: the MPC drives pump and valve, the loops are its
    fallback, and it may lower the caps' budget."""

    PID = "pid"
    MPC = "mpc"


class CduControl(StrEnum):
    """`direct`: coolctl's loops drive the CDU's pump and valve; `setpoints`: the CDU runs its
    own loops and coolctl writes their setpoints, run command and mode."""

    DIRECT = "direct"
    SETPOINTS = "setpoints"


class Action(StrEnum):
    """`reverse`: too low → more output; `direct`: too high → more output."""

    REVERSE = "reverse"
    DIRECT = "direct"


class LeakResponse(StrEnum):
    """What the supervisor does to the pump on a leak."""

    STOP = "stop"
    SAFE_SPEED = "safe_speed"


class LogFormat(StrEnum):
    """`journal`: text with `<N>` priority prefixes for systemd-journald."""

    TEXT = "text"
    JSON = "json"
    JOURNAL = "journal"


class LogLevel(StrEnum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"
