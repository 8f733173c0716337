"""normalize_path: every rule of fastpath/pathnorm.py, on both forms."""
from __future__ import annotations

import pytest

NORMALIZED = [
    # already normal
    ("/", "/"),
    ("/a", "/a"),
    ("/a/b/", "/a/b/"),
    ("/.well-known/acme", "/.well-known/acme"),
    ("/a/.../b", "/a/.../b"),
    ("/a/..b/.c/d.", "/a/..b/.c/d."),
    # repeated slashes collapse
    ("//", "/"),
    ("//a///b//", "/a/b/"),
    ("/a//b", "/a/b"),
    # dot segments; a trailing slash is kept
    ("/.", "/"),
    ("/./", "/"),
    ("/a/.", "/a/"),
    ("/a/./", "/a/"),
    ("/a/./b", "/a/b"),
    ("/a/b/.", "/a/b/"),
    ("/a/..", "/"),
    ("/a/b/..", "/a/"),
    ("/a/b/../", "/a/"),
    ("/a/../b", "/b"),
    ("/a/b/../../c", "/c"),
    ("/a/b/../../c/", "/c/"),
    ("/a/./../b/./c/..", "/b/"),
    ("/a//..//b", "/b"),
    # escapes of unreserved characters are decoded
    ("/%41%42%43", "/ABC"),
    ("/%61%7a%30%39", "/az09"),
    ("/%7e%7E%2d%2e%5f", "/~~-._"),
    ("/user/%7Ealice", "/user/~alice"),
    # other escapes are kept, hex upper-cased
    ("/a%2fb", "/a%2Fb"),
    ("/a%2Fb", "/a%2Fb"),
    ("/%5c", "/%5C"),
    ("/a%20b", "/a%20b"),
    ("/%c3%a9t%C3%A9", "/%C3%A9t%C3%A9"),
    ("/%25", "/%25"),
    ("/%3f%23", "/%3F%23"),
    # decoding happens before dot segments are resolved
    ("/a/%2e/b", "/a/b"),
    ("/a/%2e%2e/b", "/b"),
    ("/a/%2E%2e/b", "/b"),
    ("/a/.%2e/b", "/b"),
    ("/a/%2e./b/", "/b/"),
    ("/a/b/%2e%2e", "/a/"),
]


@pytest.mark.parametrize(("path", "expected"), NORMALIZED)
def test_normalizes(pathnorm_mod, path, expected):
    assert pathnorm_mod.normalize_path(path) == expected


@pytest.mark.parametrize(("path", "expected"), NORMALIZED)
def test_normal_form_is_a_fixed_point(pathnorm_mod, path, expected):
    once = pathnorm_mod.normalize_path(path)
    assert pathnorm_mod.normalize_path(once) is once


@pytest.mark.parametrize("path", [
    "/", "/a", "/api/v1/users/12345/orders", "/a/b/", "/.well-known/acme-challenge/x",
    "/~user/x-y_z.json", "/a:b@c!$&'()*+,;=", "/a/.../b", "/..a/b..", "/a.b/c.d/",
    "/a/%2F/b%C3%A9",  # normal, with kept escapes: the slow path still hands back the input
])
def test_clean_path_is_returned_as_the_same_object(pathnorm_mod, path):
    # Build the str at run time so that the identity is not an interned literal's.
    fresh = "".join(list(path))
    assert pathnorm_mod.normalize_path(fresh) is fresh


@pytest.mark.parametrize("path", ["/a//b", "/a/./b", "/a/%41", "/a/b/..", "/a/%2f"])
def test_path_needing_work_is_not_the_input_object(pathnorm_mod, path):
    fresh = "".join(list(path))
    assert pathnorm_mod.normalize_path(fresh) is not fresh


def test_encoded_slash_is_data_not_a_separator(pathnorm_mod):
    # '..' after an encoded slash removes the whole segment 'x%2Fy', not just 'y'.
    assert pathnorm_mod.normalize_path("/a/x%2fy/../b") == "/a/b"
    # '..%2f..' is one segment, not two dot segments.
    assert pathnorm_mod.normalize_path("/a/..%2f..") == "/a/..%2F.."
    assert pathnorm_mod.normalize_path("/a/..%2F../b") == "/a/..%2F../b"


