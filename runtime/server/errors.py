"""OpenAI-style error bodies, and the mapping from exceptions to HTTP statuses."""

from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
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


async def _on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI answers 422; OpenAI answers 400 with the offending parameter."""
    error = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request", "type": ""}
    loc = [str(part) for part in error.get("loc", ()) if part != "body"]
    if error.get("type") == "json_invalid":
        message, param = f"the request body is not valid JSON: {error.get('ctx', {}).get('error', error['msg'])}", None
    elif not loc:
        message, param = f"the request body is invalid: {error['msg']}", None
    else:
        param = loc[0]
        message = f"invalid value for '{'.'.join(loc)}': {error['msg']}"
    return error_response(400, message, "invalid_request_error", param)


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
