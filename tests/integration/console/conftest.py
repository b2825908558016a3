from __future__ import annotations

import sys
from pathlib import Path

# The aiomonitor telnet client lives beside the console's own tests (tests/integration/monitor).
_TELNET_HELPER_DIR = str(Path(__file__).resolve().parents[1] / "monitor")
if _TELNET_HELPER_DIR not in sys.path:
    sys.path.insert(0, _TELNET_HELPER_DIR)
