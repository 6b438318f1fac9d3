"""One error tree. Each subclass carries the OCSP response status the client gets.

The HTTP shell has a single ``except OCSPError as e`` and answers
``error_response(e.status)``; foreign exceptions are converted at the boundary.
"""

from __future__ import annotations

from shared.ocsp.types import ResponseStatus


class OCSPError(Exception):
    status: ResponseStatus = ResponseStatus.INTERNAL_ERROR
    # The frontend's: the request_id of the SignRequest this error came back for ("": none), which the
    # signer's refusal record, if it refused, carries too (frontend.signer_client, its access log).
    request_id: str = ""


class MalformedRequest(OCSPError):
    status = ResponseStatus.MALFORMED_REQUEST


class InternalError(OCSPError):
    status = ResponseStatus.INTERNAL_ERROR


class TryLater(OCSPError):
    status = ResponseStatus.TRY_LATER


class StatusDisagrees(TryLater):
    """The signer's own status data disagrees with ours (one side has not loaded a new CRL yet)."""


class Unauthorized(OCSPError):
    status = ResponseStatus.UNAUTHORIZED
