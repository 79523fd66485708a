from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any, TypeVar, cast

from attrs import define as _attrs_define
from attrs import field as _attrs_field

from ..models.cancel_outcome import CancelOutcome
from ..models.scan_status import ScanStatus

T = TypeVar("T", bound="CancelResult")


@_attrs_define
class CancelResult:
    """What a batch cancel did to one scan.

    Attributes:
        cancelled_at (datetime.datetime | None): When the scan was cancelled, by this request or before; null otherwise.
        outcome (CancelOutcome): `cancelled` by this request, `already_cancelled` before it, `not_cancellable`
            (completed or
            failed: nothing changed), or `not_found` (no such scan in the account group).
        previous_status (None | ScanStatus): Its status before the request (`status` when nothing changed); null when
            not found.
        scan_id (str): A signal scan, as returned when the scan was started. Example: 65a1f0c2e4b0a1b2c3d4e5f6.
        status (None | ScanStatus): The scan's status after the request; null when not found.
    """

    cancelled_at: datetime.datetime | None
    outcome: CancelOutcome
    previous_status: None | ScanStatus
    scan_id: str
    status: None | ScanStatus
    additional_properties: dict[str, Any] = _attrs_field(init=False, factory=dict)

    def to_dict(self) -> dict[str, Any]:
        cancelled_at: None | str
        if isinstance(self.cancelled_at, datetime.datetime):
            cancelled_at = self.cancelled_at.isoformat()
        else:
            cancelled_at = self.cancelled_at

        outcome = self.outcome.value

        previous_status: None | str
        if isinstance(self.previous_status, ScanStatus):
            previous_status = self.previous_status.value
        else:
            previous_status = self.previous_status

        scan_id = self.scan_id

        status: None | str
        if isinstance(self.status, ScanStatus):
            status = self.status.value
        else:
            status = self.status

        field_dict: dict[str, Any] = {}
        field_dict.update(self.additional_properties)
        field_dict.update(
            {
                "cancelledAt": cancelled_at,
                "outcome": outcome,
                "previousStatus": previous_status,
                "scanId": scan_id,
                "status": status,
            }
        )

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        d = dict(src_dict)

        def _parse_cancelled_at(data: object) -> datetime.datetime | None:
            if data is None:
                return data
            try:
                if not isinstance(data, str):
                    raise TypeError()
                cancelled_at_type_0 = datetime.datetime.fromisoformat(data)

                return cancelled_at_type_0
            except (TypeError, ValueError, AttributeError, KeyError):
                pass
            return cast(datetime.datetime | None, data)

        cancelled_at = _parse_cancelled_at(d.pop("cancelledAt"))

        outcome = CancelOutcome(d.pop("outcome"))

        def _parse_previous_status(data: object) -> None | ScanStatus:
            if data is None:
                return data
            try:
                if not isinstance(data, str):
                    raise TypeError()
                previous_status_type_0 = ScanStatus(data)

                return previous_status_type_0
            except (TypeError, ValueError, AttributeError, KeyError):
                pass
            return cast(None | ScanStatus, data)

        previous_status = _parse_previous_status(d.pop("previousStatus"))

        scan_id = d.pop("scanId")

        def _parse_status(data: object) -> None | ScanStatus:
            if data is None:
                return data
            try:
                if not isinstance(data, str):
                    raise TypeError()
                status_type_0 = ScanStatus(data)

                return status_type_0
            except (TypeError, ValueError, AttributeError, KeyError):
                pass
            return cast(None | ScanStatus, data)

        status = _parse_status(d.pop("status"))

        cancel_result = cls(
            cancelled_at=cancelled_at,
            outcome=outcome,
            previous_status=previous_status,
            scan_id=scan_id,
            status=status,
        )

        cancel_result.additional_properties = d
        return cancel_result

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
