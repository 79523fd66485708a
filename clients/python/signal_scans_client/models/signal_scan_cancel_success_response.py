from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from attrs import define as _attrs_define

if TYPE_CHECKING:
    from ..models.cancelled_scan import CancelledScan


T = TypeVar("T", bound="SignalScanCancelSuccessResponse")


@_attrs_define
class SignalScanCancelSuccessResponse:
    """
    Example:
        {'data': {'cancelledAt': '2026-11-29T00:14:45.778000Z', 'previousStatus': 'running', 'scanId':
            '65a1f0c2e4b0a1b2c3d4e5f6', 'status': 'cancelled'}, 'error': None, 'success': True, 'traceId':
            '4bf92f3577b34da6a3ce929d0e0e4736'}

    Attributes:
        data (CancelledScan): `data` of a successful cancel.
        error (None):
        success (bool):
        trace_id (str): The request's trace id, also sent as the `X-Request-Id` header. Example:
            4bf92f3577b34da6a3ce929d0e0e4736.
    """

    data: CancelledScan
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
        from ..models.cancelled_scan import CancelledScan  # noqa: PLC0415

        d = dict(src_dict)
        data = CancelledScan.from_dict(d.pop("data"))

        error = d.pop("error")

        success = d.pop("success")

        trace_id = d.pop("traceId")

        signal_scan_cancel_success_response = cls(
            data=data,
            error=error,
            success=success,
            trace_id=trace_id,
        )

        return signal_scan_cancel_success_response
