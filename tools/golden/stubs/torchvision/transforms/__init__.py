"""Stub transforms module (imported, never used)."""
