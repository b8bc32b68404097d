"""Lightning systems (one per recipe family)."""
from threestudio_like.systems import sds  # noqa: F401  (registers systems)
from threestudio_like.systems import zero123  # noqa: F401,E402  (zero123-sjc-system, zero123-system)
