from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from attrs import define as _attrs_define

T = TypeVar("T", bound="ErrorBody")


@_attrs_define
class ErrorBody:
    """What went wrong: a stable `code`, a human `message`, and `details` saying exactly what.

    Attributes:
        code (str): Stable and machine-readable, e.g. `VALIDATION_ERROR`, `NOT_FOUND`. Example: NOT_FOUND.
        details (str): Exactly what was wrong (on a 500, where the cause is logged: under this trace id). Example: no
            such scan in this account group.
        message (str): The human summary of the status. Example: Resource not found.
    """

    code: str
    details: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        code = self.code

        details = self.details

        message = self.message

        field_dict: dict[str, Any] = {}

        field_dict.update(
            {
                "code": code,
                "details": details,
                "message": message,
            }
        )

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        d = dict(src_dict)
        code = d.pop("code")

        details = d.pop("details")

        message = d.pop("message")

        error_body = cls(
            code=code,
            details=details,
            message=message,
        )

        return error_body
