"""Typed errors shared by every layer.

Each error knows its API rendering (status, `type`, `code`, `param`) and its CLI exit code.
The server's middleware and the CLI's entry point each map them in exactly one place.
"""
from __future__ import annotations


class LlmpError(Exception):
    status = 500
    type = "server_error"
    code: str | None = "internal_error"
    exit_code = 1

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def to_dict(self) -> dict:
        return {"message": self.message, "type": self.type, "param": self.param, "code": self.code}


class InvalidRequestError(LlmpError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"
    exit_code = 2


class ContextLengthExceededError(InvalidRequestError):
    code = "context_length_exceeded"


class AuthenticationError(LlmpError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"
    exit_code = 3


class PermissionDeniedError(LlmpError):
    status = 403
    type = "permission_error"
    code = "insufficient_permissions"
    exit_code = 3


class NotFoundError(LlmpError):
    status = 404
    type = "not_found_error"
    code = "not_found"
    exit_code = 4


class RateLimitError(LlmpError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"
    exit_code = 5


class QuotaExceededError(LlmpError):
    status = 429
    type = "quota_exceeded_error"
    code = "quota_exceeded"
    exit_code = 5


class PayloadTooLargeError(InvalidRequestError):
    status = 413
    code = "file_too_large"


class ServerError(LlmpError):
    pass


class ServiceUnavailableError(LlmpError):
    status = 503
    type = "service_unavailable_error"
    code = "service_unavailable"
    exit_code = 6


class ConfigError(LlmpError):
    """Bad settings or a bad home folder (CLI-side)."""
    exit_code = 2
    code = "config_error"


class ModelError(InvalidRequestError):
    """A model file that cannot be read, a bad quant type, a failed pull..."""
    code = "model_error"
