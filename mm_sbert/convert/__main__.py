from __future__ import annotations

import sys

from mm_sbert.convert.convert_command import main

sys.exit(main())
