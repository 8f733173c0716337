# fastpath.balancer's compiled form is fastpath/balancer.pyx (C arrays, no allocation per pick);
# its interpreted twin is fastpath/balancer.py.  Nothing is cimported from it: this file only
# marks the module for setup.py.