def test_double_encoding_is_decoded_once_only(pathnorm_mod):
    assert pathnorm_mod.normalize_path("/%252e%252e/etc") == "/%252e%252e/etc"
    assert pathnorm_mod.normalize_path("/a/%252e") == "/a/%252e"


@pytest.mark.parametrize("path", ["", "a/b", "*", "http://example.com/a", " /a", "%2Fa"])
def test_must_start_with_a_slash(pathnorm_mod, path):
    with pytest.raises(pathnorm_mod.PathError, match="must start with '/'"):
        pathnorm_mod.normalize_path(path)


@pytest.mark.parametrize("path", [
    "/a b", "/a\tb", "/a\x00", "/\x01", "/a\x7f", "/caf\xe9", "/a\nb", "/a\rb", "/\u20ac", "/a/b ",
])
def test_characters_outside_visible_ascii_are_refused(pathnorm_mod, path):
    with pytest.raises(pathnorm_mod.PathError, match="must be percent-encoded"):
        pathnorm_mod.normalize_path(path)


@pytest.mark.parametrize("path", ["/a#b", "/#", "/a/b#frag", "/%41#"])
def test_raw_hash_is_refused(pathnorm_mod, path):
    with pytest.raises(pathnorm_mod.PathError, match="'#'"):
        pathnorm_mod.normalize_path(path)


@pytest.mark.parametrize("path", ["/a\\b", "/\\", "/a/..\\..\\etc", "/admin\\"])
def test_raw_backslash_is_refused(pathnorm_mod, path):
    with pytest.raises(pathnorm_mod.PathError, match="backslash"):
        pathnorm_mod.normalize_path(path)


def test_error_reports_the_offset_of_the_bad_character(pathnorm_mod):
    with pytest.raises(pathnorm_mod.PathError, match="at offset 4"):
        pathnorm_mod.normalize_path("/abc def")


@pytest.mark.parametrize("path", [
    "/%", "/%2", "/a%", "/a%4", "/%zz", "/%2g", "/%g2", "/%%41", "/%+1", "/%-1", "/%2/",
    "/a/%2", "/%_1", "/%1_",
])
def test_bad_percent_encoding_is_refused(pathnorm_mod, path):
    with pytest.raises(pathnorm_mod.PathError, match="bad percent-encoding"):
        pathnorm_mod.normalize_path(path)


@pytest.mark.parametrize("path", ["/%00", "/a%00b", "/a/%00/.."])
def test_encoded_nul_is_refused(pathnorm_mod, path):
    with pytest.raises(pathnorm_mod.PathError, match="NUL"):
        pathnorm_mod.normalize_path(path)


@pytest.mark.parametrize("path", [
    "/..", "/../", "/../a", "/a/../..", "/a/../../b", "/./../a", "/%2e%2e", "/%2e%2e/etc/passwd",
    "/%2E%2E/etc", "/a/%2e%2e/%2e%2e/b", "/.%2e", "//..//a", "/a/b/../../../c",
])
def test_climbing_above_the_root_is_refused(pathnorm_mod, path):
    with pytest.raises(pathnorm_mod.PathError, match="climbs above the root"):
        pathnorm_mod.normalize_path(path)


def test_path_error_is_a_value_error(pathnorm_mod):
    assert issubclass(pathnorm_mod.PathError, ValueError)
    with pytest.raises(ValueError):
        pathnorm_mod.normalize_path("/..")


@pytest.mark.parametrize("value", [b"/a", None, 3, ["/a"]])
def test_only_str_is_accepted(pathnorm_mod, value):
    with pytest.raises(TypeError):
        pathnorm_mod.normalize_path(value)


def test_long_paths(pathnorm_mod):
    clean = "/seg" * 5000
    assert pathnorm_mod.normalize_path(clean) is clean
    assert pathnorm_mod.normalize_path("/a/.." * 3000 + "/z") == "/z"
    assert pathnorm_mod.normalize_path("/%41" * 2000) == "/A" * 2000
