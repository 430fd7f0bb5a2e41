"""Config: every key and its default, the config words, the threat budgets, and validation."""
