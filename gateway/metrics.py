"""Metrics: aggregated in each worker at a cost of a few increments per request, exported by
the master at scrape time.

Labelled prometheus-client children cost microseconds per update and, in multiprocess mode, a
file write; the hot path instead bumps plain counters held by the CompiledApi it already has
(:class:`ApiStats`).  Every ``push_interval`` seconds each worker sends the master what changed
since its previous push (:meth:`WorkerMetrics.export`): the new totals of the (api, env) pairs
and labelled counters that counted something, and its small fixed-size totals and gauges.  An
idle worker's push therefore costs the same at 10 or 10,000 APIs, a busy one's grows with the
APIs that had traffic.  The master's :class:`ClusterCollector` keeps each worker's totals up to
date from these pushes and merges them (plus those of workers that have exited, so counters
never go backwards) when Prometheus scrapes.  Scraped figures are at most one push interval old.

Labels never hold unbounded values: api and environment names come from the configuration,
status is a class (2xx ...), code is a ROMA code.
"""
from __future__ import annotations

from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily)

from gateway.exchange import monotonic
from gateway.http.tunnel import CLOSE_REASONS
from gateway.tls import FAILURE_REASONS

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STATUS_CLASSES = ("aborted", "1xx", "2xx", "3xx", "4xx", "5xx")
assert len(STATUS_CLASSES) == 6 and len(BUCKETS) + 1 == 15    # the sizes of ApiStats' arrays
UNROUTED = ("", "")   # requests answered before an API was found (404, malformed, limits)

#: Labelled counters the policies keep, declared once: family -> (metric name, help, labels).
#: A worker bumps them with :meth:`WorkerMetrics.count`; export, merge and exposition are the
#: same for all.  Label values come from the configuration or small fixed sets, never requests.
COUNTERS = {
    "throttled": ("tollgate_throttled", "Calls refused by a throttle (429), by policy and "
                  "dimension (api, user, app, ip)", ("policy", "dimension")),
    "throttle_untracked": ("tollgate_throttle_untracked", "Calls a throttle could not count "
                           "because the node's counter table was full of live keys (the "
                           "per-API dimension still holds)", ("policy",)),
    "quota_exhausted": ("tollgate_app_quota_exhausted", "Calls refused because the app's quota "
                        "was used up (405), by quota policy", ("quota",)),
    "acl_denials": ("tollgate_acl_denials", "Requests refused by an access control policy, by "
                    "policy name and entity (ip, account)", ("acl", "entity")),
    "throttle_fallback": ("tollgate_throttle_local_fallback", "Throttled calls decided by the "
                          "node's own counters because Redis was unreachable (fail_mode open), "
                          "or refused for it (closed)", ("mode",)),
    "member_ejections": ("tollgate_channel_member_ejections", "Channel members taken out of "
                         "balancing by failures of real traffic (passive checks), by channel",
                         ("channel",)),
    "channel_retries": ("tollgate_channel_retries", "Calls sent again to another member of a "
                        "channel after a failure, by channel", ("channel",)),
    "conditional_backend": ("tollgate_conditional_backend_calls", "Calls a conditional "
                            "backend served instead of the API's default backend, by API, "
                            "environment and conditional backend", ("api", "env", "backend")),
    "channel_unavailable": ("tollgate_channel_unavailable", "Calls answered 502 at once because "
                            "no member of the channel could serve, by channel", ("channel",)),
}


class ApiStats:
    """Per (api, env) totals of one worker.  Lives across reloads: counters never reset.

    Attribute types: gateway/metrics.pxd.
    """

    def __init__(self, key=None):
        self.key = key          # (api, env)
        self.changed = False    # counted something since the worker's last push
        # literal lists: the compiled form's C arrays (gateway/metrics.pxd) take them as they are
        self.counts = [0, 0, 0, 0, 0, 0]                                    # STATUS_CLASSES
        self.duration = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]       # BUCKETS + +Inf
        self.duration_sum = 0.0
        self.upstream = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        self.upstream_sum = 0.0

    def observe(self, status_index, duration, upstream):
        self.counts[status_index] += 1
        self.duration[_bucket(duration)] += 1
        self.duration_sum += duration
        if upstream >= 0.0:
            self.upstream[_bucket(upstream)] += 1
            self.upstream_sum += upstream

    def as_list(self):
        return [list(self.counts), list(self.duration), self.duration_sum, list(self.upstream),
                self.upstream_sum]


