"""Router: templates, match modes, priority, hosts, environments, methods, conflicts; both forms."""
from __future__ import annotations

import pytest

ENV = "RELEASE"


@pytest.fixture
def make(router_mod):
    """make([(method, template, mode, target), ...], hosts=(), env=ENV) -> a frozen Router."""
    def build(routes, hosts=(), env=ENV):
        router = router_mod.Router()
        for method, template, mode, target in routes:
            router.add(env, hosts, method, template, mode, target)
        router.freeze()
        return router
    return build


def m(router, path, method="GET", host="api.example.com", env=ENV):
    return router.match(env, host, method, path)


# --- exact and prefix ---------------------------------------------------------------------------

def test_exact_route(make):
    r = make([("GET", "/users", "exact", "users")])
    assert m(r, "/users") == ("users", None, "")
    assert m(r, "/users/") == ("users", None, "")      # one trailing slash is ignored
    assert m(r, "/users/x") is None
    assert m(r, "/usersx") is None
    assert m(r, "/user") is None
    assert m(r, "/") is None


def test_match_returns_a_tuple(make):
    r = make([("GET", "/a/{x}", "exact", "t")])
    found = m(r, "/a/1")
    assert type(found) is tuple
    assert found == ("t", {"x": "1"}, "")


def test_root_routes(make):
    r = make([("GET", "/", "exact", "home")])
    assert m(r, "/") == ("home", None, "")
    assert m(r, "/a") is None
    r = make([("GET", "/", "prefix", "all")])
    assert m(r, "/") == ("all", None, "/")
    assert m(r, "/a/b") == ("all", None, "/a/b")
    assert m(r, "/a/b/") == ("all", None, "/a/b/")


def test_prefix_matches_whole_segments(make):
    r = make([("GET", "/api", "prefix", "api")])
    assert m(r, "/api") == ("api", None, "")
    assert m(r, "/api/") == ("api", None, "/")
    assert m(r, "/api/x") == ("api", None, "/x")
    assert m(r, "/api/x/y") == ("api", None, "/x/y")
    assert m(r, "/api/x/y/") == ("api", None, "/x/y/")
    assert m(r, "/apix") is None
    assert m(r, "/ap") is None
    assert m(r, "/") is None


def test_prefix_with_params_gives_params_and_rest(make):
    r = make([("GET", "/t/{tenant}/files", "prefix", "files")])
    assert m(r, "/t/acme/files/a/b.txt") == ("files", {"tenant": "acme"}, "/a/b.txt")
    assert m(r, "/t/acme/files") == ("files", {"tenant": "acme"}, "")
    assert m(r, "/t/acme/filesx") is None


def test_template_trailing_slash_is_ignored(make):
    r = make([("GET", "/a/b/", "exact", "ab"), ("GET", "/p/", "prefix", "p")])
    assert m(r, "/a/b") == ("ab", None, "")
    assert m(r, "/a/b/") == ("ab", None, "")
    assert m(r, "/p/q") == ("p", None, "/q")


def test_path_that_is_not_normalized_form_matches_nothing(make):
    r = make([("GET", "/", "prefix", "all")])
    assert m(r, "") is None
    assert m(r, "a/b") is None


# --- parameters -----------------------------------------------------------------------------------

def test_params(make):
    r = make([("GET", "/users/{id}/orders/{order_id}", "exact", "order")])
    assert m(r, "/users/42/orders/7") == ("order", {"id": "42", "order_id": "7"}, "")
    assert m(r, "/users/42/orders/7/") == ("order", {"id": "42", "order_id": "7"}, "")
    assert m(r, "/users/42/orders") is None
    assert m(r, "/users/42/orders/7/x") is None


def test_param_values_are_raw(make):
    r = make([("GET", "/f/{name}", "exact", "f")])
    assert m(r, "/f/a%2Fb") == ("f", {"name": "a%2Fb"}, "")
    assert m(r, "/f/%C3%A9") == ("f", {"name": "%C3%A9"}, "")


def test_param_names_may_use_digits_dash_underscore(make):
    r = make([("GET", "/{_a}/{B-2}/{c_3}", "exact", "t")])
    assert m(r, "/1/2/3") == ("t", {"_a": "1", "B-2": "2", "c_3": "3"}, "")


def test_route_without_params_gives_none_not_an_empty_dict(make):
    r = make([("GET", "/a/b", "exact", "static"), ("GET", "/c/{x}/d", "prefix", "p"),
              ("GET", "/e", "prefix", "e")])
    assert m(r, "/a/b")[1] is None
    assert m(r, "/e/f")[1] is None
    assert m(r, "/c/1/d/e")[1] == {"x": "1"}


