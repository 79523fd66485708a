from http import HTTPStatus
from typing import Any
from urllib.parse import quote

import httpx

from ...client import AuthenticatedClient, Client
from ...models.change_event import ChangeEvent
from ...models.error_response import ErrorResponse
from ...models.scan_status import ScanStatus
from ...models.validation_error_response import ValidationErrorResponse
from ...types import UNSET, Response, Unset


def _get_kwargs(
    account_group_id: str,
    *,
    after: str | Unset = UNSET,
    scan_id: list[str] | Unset = UNSET,
    status: list[ScanStatus] | Unset = UNSET,
    last_event_id: None | str | Unset = UNSET,
) -> dict[str, Any]:
    headers: dict[str, Any] = {}
    if not isinstance(last_event_id, Unset):
        headers["Last-Event-ID"] = last_event_id

    params: dict[str, Any] = {}

    params["after"] = after

    json_scan_id: list[str] | Unset = UNSET
    if not isinstance(scan_id, Unset):
        json_scan_id = scan_id

    params["scanId"] = json_scan_id

    json_status: list[str] | Unset = UNSET
    if not isinstance(status, Unset):
        json_status = []
        for status_item_data in status:
            status_item = status_item_data.value
            json_status.append(status_item)

    params["status"] = json_status

    params = {k: v for k, v in params.items() if v is not UNSET and v is not None}

    _kwargs: dict[str, Any] = {
        "method": "get",
        "url": "/v1/accounts/{account_group_id}/signals/scans/changes".format(
            account_group_id=quote(str(account_group_id), safe=""),
        ),
        "params": params,
    }

    _kwargs["headers"] = headers
    return _kwargs


def _parse_response(
    *, client: AuthenticatedClient | Client, response: httpx.Response
) -> ChangeEvent | ErrorResponse | ValidationErrorResponse:
    if response.status_code == 200:
        response_200 = ChangeEvent.from_dict(response.text)

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

    if response.status_code == 410:
        response_410 = ErrorResponse.from_dict(response.json())

        return response_410

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
) -> Response[ChangeEvent | ErrorResponse | ValidationErrorResponse]:
    return Response(
        status_code=HTTPStatus(response.status_code),
        content=response.content,
        headers=response.headers,
        parsed=_parse_response(client=client, response=response),
    )


def sync_detailed(
    account_group_id: str,
    *,
    client: AuthenticatedClient,
    after: str | Unset = UNSET,
    scan_id: list[str] | Unset = UNSET,
    status: list[ScanStatus] | Unset = UNSET,
    last_event_id: None | str | Unset = UNSET,
) -> Response[ChangeEvent | ErrorResponse | ValidationErrorResponse]:
    """Follow status changes

     The account group's scan status changes as they commit, as Server-Sent Events: each change is one
    `scan.status_changed` event whose `id` is a cursor. Reconnect with `Last-Event-ID` (or `?after=`)
    set to the last id received to get every change after it, in order, none missed and none repeated;
    without either the stream starts now. A cursor from before changes that are no longer kept
    (`AUDIT_RETENTION_DAYS`) answers 410 `CURSOR_EXPIRED`: reconnect without one and re-read the scans'
    current state. Event ids are opaque. A scan's creation is sent too (`from` null). The stream opens
    with `retry: 2000` and an `id:` of where it starts (no event), so a reconnection before any event
    resumes from there, sends `: keep-alive` comments, and ends after `STREAM_MAX_AGE_MS` (reconnect to
    continue). Errors before the stream opens are the usual envelope. Requires `signals:read` or
    `signals:write` and access to the account group; at most `STREAM_MAX_PER_KEY` open streams per key
    (429 past it).

    Args:
        account_group_id (str): The account group that scopes a request. Example:
            507f1f77bcf86cd799439011.
        after (str | Unset):
        scan_id (list[str] | Unset):
        status (list[ScanStatus] | Unset):
        last_event_id (None | str | Unset):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Response[ChangeEvent | ErrorResponse | ValidationErrorResponse]
    """

    kwargs = _get_kwargs(
        account_group_id=account_group_id,
        after=after,
        scan_id=scan_id,
        status=status,
        last_event_id=last_event_id,
    )

    response = client.get_httpx_client().request(
        **kwargs,
    )

    return _build_response(client=client, response=response)


