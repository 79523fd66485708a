from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any, TypeVar

from attrs import define as _attrs_define
from attrs import field as _attrs_field

from ..models.scan_status import ScanStatus

T = TypeVar("T", bound="CancelledScan")


@_attrs_define
class CancelledScan:
    """`data` of a successful cancel.

    Attributes:
        cancelled_at (datetime.datetime): When the scan was cancelled (the original moment on a repeated cancel).
        previous_status (ScanStatus): Where a scan is in its life.

            ```text
            queued ──► running ──► completed
               │          │──────► failed
               └──────────┴──────► cancelled
            ```
            `completed`, `failed` and `cancelled` are final.
        scan_id (str): A signal scan, as returned when the scan was started. Example: 65a1f0c2e4b0a1b2c3d4e5f6.
        status (ScanStatus): Where a scan is in its life.

            ```text
            queued ──► running ──► completed
               │          │──────► failed
               └──────────┴──────► cancelled
            ```
            `completed`, `failed` and `cancelled` are final.
    """

    cancelled_at: datetime.datetime
    previous_status: ScanStatus
    scan_id: str
    status: ScanStatus
    additional_properties: dict[str, Any] = _attrs_field(init=False, factory=dict)

    def to_dict(self) -> dict[str, Any]:
        cancelled_at = self.cancelled_at.isoformat()

        previous_status = self.previous_status.value

        scan_id = self.scan_id

        status = self.status.value

        field_dict: dict[str, Any] = {}
        field_dict.update(self.additional_properties)
        field_dict.update(
            {
                "cancelledAt": cancelled_at,
                "previousStatus": previous_status,
                "scanId": scan_id,
                "status": status,
            }
        )

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        d = dict(src_dict)
        cancelled_at = datetime.datetime.fromisoformat(d.pop("cancelledAt"))

        previous_status = ScanStatus(d.pop("previousStatus"))

        scan_id = d.pop("scanId")

        status = ScanStatus(d.pop("status"))

        cancelled_scan = cls(
            cancelled_at=cancelled_at,
            previous_status=previous_status,
            scan_id=scan_id,
            status=status,
        )

        cancelled_scan.additional_properties = d
        return cancelled_scan

    @property
    def additional_keys(self) -> list[str]:
        return list(self.additional_properties.keys())

    def __getitem__(self, key: str) -> Any:
        return self.additional_properties[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.additional_properties[key] = value

    def __delitem__(self, key: str) -> None:
        del self.additional_properties[key]

    def __contains__(self, key: str) -> bool:
        return key in self.additional_properties
