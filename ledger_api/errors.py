"""Errors of the HTTP API: one root, each with the HTTP status and Formance-style code it answers with."""

from __future__ import annotations


class ApiError(Exception):
    """Root of every error the API raises on purpose (the core's and the pipelines' errors are mapped apart)."""

    error_code = "INTERNAL"
    status = 500


class Unauthorized(ApiError):
    """No bearer token, or one that is malformed, forged or expired."""

    error_code = "UNAUTHORIZED"
    status = 401


class Forbidden(ApiError):
    """A valid token whose key may not do this (another ledger, or a write with a read-only key)."""

    error_code = "FORBIDDEN"
    status = 403


class BodyTooLarge(ApiError):
    """The request body is larger than the server accepts."""

    error_code = "BODY_TOO_LARGE"
    status = 413

    def __init__(self, limit: int):
        super().__init__(f"the request body is larger than {limit} bytes; send less, or split a bulk into parts")
        self.limit = limit


class InvalidClient(ApiError):
    """The token endpoint could not authenticate the client (unknown id, wrong secret, revoked key)."""

    error_code = "invalid_client"
    status = 401


class InvalidTokenRequest(ApiError):
    """The token request itself is wrong (grant type, missing fields, a scope the key does not have)."""

    status = 400

    def __init__(self, error_code: str, message: str):
        super().__init__(message)
        self.error_code = error_code


class KeyNotFound(ApiError):
    """No API key with this client id."""

    error_code = "NOT_FOUND"
    status = 404

    def __init__(self, client_id: str):
        super().__init__(f"no API key with client id {client_id!r}")
        self.client_id = client_id


class NotSupported(ApiError):
    """A Formance route for a feature this ledger does not have; the message says what to use instead."""

    error_code = "NOT_SUPPORTED"
    status = 501
