# Compiled by setup.py (Cython, pure-Python mode): this module runs on the hot path of
# authenticated APIs; its interpreted form is the .py beside it.
