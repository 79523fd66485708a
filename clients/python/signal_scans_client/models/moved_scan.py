from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any, TypeVar

from attrs import define as _attrs_define
from attrs import field as _attrs_field

from ..models.scan_status import ScanStatus

T = TypeVar("T", bound="MovedScan")


@_attrs_define
class MovedScan:
    """`data` of a runner's move (start, complete, fail).

    Attributes:
        at (datetime.datetime): When the scan reached `status`.
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

    at: datetime.datetime
    previous_status: ScanStatus
    scan_id: str
    status: ScanStatus
    additional_properties: dict[str, Any] = _attrs_field(init=False, factory=dict)

    def to_dict(self) -> dict[str, Any]:
        at = self.at.isoformat()

        previous_status = self.previous_status.value

        scan_id = self.scan_id

        status = self.status.value

        field_dict: dict[str, Any] = {}
        field_dict.update(self.additional_properties)
        field_dict.update(
            {
                "at": at,
                "previousStatus": previous_status,
                "scanId": scan_id,
                "status": status,
            }
        )

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        d = dict(src_dict)
        at = datetime.datetime.fromisoformat(d.pop("at"))

        previous_status = ScanStatus(d.pop("previousStatus"))

        scan_id = d.pop("scanId")

        status = ScanStatus(d.pop("status"))

        moved_scan = cls(
            at=at,
            previous_status=previous_status,
            scan_id=scan_id,
            status=status,
        )

        moved_scan.additional_properties = d
        return moved_scan

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
