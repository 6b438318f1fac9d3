"""The response encoder with per-responder templates gives the same bytes as the encoder before it
(tests/unit/shared/response_reference.py, kept verbatim), for drawn statuses, nonces, signatures,
certificates and ResponderIDs: both ``build_response_data``/``signed_response`` and the
``ResponseTemplate`` methods the signer calls."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.ocsp import response as fast
from shared.ocsp.response import ResponseTemplate, build_response_data, responder_id, signed_response
from shared.ocsp.types import (
    DIGEST_SIZES,
    CertId,
    CertStatus,
    HashAlgorithm,
    Revocation,
    RevocationReason,
    SingleStatus,
)
from tests.unit.shared import response_reference as reference

VECTORS = Path(__file__).resolve().parents[2] / "vectors"
RESPONDER_DER = (VECTORS / "responder.der").read_bytes()
CA_DER = (VECTORS / "ca.der").read_bytes()
RESPONDER_IDS = [responder_id(RESPONDER_DER, "key"), responder_id(RESPONDER_DER, "name"),
                 responder_id(CA_DER, "name")]
ALGORITHMS = ["sha256_ecdsa", "sha384_ecdsa", "sha256_rsa", "sha512_rsa", "ed25519"]

ZONES = [UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-7, minutes=-30))]
times = st.builds(lambda seconds, micro, zone: datetime.fromtimestamp(seconds, UTC).replace(microsecond=micro)
                  .astimezone(zone),
                  st.integers(0, 253370000000), st.integers(0, 999999), st.sampled_from(ZONES))
# EPOCH in whole seconds and with microseconds, to reach the extended-revoke form and its edge.
revocation_times = st.one_of(times, st.just(fast.EPOCH), st.just(fast.EPOCH.replace(microsecond=5)))


@st.composite
def cert_ids(draw: st.DrawFn) -> CertId:
    alg = draw(st.sampled_from(list(HashAlgorithm)))
    size = DIGEST_SIZES[alg]
    serial = draw(st.binary(min_size=1, max_size=140))  # up to long-form INTEGER lengths
    return CertId(alg, draw(st.binary(min_size=size, max_size=size)),
                  draw(st.binary(min_size=size, max_size=size)), serial)


@st.composite
def statuses(draw: st.DrawFn) -> SingleStatus:
    status = draw(st.sampled_from(list(CertStatus)))
    revocation = None
    if status is CertStatus.REVOKED:
        reason = draw(st.one_of(st.none(), st.sampled_from(list(RevocationReason))))
        revocation = Revocation(draw(revocation_times), reason, draw(st.one_of(st.none(), times)))
    return SingleStatus(draw(cert_ids()), status, draw(times), draw(times), revocation)


nonces = st.one_of(st.none(), st.binary(min_size=0, max_size=300))
certs = st.lists(st.sampled_from([RESPONDER_DER, CA_DER, b"\x30\x03\x02\x01\x01", b"\x30" * 70000]),
                 max_size=3)


@settings(max_examples=200, deadline=None)
@given(rid=st.sampled_from(RESPONDER_IDS), produced_at=times, items=st.lists(statuses(), min_size=1, max_size=6),
       nonce=nonces, algorithm=st.sampled_from(ALGORITHMS),
       signature=st.binary(min_size=0, max_size=600), chain=certs)
def test_same_bytes_as_the_reference_encoder(rid, produced_at, items, nonce, algorithm, signature, chain) -> None:
    tbs = reference.build_response_data(responder_id=rid, produced_at=produced_at, statuses=items, nonce=nonce)
    der = reference.signed_response(tbs, algorithm, signature, chain)
    assert build_response_data(responder_id=rid, produced_at=produced_at, statuses=items, nonce=nonce) == tbs
    assert signed_response(tbs, algorithm, signature, chain) == der
    template = ResponseTemplate.of(rid, algorithm, chain)
    assert template.response_data(produced_at, items, nonce) == tbs
    assert template.signed(tbs, signature) == der


@settings(max_examples=50, deadline=None)
@given(items=st.lists(statuses(), min_size=1, max_size=3))
def test_the_time_cache_gives_what_the_reference_gives_again(items) -> None:
    """The same datetimes again (cached encodings) and equal instants in other zones."""
    rid = RESPONDER_IDS[0]
    for zone in ZONES:
        moved = [SingleStatus(s.cert_id, s.status, s.this_update.astimezone(zone), s.next_update.astimezone(zone),
                              s.revocation) for s in items]
        for _ in range(2):
            assert (ResponseTemplate.of(rid, "sha256_ecdsa", []).response_data(fast.EPOCH, moved, None)
                    == reference.build_response_data(responder_id=rid, produced_at=fast.EPOCH, statuses=items,
                                                     nonce=None))


def test_time_cache_is_bounded() -> None:
    start = datetime(2030, 1, 1, tzinfo=UTC)
    for i in range(fast._MAX_TIMES + 10):
        assert fast._time(start + timedelta(seconds=i)) == reference._time(start + timedelta(seconds=i))
    assert len(fast._TIMES) <= fast._MAX_TIMES


def test_naive_time_refused_and_not_cached() -> None:
    naive = datetime(2030, 1, 1)  # no zone: the point of the test
    for _ in range(2):
        with pytest.raises(ValueError, match="naive"):
            fast._time(naive)
    assert naive not in fast._TIMES


@pytest.mark.parametrize("algorithm", ["sha1_rsa", "md5_rsa", "nonsense"])
def test_template_refuses_what_signed_response_refuses(algorithm: str) -> None:
    with pytest.raises(ValueError, match="unsupported signature algorithm"):
        ResponseTemplate.of(RESPONDER_IDS[0], algorithm, [])
