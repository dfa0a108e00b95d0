"""Database models and engine/session factories."""
