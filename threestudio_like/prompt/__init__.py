"""Condition processors (text prompts -> embeddings) for text-conditioned priors; found by the
registry (``stable-diffusion-prompt-processor``, ``view-dependent-prompt-processor``)."""
