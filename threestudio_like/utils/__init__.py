"""Small shared helpers (image/video saving, errors)."""
