"""The daemon's configuration: one TOML file, site → racks → devices and loops.

Declared once, in coolctl.config.schema; read and its problems worded in coolctl.config.load.

May import: coolctl.model (canonical point names) and pydantic; nothing of the rack, the daemon
or the drivers (checks against device profiles are coolctl.rack.check's).
"""

from coolctl.config.enums import (
    Action,
    Auth,
    CduControl,
    Controller,
    DeviceKind,
    Driver,
    LeakResponse,
    LogFormat,
    LogLevel,
)
from coolctl.config.fields import DEFAULT_METRICS_PORT, DeviceRef, Measurement, parse_host_port
from coolctl.config.load import ConfigError, load_config, parse_config
from coolctl.config.schema import (
    CduConfig,
    Config,
    DaemonConfig,
    DeviceConfig,
    LoopConfig,
    ModbusDeviceConfig,
    MqttConfig,
    MqttDeviceConfig,
    PowerConfig,
    RackConfig,
    RedfishDeviceConfig,
    SafetyConfig,
    SiteConfig,
    SnmpDeviceConfig,
    json_schema,
)

__all__ = [
    "DEFAULT_METRICS_PORT",
    "Action",
    "Auth",
    "CduConfig",
    "CduControl",
    "Config",
    "ConfigError",
    "Controller",
    "DaemonConfig",
    "DeviceConfig",
    "DeviceKind",
    "DeviceRef",
    "Driver",
    "LeakResponse",
    "LogFormat",
    "LogLevel",
    "LoopConfig",
    "Measurement",
    "ModbusDeviceConfig",
    "MqttConfig",
    "MqttDeviceConfig",
    "PowerConfig",
    "RackConfig",
    "RedfishDeviceConfig",
    "SafetyConfig",
    "SiteConfig",
    "SnmpDeviceConfig",
    "json_schema",
    "load_config",
    "parse_config",
    "parse_host_port",
]
