"""gRPC metadata the two halves agree on, beside the messages of proto/signer.proto.

A failed call reaches the client as a status code either way, whether the signer's own code refused it
or gRPC gave up on the connection under it (GOAWAY, reset, keepalive timeout): both are UNAVAILABLE
with a message. The signer therefore marks every error status its Sign handler returns with the
trailing metadata key ``REFUSED`` (value: the code's name), and the frontend retries a Sign over a new
connection only when that mark is missing (frontend.signer_client), never one the signer refused.
"""

import grpc

REFUSED = "ocsp-signer-refused"

# The status code of a Sign the signer refused because its own copy of the CA's status data disagrees
# with a status asked for (signer.status_check): the frontend answers tryLater and logs it apart from
# policy refusals, since it means the two halves' data differ (a reload in progress, or tampering).
STATUS_DISAGREES = grpc.StatusCode.ABORTED

# Trailing metadata of a SignBatch refused for carrying more requests than the signer's [policy]
# max_batch (RESOURCE_EXHAUSTED): the bound, as decimal digits. The frontend sends smaller batches then.
MAX_BATCH = "ocsp-signer-max-batch"