def test_params_dict_is_fresh_per_match(make):
    r = make([("GET", "/a/{x}", "exact", "t")])
    first = m(r, "/a/1")[1]
    first["x"] = "changed"
    assert m(r, "/a/1")[1] == {"x": "1"}


def test_greedy_param(make):
    r = make([("GET", "/files/{path+}", "exact", "files")])
    assert m(r, "/files/a") == ("files", {"path": "a"}, "")
    assert m(r, "/files/a/b/c.txt") == ("files", {"path": "a/b/c.txt"}, "")
    assert m(r, "/files/a/b/") == ("files", {"path": "a/b"}, "")
    assert m(r, "/files") is None
    assert m(r, "/files/") is None


def test_greedy_param_in_prefix_mode(make):
    r = make([("GET", "/g/{x}/{rest+}", "prefix", "g")])
    assert m(r, "/g/1/a/b") == ("g", {"x": "1", "rest": "a/b"}, "")
    assert m(r, "/g/1/a/b/") == ("g", {"x": "1", "rest": "a/b"}, "/")
    assert m(r, "/g/1") is None


def test_greedy_root(make):
    r = make([("GET", "/{all+}", "exact", "all")])
    assert m(r, "/x/y") == ("all", {"all": "x/y"}, "")
    assert m(r, "/") is None


# --- priority and backtracking -----------------------------------------------------------------

def test_literal_beats_param_beats_greedy(make):
    r = make([("GET", "/a/{x}", "exact", "param"), ("GET", "/a/b", "exact", "literal"),
              ("GET", "/a/{rest+}", "exact", "greedy")])
    assert m(r, "/a/b") == ("literal", None, "")
    assert m(r, "/a/c") == ("param", {"x": "c"}, "")
    assert m(r, "/a/b/c") == ("greedy", {"rest": "b/c"}, "")


def test_backtracks_from_a_literal_dead_end(make):
    r = make([("GET", "/a/b/c", "exact", "first"), ("GET", "/a/{x}/d", "exact", "second")])
    assert m(r, "/a/b/c") == ("first", None, "")
    assert m(r, "/a/b/d") == ("second", {"x": "b"}, "")


def test_backtracks_to_greedy_then_to_prefix(make):
    r = make([("GET", "/a/b/c", "exact", "lit"), ("GET", "/a/{x}/d", "exact", "param"),
              ("GET", "/a/{r+}", "exact", "greedy"), ("GET", "/", "prefix", "root")])
    assert m(r, "/a/b/e") == ("greedy", {"r": "b/e"}, "")
    assert m(r, "/b") == ("root", None, "/b")
    assert m(r, "/a") == ("root", None, "/a")


def test_backtracking_undoes_params(make):
    # The walk tries /{x}/b first; the params come from the route that matched, not the first try.
    r = make([("GET", "/{x}/b/c", "exact", "xbc"), ("GET", "/{y}/{z}/d", "exact", "yzd")])
    assert m(r, "/1/b/c") == ("xbc", {"x": "1"}, "")
    assert m(r, "/1/b/d") == ("yzd", {"y": "1", "z": "b"}, "")


def test_exact_beats_prefix_at_the_same_node(make):
    r = make([("GET", "/a/b", "prefix", "prefix"), ("GET", "/a/b", "exact", "exact")])
    assert m(r, "/a/b") == ("exact", None, "")
    assert m(r, "/a/b/") == ("exact", None, "")
    assert m(r, "/a/b/c") == ("prefix", None, "/c")


def test_longest_prefix_wins(make):
    r = make([("GET", "/", "prefix", "root"), ("GET", "/api", "prefix", "api"),
              ("GET", "/api/v1", "prefix", "v1"), ("GET", "/api/v1/admin", "prefix", "admin")])
    assert m(r, "/api/v1/admin/users") == ("admin", None, "/users")
    assert m(r, "/api/v1/users") == ("v1", None, "/users")
    assert m(r, "/api/v2") == ("api", None, "/v2")
    assert m(r, "/other") == ("root", None, "/other")


def test_deeper_exact_beats_shallower_prefix(make):
    r = make([("GET", "/a", "prefix", "prefix"), ("GET", "/a/{x}", "exact", "exact")])
    assert m(r, "/a/1") == ("exact", {"x": "1"}, "")
    assert m(r, "/a/1/2") == ("prefix", None, "/1/2")


