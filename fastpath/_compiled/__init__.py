"""Compiled forms of the fastpath modules, built by setup.py from ``fastpath/<name>.py``.

Never import from here directly; ``fastpath`` picks the live form.
"""
