from enum import StrEnum


class ChangeEventEvent(StrEnum):
    SCAN_STATUS_CHANGED = "scan.status_changed"

    def __str__(self) -> str:
        return str(self.value)
