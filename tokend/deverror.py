"""Error answers shaped as Entra ID's, for the development identity provider (`tokend.devidp`)
and its delegated grants (`tokend.devusers`), and for tests that play a failing Entra ID."""

from __future__ import annotations

import uuid

from starlette.responses import JSONResponse, Response

from tokend.clock import SYSTEM_CLOCK


def entra_error(status: int, error: str, code: int, description: str) -> Response:
    """An error answer as Entra ID shapes it: AADSTS code, trace and correlation ids."""
    trace_id, correlation_id = str(uuid.uuid4()), str(uuid.uuid4())
    return JSONResponse(
        {
            "error": error,
            "error_description": f"AADSTS{code}: {description}\r\nTrace ID: {trace_id}\r\n"
            f"Correlation ID: {correlation_id}",
            "error_codes": [code],
            "timestamp": SYSTEM_CLOCK.now().strftime("%Y-%m-%d %H:%M:%SZ"),
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": "https://login.microsoftonline.com/error?code=" + str(code),
        },
        status_code=status,
    )
