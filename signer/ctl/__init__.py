"""ocspctl, the operator's tool for the signer host (entry point: signer.ctl.main:main)."""