def test_literal_branch_is_preferred_segment_by_segment(make):
    # Ranked segment by segment: at the first segment a literal beats a parameter, even though
    # the parameter's branch would give a longer prefix.
    r = make([("GET", "/a", "prefix", "short-literal"), ("GET", "/{x}/b/c", "prefix", "long-param")])
    assert m(r, "/a/b/c/d") == ("short-literal", None, "/b/c/d")
    assert m(r, "/z/b/c/d") == ("long-param", {"x": "z"}, "/d")


def test_segments_compare_case_sensitively(make):
    r = make([("GET", "/Users", "exact", "U")])
    assert m(r, "/Users") == ("U", None, "")
    assert m(r, "/users") is None


def test_template_literals_are_normalized(make):
    r = make([("GET", "/%7euser/a%2fb/%41", "exact", "t")])
    assert m(r, "/~user/a%2Fb/A") == ("t", None, "")
    assert m(r, "/~user/a/b/A") is None   # an encoded slash is not a separator


def test_encoded_slash_is_part_of_a_segment(make):
    r = make([("GET", "/a/{x}", "exact", "one"), ("GET", "/a/{x}/{y}", "exact", "two")])
    assert m(r, "/a/b%2Fc") == ("one", {"x": "b%2Fc"}, "")
    assert m(r, "/a/b/c") == ("two", {"x": "b", "y": "c"}, "")


# --- methods --------------------------------------------------------------------------------------

def test_method_selection(make):
    r = make([("GET", "/r", "exact", "get"), ("POST", "/r", "exact", "post")])
    assert m(r, "/r", "GET")[0] == "get"
    assert m(r, "/r", "POST")[0] == "post"
    assert m(r, "/r", "PUT") is None
    assert m(r, "/r", "get") is None    # methods are case-sensitive


def test_any_is_the_fallback_at_a_node(make):
    r = make([("ANY", "/r", "exact", "any"), ("DELETE", "/r", "exact", "delete")])
    assert m(r, "/r", "DELETE")[0] == "delete"
    assert m(r, "/r", "PATCH")[0] == "any"
    assert m(r, "/r", "TRACE")[0] == "any"
    assert m(r, "/r", "HEAD")[0] == "any"


def test_head_falls_back_to_get_last(make):
    r = make([("GET", "/r", "exact", "get")])
    assert m(r, "/r", "HEAD")[0] == "get"
    assert m(r, "/r", "OPTIONS") is None
    r = make([("GET", "/r", "exact", "get"), ("ANY", "/r", "exact", "any")])
    assert m(r, "/r", "HEAD")[0] == "any"
    r = make([("GET", "/r", "exact", "get"), ("HEAD", "/r", "exact", "head")])
    assert m(r, "/r", "HEAD")[0] == "head"


def test_method_mismatch_backtracks(make):
    r = make([("GET", "/a/b", "exact", "get-literal"), ("POST", "/a/{x}", "exact", "post-param"),
              ("PUT", "/a", "prefix", "put-prefix")])
    assert m(r, "/a/b", "GET")[0] == "get-literal"
    assert m(r, "/a/b", "POST") == ("post-param", {"x": "b"}, "")
    assert m(r, "/a/b", "PUT") == ("put-prefix", None, "/b")
    assert m(r, "/a/b", "DELETE") is None


def test_path_priority_comes_before_method_preference(make):
    # HEAD finds GET on the literal node before it would look at a HEAD route on a parameter node.
    r = make([("GET", "/a/b", "exact", "get-literal"), ("HEAD", "/a/{x}", "exact", "head-param")])
    assert m(r, "/a/b", "HEAD")[0] == "get-literal"
    assert m(r, "/a/c", "HEAD")[0] == "head-param"


def test_exact_route_with_fallback_method_beats_prefix_with_own_method(make):
    r = make([("GET", "/a", "exact", "get-exact"), ("HEAD", "/a", "prefix", "head-prefix")])
    assert m(r, "/a", "HEAD")[0] == "get-exact"
    assert m(r, "/a/b", "HEAD")[0] == "head-prefix"


@pytest.mark.parametrize("method", ["get", "TRACE", "CONNECT", "", "*"])
def test_unknown_method_in_add_is_refused(router_mod, method):
    with pytest.raises(ValueError, match="unknown method"):
        router_mod.Router().add(ENV, (), method, "/a", "exact", "t")


# --- hosts ----------------------------------------------------------------------------------------

