"""Built-in sah plugins."""
