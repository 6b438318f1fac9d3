"""Split by what it tests (issue 8): the server tests now live in test_http_routes.py,
test_http_framing.py, test_http_pipelining.py, test_http_deadlines.py, test_http_connection_caps.py,
test_frontend_ocsp_answers.py and test_frontend_caching.py, on the helpers in frontend_server_env.py.

This module holds no tests; it re-exports ``Env`` for tests/unit/test_readiness.py until that file
imports it from tests.unit.frontend_server_env, and can then be deleted."""

from __future__ import annotations

from tests.unit.frontend_server_env import Env

__all__ = ["Env"]
