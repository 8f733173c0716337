# Types for the compiled form of gateway/policy/throttle.py (Cython pure-Python mode): the
# stage runs on every call of a throttled API.
cimport cython
from gateway.exchange cimport Exchange
from gateway.auth.caller cimport Caller
from gateway.policy.lease cimport Lease

cdef object _hash_key, _monotonic_ns, _time_ns
cdef long long _DENIED, _UNTRACKED

cdef class ThrottleRule:
    cdef public str name
    cdef public long long period
    cdef public str time_text
    cdef public long long api_limit
    cdef public long long ip_limit
    cdef public long long app_limit
    cdef public long long user_limit
    cdef public dict app_specials
    cdef public dict user_specials
    cdef public tuple scope
    cdef public object api_key
    cdef public object ip_seed
    cdef public object app_seed
    cdef public object user_seed
    cdef public tuple api_dimension


cdef class ThrottleStage:
    cdef public ThrottleRule rule
    cdef public object table
    cdef public object api_table
    cdef public object metrics
    cdef public object budgets
    cdef public object cluster
    cdef public object leases     # (an OrderedDict: not a plain dict)
    @cython.locals(lease=Lease)
    cdef bint _spend(self, object key, long long period, long long now)
    @cython.locals(rule=ThrottleRule, table=object, now="long long", period="long long",
                   left="long long", limit="long long", caller=Caller, debug=bint)
    cpdef object local(self, Exchange ex)


cdef class QuotaRule:
    cdef public str name
    cdef public long long limit
    cdef public long long period
    cdef public long long offset
    cdef public object seed
    cdef public str time_text


cdef class QuotaStage:
    cdef public dict quotas
    cdef public object table
    cdef public object metrics
    cdef public object budgets