@pytest.fixture
def hosted(router_mod):
    r = router_mod.Router()
    r.add(ENV, ("api.example.com",), "GET", "/a", "exact", "api-a")
    r.add(ENV, ("api.example.com", "www.example.com"), "GET", "/only-hosted", "exact", "hosted")
    r.add(ENV, (), "GET", "/a", "exact", "any-a")
    r.add(ENV, (), "GET", "/b", "exact", "any-b")
    r.add(ENV, ("[::1]",), "GET", "/a", "exact", "v6-a")
    r.add(ENV, ("127.0.0.1",), "GET", "/a", "exact", "v4-a")
    r.freeze()
    return r


@pytest.mark.parametrize(("host", "target"), [
    ("api.example.com", "api-a"),
    ("API.Example.COM", "api-a"),
    ("api.example.com:8443", "api-a"),
    ("api.example.com.", "api-a"),
    ("Api.Example.Com.:80", "api-a"),
    ("[::1]", "v6-a"),
    ("[::1]:8080", "v6-a"),
    ("127.0.0.1:9000", "v4-a"),
    ("other.example.com", "any-a"),
    ("", "any-a"),
    ("api.example.com..", "any-a"),       # only one trailing dot is stripped
    ("api.example.co", "any-a"),
    ("[::2]:8080", "any-a"),
])
def test_host_specific_then_any_host(hosted, host, target):
    assert m(hosted, "/a", host=host)[0] == target


def test_absent_host_tries_only_the_any_host_routes(hosted):
    assert m(hosted, "/a", host=None)[0] == "any-a"
    assert m(hosted, "/only-hosted", host=None) is None


def test_falls_back_to_any_host_when_the_host_tree_has_no_match(hosted):
    assert m(hosted, "/b", host="api.example.com")[0] == "any-b"
    assert m(hosted, "/only-hosted", host="www.example.com:80")[0] == "hosted"
    assert m(hosted, "/only-hosted", host="elsewhere.example.com") is None
    assert m(hosted, "/only-hosted", host="") is None


def test_host_with_non_ascii_is_folded_alike(router_mod):
    r = router_mod.Router()
    r.add(ENV, ("\xe9x.com",), "GET", "/", "exact", "e")
    assert r.match(ENV, "\xc9X.COM", "GET", "/")[0] == "e"


@pytest.mark.parametrize("hosts", [
    ("API.example.com",), ("api.example.com:80",), ("api.example.com.",), ("",), ("[::1]:80",),
    ["api.example.com"], "api.example.com", (None,), ("a.com", "a.com"),
])
def test_bad_hosts_are_refused(router_mod, hosts):
    with pytest.raises(ValueError, match="host"):
        router_mod.Router().add(ENV, hosts, "GET", "/a", "exact", "t")


# --- environments -------------------------------------------------------------------------------

def test_environments_are_isolated(router_mod):
    r = router_mod.Router()
    r.add("RELEASE", (), "GET", "/a", "exact", "release")
    r.add("TEST", (), "GET", "/a", "exact", "test")
    r.add("TEST", (), "GET", "/only-test", "prefix", "only-test")
    assert r.match("RELEASE", "h", "GET", "/a")[0] == "release"
    assert r.match("TEST", "h", "GET", "/a")[0] == "test"
    assert r.match("TEST", "h", "GET", "/only-test/x")[0] == "only-test"
    assert r.match("RELEASE", "h", "GET", "/only-test/x") is None
    assert r.match("DEV", "h", "GET", "/a") is None
    assert r.match("release", "h", "GET", "/a") is None


def test_same_route_in_two_environments_is_no_conflict(router_mod):
    r = router_mod.Router()
    r.add("RELEASE", (), "GET", "/a", "exact", 1)
    r.add("TEST", (), "GET", "/a", "exact", 2)
    assert len(r) == 2


@pytest.mark.parametrize("env", ["", None, 1])
def test_bad_environment_is_refused(router_mod, env):
    with pytest.raises(ValueError, match="environment"):
        router_mod.Router().add(env, (), "GET", "/a", "exact", "t")


# --- conflicts ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("first", "second"), [
    ("/a/b", "/a/b"),
    ("/a/b", "/a/b/"),
    ("/a/{x}", "/a/{y}"),
    ("/{x}/{y}/{z+}", "/{a}/{b}/{c+}"),
    ("/a/%7e", "/a/~"),
])
def test_same_shape_conflicts(router_mod, first, second):
    r = router_mod.Router()
    first_target, second_target = object(), object()
    r.add(ENV, ("h.com",), "GET", first, "exact", first_target)
    with pytest.raises(router_mod.RouteConflict) as info:
        r.add(ENV, ("h.com",), "GET", second, "exact", second_target)
    assert info.value.first is first_target
    assert info.value.second is second_target
    assert isinstance(info.value, ValueError)
    assert len(r) == 1


