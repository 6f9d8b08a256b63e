"""``python -m lambda_dpo.cli …``: the `lambda-dpo` command (what `accelerate launch` and `torchrun` run)."""

import sys

from lambda_dpo.cli import main

sys.exit(main())
