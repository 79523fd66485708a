from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar, cast

from attrs import define as _attrs_define

T = TypeVar("T", bound="CancelScansRequest")


@_attrs_define
class CancelScansRequest:
    """The body of a batch cancel.

    Attributes:
        scan_ids (list[str]): The scans to cancel: 1 to 100 distinct ids, 24 hexadecimal characters each. Ids are
            compared in either case: one id twice in different cases is a repeat (400), which `uniqueItems` alone does not
            say.
    """

    scan_ids: list[str]

    def to_dict(self) -> dict[str, Any]:
        scan_ids = self.scan_ids

        field_dict: dict[str, Any] = {}

        field_dict.update(
            {
                "scanIds": scan_ids,
            }
        )

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        d = dict(src_dict)
        scan_ids = cast(list[str], d.pop("scanIds"))

        cancel_scans_request = cls(
            scan_ids=scan_ids,
        )

        return cancel_scans_request
