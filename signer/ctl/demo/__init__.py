"""``ocspctl demo``: a demo PKI on a SoftHSM token. Nothing outside this package imports it, except
signer.ctl.main, which registers the command group."""
