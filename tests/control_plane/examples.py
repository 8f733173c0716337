"""Documents for the control plane's tests: the contract example, and a richer one that uses every
reference and holds every kind of secret (with recognisable values)."""
from __future__ import annotations

import copy

import yaml

from tests.gateway.config.test_loader import contract_example

PRIVATE_PEM = ("-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7"
               "privatekeymaterial\n-----END PRIVATE KEY-----\n")
PUBLIC_PEM = ("-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEpublickeymaterial\n"
              "-----END PUBLIC KEY-----\n")

#: every secret value of rich(): none may appear in a masked read
SECRET_VALUES = {
    "apps.secret": "app-secret-value-1",
    "apps.app_codes": "appcode-secret-0001",
    "signature_keys.secret": "sigkey-secret-01",
    "devices.password": "device-pw-001",
    "datasources.url": "s3cr3t-pw",
    "certificates.key": "privatekeymaterial",
    "iam.users.secret_key": "iam-sk-value-01",
    "iam.jwt.keys (HMAC)": "hs-shared-secret-value",
    "iam.jwt.keys (JWK k)": "c2VjcmV0LWp3ay1r",
    "redis.url": "redis-pw-123",
}


def contract() -> dict:
    return yaml.safe_load(contract_example())


def rich() -> dict:
    """The contract example plus: an API on a channel (with a backend authorizer), a conditional
    backend on the same channel, a second datasource with credentials in its url, an inline PEM
    key, JWT keys (symmetric, JWK, public), a Redis password and a rule reading one device.  It is
    valid (the certificates' files aside, which only the compiler reads)."""
    raw = contract()
    app = raw["apps"][0]
    app["secret"] = SECRET_VALUES["apps.secret"]
    app["app_codes"] = [SECRET_VALUES["apps.app_codes"]]
    raw["signature_keys"][0]["secret"] = SECRET_VALUES["signature_keys.secret"]
    raw["devices"][0]["password"] = SECRET_VALUES["devices.password"]
    raw["iam"]["users"][0]["secret_key"] = SECRET_VALUES["iam.users.secret_key"]
    raw["iam"]["users"].append({"name": "bob", "account": "acme", "access_key": "AK-bob",
                                "secret_key": "iam-sk-value-02"})
    raw["iam"]["jwt"]["keys"] = [SECRET_VALUES["iam.jwt.keys (HMAC)"],
                                 {"kty": "oct", "kid": "k1", "k": SECRET_VALUES["iam.jwt.keys (JWK k)"]},
                                 PUBLIC_PEM]
    raw["redis"]["url"] = f"redis://:{SECRET_VALUES['redis.url']}@127.0.0.1:6379/0"
    raw["datasources"].append({"name": "warehouse",
                               "url": "postgresql://reporter:s3cr3t-pw@db.example:5432/wh"})
    raw["certificates"].append({"name": "inline", "cert": PUBLIC_PEM, "key": PRIVATE_PEM,
                                "domains": ["inline.example.com"]})
    raw["authorizers"].append({"name": "backend-auth", "type": "backend",
                               "url": "http://127.0.0.1:9101/creds"})
    raw["apis"][0]["conditional_backends"].append(
        {"name": "by-header", "conditions": [{"source": "param", "name": "X-Canary", "op": "equal",
                                              "value": "2"}],
         "backend": {"type": "http", "channel": "lots", "path": "/lots/{lot}/free"}})
    raw["apis"].append({"name": "by-channel", "group": "parking", "method": "GET",
                        "path": "/by-channel", "backend": {"type": "http", "channel": "lots",
                                                           "path": "/x",
                                                           "authorizer": "backend-auth"},
                        "environments": {"RELEASE": {}, "TEST": {"throttle": "basic"}}})
    raw["apis"].append({"name": "ingest-status", "group": "parking", "method": "POST",
                        "path": "/ingest", "backend": {"type": "mock", "mock": {"status": 204}},
                        "environments": {"RELEASE": {}}})
    raw["rules"][0]["source"]["device"] = "slot-001"
    return raw


def without_certificates(raw: dict) -> dict:
    """``raw`` minus the certificates (their files are not here): what the compiler accepts."""
    raw = copy.deepcopy(raw)
    raw["certificates"] = []
    return raw
