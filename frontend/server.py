"""The frontend's names in one place (the pipeline is frontend.app, routing and the listener
frontend.http_app, HTTP rendering frontend.http_answer)."""

from frontend.app import Answer, CaEntry, OcspApp, build_issuers, serving_ca
from frontend.http_app import FrontendServer, HttpProtocol, check_fd_limit

__all__ = ["Answer", "CaEntry", "FrontendServer", "HttpProtocol", "OcspApp", "build_issuers", "check_fd_limit",
           "serving_ca"]
