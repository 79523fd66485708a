from http import HTTPStatus
from typing import Any

import httpx

from ... import errors
from ...client import AuthenticatedClient, Client
from ...models.error_response import ErrorResponse
from ...models.openapi_response_200 import OpenapiResponse200
from ...models.validation_error_response import ValidationErrorResponse
from ...types import Response


def _get_kwargs() -> dict[str, Any]:

    _kwargs: dict[str, Any] = {
        "method": "get",
        "url": "/openapi.json",
    }

    return _kwargs


def _parse_response(
    *, client: AuthenticatedClient | Client, response: httpx.Response
) -> ErrorResponse | OpenapiResponse200 | ValidationErrorResponse | None:
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
) -> ErrorResponse | OpenapiResponse200 | ValidationErrorResponse:
    if response.status_code == 200:
        response_200 = OpenapiResponse200.from_dict(response.json())

        return response_200

    if response.status_code == 400:
        response_400 = ValidationErrorResponse.from_dict(response.json())

        return response_400

    response_default = ErrorResponse.from_dict(response.json())

    return response_default


def _build_response(
    *, client: AuthenticatedClient | Client, response: httpx.Response
) -> Response[ErrorResponse | OpenapiResponse200 | ValidationErrorResponse]:
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
    *,
    client: AuthenticatedClient | Client,
) -> Response[ErrorResponse | OpenapiResponse200 | ValidationErrorResponse]:
    """This OpenAPI 3.1 document

     No API key needed. Generated from the code of the version that serves it.

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
        Response[ErrorResponse | OpenapiResponse200 | ValidationErrorResponse]
    """

    kwargs = _get_kwargs()

    response = client.get_httpx_client().request(
        **kwargs,
    )

    return _build_response(client=client, response=response)


def sync(
    *,
    client: AuthenticatedClient | Client,
) -> ErrorResponse | OpenapiResponse200 | ValidationErrorResponse | None:
    """This OpenAPI 3.1 document

     No API key needed. Generated from the code of the version that serves it.

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
        ErrorResponse | OpenapiResponse200 | ValidationErrorResponse
    """

    return sync_detailed(
        client=client,
    ).parsed


async def asyncio_detailed(
    *,
    client: AuthenticatedClient | Client,
) -> Response[ErrorResponse | OpenapiResponse200 | ValidationErrorResponse]:
    """This OpenAPI 3.1 document

     No API key needed. Generated from the code of the version that serves it.

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
        Response[ErrorResponse | OpenapiResponse200 | ValidationErrorResponse]
    """

    kwargs = _get_kwargs()

    response = await client.get_async_httpx_client().request(**kwargs)

    return _build_response(client=client, response=response)


async def asyncio(
    *,
    client: AuthenticatedClient | Client,
) -> ErrorResponse | OpenapiResponse200 | ValidationErrorResponse | None:
    """This OpenAPI 3.1 document

     No API key needed. Generated from the code of the version that serves it.

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
        ErrorResponse | OpenapiResponse200 | ValidationErrorResponse
    """

    return (
        await asyncio_detailed(
            client=client,
        )
    ).parsed
