"""Redfish error and status messages from DMTF's Base message registry, as the simulators send them.

A Redfish client learns why a request failed from `@Message.ExtendedInfo`, not from the status
code alone; the coolctl driver reports those messages to operators, so the simulated devices
must send them as real ones do: a `MessageId` of the Base registry, the registry's text with its
arguments filled in, and `RelatedProperties` pointing at the offending property. Where the
registry's text cannot say enough (the bounds of a set point), the `Resolution` says it.

Only the messages these simulators send are listed here, with the wording of Base 1.13.0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["BASE_REGISTRY", "MESSAGE_TYPE", "RedfishError", "error_body", "message"]

BASE_REGISTRY = "Base.1.13.0"
MESSAGE_TYPE = "#Message.v1_3_0.Message"

# id -> (message with %1.. placeholders, severity, resolution)
_BASE: dict[str, tuple[str, str, str]] = {
    "Success": ("The request completed successfully.", "OK", "None"),
    "Created": ("The resource has been created successfully.", "OK", "None."),
    "SessionTerminated": (
        "The session was successfully terminated.",
        "OK",
        "No resolution is required.",
    ),
    "GeneralError": (
        "A general error has occurred.  See Resolution for information on how to resolve the"
        " error, or @Message.ExtendedInfo if Resolution is not provided.",
        "Critical",
        "None.",
    ),
    "InternalError": (
        "The request failed due to an internal service error.  The service is still operational.",
        "Critical",
        "Resubmit the request.  If the problem persists, consider resetting the service.",
    ),
    "MalformedJSON": (
        "The request body submitted was malformed JSON and could not be parsed by the receiving"
        " service.",
        "Critical",
        "Ensure that the request body is valid JSON and resubmit the request.",
    ),
    "EmptyJSON": (
        "The request body submitted contained an empty JSON object and the service is unable to"
        " process it.",
        "Warning",
        "Add properties in the JSON object and resubmit the request.",
    ),
    "PropertyUnknown": (
        "The property %1 is not in the list of valid properties for the resource.",
        "Warning",
        "Remove the unknown property from the request body and resubmit the request if the"
        " operation failed.",
    ),
    "PropertyNotWritable": (
        "The property %1 is a read only property and cannot be assigned a value.",
        "Warning",
        "Remove the property from the request body and resubmit the request if the operation"
        " failed.",
    ),
    "PropertyValueTypeError": (
        "The value '%1' for the property %2 is of a different type than the property can accept.",
        "Warning",
        "Correct the value for the property in the request body and resubmit the request if the"
        " operation failed.",
    ),
    "PropertyValueNotInList": (
        "The value '%1' for the property %2 is not in the list of acceptable values.",
        "Warning",
        "Choose a value from the enumeration list that the implementation can support and"
        " resubmit the request if the operation failed.",
    ),
    "PropertyValueOutOfRange": (
        "The value '%1' for the property %2 is not in the supported range of acceptable values.",
        "Warning",
        "Correct the value for the property in the request body and resubmit the request if the"
        " operation failed.",
    ),
    "PropertyValueFormatError": (
        "The value '%1' for the property %2 is of a different format than the property can accept.",
        "Warning",
        "Correct the value for the property in the request body and resubmit the request if the"
        " operation failed.",
    ),
    "PreconditionFailed": (
        "The ETag supplied did not match the ETag required to change this resource.",
        "Critical",
        "Try the operation again using the appropriate ETag.",
    ),
    "PreconditionRequired": (
        "A precondition header or annotation is required to change this resource.",
        "Critical",
        "Try the operation again using an If-Match or If-None-Match header and appropriate ETag.",
    ),
    "NoValidSession": (
        "There is no valid session established with the implementation.",
        "Critical",
        "Establish a session before attempting any operations.",
    ),
    "SessionLimitExceeded": (
        "The session establishment failed due to the number of simultaneous sessions exceeding"
        " the limit of the implementation.",
        "Critical",
        "Reduce the number of other sessions before trying to establish the session or increase"
        " the limit of simultaneous sessions, if supported.",
    ),
    "InvalidURI": (
        "The URI %1 was not found.",
        "Critical",
        "Provide a valid URI and resubmit the request.",
    ),
    "OperationNotAllowed": (
        "The HTTP method is not allowed on this resource.",
        "Critical",
        "None.",
    ),
    "ServiceTemporarilyUnavailable": (
        "The service is temporarily unavailable.  Retry in %1 seconds.",
        "Critical",
        "Wait for the indicated retry duration and retry the operation.",
    ),
    "QueryNotSupported": (
        "Querying is not supported by the implementation.",
        "Warning",
        "Remove the query parameters and resubmit the request if the operation failed.",
    ),
    "QueryNotSupportedOnResource": (
        "Querying is not supported on the requested resource.",
        "Warning",
        "Remove the query parameters and resubmit the request if the operation failed.",
    ),
    "QueryParameterValueFormatError": (
        "The value '%1' for the parameter %2 is of a different format than the parameter can"
        " accept.",
        "Warning",
        "Correct the value for the query parameter in the request and resubmit the request if"
        " the operation failed.",
    ),
    "ActionParameterMissing": (
        "The action %1 requires the parameter %2 to be present in the request body.",
        "Critical",
        "Supply the action with the required parameter in the request body when the request is"
        " resubmitted.",
    ),
    "ActionParameterUnknown": (
        "The action %1 was submitted with the invalid parameter %2.",
        "Warning",
        "Correct the invalid action parameter and resubmit the request if the operation failed.",
    ),
    "ActionParameterValueNotInList": (
        "The value '%1' for the parameter %2 in the action %3 is not in the list of acceptable"
        " values.",
        "Warning",
        "Choose a value from the enumeration list that the implementation can support and"
        " resubmit the request if the operation failed.",
    ),
    "ActionParameterValueTypeError": (
        "The value '%1' for the parameter %2 in the action %3 is of a different type than the"
        " parameter can accept.",
        "Warning",
        "Correct the value for the parameter in the request body and resubmit the request if the"
        " operation failed.",
    ),
    "ActionParameterValueError": (
        "The value for the parameter %1 in the action %2 is invalid.",
        "Warning",
        "Correct the value for the parameter in the request body and resubmit the request if the"
        " operation failed.",
    ),
}


def message(
    message_id: str,
    *args: object,
    related: Sequence[str] = (),
    resolution: str | None = None,
) -> dict[str, Any]:
    """One Message object: `message("PropertyValueOutOfRange", 9000, "SetPoint")`.

    `related` are JSON pointers into the request body ("#/SetPoint"); `resolution` replaces the
    registry's generic resolution when the service knows better (the accepted range).
    """
    text, severity, default_resolution = _BASE[message_id]
    arguments = [str(a) for a in args]
    for index in range(len(arguments), 0, -1):  # %10 before %1
        text = text.replace(f"%{index}", arguments[index - 1])
    body: dict[str, Any] = {
        "@odata.type": MESSAGE_TYPE,
        "MessageId": f"{BASE_REGISTRY}.{message_id}",
        "Message": text,
        "MessageArgs": arguments,
        "MessageSeverity": severity,
        "Resolution": resolution or default_resolution,
    }
    if related:
        body["RelatedProperties"] = list(related)
    return body


def error_body(messages: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The Redfish error response: the first message as the summary, all as extended info."""
    first = messages[0] if messages else message("GeneralError")
    return {
        "error": {
            "code": first["MessageId"],
            "message": first["Message"],
            "@Message.ExtendedInfo": list(messages) or [first],
        }
    }


class RedfishError(Exception):
    """An HTTP error with its Redfish messages, raised anywhere a request is being handled."""

    def __init__(
        self,
        status: int,
        messages: Sequence[dict[str, Any]],
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status)
        self.status = status
        self.messages = list(messages)
        self.headers = dict(headers or {})

    def __str__(self) -> str:
        return f"{self.status}: " + "; ".join(str(m["Message"]) for m in self.messages)
