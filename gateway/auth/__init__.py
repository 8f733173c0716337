"""Authentication stages: who is calling, checked before anything reaches a backend."""
