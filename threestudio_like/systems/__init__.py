"""Lightning systems (one per recipe family)."""
from threestudio_like.systems import sds  # noqa: F401  (registers systems)
