from enum import StrEnum


class CancelOutcome(StrEnum):
    ALREADY_CANCELLED = "already_cancelled"
    CANCELLED = "cancelled"
    NOT_CANCELLABLE = "not_cancellable"
    NOT_FOUND = "not_found"

    def __str__(self) -> str:
        return str(self.value)
