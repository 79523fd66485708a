"""Contains all the data models used in inputs/outputs"""

from .cancel_outcome import CancelOutcome
from .cancel_result import CancelResult
from .cancel_scans_request import CancelScansRequest
from .cancelled_scan import CancelledScan
from .cancelled_scans import CancelledScans
from .change_event import ChangeEvent
from .change_event_event import ChangeEventEvent
from .error_body import ErrorBody
from .error_response import ErrorResponse
from .event_view import EventView
from .fail_request import FailRequest
from .health import Health
from .health_response import HealthResponse
from .moved_scan import MovedScan
from .openapi_response_200 import OpenapiResponse200
from .scan import Scan
from .scan_events import ScanEvents
from .scan_list import ScanList
from .scan_status import ScanStatus
from .scan_status_changed import ScanStatusChanged
from .signal_scan_cancel_success_response import SignalScanCancelSuccessResponse
from .signal_scan_created_response import SignalScanCreatedResponse
from .signal_scan_events_response import SignalScanEventsResponse
from .signal_scan_list_response import SignalScanListResponse
from .signal_scan_move_response import SignalScanMoveResponse
from .signal_scan_response import SignalScanResponse
from .signal_scans_cancel_response import SignalScansCancelResponse
from .validation_error_response import ValidationErrorResponse

__all__ = (
    "CancelledScan",
    "CancelledScans",
    "CancelOutcome",
    "CancelResult",
    "CancelScansRequest",
    "ChangeEvent",
    "ChangeEventEvent",
    "ErrorBody",
    "ErrorResponse",
    "EventView",
    "FailRequest",
    "Health",
    "HealthResponse",
    "MovedScan",
    "OpenapiResponse200",
    "Scan",
    "ScanEvents",
    "ScanList",
    "ScanStatus",
    "ScanStatusChanged",
    "SignalScanCancelSuccessResponse",
    "SignalScanCreatedResponse",
    "SignalScanEventsResponse",
    "SignalScanListResponse",
    "SignalScanMoveResponse",
    "SignalScanResponse",
    "SignalScansCancelResponse",
    "ValidationErrorResponse",
)
