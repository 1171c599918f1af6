"""Persistence: the schema, its migrations and every query, in one place."""
