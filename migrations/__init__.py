"""Alembic migrations: the only source of the registry's schema."""
