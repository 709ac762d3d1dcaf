"""Process-wide settings for the test run, set before any test module imports Flower or Ray.

* Flower's telemetry and update check are off (``FLWR_TELEMETRY_ENABLED=0``,
  ``FLWR_DISABLE_UPDATE_CHECK=1``): tests reach no address outside this machine.
* Ray runs as a local-only cluster (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, read when
  ``ray`` is imported): its GCS, raylet, workers and agents then listen on 127.0.0.1
  only, instead of every interface.
* Modules that need an optional extra are not collected (their doctests would fail
  to import) when the extra is missing; their tests skip with the reason.
"""

from __future__ import annotations

import importlib.util
import os

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

collect_ignore = []
if importlib.util.find_spec("flwr") is None:
    collect_ignore += ["fl_core/flower.py", "secure_agg/flower_client.py", "secure_agg/flower_round.py",
                       "secure_agg/flower_server.py", "tests/secure_agg/flower_grid.py"]
