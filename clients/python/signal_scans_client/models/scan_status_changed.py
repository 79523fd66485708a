from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any, TypeVar, cast

from attrs import define as _attrs_define
from attrs import field as _attrs_field

from ..models.scan_status import ScanStatus

T = TypeVar("T", bound="ScanStatusChanged")


@_attrs_define
class ScanStatusChanged:
    """The `data` of a `scan.status_changed` event.

    Attributes:
        account_group_id (str): The account group that scopes a request. Example: 507f1f77bcf86cd799439011.
        at (datetime.datetime): When the change was written (its commit may come later): order by the cursor, not by
            this.
        from_ (None | ScanStatus): null when the change is the scan's creation.
        reason (None | str): The runner's reason for a failure; null when none was given.
        scan_id (str): A signal scan, as returned when the scan was started. Example: 65a1f0c2e4b0a1b2c3d4e5f6.
        to (ScanStatus): Where a scan is in its life.

            ```text
            queued ──► running ──► completed
               │          │──────► failed
               └──────────┴──────► cancelled
            ```
            `completed`, `failed` and `cancelled` are final.
        trace_id (None | str): The trace id of the request that made the change; null when none did (the command line).
    """

    account_group_id: str
    at: datetime.datetime
    from_: None | ScanStatus
    reason: None | str
    scan_id: str
    to: ScanStatus
    trace_id: None | str
    additional_properties: dict[str, Any] = _attrs_field(init=False, factory=dict)

    def to_dict(self) -> dict[str, Any]:
        account_group_id = self.account_group_id

        at = self.at.isoformat()

        from_: None | str
        if isinstance(self.from_, ScanStatus):
            from_ = self.from_.value
        else:
            from_ = self.from_

        reason: None | str
        reason = self.reason

        scan_id = self.scan_id

        to = self.to.value

        trace_id: None | str
        trace_id = self.trace_id

        field_dict: dict[str, Any] = {}
        field_dict.update(self.additional_properties)
        field_dict.update(
            {
                "accountGroupId": account_group_id,
                "at": at,
                "from": from_,
                "reason": reason,
                "scanId": scan_id,
                "to": to,
                "traceId": trace_id,
            }
        )

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        d = dict(src_dict)
        account_group_id = d.pop("accountGroupId")

        at = datetime.datetime.fromisoformat(d.pop("at"))

        def _parse_from_(data: object) -> None | ScanStatus:
            if data is None:
                return data
            try:
                if not isinstance(data, str):
                    raise TypeError()
                from_type_0 = ScanStatus(data)

                return from_type_0
            except (TypeError, ValueError, AttributeError, KeyError):
                pass
            return cast(None | ScanStatus, data)

        from_ = _parse_from_(d.pop("from"))

        def _parse_reason(data: object) -> None | str:
            if data is None:
                return data
            return cast(None | str, data)

        reason = _parse_reason(d.pop("reason"))

        scan_id = d.pop("scanId")

        to = ScanStatus(d.pop("to"))

        def _parse_trace_id(data: object) -> None | str:
            if data is None:
                return data
            return cast(None | str, data)

        trace_id = _parse_trace_id(d.pop("traceId"))

        scan_status_changed = cls(
            account_group_id=account_group_id,
            at=at,
            from_=from_,
            reason=reason,
            scan_id=scan_id,
            to=to,
            trace_id=trace_id,
        )

        scan_status_changed.additional_properties = d
        return scan_status_changed

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
