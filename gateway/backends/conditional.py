"""Conditional backends (canary, grayscale): the stage that picks which backend serves a call.

An API may list up to five conditional backends before its default one.  Each has conditions
-- the client's address in a CIDR, a request parameter or a system value equal to a value, in
a list, or matching a regular expression -- that must all hold, and an optional
``percentage``: of the calls that match, that share goes to it and the rest fall through to the
next candidate.  The first candidate that takes the call serves it; none: the default backend.

The stage runs last, after authentication and parameter checks, so system values (the app,
the user) and parameter defaults are known.  It only sets ``ex.handler``: the API's default
handler stays in place for every call no candidate takes.

The percentage split is exact and even, not random: each candidate keeps a running sum,
adding ``percentage`` per matching call and taking the call when the sum passes 100 -- 10 %
takes the 10th, 20th, 30th... matching call of this worker.
"""
from __future__ import annotations

import re
from urllib.parse import parse_qs

from gateway.backends.rewrite import _request_reader, _system_reader
from gateway.policy.iprules import IpSet
from gateway.policy.params import default_text


class _Condition:
    """One condition: ``test(ex, query) -> bool``."""

    __slots__ = ("read", "accepts", "reads_query")

    def __init__(self, condition, locations, defaults):
        """``locations``: where the API's parameters are (name -> path, header, query);
        ``defaults``: their defaults."""
        if condition.source == "source_ip":
            networks = IpSet([condition.value])
            self.read = _client_ip
            self.accepts = networks.__contains__
            self.reads_query = False
            return
        if condition.source == "system":
            reader = _system_reader(condition.name[len("$context."):])
            self.read = lambda ex, q: reader(ex)
            self.reads_query = False
        else:
            location = locations.get(condition.name)
            if location is None:        # not declared: a header of that name, else the query's
                header = _request_reader(condition.name, "header")
                query = _request_reader(condition.name, "query")
                self.read = lambda ex, q: header(ex, q) or query(ex, q)
                self.reads_query = True
            else:
                self.read = _request_reader(condition.name, location,
                                            defaults.get(condition.name))
                self.reads_query = location == "query"
        if condition.op == "equal":
            expected = condition.value
            self.accepts = expected.__eq__
        elif condition.op == "enum":
            self.accepts = frozenset(condition.value).__contains__
        else:
            self.accepts = re.compile(condition.value).fullmatch

    def holds(self, ex, query) -> bool:
        value = self.read(ex, query)
        return value is not None and bool(self.accepts(value))


def _client_ip(ex, query):
    return ex.client_ip


class Candidate:
    """A conditional backend: its conditions, its share, its handler."""

    def __init__(self, name, conditions, percentage, handler):
        self.name = name
        self.conditions = conditions
        self.percentage = percentage        # None: every matching call
        self.handler = handler
        self.share = 0                      # the running sum of the percentage split

    def takes(self, ex, query) -> bool:
        for condition in self.conditions:
            if not condition.holds(ex, query):
                return False
        if self.percentage is None:
            return True
        self.share += self.percentage
        if self.share >= 100:
            self.share -= 100
            return True
        return False


class ConditionalBackends:
    """The stage: the first candidate that takes the call serves it (``ex.handler``)."""

    def __init__(self, candidates, metrics=None, api_name="", env=""):
        self.candidates = tuple(candidates)
        self.reads_query = any(c.reads_query for cand in candidates for c in cand.conditions)
        self.metrics = metrics
        self.labels = [(api_name, env, cand.name) for cand in candidates]

    @classmethod
    def build(cls, api, handlers, metrics=None, env=""):
        """The stage of ``api`` whose conditional backends were compiled to ``handlers``."""
        locations = {name: "path" for name in re.findall(r"\{([^}+]+)\+?\}", api.path)}
        locations.update({p.name: p.location for p in api.params})
        defaults = {p.name: default_text(p.default) for p in api.params
                    if p.default is not None and p.location != "path"}
        candidates = [Candidate(cb.name, [_Condition(c, locations, defaults)
                                          for c in cb.conditions], cb.percentage, handler)
                      for cb, handler in zip(api.conditional_backends, handlers)]
        return cls(candidates, metrics, api.name, env)

    def __call__(self, ex):
        query = None
        if self.reads_query:
            query = parse_qs(ex.query.decode("latin-1"), keep_blank_values=True,
                             encoding="utf-8", errors="replace")
        for i, candidate in enumerate(self.candidates):
            if candidate.takes(ex, query):
                ex.handler = candidate.handler
                if self.metrics is not None:
                    self.metrics.count("conditional_backend", self.labels[i])
                return None
        return None
