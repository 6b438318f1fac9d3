"""The signer's metrics over the real grpc.aio server (FakeToken): each request counted once by CA and
result (ok, refused, error), the token and audit write histograms, batch sizes, as /metrics renders
them at scrape time."""

from __future__ import annotations

from pathlib import Path

import grpc

from shared.rpc import signer_pb2 as pb
from shared.rpc import signer_pb2_grpc as pb_grpc
from signer.metrics import render
from signer.service import SignerServer
from signer.token import TokenError
from tests.metrics_text import value
from tests.unit.signer.signer_fixtures import T, make_ca, status
from tests.unit.signer.test_signer_batch import now_window, run, setup
from tests.unit.signer.test_signer_verify_status import ISSUED, REVOKED


def scrape(server: SignerServer) -> str:
    assert server.admin is not None
    return render(server.service.state, server.admin.rotator, server.service.audit_space,
                  server.service.verifier, server.service)


def test_signatures_by_ca_and_result(tmp_path: Path) -> None:
    conf, ca, token = setup(tmp_path)
    stranger = make_ca("stranger")
    batch = [
        pb.SignRequest(request_id="ok", responses=[now_window(ca.cert_id(ISSUED))]),
        pb.SignRequest(request_id="ok2", responses=[now_window(ca.cert_id(0x99), pb.UNKNOWN)]),
        pb.SignRequest(request_id="policy", responses=[status(ca.cert_id(ISSUED), this_update=T, next_update=T - 1)]),
        pb.SignRequest(request_id="status", responses=[now_window(ca.cert_id(REVOKED))]),  # our data disagrees
        pb.SignRequest(request_id="stranger", responses=[now_window(stranger.cert_id(ISSUED))]),
    ]

    async def scenario(stub: pb_grpc.SignerStub, channel: grpc.aio.Channel, server: SignerServer) -> None:
        before = scrape(server)
        assert value(before, "ocsp_signer_signatures_total", ca="alpha", result="ok") is None  # none yet
        await stub.SignBatch(pb.SignBatchRequest(requests=batch))
        token.fail = TokenError("the token went away")
        await stub.SignBatch(pb.SignBatchRequest(requests=batch[:1]))
        token.fail = None
        text = scrape(server)
        assert value(text, "ocsp_signer_signatures_total", ca="alpha", result="ok") == 2
        assert value(text, "ocsp_signer_signatures_total", ca="alpha", result="refused") == 1  # status data
        assert value(text, "ocsp_signer_signatures_total", ca="", result="refused") == 2  # policy, unknown CA
        assert value(text, "ocsp_signer_signatures_total", ca="alpha", result="error") == 1  # the token
        assert value(text, "ocsp_signer_status_refusals_total", ca="alpha") == 1
        assert value(text, "ocsp_signer_sign_seconds_count") == 3  # two signed, one failed in the token
        assert value(text, "ocsp_signer_batch_size_count") == 2 and value(text, "ocsp_signer_batch_size_sum") == 6
        assert value(text, "ocsp_signer_batch_size_bucket", le="4.0") == 1  # the batch of one
        writes = value(text, "ocsp_signer_audit_write_seconds_count")
        assert writes is not None and writes >= 1
        assert value(text, "ocsp_signer_audit_write_failures_total") == 0
        assert value(text, "ocsp_signer_signatures_in_flight") == 0
        assert value(text, "ocsp_signer_responder_generation", ca="alpha") == 1

    run(conf, token, scenario)
