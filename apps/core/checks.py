"""System checks (placeholder)."""
