from http import HTTPStatus
from typing import Any
from urllib.parse import quote

import httpx

from ... import errors
from ...client import AuthenticatedClient, Client
from ...models.error_response import ErrorResponse
from ...models.signal_scan_events_response import SignalScanEventsResponse
from ...models.validation_error_response import ValidationErrorResponse
from ...types import Response


def _get_kwargs(
    account_group_id: str,
    scan_id: str,
) -> dict[str, Any]:

    _kwargs: dict[str, Any] = {
        "method": "get",
        "url": "/v1/accounts/{account_group_id}/signals/scans/{scan_id}/events".format(
            account_group_id=quote(str(account_group_id), safe=""),
            scan_id=quote(str(scan_id), safe=""),
        ),
    }

    return _kwargs


def _parse_response(
    *, client: AuthenticatedClient | Client, response: httpx.Response
) -> ErrorResponse | SignalScanEventsResponse | ValidationErrorResponse | None:
    # A body that is not the one documented for its status (no JSON, or JSON without its fields:
    # an empty 431 from the service's HTTP layer, a proxy's own page) is parsed as None, and the
    # status and the raw body stay on the Response; or raised as errors.UnexpectedStatus.
    try:
        return _parse_documented(client=client, response=response)
    except (KeyError, TypeError, ValueError) as error:
        if client.raise_on_unexpected_status:
            raise errors.UnexpectedStatus(response.status_code, response.content) from error
        return None


def _parse_documented(
    *, client: AuthenticatedClient | Client, response: httpx.Response
) -> ErrorResponse | SignalScanEventsResponse | ValidationErrorResponse:
    if response.status_code == 200:
        response_200 = SignalScanEventsResponse.from_dict(response.json())

        return response_200

    if response.status_code == 400:
        response_400 = ValidationErrorResponse.from_dict(response.json())

        return response_400

    if response.status_code == 401:
        response_401 = ErrorResponse.from_dict(response.json())

        return response_401

    if response.status_code == 403:
        response_403 = ErrorResponse.from_dict(response.json())

        return response_403

    if response.status_code == 404:
        response_404 = ErrorResponse.from_dict(response.json())

        return response_404

    if response.status_code == 429:
        response_429 = ErrorResponse.from_dict(response.json())

        return response_429

    if response.status_code == 500:
        response_500 = ErrorResponse.from_dict(response.json())

        return response_500

    if response.status_code == 502:
        response_502 = ErrorResponse.from_dict(response.json())

        return response_502

    response_default = ErrorResponse.from_dict(response.json())

    return response_default


def _build_response(
    *, client: AuthenticatedClient | Client, response: httpx.Response
) -> Response[ErrorResponse | SignalScanEventsResponse | ValidationErrorResponse]:
    try:
        status_code: HTTPStatus | int = HTTPStatus(response.status_code)
    except ValueError:  # a status Python does not name, such as a CDN's 520: kept as its number
        status_code = response.status_code
    return Response(
        status_code=status_code,
        content=response.content,
        headers=response.headers,
        parsed=_parse_response(client=client, response=response),
    )


def sync_detailed(
    account_group_id: str,
    scan_id: str,
    *,
    client: AuthenticatedClient,
) -> Response[ErrorResponse | SignalScanEventsResponse | ValidationErrorResponse]:
    """A signal scan's status changes

     The scan's audit trail, oldest first; `from` is null for its creation. Requires `signals:read` or
    `signals:write` and access to the account group.

    Args:
        account_group_id (str): Account group ID that scopes the request: 24 hexadecimal
            characters, either case. Example: 507f1f77bcf86cd799439011.
        scan_id (str): Signal scan ID returned when the scan was started: 24 hexadecimal
            characters, either case. Example: 65a1f0c2e4b0a1b2c3d4e5f6.

    Raises:
        errors.UnexpectedStatus: If the server returns a body that is not the one documented for its status (not
            JSON, or JSON without its fields: a proxy's own error page) and Client.raise_on_unexpected_status is
            True; without it, that response's `parsed` is None. Every status is documented: one without an answer
            of its own is the error envelope, ErrorResponse.
        httpx.TimeoutException: If one wait takes longer than Client.timeout allows: connecting, sending, waiting for
            a pooled connection, or any one read of the answer. It bounds each wait, not the whole call.
        httpx.TransportError: If the connection cannot be made, or is lost before the whole answer arrived
            (TimeoutException is one of these). A change sent may have committed all the same.

    Returns:
        Response[ErrorResponse | SignalScanEventsResponse | ValidationErrorResponse]
    """

    kwargs = _get_kwargs(
        account_group_id=account_group_id,
        scan_id=scan_id,
    )

    response = client.get_httpx_client().request(
        **kwargs,
    )

    return _build_response(client=client, response=response)