# The bounds again, as a C array in the compiled form (gateway/metrics.pxd): the per-request
# bucket search then reads doubles, not tuple items.
_BOUNDS = list(BUCKETS)
_NBOUNDS = len(BUCKETS)


def _bucket(value):
    """Index of the first bucket bound >= value (bisect_left, without a call per request)."""
    i = 0
    while i < _NBOUNDS and _BOUNDS[i] < value:
        i += 1
    return i


REDIS_OPERATIONS = ("acquire", "release", "probe")
REDIS_ERRORS = ("timeout", "connection", "readonly", "oom", "noscript", "other")


class RedisStats:
    """The Redis calls of one worker's throttling budgets (gateway.policy.cluster)."""

    def __init__(self):
        self.up = 1
        self.latency = {op: [0] * (len(BUCKETS) + 1) for op in REDIS_OPERATIONS}
        self.latency_sum = dict.fromkeys(REDIS_OPERATIONS, 0.0)
        self.leases = 0       # acquire calls answered
        self.granted = 0      # tokens Redis granted
        self.returned = 0     # unused tokens given back
        self.errors = dict.fromkeys(REDIS_ERRORS, 0)

    def observe(self, operation, seconds):
        self.latency[operation][_bucket(seconds)] += 1
        self.latency_sum[operation] += seconds

    def error(self, kind):
        self.errors[kind] += 1

    def export(self):
        return {"up": self.up, "latency": {op: list(v) for op, v in self.latency.items()},
                "latency_sum": dict(self.latency_sum), "leases": self.leases,
                "granted": self.granted, "returned": self.returned, "errors": dict(self.errors)}


def _no_redis():
    return {"latency": {op: [0] * (len(BUCKETS) + 1) for op in REDIS_OPERATIONS},
            "latency_sum": dict.fromkeys(REDIS_OPERATIONS, 0.0), "leases": 0, "granted": 0,
            "returned": 0, "errors": dict.fromkeys(REDIS_ERRORS, 0)}


def _fold_redis(acc, add):
    if add is None:
        return
    for op in REDIS_OPERATIONS:
        _merge_counts(acc["latency"][op], add["latency"][op])
        acc["latency_sum"][op] += add["latency_sum"][op]
    for name in ("leases", "granted", "returned"):
        acc[name] += add[name]
    for kind in REDIS_ERRORS:
        acc["errors"][kind] += add["errors"][kind]


