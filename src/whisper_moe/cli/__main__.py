"""`python -m whisper_moe.cli ...` (what torchrun runs): the same as `whisper-moe ...`."""

import sys

from whisper_moe.cli import main

sys.exit(main())