def sync(
    account_group_id: str,
    *,
    client: AuthenticatedClient,
    after: str | Unset = UNSET,
    scan_id: list[str] | Unset = UNSET,
    status: list[ScanStatus] | Unset = UNSET,
    last_event_id: None | str | Unset = UNSET,
) -> ChangeEvent | ErrorResponse | ValidationErrorResponse | None:
    """Follow status changes

     The account group's scan status changes as they commit, as Server-Sent Events: each change is one
    `scan.status_changed` event whose `id` is a cursor. Reconnect with `Last-Event-ID` (or `?after=`)
    set to the last id received to get every change after it, in order, none missed and none repeated;
    without either the stream starts now. A cursor from before changes that are no longer kept
    (`AUDIT_RETENTION_DAYS`) answers 410 `CURSOR_EXPIRED`: reconnect without one and re-read the scans'
    current state. Event ids are opaque. A scan's creation is sent too (`from` null). The stream opens
    with `retry: 2000` and an `id:` of where it starts (no event), so a reconnection before any event
    resumes from there, sends `: keep-alive` comments, and ends after `STREAM_MAX_AGE_MS` (reconnect to
    continue). Errors before the stream opens are the usual envelope. Requires `signals:read` or
    `signals:write` and access to the account group; at most `STREAM_MAX_PER_KEY` open streams per key
    (429 past it).

    Args:
        account_group_id (str): The account group that scopes a request. Example:
            507f1f77bcf86cd799439011.
        after (str | Unset):
        scan_id (list[str] | Unset):
        status (list[ScanStatus] | Unset):
        last_event_id (None | str | Unset):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        ChangeEvent | ErrorResponse | ValidationErrorResponse
    """

    return sync_detailed(
        account_group_id=account_group_id,
        client=client,
        after=after,
        scan_id=scan_id,
        status=status,
        last_event_id=last_event_id,
    ).parsed


async def asyncio_detailed(
    account_group_id: str,
    *,
    client: AuthenticatedClient,
    after: str | Unset = UNSET,
    scan_id: list[str] | Unset = UNSET,
    status: list[ScanStatus] | Unset = UNSET,
    last_event_id: None | str | Unset = UNSET,
) -> Response[ChangeEvent | ErrorResponse | ValidationErrorResponse]:
    """Follow status changes

     The account group's scan status changes as they commit, as Server-Sent Events: each change is one
    `scan.status_changed` event whose `id` is a cursor. Reconnect with `Last-Event-ID` (or `?after=`)
    set to the last id received to get every change after it, in order, none missed and none repeated;
    without either the stream starts now. A cursor from before changes that are no longer kept
    (`AUDIT_RETENTION_DAYS`) answers 410 `CURSOR_EXPIRED`: reconnect without one and re-read the scans'
    current state. Event ids are opaque. A scan's creation is sent too (`from` null). The stream opens
    with `retry: 2000` and an `id:` of where it starts (no event), so a reconnection before any event
    resumes from there, sends `: keep-alive` comments, and ends after `STREAM_MAX_AGE_MS` (reconnect to
    continue). Errors before the stream opens are the usual envelope. Requires `signals:read` or
    `signals:write` and access to the account group; at most `STREAM_MAX_PER_KEY` open streams per key
    (429 past it).

    Args:
        account_group_id (str): The account group that scopes a request. Example:
            507f1f77bcf86cd799439011.
        after (str | Unset):
        scan_id (list[str] | Unset):
        status (list[ScanStatus] | Unset):
        last_event_id (None | str | Unset):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Response[ChangeEvent | ErrorResponse | ValidationErrorResponse]
    """

    kwargs = _get_kwargs(
        account_group_id=account_group_id,
        after=after,
        scan_id=scan_id,
        status=status,
        last_event_id=last_event_id,
    )

    response = await client.get_async_httpx_client().request(**kwargs)

    return _build_response(client=client, response=response)


async def asyncio(
    account_group_id: str,
    *,
    client: AuthenticatedClient,
    after: str | Unset = UNSET,
    scan_id: list[str] | Unset = UNSET,
    status: list[ScanStatus] | Unset = UNSET,
    last_event_id: None | str | Unset = UNSET,
) -> ChangeEvent | ErrorResponse | ValidationErrorResponse | None:
    """Follow status changes

     The account group's scan status changes as they commit, as Server-Sent Events: each change is one
    `scan.status_changed` event whose `id` is a cursor. Reconnect with `Last-Event-ID` (or `?after=`)
    set to the last id received to get every change after it, in order, none missed and none repeated;
    without either the stream starts now. A cursor from before changes that are no longer kept
    (`AUDIT_RETENTION_DAYS`) answers 410 `CURSOR_EXPIRED`: reconnect without one and re-read the scans'
    current state. Event ids are opaque. A scan's creation is sent too (`from` null). The stream opens
    with `retry: 2000` and an `id:` of where it starts (no event), so a reconnection before any event
    resumes from there, sends `: keep-alive` comments, and ends after `STREAM_MAX_AGE_MS` (reconnect to
    continue). Errors before the stream opens are the usual envelope. Requires `signals:read` or
    `signals:write` and access to the account group; at most `STREAM_MAX_PER_KEY` open streams per key
    (429 past it).

    Args:
        account_group_id (str): The account group that scopes a request. Example:
            507f1f77bcf86cd799439011.
        after (str | Unset):
        scan_id (list[str] | Unset):
        status (list[ScanStatus] | Unset):
        last_event_id (None | str | Unset):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        ChangeEvent | ErrorResponse | ValidationErrorResponse
    """

    return (
        await asyncio_detailed(
            account_group_id=account_group_id,
            client=client,
            after=after,
            scan_id=scan_id,
            status=status,
            last_event_id=last_event_id,
        )
    ).parsed
