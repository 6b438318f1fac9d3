"""python -m signer.ctl: the same as the ocspctl command."""

import sys

from signer.ctl.main import main

sys.exit(main())
