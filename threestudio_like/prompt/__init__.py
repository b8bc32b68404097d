"""Condition processors (text prompts -> embeddings). Recipes with text priors add theirs here."""
from threestudio_like.prompt import stable_diffusion  # noqa: F401  (registers prompt processors)
from threestudio_like.prompt import view_dependent  # noqa: F401,E402
