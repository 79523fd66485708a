from http import HTTPStatus
from typing import Any
from urllib.parse import quote

import httpx

from ... import errors
from ...client import AuthenticatedClient, Client
from ...models.error_response import ErrorResponse
from ...models.scan_status import ScanStatus
from ...models.signal_scan_list_response import SignalScanListResponse
from ...models.validation_error_response import ValidationErrorResponse
from ...types import UNSET, Response, Unset


def _get_kwargs(
    account_group_id: str,
    *,
    status: ScanStatus | Unset = UNSET,
    limit: int | Unset = UNSET,
    cursor: str | Unset = UNSET,
) -> dict[str, Any]:

    params: dict[str, Any] = {}

    json_status: str | Unset = UNSET
    if not isinstance(status, Unset):
        json_status = status.value

    params["status"] = json_status

    params["limit"] = limit

    params["cursor"] = cursor

    params = {k: v for k, v in params.items() if v is not UNSET and v is not None}

    _kwargs: dict[str, Any] = {
        "method": "get",
        "url": "/v1/accounts/{account_group_id}/signals/scans".format(
            account_group_id=quote(str(account_group_id), safe=""),
        ),
        "params": params,
    }

    return _kwargs


def _parse_response(
    *, client: AuthenticatedClient | Client, response: httpx.Response
) -> ErrorResponse | SignalScanListResponse | ValidationErrorResponse | None:
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
) -> ErrorResponse | SignalScanListResponse | ValidationErrorResponse:
    if response.status_code == 200:
        response_200 = SignalScanListResponse.from_dict(response.json())

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
) -> Response[ErrorResponse | SignalScanListResponse | ValidationErrorResponse]:
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
    *,
    client: AuthenticatedClient,
    status: ScanStatus | Unset = UNSET,
    limit: int | Unset = UNSET,
    cursor: str | Unset = UNSET,
) -> Response[ErrorResponse | SignalScanListResponse | ValidationErrorResponse]:
    """List signal scans

     The account group's scans (or only those in one `status`), newest first, a page at a time: pass
    `nextCursor` back as `cursor`; it is null on the last page. A malformed or unknown query parameter
    is 400 naming it. Requires `signals:read` or `signals:write` and access to the account group.

    Args:
        account_group_id (str): Account group ID that scopes the request: 24 hexadecimal
            characters, either case. Example: 507f1f77bcf86cd799439011.
        status (ScanStatus | Unset): Where a scan is in its life.

            ```text
            queued ──► running ──► completed
               │          │──────► failed
               └──────────┴──────► cancelled
            ```
            `completed`, `failed` and `cancelled` are final.
        limit (int | Unset): Scans per page, 1 to 100; 20 when absent.
        cursor (str | Unset): The `nextCursor` of the previous page, passed back unchanged (an
            opaque token).

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
        Response[ErrorResponse | SignalScanListResponse | ValidationErrorResponse]
    """

    kwargs = _get_kwargs(
        account_group_id=account_group_id,
        status=status,
        limit=limit,
        cursor=cursor,
    )

    response = client.get_httpx_client().request(
        **kwargs,
    )

    return _build_response(client=client, response=response)


def sync(
    account_group_id: str,
    *,
    client: AuthenticatedClient,
    status: ScanStatus | Unset = UNSET,
    limit: int | Unset = UNSET,
    cursor: str | Unset = UNSET,
) -> ErrorResponse | SignalScanListResponse | ValidationErrorResponse | None:
    """List signal scans

     The account group's scans (or only those in one `status`), newest first, a page at a time: pass
    `nextCursor` back as `cursor`; it is null on the last page. A malformed or unknown query parameter
    is 400 naming it. Requires `signals:read` or `signals:write` and access to the account group.

    Args:
        account_group_id (str): Account group ID that scopes the request: 24 hexadecimal
            characters, either case. Example: 507f1f77bcf86cd799439011.
        status (ScanStatus | Unset): Where a scan is in its life.

            ```text
            queued ──► running ──► completed
               │          │──────► failed
               └──────────┴──────► cancelled
            ```
            `completed`, `failed` and `cancelled` are final.
        limit (int | Unset): Scans per page, 1 to 100; 20 when absent.
        cursor (str | Unset): The `nextCursor` of the previous page, passed back unchanged (an
            opaque token).

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
        ErrorResponse | SignalScanListResponse | ValidationErrorResponse
    """

    return sync_detailed(
        account_group_id=account_group_id,
        client=client,
        status=status,
        limit=limit,
        cursor=cursor,
    ).parsed


async def asyncio_detailed(
    account_group_id: str,
    *,
    client: AuthenticatedClient,
    status: ScanStatus | Unset = UNSET,
    limit: int | Unset = UNSET,
    cursor: str | Unset = UNSET,
) -> Response[ErrorResponse | SignalScanListResponse | ValidationErrorResponse]:
    """List signal scans

     The account group's scans (or only those in one `status`), newest first, a page at a time: pass
    `nextCursor` back as `cursor`; it is null on the last page. A malformed or unknown query parameter
    is 400 naming it. Requires `signals:read` or `signals:write` and access to the account group.

    Args:
        account_group_id (str): Account group ID that scopes the request: 24 hexadecimal
            characters, either case. Example: 507f1f77bcf86cd799439011.
        status (ScanStatus | Unset): Where a scan is in its life.

            ```text
            queued ──► running ──► completed
               │          │──────► failed
               └──────────┴──────► cancelled
            ```
            `completed`, `failed` and `cancelled` are final.
        limit (int | Unset): Scans per page, 1 to 100; 20 when absent.
        cursor (str | Unset): The `nextCursor` of the previous page, passed back unchanged (an
            opaque token).

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
        Response[ErrorResponse | SignalScanListResponse | ValidationErrorResponse]
    """

    kwargs = _get_kwargs(
        account_group_id=account_group_id,
        status=status,
        limit=limit,
        cursor=cursor,
    )

    response = await client.get_async_httpx_client().request(**kwargs)

    return _build_response(client=client, response=response)


async def asyncio(
    account_group_id: str,
    *,
    client: AuthenticatedClient,
    status: ScanStatus | Unset = UNSET,
    limit: int | Unset = UNSET,
    cursor: str | Unset = UNSET,
) -> ErrorResponse | SignalScanListResponse | ValidationErrorResponse | None:
    """List signal scans

     The account group's scans (or only those in one `status`), newest first, a page at a time: pass
    `nextCursor` back as `cursor`; it is null on the last page. A malformed or unknown query parameter
    is 400 naming it. Requires `signals:read` or `signals:write` and access to the account group.

    Args:
        account_group_id (str): Account group ID that scopes the request: 24 hexadecimal
            characters, either case. Example: 507f1f77bcf86cd799439011.
        status (ScanStatus | Unset): Where a scan is in its life.

            ```text
            queued ──► running ──► completed
               │          │──────► failed
               └──────────┴──────► cancelled
            ```
            `completed`, `failed` and `cancelled` are final.
        limit (int | Unset): Scans per page, 1 to 100; 20 when absent.
        cursor (str | Unset): The `nextCursor` of the previous page, passed back unchanged (an
            opaque token).

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
        ErrorResponse | SignalScanListResponse | ValidationErrorResponse
    """

    return (
        await asyncio_detailed(
            account_group_id=account_group_id,
            client=client,
            status=status,
            limit=limit,
            cursor=cursor,
        )
    ).parsed
