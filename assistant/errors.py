"""OpenAI-style errors: ``{"error": {"message", "type", "param", "code"}}`` with the matching HTTP status."""

from __future__ import annotations


class APIError(Exception):
    """A request the server refuses, said the way OpenAI's API says it."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def invalid(message: str, param: str | None = None, code: str | None = None) -> APIError:
    """400: the request itself is wrong."""
    return APIError(400, message, param=param, code=code)


def model_not_found(model: str, served: str) -> APIError:
    """404: the request names a model this server does not serve."""
    return APIError(404, f"The model `{model}` does not exist; this server serves `{served}` (GET /v1/models).",
                    param="model", code="model_not_found")


def overloaded(limit: int) -> APIError:
    """429: more requests in flight than the configured concurrency."""
    return APIError(429, f"Too many requests in flight (max_concurrency={limit}); retry shortly.",
                    type="rate_limit_error", code="rate_limit_exceeded")


def shutting_down() -> APIError:
    """503: the server is shutting down."""
    return APIError(503, "The server is shutting down.", type="server_error", code="shutting_down")


def server_error(message: str) -> APIError:
    """500: something failed inside the server."""
    return APIError(500, message, type="server_error", code="internal_error")
