"""Condition processors (text prompts -> embeddings). Recipes with text priors add theirs here."""
from threestudio_like.prompt import stable_diffusion  # noqa: F401  (registers prompt processors)
