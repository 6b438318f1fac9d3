"""Split by the kind of hostile input (issue 8): the tests now live in test_hostile_http_framing.py,
test_hostile_http_messages.py, test_hostile_connections.py, test_hostile_get_paths.py,
test_hostile_ocsp_der.py and test_hostile_serials.py, on the helpers in hostile_wire.py.

This module holds no tests; it re-exports the names tests/integration/test_limits.py imports from
it until that file imports them from tests.integration.hostile_wire, and can then be deleted."""

from __future__ import annotations

from tests.integration.hostile_wire import Wire, good_request, ocsp_get, ocsp_post

__all__ = ["Wire", "good_request", "ocsp_get", "ocsp_post"]
