# fastpath.sdksign's compiled form is fastpath/sdksign.pyx (C-level percent coding of the
# canonical URI and query); its interpreted twin is fastpath/sdksign.py.  Nothing is cimported
# from it: this file only marks the module for setup.py.
