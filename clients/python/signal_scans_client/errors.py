"""Contains shared errors types that can be raised from API functions"""

from http import HTTPStatus


class UnexpectedStatus(Exception):
    """Raised by api functions when Client.raise_on_unexpected_status is True and the response's body is not the one
    documented for its status (not JSON, or JSON without its fields, such as an empty 431 or a proxy's own error
    page; every status is documented, one without an answer of its own as the error envelope): `status_code` and
    the raw body, `content`, say what came"""

    def __init__(self, status_code: int, content: bytes):
        # As a `Response`'s: an `HTTPStatus`, or for a status Python does not name its number.
        self.status_code: HTTPStatus | int
        try:
            self.status_code = HTTPStatus(status_code)
        except ValueError:
            self.status_code = status_code
        self.content = content

        super().__init__(
            f"Unexpected status code: {status_code}\n\nResponse content:\n{content.decode(errors='ignore')}"
        )


__all__ = ["UnexpectedStatus"]
