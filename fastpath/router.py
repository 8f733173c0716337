# cython: annotation_typing=False
"""Route a request (environment, Host, method, normalized path) to the API that serves it.

A :class:`Router` is filled once per config snapshot with :meth:`Router.add`, frozen with
:meth:`Router.freeze`, and then only read by :meth:`Router.match` on every request.

Routes
    ``add(env, hosts, method, template, match_mode, target)``.  ``env`` names an environment
    ("RELEASE", "TEST"...); a request only sees the routes of its own environment.  ``hosts`` is a
    tuple of canonical host names (lower-case, no port, no trailing dot; IPv6 literals in
    brackets), or ``()`` for any host.  ``method`` is one of GET POST PUT DELETE PATCH HEAD OPTIONS
    ANY.  ``match_mode`` is "exact" or "prefix".  ``target`` is whatever the gateway wants back.

Templates
    ``/`` followed by segments separated by ``/``: literal text, ``{name}`` (exactly one non-empty
    segment) or, as the last segment only, ``{name+}`` (one or more segments: the rest of the
    path).  Names match ``[A-Za-z_][A-Za-z0-9_-]*`` and are unique in a template.  A trailing
    slash is ignored.  Templates need *not* be pre-normalized: each literal segment is passed
    through :func:`fastpath.pathnorm.normalize_path` when the route is added (``%7e`` becomes
    ``~``, ``%2f`` becomes ``%2F``), so it compares equal to a normalized request path.  A
    literal segment that is a dot segment (``.``, ``..``, ``%2e``), that normalize_path refuses,
    or that holds a brace, is an error.  Every error in a template is a ValueError naming the
    template and the problem.

Matching
    ``match(env, host, method, path)`` returns ``(target, params, rest)`` or None.  ``path``
    must be normalized already (the gateway calls normalize_path first); a path that does not
    start with '/' matches nothing.  ``method`` is the request method as sent (case-sensitive;
    one no route names, e.g. TRACE, only finds ANY routes).  ``host`` is the raw Host header
    ("" or None when absent: only the any-host routes are then tried): it is
    lower-cased, a ``:port`` is stripped (``[::1]:8080`` -> ``[::1]``), then one trailing dot.  The
    routes of that exact host are tried first; when they give no match, the any-host routes.

    Segments compare case-sensitively and percent-escapes as they are (``%2F`` is part of a
    segment).  Candidates are ranked segment by segment, which a depth-first walk of a segment
    trie gives directly, backtracking when a branch finds nothing:

    * at each segment a literal beats ``{x}``, which beats ``{x+}``, which beats stopping there
      with a prefix route (so among the prefix routes of one branch, the deepest wins);
    * where the path ends, an exact route beats a prefix route of the same node;
    * at one node the request method's route wins, then ANY, then (HEAD requests only) GET.
      A node whose routes do not accept the method does not match, and the walk backtracks.

    ``params`` maps each name to its raw segment as it is in the normalized path (for
    ``{x+}`` the segments joined by '/', no leading slash), or is None when the route has no
    parameter (no empty dict is allocated per request).  An exact route ignores one trailing
    slash of the path and its ``rest`` is "".  A prefix route matches a leading run of whole
    segments (``/api`` matches ``/api``, ``/api/``, ``/api/x``, not ``/apix``) and ``rest`` is the
    remainder of the path as it is: "" for ``/api``, "/" for ``/api/`` (so a trailing slash can
    be forwarded), "/x/y" for ``/api/x/y``.  ``{x+}`` takes every remaining segment, so its
    ``rest`` is "" or "/" alone, and its value leaves out that trailing slash.

Cost
    One segment trie per (environment, host): a lookup is a few dict lookups per path segment
    and never scans the routes, so it does not grow with their number.  Routes made only of
    literals and matched exactly are also indexed by their whole path (with and without a
    trailing slash), so the most common lookup is a single dict probe.  Backtracking only
    happens where a literal and a parameter branch both exist at the same depth and the literal
    one finds nothing; a node has at most one literal child per segment, one ``{x}`` child and
    one ``{x+}`` child, so the worst case grows with the templates' depth (2 branches per level
    where every level overlaps), never with the number of routes.  In the compiled form the
    segment scan calls ``PyUnicode_FindChar`` (cimported in router.pxd), the rest is shared.

Conflicts
    Two routes with the same environment, host, method, template shape (parameter names do not
    count: ``/a/{x}`` and ``/a/{y}`` collide) and match mode make add() raise RouteConflict.
"""
from __future__ import annotations

import re

from .pathnorm import PathError, normalize_path

try:
    import cython

    _COMPILED = cython.compiled
except ImportError:  # pragma: no cover - without Cython only the interpreted form exists
    _COMPILED = False

__all__ = ["METHODS", "MATCH_MODES", "RouteConflict", "Router"]

