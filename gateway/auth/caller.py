"""Who is calling: the identity the authentication stages establish for the later stages
(throttling by app or user, account ACLs), the backend parameters and the access log."""
from __future__ import annotations


class Caller:
    """The caller of one exchange (``Exchange.caller``), set once its credential was checked.

    ``kind`` is how it was established: ``app`` (signature, AppCode or key headers),
    ``iam`` (token or AK/SK) or ``custom`` (a frontend authorizer).  ``app``/``app_key`` name the
    app (the key is its public identifier, ``$context.appId``); ``user``/``account`` the IAM user
    and account; ``frontend``/``backend`` are the contexts returned by custom authorizers
    (str -> str).  Never holds a secret, a signature or a token.  Attribute types:
    gateway/auth/caller.pxd.
    """

    def __init__(self, kind, app="", app_key="", user="", account="", frontend=None):
        self.kind = kind
        self.app = app
        self.app_key = app_key
        self.user = user
        self.account = account
        self.frontend = frontend if frontend is not None else {}
        self.backend = {}

    def __repr__(self):
        who = self.app or self.user or "?"
        return f"<Caller {self.kind} {who}>"


class RepeatedField(ValueError):
    """A credential field sent more than once: which copy would the backend believe?"""


def single_value(head, name):
    """The value of the field ``name`` (lower-case bytes), None when absent; RepeatedField when
    the request carries it more than once (a credential the gateway checked must be the only
    one the backend can see)."""
    values = head.get_all(name)
    if not values:
        return None
    if len(values) > 1:
        raise RepeatedField(name.decode("latin-1"))
    return values[0]


def caller_of(ex) -> Caller:
    """The exchange's caller, made empty when no authentication stage set one (a backend
    authorizer on an ``auth: none`` API still records its context)."""
    caller = ex.caller
    if caller is None:
        caller = ex.caller = Caller("none")
    return caller
