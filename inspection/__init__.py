"""Visual inspection by anomaly detection: data, backbones, methods, metrics and thresholds."""

import os

__version__ = "0.2.0"

# Idle OpenMP worker threads sleep instead of spinning. Spinning pools of two processes (or of the app and
# its training) on the same cores starve each other, and predict slows down many times over (`bench --contention`
# measures it). OpenMP reads this when torch loads it, so it is set here, before any module of the package imports
# torch. A value the user set wins; see inspection.device for the thread count.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