#: The methods a route can be added for.  ANY accepts every request method.
METHODS = frozenset(("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "ANY"))
MATCH_MODES = ("exact", "prefix")

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*\Z")


class RouteConflict(ValueError):
    """Two routes that could never be told apart; ``first`` was added before ``second``."""

    def __init__(self, first: object, second: object, detail: str = "") -> None:
        super().__init__(f"route {second!r} conflicts with route {first!r}" + (f": {detail}" if detail else ""))
        self.first = first
        self.second = second


class _Route:
    """One added route, as the matcher needs it."""

    def __init__(self, target: object, template: str, exact: bool, names: tuple,
                 greedy: object, plain_len: int) -> None:
        self.target = target
        self.template = template
        self.exact = exact
        # For each non-greedy segment of the template: the parameter name, or None for a literal.
        self.names = names
        # The name of the {x+} parameter, or None.
        self.greedy = greedy
        self.has_params = greedy is not None or any(name is not None for name in names)
        # Without parameters: the length of the normalized template, where a prefix's rest starts.
        self.plain_len = plain_len


class _Node:
    """A node of the segment trie: the routes that end here and the ways to go deeper.

    Every dict and child is None until something needs it, so that a lookup can skip it with
    one pointer test.
    """

    def __init__(self) -> None:
        self.children = None  # literal segment -> _Node
        self.param = None     # the _Node for a {x} segment
        self.greedy = None    # the _Node for a {x+} segment (it has no children)
        self.exact = None     # method -> _Route, for exact routes ending here
        self.prefix = None    # method -> _Route, for prefix routes ending here


class _Tree:
    """The routes of one (environment, host): a trie and an index of the literal exact routes."""

    def __init__(self) -> None:
        self.root = _Node()
        # Whole path -> the ``exact`` dict of the node of a literal-only exact route, under the
        # template and the template plus '/'.
        self.static = {}


class _Env:
    """The routes of one environment."""

    def __init__(self) -> None:
        self.by_host = {}   # host -> _Tree
        self.any = None     # _Tree for the routes of any host, or None


class Router:
    """The route index of one config snapshot.  See the module docstring for the rules."""

    def __init__(self, previous: object = None) -> None:
        """``previous``: the router this one replaces, if any; the templates both use are
        parsed once (a reload builds a whole new router from mostly the same routes)."""
        self._envs = {}
        self._frozen = False
        self._count = 0
        # template -> (segments, shape): each template is parsed once (an API has one route
        # per environment), and found in the previous router's while it is being built
        self._templates = {}
        self._previous = previous._templates if isinstance(previous, Router) else None

    def __len__(self) -> int:
        """The number of routes added (one per add(), whatever its number of hosts)."""
        return self._count

    def __repr__(self) -> str:
        state = "frozen" if self._frozen else "open"
        return f"<Router {self._count} routes, {len(self._envs)} environments, {state}>"

    @property
    def frozen(self) -> bool:
        return self._frozen

    def freeze(self) -> None:
        """Forbid further add(); a snapshot's router is immutable once published."""
        self._frozen = True
        self._previous = None   # (routers must not keep their predecessors alive)

    def add(self, env: str, hosts: tuple, method: str, template: str, match_mode: str,
            target: object) -> None:
        """Add a route; see the module docstring.

        Raises ValueError for a bad argument or template, RouteConflict when the route collides
        with one added before (nothing is added then), RuntimeError once frozen.
        """
        if self._frozen:
            raise RuntimeError("the router is frozen: build a new one for a new snapshot")
        if not isinstance(env, str) or env == "":
            raise ValueError(f"environment must be a non-empty str, not {env!r}")
        if not isinstance(hosts, tuple):
            raise ValueError(f"hosts must be a tuple of host names, not {hosts!r}")
        for host in hosts:
            if not isinstance(host, str) or host == "" or _host_key(host) != host:
                raise ValueError(f"host {host!r} is not a canonical host name "
                                 "(lower-case, no port, no trailing dot)")
        if len(set(hosts)) != len(hosts):
            raise ValueError(f"hosts {hosts!r} lists a host twice")
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}: expected one of {', '.join(sorted(METHODS))}")
        if match_mode not in MATCH_MODES:
            raise ValueError(f"unknown match mode {match_mode!r}: expected 'exact' or 'prefix'")
        exact = match_mode == "exact"
        parsed = self._templates.get(template) if isinstance(template, str) else None
        if parsed is None:
            if self._previous is not None and isinstance(template, str):
                parsed = self._previous.get(template)
            if parsed is None:
                parsed = _parse_route(template)
            self._templates[template] = parsed
        # (shared by the routes of a template: only read)
        segments, shape, names, greedy, plain = parsed
        route = _Route(target, template, exact, names, greedy, len(plain) if segments else 0)

        env_routes = self._envs.get(env)
        keys = hosts if len(hosts) > 0 else (None,)
        # First look for a conflict on every host, so that a failed add() adds nothing.
        for key in keys:
            tree = _find_tree(env_routes, key)
            node = _find_node(tree.root, segments) if tree is not None else None
            if node is not None:
                routes = node.exact if exact else node.prefix
                if routes is not None and method in routes:
                    first = routes[method]
                    where = f"host {key}" if key is not None else "any host"
                    raise RouteConflict(first.target, target,
                                        f"{env} {where} {method} {shape} ({match_mode}): "
                                        f"{first.template!r} and {template!r}")

        if env_routes is None:
            env_routes = _Env()
            self._envs[env] = env_routes
        for key in keys:
            if key is None:
                if env_routes.any is None:
                    env_routes.any = _Tree()
                tree = env_routes.any
            else:
                tree = env_routes.by_host.get(key)
                if tree is None:
                    tree = env_routes.by_host[key] = _Tree()
            node = _make_node(tree.root, segments)
            if exact:
                if node.exact is None:
                    node.exact = {}
                node.exact[method] = route
                if not route.has_params:
                    tree.static[plain] = node.exact
                    if plain != "/":
                        tree.static[plain + "/"] = node.exact
            else:
                if node.prefix is None:
                    node.prefix = {}
                node.prefix[method] = route
        self._count += 1

    def match(self, env: str, host: str, method: str, path: str) -> object:
        """Return ``(target, params, rest)`` for the route that serves the request, or None."""
        env_routes = self._envs.get(env)
        if env_routes is None:
            return None
        n = len(path)
        if n == 0 or path[0] != "/":
            return None
        stop = n - 1 if path[n - 1] == "/" else n  # where the last segment ends
        if len(env_routes.by_host) != 0 and host:
            tree = env_routes.by_host.get(_host_key(host))
            if tree is not None:
                found = _lookup(tree, method, path, n, stop)
                if found is not None:
                    return found
        if env_routes.any is not None:
            return _lookup(env_routes.any, method, path, n, stop)
        return None


def _parse_route(template: str) -> tuple:
    """``(segments, shape, names, greedy, plain)`` of a template: what add() needs of it."""
    segments, shape = _parse_template(template)
    names = []
    greedy = None
    for kind, text in segments:
        if kind == "greedy":
            greedy = text
        else:
            names.append(text if kind == "param" else None)
    plain = "/" + "/".join(text for _kind, text in segments)
    return segments, shape, tuple(names), greedy, plain


def _parse_template(template: str) -> tuple:
    """Split ``template`` into ``[(kind, text)]`` (kind: "literal", "param", "greedy") and its shape."""
    if not isinstance(template, str):
        raise ValueError(f"template must be a str, not {template!r}")
    if not template.startswith("/"):
        raise ValueError(f"template {template!r} must start with '/'")
    if template == "/":
        return [], "/"
    body = template[1:]
    if body.endswith("/"):
        body = body[:len(body) - 1]  # a trailing slash is ignored
    if body == "":
        raise ValueError(f"template {template!r} has an empty segment ('//')")
    raw_segments = body.split("/")
    segments = []
    seen = set()
    for index, seg in enumerate(raw_segments):
        if seg == "":
            raise ValueError(f"template {template!r} has an empty segment ('//')")
        if seg.startswith("{") and seg.endswith("}") and len(seg) > 2:
            name = seg[1:len(seg) - 1]
            kind = "param"
            if name.endswith("+"):
                name = name[:len(name) - 1]
                kind = "greedy"
                if index != len(raw_segments) - 1:
                    raise ValueError(f"template {template!r}: {seg} must be the last segment")
            if _NAME.match(name) is None:
                raise ValueError(f"template {template!r}: parameter name {name!r} must match "
                                 "[A-Za-z_][A-Za-z0-9_-]*")
            if name in seen:
                raise ValueError(f"template {template!r} uses parameter name {name!r} twice")
            seen.add(name)
            segments.append((kind, name))
            continue
        if "{" in seg or "}" in seg:
            raise ValueError(f"template {template!r}: segment {seg!r} mixes braces with other text "
                             "(a parameter must be a whole segment: {name} or {name+})")
        try:
            normal = normalize_path("/" + seg)
        except PathError as exc:
            raise ValueError(f"template {template!r}: segment {seg!r} is not a valid path segment: {exc}") from None
        if normal == "/" or normal == "//":
            raise ValueError(f"template {template!r}: dot segment {seg!r} is not allowed")
        segments.append(("literal", normal[1:]))
    shape = "/" + "/".join(text if kind == "literal" else ("{}" if kind == "param" else "{+}")
                           for kind, text in segments)
    return segments, shape


def _find_tree(env_routes: object, key: object) -> object:
    if env_routes is None:
        return None
    if key is None:
        return env_routes.any
    return env_routes.by_host.get(key)


def _find_node(node: _Node, segments: list) -> object:
    """The node for ``segments`` if it exists, without creating any."""
    for kind, text in segments:
        if kind == "literal":
            node = node.children.get(text) if node.children is not None else None
        elif kind == "param":
            node = node.param
        else:
            node = node.greedy
        if node is None:
            return None
    return node


def _make_node(node: _Node, segments: list) -> _Node:
    """The node for ``segments``, created with its missing ancestors."""
    for kind, text in segments:
        if kind == "literal":
            if node.children is None:
                node.children = {}
            child = node.children.get(text)
            if child is None:
                child = node.children[text] = _Node()
        elif kind == "param":
            if node.param is None:
                node.param = _Node()
            child = node.param
        else:
            if node.greedy is None:
                node.greedy = _Node()
            child = node.greedy
        node = child
    return node


def _host_key(host: str) -> str:
    """The canonical form of a Host header: lower-case, no ':port', no trailing dot."""
    n = len(host)
    end = n
    if _COMPILED:
        # One pass that finds the end of the name and whether it needs lower-casing, so that the
        # usual header comes back without allocation.
        bracket = n > 0 and host[0] == "["  # an IPv6 literal: the port follows the ']'
        fold = False
        i = 0
        for c in host:  # Cython turns this into a C loop over the characters
            if bracket:
                if c == "]":
                    end = i + 1
                    break
            elif c == ":":
                end = i
                break
            if ("A" <= c <= "Z") or c > "\x7f":
                fold = True
            i += 1
    else:
        if n > 0 and host[0] == "[":
            j = host.find("]")
            if j >= 0:
                end = j + 1
        else:
            j = host.find(":")
            if j >= 0:
                end = j
        fold = True
    if end > 0 and host[end - 1] == ".":
        end -= 1
    if end != n:
        host = host[:end]
    if fold:
        host = host.lower()
    return host


def _next_slash(path: str, start: int, stop: int) -> int:
    """The index of the first '/' in ``path[start:stop]``, or ``stop``."""
    if _COMPILED:
        # The C API (cimported by router.pxd) rather than str.find with boxed arguments.
        end = PyUnicode_FindChar(path, "/", start, stop, 1)  # noqa: F821 - compiled form only
    else:
        end = path.find("/", start, stop)
    return stop if end < 0 else end


def _pick(routes: dict, method: str) -> object:
    """The route of ``routes`` that serves ``method``: itself, else ANY, else GET for HEAD."""
    route = routes.get(method)
    if route is None:
        route = routes.get("ANY")
        if route is None and method == "HEAD":
            route = routes.get("GET")
    return route


def _walk(node: _Node, path: str, pos: int, stop: int, method: str) -> object:
    """The best route under ``node`` for ``path[pos:stop]`` (pos is at a '/' or stop), or None."""
    if pos >= stop:
        if node.exact is not None:
            route = _pick(node.exact, method)
            if route is not None:
                return route
        if node.prefix is not None:
            return _pick(node.prefix, method)
        return None
    end = _next_slash(path, pos + 1, stop)
    if node.children is not None:
        child = node.children.get(path[pos + 1:end])
        if child is not None:
            route = _walk(child, path, end, stop, method)
            if route is not None:
                return route
    if node.param is not None and end > pos + 1:
        route = _walk(node.param, path, end, stop, method)
        if route is not None:
            return route
    if node.greedy is not None and stop > pos + 1:
        greedy = node.greedy
        if greedy.exact is not None:
            route = _pick(greedy.exact, method)
            if route is not None:
                return route
        if greedy.prefix is not None:
            route = _pick(greedy.prefix, method)
            if route is not None:
                return route
    if node.prefix is not None:
        return _pick(node.prefix, method)
    return None


def _lookup(tree: _Tree, method: str, path: str, n: int, stop: int) -> object:
    """Match in one tree: ``(target, params, rest)`` or None."""
    routes = tree.static.get(path)
    if routes is not None:
        route = _pick(routes, method)
        if route is not None:
            return (route.target, None, "")
    route = _walk(tree.root, path, 0, stop, method)
    if route is None:
        return None
    if not route.has_params:
        if route.exact:
            return (route.target, None, "")
        return (route.target, None, path[route.plain_len:])
    params = {}
    pos = 0
    names = route.names
    for k in range(len(names)):
        end = _next_slash(path, pos + 1, stop)
        name = names[k]
        if name is not None:
            params[name] = path[pos + 1:end]
        pos = end
    if route.greedy is not None:
        params[route.greedy] = path[pos + 1:stop]
        pos = stop
    if route.exact:
        return (route.target, params, "")
    return (route.target, params, path[pos:])
