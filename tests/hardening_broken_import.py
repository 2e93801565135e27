"""A plugin module that fails at import, as one with a missing dependency does (tests/test_hardening.py)."""

raise ImportError("No module named 'definitely_not_installed'")
