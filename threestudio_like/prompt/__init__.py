"""Condition processors (text prompts -> embeddings). Recipes with text priors add theirs here."""