def sync(
    account_group_id: str,
    scan_id: str,
    *,
    client: AuthenticatedClient,
) -> ErrorResponse | SignalScanEventsResponse | ValidationErrorResponse | None:
    """A signal scan's status changes

     The scan's audit trail, oldest first; `from` is null for its creation. Requires `signals:read` or
    `signals:write` and access to the account group.

    Args:
        account_group_id (str): Account group ID that scopes the request: 24 hexadecimal
            characters, either case. Example: 507f1f77bcf86cd799439011.
        scan_id (str): Signal scan ID returned when the scan was started: 24 hexadecimal
            characters, either case. Example: 65a1f0c2e4b0a1b2c3d4e5f6.

    Raises:
        errors.UnexpectedStatus: If the server returns a body that is not the one documented for its status (not
            JSON, or JSON without its fields: a proxy's own error page) and Client.raise_on_unexpected_status is
            True; without it, that response's `parsed` is None. Every status is documented: one without an answer
            of its own is the error envelope, ErrorResponse.
        httpx.TimeoutException: If one wait takes longer than Client.timeout allows: connecting, sending, waiting for
            a pooled connection, or any one read of the answer. It bounds each wait, not the whole call.
        httpx.TransportError: If the connection cannot be made, or is lost before the whole answer arrived
            (TimeoutException is one of these). A change sent may have committed all the same.

    Returns:
        ErrorResponse | SignalScanEventsResponse | ValidationErrorResponse
    """

    return sync_detailed(
        account_group_id=account_group_id,
        scan_id=scan_id,
        client=client,
    ).parsed


async def asyncio_detailed(
    account_group_id: str,
    scan_id: str,
    *,
    client: AuthenticatedClient,
) -> Response[ErrorResponse | SignalScanEventsResponse | ValidationErrorResponse]:
    """A signal scan's status changes

     The scan's audit trail, oldest first; `from` is null for its creation. Requires `signals:read` or
    `signals:write` and access to the account group.

    Args:
        account_group_id (str): Account group ID that scopes the request: 24 hexadecimal
            characters, either case. Example: 507f1f77bcf86cd799439011.
        scan_id (str): Signal scan ID returned when the scan was started: 24 hexadecimal
            characters, either case. Example: 65a1f0c2e4b0a1b2c3d4e5f6.

    Raises:
        errors.UnexpectedStatus: If the server returns a body that is not the one documented for its status (not
            JSON, or JSON without its fields: a proxy's own error page) and Client.raise_on_unexpected_status is
            True; without it, that response's `parsed` is None. Every status is documented: one without an answer
            of its own is the error envelope, ErrorResponse.
        httpx.TimeoutException: If one wait takes longer than Client.timeout allows: connecting, sending, waiting for
            a pooled connection, or any one read of the answer. It bounds each wait, not the whole call.
        httpx.TransportError: If the connection cannot be made, or is lost before the whole answer arrived
            (TimeoutException is one of these). A change sent may have committed all the same.

    Returns:
        Response[ErrorResponse | SignalScanEventsResponse | ValidationErrorResponse]
    """

    kwargs = _get_kwargs(
        account_group_id=account_group_id,
        scan_id=scan_id,
    )

    response = await client.get_async_httpx_client().request(**kwargs)

    return _build_response(client=client, response=response)


async def asyncio(
    account_group_id: str,
    scan_id: str,
    *,
    client: AuthenticatedClient,
) -> ErrorResponse | SignalScanEventsResponse | ValidationErrorResponse | None:
    """A signal scan's status changes

     The scan's audit trail, oldest first; `from` is null for its creation. Requires `signals:read` or
    `signals:write` and access to the account group.

    Args:
        account_group_id (str): Account group ID that scopes the request: 24 hexadecimal
            characters, either case. Example: 507f1f77bcf86cd799439011.
        scan_id (str): Signal scan ID returned when the scan was started: 24 hexadecimal
            characters, either case. Example: 65a1f0c2e4b0a1b2c3d4e5f6.

    Raises:
        errors.UnexpectedStatus: If the server returns a body that is not the one documented for its status (not
            JSON, or JSON without its fields: a proxy's own error page) and Client.raise_on_unexpected_status is
            True; without it, that response's `parsed` is None. Every status is documented: one without an answer
            of its own is the error envelope, ErrorResponse.
        httpx.TimeoutException: If one wait takes longer than Client.timeout allows: connecting, sending, waiting for
            a pooled connection, or any one read of the answer. It bounds each wait, not the whole call.
        httpx.TransportError: If the connection cannot be made, or is lost before the whole answer arrived
            (TimeoutException is one of these). A change sent may have committed all the same.

    Returns:
        ErrorResponse | SignalScanEventsResponse | ValidationErrorResponse
    """

    return (
        await asyncio_detailed(
            account_group_id=account_group_id,
            scan_id=scan_id,
            client=client,
        )
    ).parsed
