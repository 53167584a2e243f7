"""The management side of a simulated Redfish service: manager, network, log, certificates.

The OCP Service Baseline profile (which the OCP CDU and rack PDU profiles build on) asks every
service for a manager with its network protocols, Ethernet interface, event log and HTTPS
certificate, a certificate service that can issue a CSR and install a certificate, an event
service and a firmware inventory. They are here, and they work: a CSR is generated with a new
key, a certificate signed for it replaces the one the service presents, `Manager.Reset` takes
the service off the network for a moment, and the log records every accepted write.

What the simulators do not do they say so: the event service and update service report
themselves disabled, and no action is advertised that is not carried out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from coolctl.simulators.redfish_messages import RedfishError, message
from coolctl.simulators.redfish_resources import (
    Json,
    PatchPath,
    Readings,
    Reply,
    RequestInfo,
    Resource,
    Writable,
    action,
    collection,
    head,
    iso_time,
    link,
    status,
)
from coolctl.simulators.redfish_service import ROOT, RedfishService

__all__ = ["add_management"]

EVENT_REGISTRY_PREFIXES = ["Base", "Power", "ResourceEvent", "SensorEvent", "Update"]
RESET_TYPES = ["ForceRestart", "GracefulRestart"]
_CSR_PARAMETERS = (
    "CommonName",
    "Organization",
    "OrganizationalUnit",
    "City",
    "State",
    "Country",
    "Email",
)
_NAME_OIDS = {
    "CommonName": NameOID.COMMON_NAME,
    "Organization": NameOID.ORGANIZATION_NAME,
    "OrganizationalUnit": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "City": NameOID.LOCALITY_NAME,
    "State": NameOID.STATE_OR_PROVINCE_NAME,
    "Country": NameOID.COUNTRY_NAME,
    "Email": NameOID.EMAIL_ADDRESS,
}


def _hex(data: bytes) -> str:
    return ":".join(f"{b:02X}" for b in data)


def _identifier(name: x509.Name) -> Json:
    found: Json = {}
    for key, oid in (
        ("CommonName", NameOID.COMMON_NAME),
        ("Organization", NameOID.ORGANIZATION_NAME),
    ):
        attributes = name.get_attributes_for_oid(oid)
        if attributes:
            found[key] = str(attributes[0].value)
    return found


def _params(body: Any, action_name: str, allowed: set[str]) -> Mapping[str, Any]:
    if not isinstance(body, dict):
        raise RedfishError(400, [message("MalformedJSON")])
    unknown = [k for k in body if k not in allowed and not k.startswith("@")]
    if unknown:
        raise RedfishError(
            400, [message("ActionParameterUnknown", action_name, k) for k in unknown]
        )
    return body


def _require_string(body: Mapping[str, Any], action_name: str, name: str) -> str:
    if name not in body:
        raise RedfishError(400, [message("ActionParameterMissing", action_name, name)])
    value = body[name]
    if not isinstance(value, str):
        raise RedfishError(
            400, [message("ActionParameterValueTypeError", value, name, action_name)]
        )
    return value


class _Management:
    """Builds the manager and service resources of one service and carries out its actions."""

    def __init__(self, service: RedfishService, chassis: list[str], systems: list[str]) -> None:
        self.service = service
        self.chassis = chassis
        self.systems = systems
        self.manager = f"{ROOT}/Managers/{service.identity.manager_id}"
        self.network = f"{self.manager}/NetworkProtocol"
        self.certificates = f"{self.network}/HTTPS/Certificates"
        self.ethernet = f"{self.manager}/EthernetInterfaces"
        self.log_service = f"{self.manager}/LogServices/Log"
        self.entries = f"{self.log_service}/Entries"
        self.pending_keys: list[ec.EllipticCurvePrivateKey] = []
        self.last_reset = service.started

    # ---- manager --------------------------------------------------------------------------

    def add_manager(self) -> None:
        service = self.service
        service.add_collection(
            f"{ROOT}/Managers", "ManagerCollection", "Managers", lambda: [self.manager]
        )
        reset_target, reset = action(self.manager, "Manager.Reset")
        reset["ResetType@Redfish.AllowableValues"] = RESET_TYPES

        def render(_: Readings) -> Json:
            identity = service.identity
            body = head(self.manager, "Manager", f"{identity.product} management controller")
            links: Json = {"ManagerForChassis": [link(u) for u in self.chassis]}
            if self.systems:
                links["ManagerForServers"] = [link(u) for u in self.systems]
            body.update(
                {
                    "ManagerType": identity.manager_type,
                    "UUID": identity.uuid,
                    "ServiceEntryPointUUID": identity.uuid,
                    "Manufacturer": identity.manufacturer,
                    "Model": identity.model,
                    "SerialNumber": identity.serial,
                    "FirmwareVersion": identity.firmware_version,
                    "DateTime": iso_time(),
                    "DateTimeLocalOffset": "+00:00",
                    "LastResetTime": self.last_reset,
                    "PowerState": "On",
                    "Status": status(),
                    "NetworkProtocol": link(self.network),
                    "EthernetInterfaces": link(self.ethernet),
                    "LogServices": link(f"{self.manager}/LogServices"),
                    "Links": links,
                    "Actions": {"#Manager.Reset": reset},
                }
            )
            return body

        service.add(self.manager, Resource(render))
        service.add(reset_target, Resource(post=self._reset))

    def _reset(self, body: Any, request: RequestInfo) -> Reply:
        params = _params(body if body is not None else {}, "Manager.Reset", {"ResetType"})
        reset_type = params.get("ResetType", "GracefulRestart")
        if reset_type not in RESET_TYPES:
            raise RedfishError(
                400,
                [
                    message(
                        "ActionParameterValueNotInList", reset_type, "ResetType", "Manager.Reset"
                    )
                ],
            )
        self.service.log.add(message("Success"), origin=self.manager)
        self.last_reset = iso_time()
        self.service.hooks.reset()
        return Reply(204)

    # ---- network --------------------------------------------------------------------------

    def add_network(self) -> None:
        service = self.service
        identity = service.identity
        eth0 = f"{self.ethernet}/eth0"
        hostname_uri = eth0  # the host name lives on the interface; the protocol page shows it

        def hostname() -> str:
            return str(service.label(hostname_uri, ("HostName",), identity.hostname))

        def fqdn() -> str:
            return str(service.label(hostname_uri, ("FQDN",), f"{identity.hostname}.sim.local"))

        def render_protocol(_: Readings) -> Json:
            body = head(self.network, "ManagerNetworkProtocol", "Manager Network Protocol")
            body.update(
                {
                    "HostName": hostname(),
                    "FQDN": fqdn(),
                    "Status": status(),
                    "HTTP": {"ProtocolEnabled": False, "Port": 80},
                    "HTTPS": {
                        "ProtocolEnabled": True,
                        "Port": service.hooks.port(),
                        "Certificates": link(self.certificates),
                    },
                }
            )
            return body

        service.add(self.network, Resource(render_protocol))
        service.add_collection(
            self.ethernet, "EthernetInterfaceCollection", "Ethernet Interfaces", lambda: [eth0]
        )
        mac = "02:" + ":".join(identity.uuid.replace("-", "")[i : i + 2] for i in range(0, 10, 2))

        def render_interface(_: Readings) -> Json:
            body = head(eth0, "EthernetInterface", "Manager Ethernet Interface")
            body.update(
                {
                    "Description": "The simulated device listens on loopback only.",
                    "InterfaceEnabled": True,
                    "LinkStatus": "LinkUp",
                    "Status": status(),
                    "MACAddress": mac.upper(),
                    "PermanentMACAddress": mac.upper(),
                    "SpeedMbps": 1000,
                    "FullDuplex": True,
                    "HostName": hostname(),
                    "FQDN": fqdn(),
                    "NameServers": [],
                    "DHCPv4": {"DHCPEnabled": False},
                    "IPv4Addresses": [
                        {
                            "Address": "127.0.0.1",
                            "SubnetMask": "255.0.0.0",
                            "AddressOrigin": "Static",
                            "Gateway": "0.0.0.0",
                        }
                    ],
                    "IPv6Addresses": [
                        {
                            "Address": "::1",
                            "PrefixLength": 128,
                            "AddressOrigin": "Static",
                            "AddressState": "Preferred",
                        }
                    ],
                }
            )
            return body

        writable: dict[PatchPath, Writable] = {
            ("HostName",): service.label_writable(hostname_uri, ("HostName",)),
            ("FQDN",): service.label_writable(hostname_uri, ("FQDN",)),
        }
        service.add(eth0, Resource(render_interface, writable))

    # ---- log ------------------------------------------------------------------------------

    def add_log(self) -> None:
        service = self.service
        log = service.log
        service.add_collection(
            f"{self.manager}/LogServices",
            "LogServiceCollection",
            "Log Services",
            lambda: [self.log_service],
        )
        clear_target, clear = action(self.log_service, "LogService.ClearLog")

        def render_service(_: Readings) -> Json:
            body = head(self.log_service, "LogService", "Event Log")
            body.update(
                {
                    "ServiceEnabled": True,
                    "MaxNumberOfRecords": log.capacity,
                    "OverWritePolicy": "WrapsWhenFull",
                    "DateTime": iso_time(),
                    "DateTimeLocalOffset": "+00:00",
                    "LogEntryType": "Event",
                    "LogPurposes": ["Diagnostic"],
                    "Status": status(),
                    "Entries": link(self.entries),
                    "Actions": {"#LogService.ClearLog": clear},
                }
            )
            return body

        def clear_log(_body: Any, _request: RequestInfo) -> Reply:
            log.entries.clear()
            return Reply(204)

        service.add(self.log_service, Resource(render_service))
        service.add(clear_target, Resource(post=clear_log))

        def expand(uri: str, r: Readings) -> Json:
            entry = self._log_entry(uri.rsplit("/", 1)[-1])
            assert entry is not None and entry.render is not None
            return entry.render(r)

        entries = collection(
            self.entries,
            "LogEntryCollection",
            "Log Entries",
            lambda: [f"{self.entries}/{e.id}" for e in log.entries],
            expand,
        )
        service.add(self.entries, entries)
        service.tree.add_dynamic(self.entries, self._log_entry)
        log.add(message("Success"), origin=self.manager)  # the service started

    def _log_entry(self, entry_id: str) -> Resource | None:
        entry = self.service.log.get(entry_id)
        if entry is None:
            return None

        def render(_: Readings) -> Json:
            body = head(f"{self.entries}/{entry.id}", "LogEntry", f"Log Entry {entry.id}")
            body.update(
                {
                    "EntryType": "Event",
                    "Created": entry.created,
                    "Severity": entry.severity,
                    "MessageId": entry.message["MessageId"],
                    "Message": entry.message["Message"],
                    "MessageArgs": entry.message["MessageArgs"],
                }
            )
            if entry.origin is not None:
                body["Links"] = {"OriginOfCondition": link(entry.origin)}
            return body

        return Resource(render)

    # ---- certificates ---------------------------------------------------------------------

    def add_certificates(self) -> None:
        service = self.service
        certificate = f"{self.certificates}/1"
        cert_service = f"{ROOT}/CertificateService"
        locations = f"{cert_service}/CertificateLocations"
        csr_target, csr = action(cert_service, "CertificateService.GenerateCSR")
        csr["@Redfish.ActionInfo"] = f"{cert_service}/GenerateCSRActionInfo"
        replace_target, replace = action(cert_service, "CertificateService.ReplaceCertificate")
        replace["@Redfish.ActionInfo"] = f"{cert_service}/ReplaceCertificateActionInfo"
        service.roots["CertificateService"] = cert_service

        def render_service(_: Readings) -> Json:
            body = head(cert_service, "CertificateService", "Certificate Service")
            body.update(
                {
                    "CertificateLocations": link(locations),
                    "Actions": {
                        "#CertificateService.GenerateCSR": csr,
                        "#CertificateService.ReplaceCertificate": replace,
                    },
                }
            )
            return body

        def render_locations(_: Readings) -> Json:
            body = head(locations, "CertificateLocations", "Certificate Locations")
            body["Links"] = {"Certificates": [link(certificate)]}
            return body

        service.add(cert_service, Resource(render_service))
        service.add(locations, Resource(render_locations))
        service.add(csr_target, Resource(post=self._generate_csr))
        service.add(replace_target, Resource(post=self._replace_certificate))
        service.add(f"{cert_service}/GenerateCSRActionInfo", Resource(self._csr_info))
        service.add(f"{cert_service}/ReplaceCertificateActionInfo", Resource(self._replace_info))
        service.add_collection(
            self.certificates, "CertificateCollection", "HTTPS Certificates", lambda: [certificate]
        )
        service.add(certificate, Resource(self._render_certificate))

    def _render_certificate(self, _: Readings) -> Json:
        pem = self.service.hooks.certificate_pem()
        body = head(f"{self.certificates}/1", "Certificate", "HTTPS Certificate")
        body.update({"CertificateString": pem, "CertificateType": "PEM"})
        if not pem:
            return body
        cert = x509.load_pem_x509_certificate(pem.encode())
        body.update(
            {
                "Issuer": _identifier(cert.issuer),
                "Subject": _identifier(cert.subject),
                "ValidNotBefore": cert.not_valid_before_utc.isoformat(),
                "ValidNotAfter": cert.not_valid_after_utc.isoformat(),
                "SerialNumber": _hex(cert.serial_number.to_bytes(20, "big").lstrip(b"\0") or b"\0"),
                "Fingerprint": _hex(cert.fingerprint(hashes.SHA256())),
                "FingerprintHashAlgorithm": "TPM_ALG_SHA256",
                "SignatureAlgorithm": cert.signature_algorithm_oid._name,
                "KeyUsage": ["DigitalSignature", "ServerAuthentication"],
                "CertificateUsageTypes": ["Web"],
            }
        )
        return body

    def _csr_info(self, _: Readings) -> Json:
        uri = f"{ROOT}/CertificateService/GenerateCSRActionInfo"
        body = head(uri, "ActionInfo", "GenerateCSR Action Info")
        parameters: list[Json] = [
            {
                "Name": "CertificateCollection",
                "Required": True,
                "DataType": "Object",
                "ObjectDataType": "#CertificateCollection.CertificateCollection",
                "AllowableValues": [self.certificates],
            },
            {"Name": "CommonName", "Required": True, "DataType": "String"},
        ]
        parameters += [
            {"Name": n, "Required": False, "DataType": "String"} for n in _CSR_PARAMETERS[1:]
        ]
        parameters += [
            {
                "Name": "KeyPairAlgorithm",
                "Required": False,
                "DataType": "String",
                "AllowableValues": ["TPM_ALG_ECDSA"],
            },
            {
                "Name": "KeyCurveId",
                "Required": False,
                "DataType": "String",
                "AllowableValues": ["TPM_ECC_NIST_P256"],
            },
        ]
        body["Parameters"] = parameters
        return body

    def _replace_info(self, _: Readings) -> Json:
        uri = f"{ROOT}/CertificateService/ReplaceCertificateActionInfo"
        body = head(uri, "ActionInfo", "ReplaceCertificate Action Info")
        body["Parameters"] = [
            {"Name": "CertificateString", "Required": True, "DataType": "String"},
            {
                "Name": "CertificateType",
                "Required": True,
                "DataType": "String",
                "AllowableValues": ["PEM", "PEMchain"],
            },
            {
                "Name": "CertificateUri",
                "Required": True,
                "DataType": "Object",
                "ObjectDataType": "#Certificate.Certificate",
                "AllowableValues": [f"{self.certificates}/1"],
            },
        ]
        return body

    def _generate_csr(self, body: Any, _request: RequestInfo) -> Reply:
        """A new P-256 key and a CSR for it; the key waits for its certificate."""
        name = "CertificateService.GenerateCSR"
        allowed = {"CertificateCollection", "KeyPairAlgorithm", "KeyCurveId", *_CSR_PARAMETERS}
        params = _params(body, name, allowed)
        target = params.get("CertificateCollection")
        if not isinstance(target, dict) or target.get("@odata.id") != self.certificates:
            raise RedfishError(
                400, [message("ActionParameterValueError", "CertificateCollection", name)]
            )
        for parameter, value in (
            ("KeyPairAlgorithm", "TPM_ALG_ECDSA"),
            ("KeyCurveId", "TPM_ECC_NIST_P256"),
        ):
            if parameter in params and params[parameter] != value:
                raise RedfishError(
                    400,
                    [message("ActionParameterValueNotInList", params[parameter], parameter, name)],
                )
        attributes = []
        for parameter in _CSR_PARAMETERS:
            if parameter == "CommonName" or parameter in params:
                attributes.append(
                    x509.NameAttribute(
                        _NAME_OIDS[parameter], _require_string(params, name, parameter)
                    )
                )
        key = ec.generate_private_key(ec.SECP256R1())
        try:
            csr = (
                x509.CertificateSigningRequestBuilder()
                .subject_name(x509.Name(attributes))
                .sign(key, hashes.SHA256())
            )
        except ValueError:  # e.g. a Country that is not two letters
            raise RedfishError(
                400, [message("ActionParameterValueError", "Country", name)]
            ) from None
        self.pending_keys = [*self.pending_keys[-3:], key]
        pem = csr.public_bytes(serialization.Encoding.PEM).decode()
        return Reply(200, {"CSRString": pem, "CertificateCollection": link(self.certificates)})

    def _replace_certificate(self, body: Any, _request: RequestInfo) -> Reply:
        """Install a certificate issued for a key from GenerateCSR; the listener restarts."""
        name = "CertificateService.ReplaceCertificate"
        params = _params(body, name, {"CertificateString", "CertificateType", "CertificateUri"})
        text = _require_string(params, name, "CertificateString")
        kind = _require_string(params, name, "CertificateType")
        if kind not in ("PEM", "PEMchain"):
            raise RedfishError(
                400, [message("ActionParameterValueNotInList", kind, "CertificateType", name)]
            )
        target = params.get("CertificateUri")
        if not isinstance(target, dict) or target.get("@odata.id") != f"{self.certificates}/1":
            raise RedfishError(400, [message("ActionParameterValueError", "CertificateUri", name)])
        try:
            chain = x509.load_pem_x509_certificates(text.encode())
        except ValueError:
            chain = []
        key = next(
            (k for k in self.pending_keys if chain and k.public_key() == chain[0].public_key()),
            None,
        )
        replace = self.service.hooks.replace_certificate
        if key is None or replace is None:
            raise RedfishError(
                400, [message("ActionParameterValueError", "CertificateString", name)]
            )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        cert_pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)
        replace(cert_pem, key_pem)
        self.pending_keys.remove(key)
        self.service.log.add(message("Success"), origin=f"{self.certificates}/1")
        return Reply(204)

    # ---- events and updates ---------------------------------------------------------------

    def add_events_and_updates(self) -> None:
        service = self.service
        events = f"{ROOT}/EventService"
        subscriptions = f"{events}/Subscriptions"
        update = f"{ROOT}/UpdateService"
        inventory = f"{update}/FirmwareInventory"
        firmware = f"{inventory}/Firmware"
        service.roots["EventService"] = events
        service.roots["UpdateService"] = update

        def render_events(_: Readings) -> Json:
            body = head(events, "EventService", "Event Service")
            body.update(
                {
                    "Description": "This simulated device does not send events.",
                    "ServiceEnabled": False,
                    "Status": status("Disabled"),
                    "DeliveryRetryAttempts": 3,
                    "DeliveryRetryIntervalSeconds": 60,
                    "EventFormatTypes": ["Event"],
                    "RegistryPrefixes": EVENT_REGISTRY_PREFIXES,
                    "ResourceTypes": [],
                    "ExcludeMessageId": False,
                    "ExcludeRegistryPrefix": False,
                    "IncludeOriginOfConditionSupported": False,
                    "SubordinateResourcesSupported": False,
                    "Subscriptions": link(subscriptions),
                }
            )
            return body

        def render_update(_: Readings) -> Json:
            body = head(update, "UpdateService", "Update Service")
            body.update(
                {
                    "Description": "This simulated device takes no firmware updates.",
                    "ServiceEnabled": False,
                    "Status": status("Disabled"),
                    "FirmwareInventory": link(inventory),
                }
            )
            return body

        def render_firmware(_: Readings) -> Json:
            identity = service.identity
            body = head(firmware, "SoftwareInventory", f"{identity.product} firmware")
            body.update(
                {
                    "Version": identity.firmware_version,
                    "Manufacturer": identity.manufacturer,
                    "SoftwareId": f"coolctl-sim-{identity.manager_type.lower()}",
                    "ReleaseDate": "2026-01-01T00:00:00+00:00",
                    "ReleaseType": "Production",
                    "Updateable": False,
                    "WriteProtected": True,
                    "RelatedItem": [link(self.manager)],
                    "Status": status(),
                }
            )
            return body

        service.add(events, Resource(render_events))
        service.add_collection(subscriptions, "EventDestinationCollection", "Subscriptions", list)
        service.add(update, Resource(render_update))
        service.add_collection(
            inventory, "SoftwareInventoryCollection", "Firmware Inventory", lambda: [firmware]
        )
        service.add(firmware, Resource(render_firmware))


def add_management(
    service: RedfishService, chassis: Sequence[str], systems: Sequence[str] = ()
) -> None:
    """The manager (for these chassis and systems) and the services around it."""
    management = _Management(service, list(chassis), list(systems))
    service.roots["Managers"] = f"{ROOT}/Managers"
    management.add_manager()
    management.add_network()
    management.add_log()
    management.add_certificates()
    management.add_events_and_updates()