class WorkerMetrics:
    """The totals of one worker (attribute types: gateway/metrics.pxd)."""

    def __init__(self, implementation):
        self.apis = {}      # (api, env) -> ApiStats
        self.errors = {}    # ROMA code -> count
        self.dropped_headers = {}   # reason -> request headers not forwarded
        self.auth_failures = {}     # (api, env, type, reason) -> refused credentials
        self.counters = {family: {} for family in COUNTERS}    # family -> {labels: count}
        self.truncated = 0  # responses cut after their head was sent
        self.implementation = implementation
        self.redis = None   # RedisStats, set by the throttling budgets when Redis is configured
        # what counted something since the last export: only that is pushed (see the module doc)
        self.changed = []                   # ApiStats whose ``changed`` is set
        self.auth_changed = set()           # keys of auth_failures
        self.counters_changed = {family: set() for family in COUNTERS}   # family -> {labels}
        self.certificates_sent = None       # the CertificateStore whose expiries were pushed
        self.unrouted = self.api_stats(*UNROUTED)

    def api_stats(self, api, env):
        stats = self.apis.get((api, env))
        if stats is None:
            stats = self.apis[(api, env)] = ApiStats((api, env))
        return stats

    def observe(self, ex, aborted):
        status = ex.status
        index = 0 if aborted or status == 0 else min(status // 100, 5)
        api = ex.api
        stats = self.unrouted
        if api is not None and api.stats is not None:
            stats = api.stats
        stats.observe(index, monotonic() - ex.started, ex.upstream_elapsed)
        if not stats.changed:
            stats.changed = True
            self.changed.append(stats)
        if ex.error_code:
            self.count_error(ex.error_code)

    def count_error(self, code):
        self.errors[code] = self.errors.get(code, 0) + 1

    def count_auth_failure(self, api, env, kind, reason):
        key = (api, env, kind, reason)
        self.auth_failures[key] = self.auth_failures.get(key, 0) + 1
        self.auth_changed.add(key)

    def count(self, family, labels):
        """Bump counter ``family`` (a key of COUNTERS) for the tuple ``labels``."""
        counts = self.counters[family]
        counts[labels] = counts.get(labels, 0) + 1
        self.counters_changed[family].add(labels)

    def count_dropped_header(self, reason):
        self.dropped_headers[reason] = self.dropped_headers.get(reason, 0) + 1

    def export(self, worker):
        """What changed since the previous export (the master keeps the totals: every export
        must reach it, in order): new totals of the changed (api, env) pairs and labelled
        counters, the certificates when they changed, and the fixed-size rest in full."""
        changed, self.changed = self.changed, []
        apis = []
        for stats in changed:
            stats.changed = False
            apis.append([*stats.key, *stats.as_list()])
        auth = self.auth_failures
        auth_failures = [[*key, auth[key]] for key in self.auth_changed]
        self.auth_changed = set()
        counters = {}
        for family, labels_set in self.counters_changed.items():
            if labels_set:
                counts = self.counters[family]
                counters[family] = [[*labels, counts[labels]] for labels in labels_set]
                self.counters_changed[family] = set()
        in_flight = sum(1 for c in worker.connections if c.current is not None)
        message = {
            "apis": apis,
            "errors": self.errors,
            "dropped_headers": self.dropped_headers,
            "auth_failures": auth_failures,
            "counters": counters,
            "truncated": self.truncated,
            "desyncs": worker.pool.desyncs,
            "tls_handshakes": worker.tls_handshakes,
            "tls_handshakes_begun": worker.tls_handshakes_begun,
            "tls_failures": worker.tls_failures,
            "tunnels": worker.tunnel_stats.export(),
            "in_flight": in_flight,
            "connections": len(worker.connections),
            "pool_open": worker.pool.opened,
            "pool_idle": worker.pool.idle_count,
            "config_version": worker.snapshot.version if worker.snapshot else "",
            "implementation": self.implementation,
            "redis": self.redis.export() if self.redis is not None else None,
        }
        store = worker.snapshot.certificates if worker.snapshot is not None else None
        if store is not self.certificates_sent:
            message["certificates"] = store.expiries() if store is not None else []
            self.certificates_sent = store
        return message


def _merge_counts(into: list, add: list):
    for i, v in enumerate(add):
        into[i] += v


class ClusterCollector:
    """prometheus-client collector over the latest totals of every worker (master side)."""

    def __init__(self, master):
        self.master = master
        self.latest: dict[int, dict] = {}     # worker pid -> its totals (see update)
        self.retired: dict = {"apis": {}, "errors": {}, "dropped_headers": {}, "auth_failures": {},
                              "counters": {family: {} for family in COUNTERS},
                              "truncated": 0,
                              "desyncs": 0, "tls_handshakes": 0, "tls_handshakes_begun": 0,
                              "tls_failures": {}, "tunnels": _no_tunnels(),
                              "redis": _no_redis()}

    def update(self, pid, export):
        """Apply one push of worker ``pid`` (:meth:`WorkerMetrics.export`): the changed rows
        replace that worker's previous totals of the same labels, the rest replaces all."""
        state = self.latest.get(pid)
        if state is None:
            state = self.latest[pid] = {"apis": {}, "auth_failures": {},
                                        "counters": {family: {} for family in COUNTERS},
                                        "certificates": []}
        apis, auth, counters = state["apis"], state["auth_failures"], state["counters"]
        for api, env, *row in export.pop("apis"):
            apis[(api, env)] = row
        for *key, n in export.pop("auth_failures"):
            auth[tuple(key)] = n
        for family, rows in export.pop("counters").items():
            into = counters.get(family)
            if into is None:
                continue            # (a family this master does not know)
            for *labels, n in rows:
                into[tuple(labels)] = n
        state.update(export)

    def retire(self, pid):
        """A worker exited (its last push read): keep its counters so totals stay monotonic."""
        export = self.latest.pop(pid, None)
        if export is None:
            return
        # the tunnels it had open died with it (a crash): closed, as errors
        closed = export["tunnels"]["closed"]
        closed["error"] = closed.get("error", 0) + export["tunnels"]["open"]
        self._fold(self.retired, export)

    def _fold(self, acc, export):
        for key, (counts, dur, dsum, up, usum) in export["apis"].items():
            cur = acc["apis"].get(key)
            if cur is None:
                acc["apis"][key] = [list(counts), list(dur), dsum, list(up), usum]
            else:
                _merge_counts(cur[0], counts)
                _merge_counts(cur[1], dur)
                cur[2] += dsum
                _merge_counts(cur[3], up)
                cur[4] += usum
        for code, n in export["errors"].items():
            acc["errors"][code] = acc["errors"].get(code, 0) + n
        for reason, n in export["dropped_headers"].items():
            acc["dropped_headers"][reason] = acc["dropped_headers"].get(reason, 0) + n
        for key, n in export["auth_failures"].items():
            acc["auth_failures"][key] = acc["auth_failures"].get(key, 0) + n
        for family, counts in export["counters"].items():
            into = acc["counters"][family]
            for key, n in counts.items():
                into[key] = into.get(key, 0) + n
        acc["truncated"] += export["truncated"]
        acc["desyncs"] += export["desyncs"]
        acc["tls_handshakes"] += export["tls_handshakes"]
        acc["tls_handshakes_begun"] += export["tls_handshakes_begun"]
        for reason, n in export["tls_failures"].items():
            acc["tls_failures"][reason] = acc["tls_failures"].get(reason, 0) + n
        tunnels, add = acc["tunnels"], export["tunnels"]
        for key in ("opened", "to_backend", "to_client"):
            tunnels[key] += add[key]
        for reason, n in add["closed"].items():
            tunnels["closed"][reason] = tunnels["closed"].get(reason, 0) + n
        _fold_redis(acc["redis"], export.get("redis"))

    def collect(self):
        acc = {"apis": {k: [list(v[0]), list(v[1]), v[2], list(v[3]), v[4]]
                        for k, v in self.retired["apis"].items()},
               "errors": dict(self.retired["errors"]),
               "dropped_headers": dict(self.retired["dropped_headers"]),
               "auth_failures": dict(self.retired["auth_failures"]),
               "counters": {f: dict(c) for f, c in self.retired["counters"].items()},
               "truncated": self.retired["truncated"],
               "desyncs": self.retired["desyncs"],
               "tls_handshakes": self.retired["tls_handshakes"],
               "tls_handshakes_begun": self.retired["tls_handshakes_begun"],
               "tls_failures": dict(self.retired["tls_failures"]),
               "tunnels": _copy_tunnels(self.retired["tunnels"]),
               "redis": _no_redis()}
        _fold_redis(acc["redis"], self.retired["redis"])
        certificates = {}
        in_flight = connections = pool_open = pool_idle = tunnels_open = 0
        implementations = set()
        for export in self.latest.values():
            self._fold(acc, export)
            in_flight += export["in_flight"]
            tunnels_open += export["tunnels"]["open"]
            connections += export["connections"]
            pool_open += export["pool_open"]
            pool_idle += export["pool_idle"]
            implementations.add(export["implementation"])
            certificates.update(export["certificates"])

        requests = CounterMetricFamily("tollgate_requests", "Requests answered, by API, environment "
                                       "and status class (aborted: the connection was cut)",
                                       labels=["api", "env", "status"])
        duration = HistogramMetricFamily("tollgate_request_duration_seconds",
                                         "Time from request head to end of response",
                                         labels=["api", "env"])
        upstream = HistogramMetricFamily("tollgate_upstream_duration_seconds",
                                         "Time from sending to a backend to its response head",
                                         labels=["api", "env"])
        for (api, env), (counts, dur, dsum, up, usum) in sorted(acc["apis"].items()):
            for cls, n in zip(STATUS_CLASSES, counts):
                if n:
                    requests.add_metric([api, env, cls], n)
            if sum(dur):
                duration.add_metric([api, env], _buckets(dur), dsum)
            if sum(up):
                upstream.add_metric([api, env], _buckets(up), usum)
        yield requests
        yield duration
        yield upstream
        errors = CounterMetricFamily("tollgate_errors", "Errors answered by the gateway, by ROMA code",
                                     labels=["code"])
        for code, n in sorted(acc["errors"].items()):
            errors.add_metric([code], n)
        yield errors
        dropped = CounterMetricFamily(
            "tollgate_request_headers_dropped", "Request headers not forwarded because their name "
            "has '_' (underscore: dropped by default; alias: read with '-' it names a framing, "
            "hop-by-hop or gateway-set header, always dropped)", labels=["reason"])
        for reason in ("underscore", "alias"):
            dropped.add_metric([reason], acc["dropped_headers"].get(reason, 0))
        yield dropped
        auth = CounterMetricFamily("tollgate_auth_failures", "Requests refused by authentication, "
                                   "by API, environment, type (app...) and reason (missing, "
                                   "malformed, unknown_credential, date, signature, "
                                   "not_authorized)", labels=["api", "env", "type", "reason"])
        for (api, env, kind, reason), n in sorted(acc["auth_failures"].items()):
            auth.add_metric([api, env, kind, reason], n)
        yield auth
        for family, (name, text, labels) in COUNTERS.items():
            metric = CounterMetricFamily(name, text, labels=list(labels))
            for key, n in sorted(acc["counters"][family].items()):
                metric.add_metric(list(key), n)
            yield metric
        yield CounterMetricFamily("tollgate_responses_truncated", "Responses cut after their head "
                                  "was sent (backend reset or failure mid-body, client not reading)",
                                  value=acc["truncated"])
        yield CounterMetricFamily("tollgate_upstream_desyncs", "Times a backend sent bytes nobody "
                                  "asked for (its connections are then not reused for a while)",
                                  value=acc["desyncs"])
        handshakes = CounterMetricFamily("tollgate_tls_handshakes", "TLS handshakes on the TLS "
                                         "listener: begun, and completed", labels=["state"])
        handshakes.add_metric(["begun"], acc["tls_handshakes_begun"])
        handshakes.add_metric(["completed"], acc["tls_handshakes"])
        yield handshakes
        failures = CounterMetricFamily("tollgate_tls_handshake_failures", "TLS handshakes that "
                                       "failed, by reason", labels=["reason"])
        for reason in FAILURE_REASONS:
            failures.add_metric([reason], acc["tls_failures"].get(reason, 0))
        yield failures
        expiry = GaugeMetricFamily("tollgate_certificate_expiry_timestamp_seconds",
                                   "When each served certificate expires (POSIX time)",
                                   labels=["certificate"])
        for name, not_after in sorted(certificates.items()):
            expiry.add_metric([name], not_after)
        yield expiry
        yield GaugeMetricFamily("tollgate_in_flight_requests", "Requests being answered now",
                                value=in_flight)
        tunnels = acc["tunnels"]
        yield GaugeMetricFamily("tollgate_websocket_tunnels_open", "WebSocket tunnels open now",
                                value=tunnels_open)
        yield CounterMetricFamily("tollgate_websocket_tunnels", "WebSocket tunnels opened (a "
                                  "backend's 101 to an upgrade)", value=tunnels["opened"])
        closed = CounterMetricFamily("tollgate_websocket_tunnels_closed", "WebSocket tunnels "
                                     "closed, by what ended them (client, backend: that side "
                                     "closed or reset; idle: the API's idle timeout; drain: "
                                     "shutdown grace over)", labels=["reason"])
        for reason in CLOSE_REASONS:
            closed.add_metric([reason], tunnels["closed"].get(reason, 0))
        yield closed
        moved = CounterMetricFamily("tollgate_websocket_bytes", "Bytes carried by WebSocket "
                                    "tunnels, by direction", labels=["direction"])
        moved.add_metric(["to_backend"], tunnels["to_backend"])
        moved.add_metric(["to_client"], tunnels["to_client"])
        yield moved
        yield GaugeMetricFamily("tollgate_client_connections", "Open client connections",
                                value=connections)
        pool = GaugeMetricFamily("tollgate_upstream_pool_connections",
                                 "Connections to backends, by state", labels=["state"])
        pool.add_metric(["idle"], pool_idle)
        pool.add_metric(["busy"], max(pool_open - pool_idle, 0))
        yield pool
        master = self.master
        reloads = CounterMetricFamily("tollgate_config_reloads", "Configuration reloads, by result",
                                      labels=["result"])
        reloads.add_metric(["ok"], master.reloads_ok)
        reloads.add_metric(["error"], master.reloads_failed)
        yield reloads
        version = GaugeMetricFamily("tollgate_config_version_info",
                                    "The live configuration (content hash)", labels=["version"])
        version.add_metric([master.config_version], 1)
        yield version
        yield GaugeMetricFamily("tollgate_workers", "Worker processes serving",
                                value=len(self.latest))
        yield from _redis_metrics(acc["redis"], [export["redis"]["up"] for export
                                                 in self.latest.values() if export.get("redis")])
        impl = GaugeMetricFamily("tollgate_fastpath_info", "Which fastpath implementation is live",
                                 labels=["implementation"])
        for name in sorted(implementations or {master.implementation}):
            impl.add_metric([name], 1)
        yield impl
        checker = getattr(master, "checker", None)
        if checker is not None:     # channel member health: the master's checker and table
            yield from checker.metric_families()


def _redis_metrics(acc, ups):
    """The Redis families, when some worker uses Redis (ups: each such worker's up, 0/1)."""
    if not ups:
        return
    yield GaugeMetricFamily("tollgate_redis_up", "1 while every worker reaches the throttling "
                            "Redis, else 0", value=min(ups))
    latency = HistogramMetricFamily("tollgate_redis_call_duration_seconds", "Redis calls of the "
                                    "throttling budgets, by operation (acquire: a lease, release: "
                                    "unused tokens given back, probe: a check while Redis is away)",
                                    labels=["operation"])
    for op in REDIS_OPERATIONS:
        latency.add_metric([op], _buckets(acc["latency"][op]), acc["latency_sum"][op])
    yield latency
    yield CounterMetricFamily("tollgate_redis_leases", "Leases of throttling budget granted by "
                              "Redis (acquire calls answered)", value=acc["leases"])
    tokens = CounterMetricFamily("tollgate_redis_tokens", "Throttling tokens leased from Redis "
                                 "(granted) and given back unused (returned)", labels=["direction"])
    tokens.add_metric(["granted"], acc["granted"])
    tokens.add_metric(["returned"], acc["returned"])
    yield tokens
    errors = CounterMetricFamily("tollgate_redis_errors", "Failed Redis calls of the throttling "
                                 "budgets, by kind", labels=["kind"])
    for kind in REDIS_ERRORS:
        errors.add_metric([kind], acc["errors"][kind])
    yield errors


def _no_tunnels():
    return {"opened": 0, "to_backend": 0, "to_client": 0, "closed": {}}


def _copy_tunnels(t):
    return {**t, "closed": dict(t["closed"])}


def _buckets(counts):
    out = []
    total = 0
    for bound, n in zip(BUCKETS + (float("inf"),), counts):
        total += n
        out.append(("+Inf" if bound == float("inf") else repr(bound), total))
    return out
