"""Alembic migrations for the collector schema."""
