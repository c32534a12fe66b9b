"""OpenAI-style error bodies, and the mapping from exceptions to HTTP statuses."""

from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from infire.errors import EngineDeadError, InfireError, InvalidRequestError

logger = logging.getLogger(__name__)


class ModelNotFoundError(InfireError):
    """The request names a model this server does not serve."""

    param = "model"
    code = "model_not_found"


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(status: int, message: str, type_: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, type_, param, code), status_code=status)


def status_of(exc: Exception) -> tuple[int, str]:
    """HTTP status and OpenAI error type for an exception."""
    if isinstance(exc, ModelNotFoundError):
        return 404, "invalid_request_error"
    if isinstance(exc, InvalidRequestError):
        return 400, "invalid_request_error"
    if isinstance(exc, EngineDeadError):
        return 503, "service_unavailable"
    return 500, "server_error"


def exception_body(exc: Exception) -> tuple[int, dict]:
    status, type_ = status_of(exc)
    message = str(exc) if status < 500 or isinstance(exc, InfireError) else "internal server error; see the server log"
    return status, error_body(message, type_, getattr(exc, "param", None), getattr(exc, "code", None))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(InfireError, _on_infire_error)
    app.add_exception_handler(Exception, _on_unexpected_error)


class InvalidBodyError(InvalidRequestError):
    """The body is not JSON, or a field is missing or of the wrong type."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param

    @classmethod
    def from_validation(cls, exc: RequestValidationError | ValidationError, model: type[BaseModel] | None = None) -> "InvalidBodyError":
        """The first problem pydantic found, named by its parameter path."""
        errors = exc.errors()
        if not errors:
            return cls("the request body is invalid")
        error = errors[0]
        loc = [str(part) for part in error.get("loc", ()) if part != "body"]
        if error.get("type") == "json_invalid":
            return cls(f"the request body is not valid JSON: {error.get('ctx', {}).get('error', error['msg'])}")
        if not loc:
            return cls(f"the request body is invalid: {error['msg']}")
        if error.get("type") == "missing":
            return cls(f"'{'.'.join(loc)}' is required", loc[0])
        field = model.model_fields.get(loc[0]) if model is not None else None
        is_member = len(error["loc"]) > 1 and isinstance(error["loc"][1], str)  # loc: (field, member type, ...)
        if field is not None and is_member and sum(e.get("loc", ())[:1] == error["loc"][:1] for e in errors) > 1:
            # A union field: pydantic reports one error per member; name the allowed types instead.
            got = type(error.get("input")).__name__
            return cls(f"invalid value for '{loc[0]}': expected {_type_name(field.annotation)}, got {got}", loc[0])
        return cls(f"invalid value for '{'.'.join(loc)}': {error['msg']}", loc[0])


def _type_name(annotation: object) -> str:
    return annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")


async def _on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI answers 422; OpenAI answers 400 with the offending parameter."""
    return await _on_infire_error(request, InvalidBodyError.from_validation(exc))


async def _on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    type_ = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    message = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    if exc.status_code == 404:
        message = f"no route {request.method} {request.url.path}"
    return error_response(exc.status_code, message, type_)


async def _on_infire_error(request: Request, exc: InfireError) -> JSONResponse:
    status, body = exception_body(exc)
    return JSONResponse(body, status_code=status)


async def _on_unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unexpected error serving %s %s", request.method, request.url.path)
    status, body = exception_body(exc)
    return JSONResponse(body, status_code=status)
