"""Access control policies (``acls``) bound to an API in an environment.

An IP ACL checks the client address (``ex.client_ip``: the peer, or the address found behind
trusted proxies) and runs first, before authentication and before the body is read; an account
ACL checks the IAM account of the caller and runs right after authentication.  Each policy is
compiled once per snapshot (:func:`compile_acls`) and shared by the APIs bound to it: an IP
lookup is a binary search over merged intervals, an account lookup a frozenset membership.
"""
from __future__ import annotations

from gateway.errors import AccountDenied, IpDenied

from .iprules import IpRule


class IpAcl:
    """The stage of an IP ACL: PERMIT (only these addresses may call) or DENY (these may not)."""

    __slots__ = ("name", "rule", "metrics")

    def __init__(self, name: str, action: str, values, metrics=None):
        self.name = name
        self.rule = IpRule(action, values)
        self.metrics = metrics

    def __call__(self, ex):
        if self.rule.allows(ex.client_ip):
            return None
        if self.metrics is not None:
            self.metrics.count("acl_denials", (self.name, "ip"))
        raise IpDenied("The client address is not allowed to call this API",
                       f"acl {self.name}: {ex.client_ip} refused ({ex.api.name}@{ex.env})")


class AccountAcl:
    """The stage of an account ACL.  A caller without an account (an IAM token without an
    account claim) is outside every list: a PERMIT list refuses it, a DENY list lets it by."""

    __slots__ = ("name", "permit", "accounts", "metrics")

    def __init__(self, name: str, action: str, values, metrics=None):
        self.name = name
        self.permit = action.upper() == "PERMIT"
        self.accounts = frozenset(values)
        self.metrics = metrics

    def __call__(self, ex):
        caller = ex.caller
        account = caller.account if caller is not None else ""
        listed = bool(account) and account in self.accounts
        if listed == self.permit:
            return None
        if self.metrics is not None:
            self.metrics.count("acl_denials", (self.name, "account"))
        raise AccountDenied("The caller's account is not allowed to call this API",
                            f"acl {self.name}: account {account or '(none)'} refused "
                            f"({ex.api.name}@{ex.env})")


def compile_acls(acls, metrics=None) -> dict:
    """name -> IpAcl or AccountAcl, one per policy of the document (checked by the validator)."""
    compiled = {}
    for acl in acls:
        kind = IpAcl if acl.entity == "ip" else AccountAcl
        compiled[acl.name] = kind(acl.name, acl.action, acl.values, metrics)
    return compiled
