from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from attrs import define as _attrs_define

if TYPE_CHECKING:
    from ..models.scan import Scan


T = TypeVar("T", bound="SignalScanCreatedResponse")


@_attrs_define
class SignalScanCreatedResponse:
    """
    Example:
        {'data': {'cancelledAt': None, 'createdAt': '2026-11-28T23:58:02.120000Z', 'finishedAt': None, 'scanId':
            '65a1f0c2e4b0a1b2c3d4e5f6', 'startedAt': None, 'status': 'queued', 'updatedAt': '2026-11-28T23:58:02.120000Z'},
            'error': None, 'success': True, 'traceId': '4bf92f3577b34da6a3ce929d0e0e4736'}

    Attributes:
        data (Scan): A scan as stored; serialized as the API shows it (nulls where a moment was not reached).
        error (None):
        success (bool):
        trace_id (str): The request's trace id, also sent as the `X-Request-Id` header. Example:
            4bf92f3577b34da6a3ce929d0e0e4736.
    """

    data: Scan
    error: None
    success: bool
    trace_id: str

    def to_dict(self) -> dict[str, Any]:
        data = self.data.to_dict()

        error = self.error

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
        from ..models.scan import Scan  # noqa: PLC0415

        d = dict(src_dict)
        data = Scan.from_dict(d.pop("data"))

        error = d.pop("error")

        success = d.pop("success")

        trace_id = d.pop("traceId")

        signal_scan_created_response = cls(
            data=data,
            error=error,
            success=success,
            trace_id=trace_id,
        )

        return signal_scan_created_response
