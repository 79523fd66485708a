from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from attrs import define as _attrs_define

if TYPE_CHECKING:
    from ..models.cancelled_scans import CancelledScans


T = TypeVar("T", bound="SignalScansCancelResponse")


@_attrs_define
class SignalScansCancelResponse:
    """
    Example:
        {'data': {'results': [{'cancelledAt': '2026-11-29T00:14:45.778000Z', 'outcome': 'cancelled', 'previousStatus':
            'running', 'scanId': '65a1f0c2e4b0a1b2c3d4e5f6', 'status': 'cancelled'}, {'cancelledAt': None, 'outcome':
            'not_cancellable', 'previousStatus': 'completed', 'scanId': '65a1f0c2e4b0a1b2c3d4e5f7', 'status': 'completed'},
            {'cancelledAt': None, 'outcome': 'not_found', 'previousStatus': None, 'scanId': '65a1f0c2e4b0a1b2c3d4e5f8',
            'status': None}]}, 'error': None, 'success': True, 'traceId': '4bf92f3577b34da6a3ce929d0e0e4736'}

    Attributes:
        data (CancelledScans): `data` of a batch cancel: one result per requested id, in the request's order.
        error (None):
        success (bool):
        trace_id (str): The request's trace id, also sent as the `X-Request-Id` header. Example:
            4bf92f3577b34da6a3ce929d0e0e4736.
    """

    data: CancelledScans
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
        from ..models.cancelled_scans import CancelledScans  # noqa: PLC0415

        d = dict(src_dict)
        data = CancelledScans.from_dict(d.pop("data"))

        error = d.pop("error")

        success = d.pop("success")

        trace_id = d.pop("traceId")

        signal_scans_cancel_response = cls(
            data=data,
            error=error,
            success=success,
            trace_id=trace_id,
        )

        return signal_scans_cancel_response
