"""Prompt construction: templates, demonstrations (retrieval, order, budget) and rank classification."""
