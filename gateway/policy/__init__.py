"""Policies applied to calls: client address rules (and, as they come, throttles and quotas)."""
