"""Load scenarios for your own Tollgate deployment, run with locust.

    locust -f benchmarks/locustfile.py --host http://127.0.0.1:8080            # web UI
    locust -f benchmarks/locustfile.py --host http://127.0.0.1:8080 --headless \\
           -u 50 -r 10 -t 60s PlainGet                                          # one scenario

Scenarios (user classes; name one or more on the command line, default all):

* ``PlainGet``    -- GET ``--get-path`` (default ``/demo/hello``)
* ``PostJson``    -- POST a JSON document of ``--json-bytes`` bytes to ``--post-path``
                     (default ``/demo/orders``)
* ``WeightedMix`` -- a weighted mix of requests given by ``--mix``:
                     ``"GET /demo/hello=5,POST /demo/orders=1"`` (``METHOD PATH=WEIGHT``, comma
                     separated; a POST carries the JSON document)
* ``SignedGet``   -- GET ``--signed-path`` of an ``auth: app`` API, each request signed when it
                     is made (SDK-HMAC-SHA256, with the vendor SDK ``huaweicloudsdkcore``) with
                     the key and secret of an app authorized there: ``--app-key`` and
                     ``--app-secret``; the query ``n=N`` differs from one request to the next.
                     Left out of a run that names no scenario when no key is given.
* ``ThrottledGet`` -- GET ``--throttled-path`` (default ``/demo/throttled``) of an API bound to a
                     throttle, driven past its limit: a 429 (``APIC.0308``) is the expected
                     refusal, counted apart (as ``throttled (429) GET PATH``) and not as a
                     failure; any other answer but 2xx/3xx is a failure.  Runs only when named.
* ``ChannelGet``  -- GET ``--channel-path`` (default ``/demo/channel``) of an API whose backend is a
                     load balance channel; with ``--member-header NAME`` (a header each member
                     sets to its own name) the calls are counted per member, as
                     ``GET PATH [value]``, so the statistics show the balance.  Runs only when
                     named.

Every option can also be set in the environment (``LOCUST_GET_PATH``, ``LOCUST_POST_PATH``,
``LOCUST_MIX``, ``LOCUST_JSON_BYTES``, ``LOCUST_STAGE``, ``LOCUST_SIGNED_PATH``,
``LOCUST_APP_KEY``, ``LOCUST_APP_SECRET``, ``LOCUST_THROTTLED_PATH``, ``LOCUST_CHANNEL_PATH``,
``LOCUST_MEMBER_HEADER``) and ``--stage`` adds ``X-Stage`` to every request.
The defaults match ``tollgate/examples/gateway.yaml`` (which has no ``auth: app`` API and no
throttle).  A response that is not 2xx or 3xx counts as a failure (but ThrottledGet's 429s).  See benchmarks/README.md.
"""
from __future__ import annotations

import itertools
import json
import logging
import random
from urllib.parse import quote, urlsplit

from locust import FastHttpUser, constant, events, task

DEFAULT_MIX = "GET /demo/hello=5,POST /demo/orders=1"


@events.init_command_line_parser.add_listener
def _options(parser):
    parser.add_argument("--get-path", default="/demo/hello", env_var="LOCUST_GET_PATH",
                        help="path of the PlainGet scenario")
    parser.add_argument("--post-path", default="/demo/orders", env_var="LOCUST_POST_PATH",
                        help="path of the PostJson scenario")
    parser.add_argument("--json-bytes", type=int, default=256, env_var="LOCUST_JSON_BYTES",
                        help="size of the JSON document POSTed")
    parser.add_argument("--mix", default=DEFAULT_MIX, env_var="LOCUST_MIX",
                        help="WeightedMix: 'METHOD PATH=WEIGHT,...'")
    parser.add_argument("--stage", default="", env_var="LOCUST_STAGE",
                        help="send X-Stage: STAGE (an environment other than RELEASE)")
    parser.add_argument("--signed-path", default="/demo/signed", env_var="LOCUST_SIGNED_PATH",
                        help="path of the SignedGet scenario (an auth: app API)")
    parser.add_argument("--app-key", default="", env_var="LOCUST_APP_KEY",
                        help="SignedGet: the key of an app authorized on --signed-path")
    parser.add_argument("--app-secret", default="", env_var="LOCUST_APP_SECRET",
                        help="SignedGet: that app's secret", is_secret=True)
    parser.add_argument("--throttled-path", default="/demo/throttled",
                        env_var="LOCUST_THROTTLED_PATH",
                        help="path of the ThrottledGet scenario (an API bound to a throttle)")
    parser.add_argument("--channel-path", default="/demo/channel", env_var="LOCUST_CHANNEL_PATH",
                        help="path of the ChannelGet scenario (an API whose backend is a channel)")
    parser.add_argument("--member-header", default="", env_var="LOCUST_MEMBER_HEADER",
                        help="ChannelGet: a response header naming the member that answered "
                             "(calls are then counted per member)")


@events.init.add_listener
def _check_options(environment, **_kwargs):
    options = environment.parsed_options
    if options is not None:
        parse_mix(options.mix)          # a bad --mix stops the run before any user starts
        if SignedGet in environment.user_classes and not (options.app_key and options.app_secret):
            if SignedGet.__name__ in (options.user_classes or ()):
                raise ValueError("SignedGet needs an app's key and secret: --app-key and "
                                 "--app-secret (or LOCUST_APP_KEY and LOCUST_APP_SECRET)")
            # named no scenario (all of them): run the others
            environment.user_classes = [c for c in environment.user_classes if c is not SignedGet]
            logging.getLogger(__name__).warning(
                "SignedGet left out: no --app-key/--app-secret to sign its requests with")
        for only_named in (ThrottledGet, ChannelGet):
            # they need an API bound to a throttle, or a channel with live members, which the
            # example configuration has not
            if only_named in environment.user_classes and \
                    only_named.__name__ not in (options.user_classes or ()):
                environment.user_classes = [c for c in environment.user_classes
                                            if c is not only_named]


