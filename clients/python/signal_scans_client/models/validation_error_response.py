from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from attrs import define as _attrs_define

if TYPE_CHECKING:
    from ..models.error_body import ErrorBody


T = TypeVar("T", bound="ValidationErrorResponse")


@_attrs_define
class ValidationErrorResponse:
    """
    Example:
        {'data': None, 'error': {'code': 'VALIDATION_ERROR', 'details': 'scanId must be 24 hexadecimal characters',
            'message': 'Request validation failed'}, 'success': False, 'traceId': '4bf92f3577b34da6a3ce929d0e0e4736'}

    Attributes:
        data (None):
        error (ErrorBody): What went wrong: a stable `code`, a human `message`, and `details` saying exactly what.
        success (bool):
        trace_id (str): The request's trace id, also sent as the `X-Request-Id` header. Example:
            4bf92f3577b34da6a3ce929d0e0e4736.
    """

    data: None
    error: ErrorBody
    success: bool
    trace_id: str

    def to_dict(self) -> dict[str, Any]:
        data = self.data

        error = self.error.to_dict()

        success = self.success

        trace_id = self.trace_id

        field_dict: dict[str, Any] = {}

        field_dict.update(
            {
                "data": data,
                "error": error,
                "success": success,
                "traceId": trace_id,
            }
        )

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        from ..models.error_body import ErrorBody  # noqa: PLC0415

        d = dict(src_dict)
        data = d.pop("data")

        error = ErrorBody.from_dict(d.pop("error"))

        success = d.pop("success")

        trace_id = d.pop("traceId")

        validation_error_response = cls(
            data=data,
            error=error,
            success=success,
            trace_id=trace_id,
        )

        return validation_error_response
