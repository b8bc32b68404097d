"""Guidance modules (frozen priors) and the shared distillation math."""
from threestudio_like.guidance import reference_object  # noqa: F401  (registers guidances)
from threestudio_like.guidance import mvdream  # noqa: F401
from threestudio_like.guidance import zero123  # noqa: F401,E402
from threestudio_like.guidance import stable_diffusion  # noqa: F401,E402
from threestudio_like.guidance import eschernet  # noqa: F401,E402
