"""Alembic revisions, named YYYY-MM-DD_slug.py."""
