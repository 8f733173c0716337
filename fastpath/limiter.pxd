# fastpath.limiter's compiled form is fastpath/limiter.pyx (C atomics over the table the
# workers share); its interpreted twin is fastpath/limiter.py.  Nothing is cimported from it:
# this file only marks the module for setup.py.