def json_document(size: int) -> bytes:
    """A JSON object of about ``size`` bytes (at least its fixed part)."""
    pad = max(0, size - len('{"order":1,"pad":""}'))
    return json.dumps({"order": 1, "pad": "x" * pad}, separators=(",", ":")).encode()


def parse_mix(text: str) -> list[tuple[str, str, int]]:
    """``"GET /a=3,POST /b=1"`` -> ``[("GET", "/a", 3), ("POST", "/b", 1)]``."""
    mix = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        request, _, weight = item.rpartition("=")
        method, _, path = request.strip().partition(" ")
        if not path.startswith("/") or not weight.strip().isdigit() or int(weight) < 1:
            raise ValueError(f"--mix item {item!r}: expected 'METHOD /path=WEIGHT'")
        mix.append((method.upper(), path.strip(), int(weight)))
    if not mix:
        raise ValueError("--mix names no request")
    return mix


class _GatewayUser(FastHttpUser):
    abstract = True
    wait_time = constant(0)

    def on_start(self):
        options = self.environment.parsed_options
        self.headers = {"X-Stage": options.stage} if options.stage else {}
        self.json_headers = {**self.headers, "Content-Type": "application/json"}
        self.document = json_document(options.json_bytes)


class PlainGet(_GatewayUser):
    @task
    def get(self):
        self.client.get(self.environment.parsed_options.get_path, headers=self.headers)


class PostJson(_GatewayUser):
    @task
    def post(self):
        self.client.post(self.environment.parsed_options.post_path, data=self.document,
                         headers=self.json_headers)


class WeightedMix(_GatewayUser):
    def on_start(self):
        super().on_start()
        mix = parse_mix(self.environment.parsed_options.mix)
        self.requests = [(method, path) for method, path, _ in mix]
        self.weights = [weight for _, _, weight in mix]

    @task
    def mixed(self):
        method, path = random.choices(self.requests, self.weights)[0]
        body = self.document if method in ("POST", "PUT", "PATCH") else None
        self.client.request(method, path, data=body, name=f"{method} {path}",
                            headers=self.json_headers if body is not None else self.headers)


class SignedGet(_GatewayUser):
    """GET on an ``auth: app`` API, each request signed by the vendor SDK as it is made."""

    def on_start(self):
        super().on_start()
        from huaweicloudsdkcore.auth.credentials import BasicCredentials
        from huaweicloudsdkcore.signer.signer import Signer

        options = self.environment.parsed_options
        self.signer = Signer(BasicCredentials(options.app_key, options.app_secret))
        self.signed_host = urlsplit(self.host).netloc      # the Host header sent, and signed
        self.counter = itertools.count()

    def signed(self, method, path, query=(), body=b""):
        """(path?query as sent, headers) of a request signed now (X-Sdk-Date: the current time)."""
        from huaweicloudsdkcore.sdk_request import SdkRequest

        headers = {"Host": self.signed_host, **self.headers}
        if body:
            headers["Content-Type"] = "application/json"
        req = self.signer.sign(SdkRequest(method=method, schema="http", host=self.signed_host,
                                          resource_path=path, query_params=list(query),
                                          header_params=headers, body=body))
        return quote(req.uri, safe="/%?&=~!$()*+,;:@"), req.header_params

    @task
    def signed_get(self):
        path = self.environment.parsed_options.signed_path
        target, headers = self.signed("GET", path, [("n", str(next(self.counter)))])
        self.client.get(target, headers=headers, name=f"signed GET {path}")


class ThrottledGet(_GatewayUser):
    """GET on an API bound to a throttle, as fast as it is answered: past the limit the gateway
    answers 429, which is what a throttle must do.  Those are counted as successes under their
    own name, so the statistics show calls let through and calls refused side by side; any other
    answer but 2xx/3xx (or no answer) is a failure."""

    @task
    def throttled_get(self):
        path = self.environment.parsed_options.throttled_path
        with self.client.get(path, headers=self.headers, name=f"GET {path}",
                             catch_response=True) as resp:
            if resp.status_code == 429:
                resp.request_meta["name"] = f"throttled (429) GET {path}"
                resp.success()
            elif 200 <= resp.status_code < 400:
                resp.success()
            else:
                resp.failure(f"HTTP {resp.status_code}: only 2xx/3xx or a 429 refusal expected")


class ChannelGet(_GatewayUser):
    """GET on an API whose backend is a load balance channel.  With ``--member-header``, each
    call is counted under the member that answered (``GET PATH [member]``): the statistics show
    how the channel spread the load, and failures (anything but 2xx/3xx, e.g. a 502 when no
    member could serve) show when members died."""

    def on_start(self):
        super().on_start()
        self.member_header = self.environment.parsed_options.member_header

    @task
    def channel_get(self):
        path = self.environment.parsed_options.channel_path
        with self.client.get(path, headers=self.headers, name=f"GET {path}",
                             catch_response=True) as resp:
            if not 200 <= resp.status_code < 400:
                resp.failure(f"HTTP {resp.status_code}")
                return
            if self.member_header:
                member = resp.headers.get(self.member_header) or "-"
                resp.request_meta["name"] = f"GET {path} [{member[:64]}]"
            resp.success()