def test_conflict_on_one_of_several_hosts_adds_nothing(router_mod):
    r = router_mod.Router()
    r.add(ENV, ("b.com",), "GET", "/a", "exact", "first")
    with pytest.raises(router_mod.RouteConflict):
        r.add(ENV, ("a.com", "b.com"), "GET", "/a", "exact", "second")
    assert r.match(ENV, "a.com", "GET", "/a") is None
    assert r.match(ENV, "b.com", "GET", "/a")[0] == "first"
    assert len(r) == 1


@pytest.mark.parametrize(("first", "second"), [
    (("GET", "/a", "exact", ()), ("POST", "/a", "exact", ())),
    (("GET", "/a", "exact", ()), ("ANY", "/a", "exact", ())),
    (("GET", "/a", "exact", ()), ("GET", "/a", "prefix", ())),
    (("GET", "/a", "exact", ()), ("GET", "/a", "exact", ("h.com",))),
    (("GET", "/a/{x}", "exact", ()), ("GET", "/a/{x+}", "exact", ())),
    (("GET", "/a/{x}", "exact", ()), ("GET", "/a/x", "exact", ())),
    (("GET", "/a/{x+}", "exact", ()), ("GET", "/a/{x+}", "prefix", ())),
])
def test_different_routes_do_not_conflict(router_mod, first, second):
    r = router_mod.Router()
    for method, template, mode, hosts in (first, second):
        r.add(ENV, hosts, method, template, mode, template)
    assert len(r) == 2


# --- bad templates --------------------------------------------------------------------------------

@pytest.mark.parametrize(("template", "problem"), [
    ("a/b", "must start with '/'"),
    ("", "must start with '/'"),
    ("/a//b", "empty segment"),
    ("//", "empty segment"),
    ("/a/b//", "empty segment"),
    ("/{x}/{x}", "twice"),
    ("/{x}/{x+}", "twice"),
    ("/{x+}/b", "last segment"),
    ("/a{x}", "braces"),
    ("/{x}a", "braces"),
    ("/{x", "braces"),
    ("/x}", "braces"),
    ("/{}", "braces"),
    ("/{+}", "parameter name"),
    ("/{1x}", "parameter name"),
    ("/{x y}", "parameter name"),
    ("/{x.y}", "parameter name"),
    ("/a/./b", "dot segment"),
    ("/a/%2e", "dot segment"),
    ("/a/..", "not a valid path segment"),
    ("/a b", "not a valid path segment"),
    ("/a#b", "not a valid path segment"),
    ("/%zz", "not a valid path segment"),
])
def test_bad_templates_are_refused(router_mod, template, problem):
    with pytest.raises(ValueError, match=problem) as info:
        router_mod.Router().add(ENV, (), "GET", template, "exact", "t")
    assert repr(template) in str(info.value)
    assert not isinstance(info.value, router_mod.RouteConflict)


def test_unknown_match_mode_is_refused(router_mod):
    with pytest.raises(ValueError, match="match mode"):
        router_mod.Router().add(ENV, (), "GET", "/a", "regex", "t")


# --- freeze ---------------------------------------------------------------------------------------

def test_freeze(router_mod):
    r = router_mod.Router()
    r.add(ENV, (), "GET", "/a", "exact", "a")
    assert not r.frozen
    r.freeze()
    assert r.frozen
    with pytest.raises(RuntimeError, match="frozen"):
        r.add(ENV, (), "GET", "/b", "exact", "b")
    assert r.match(ENV, "", "GET", "/a") == ("a", None, "")
    assert r.match(ENV, "", "GET", "/b") is None
    assert len(r) == 1


def test_empty_router_matches_nothing(router_mod):
    r = router_mod.Router()
    r.freeze()
    assert r.match(ENV, "h", "GET", "/") is None


def test_many_routes(router_mod):
    r = router_mod.Router()
    for i in range(2000):
        r.add(ENV, (), "GET", f"/svc{i}/v1/items/{{id}}", "exact", i)
        r.add(ENV, (), "POST", f"/svc{i}/v1/items", "exact", -i)
    r.freeze()
    assert r.match(ENV, "", "GET", "/svc1234/v1/items/9") == (1234, {"id": "9"}, "")
    assert r.match(ENV, "", "POST", "/svc1999/v1/items") == (-1999, None, "")
    assert r.match(ENV, "", "GET", "/svc2000/v1/items/9") is None
    assert len(r) == 4000
