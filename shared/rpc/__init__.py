"""Generated gRPC stubs for proto/signer.proto. Regenerate with `make proto`."""
