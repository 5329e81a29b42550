"""Configuration: the one pydantic model, its field types, store locations, plain-text transport checks,
project templates and the store registry."""
