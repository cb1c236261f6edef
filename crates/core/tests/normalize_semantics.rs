//! Digest §3.12 (request normalization) and the istio.io "Authorization Policy
//! Normalization" page's examples, one row per sentence.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests: a panic is a failure with its location.

use trustmesh_core::normalize::Normalization::{
    self, Base, DecodeAndMergeSlashes, MergeSlashes, None as NoNorm,
};
use trustmesh_core::normalize::{
    Reject400, check_header_name, check_method, header_value, normalize_path,
};

/// (quote or source, mode, raw target, normalized path or the 400).
type Row = (
    &'static str,
    Normalization,
    &'static str,
    Result<&'static str, Reject400>,
);

#[test]
fn path_normalization_table() {
    let rows: Vec<Row> = vec![
        (
            "Default = `BASE`: plain path unchanged",
            Base,
            "/a/b",
            Ok("/a/b"),
        ),
        (
            "Decode `%2d %2e %30-%39 %41-%5a %5f %61-%7a %7e` once (%2d)",
            Base,
            "/a%2db",
            Ok("/a-b"),
        ),
        ("... (%30-%39)", Base, "/v%31", Ok("/v1")),
        ("... (%41-%5a)", Base, "/%41%5A", Ok("/AZ")),
        ("... (%5f)", Base, "/a%5fb", Ok("/a_b")),
        (
            "... (%61-%7a, hex case-insensitive)",
            Base,
            "/%61%62%63",
            Ok("/abc"),
        ),
        ("... (%7e)", Base, "/%7euser", Ok("/~user")),
        (
            "... once: no double decoding (`%2561` is `%61`, not `a`)",
            Base,
            "/%2561",
            Ok("/%2561"),
        ),
        (
            "(`%2F`/`%5C` NOT decoded by default)",
            Base,
            "/some%2fdata",
            Ok("/some%2fdata"),
        ),
        (
            "(`%5C` NOT decoded by default)",
            Base,
            "/a%5Cb",
            Ok("/a%5Cb"),
        ),
        (
            "other escapes are kept as written",
            Base,
            "/a%20b",
            Ok("/a%20b"),
        ),
        ("`%00` → 400.", Base, "/a%00", Err(Reject400::EncodedNul)),
        (
            "`%00` → 400 (in the query too? no: only the path is canonicalized)",
            Base,
            "/a?x=%00",
            Ok("/a"),
        ),
        ("`\\` → `/`.", Base, "/some\\data", Ok("/some/data")),
        (
            "RFC 3986 dot-segment removal (`/a/./b/../c` → `/a/c`)",
            Base,
            "/a/./b/../c",
            Ok("/a/c"),
        ),
        (
            "normalization page: `/public/./data/abc/../xyz` → `/public/data/xyz`",
            Base,
            "/public/./data/abc/../xyz",
            Ok("/public/data/xyz"),
        ),
        (
            "dot-segment removal ... also after decoding `%2e`",
            Base,
            "/a/%2e%2E/b",
            Ok("/b"),
        ),
        (
            "dot segments above the root are dropped",
            Base,
            "/../../etc/passwd",
            Ok("/etc/passwd"),
        ),
        (
            "a trailing dot segment leaves a trailing slash",
            Base,
            "/a/b/..",
            Ok("/a/"),
        ),
        (
            "Multiple slashes **not** merged by default",
            Base,
            "/a//b",
            Ok("/a//b"),
        ),
        (
            "Query (`?…`) ... ignored for `paths` matching",
            Base,
            "/foo?v=1",
            Ok("/foo"),
        ),
        ("... and fragment ignored", Base, "/foo#frag?x", Ok("/foo")),
        ("No case folding of paths", Base, "/Admin", Ok("/Admin")),
        (
            "**no trailing-slash equivalence** (`/a` ≠ `/a/`)",
            Base,
            "/a/",
            Ok("/a/"),
        ),
        (
            "`MERGE_SLASHES` option: normalization page `/some//data///abc` → `/some/data/abc`",
            MergeSlashes,
            "/some//data///abc",
            Ok("/some/data/abc"),
        ),
        (
            "`MERGE_SLASHES` keeps `%2F` encoded",
            MergeSlashes,
            "/a%2F%2Fb",
            Ok("/a%2F%2Fb"),
        ),
        (
            "`DECODE_AND_MERGE_SLASHES`: page `/some%2fdata/%61%62%63` → `/some/data/abc`",
            DecodeAndMergeSlashes,
            "/some%2fdata/%61%62%63",
            Ok("/some/data/abc"),
        ),
        (
            "`DECODE_AND_MERGE_SLASHES`: `%5C` → `\\` → `/`",
            DecodeAndMergeSlashes,
            "/a%5cb",
            Ok("/a/b"),
        ),
        (
            "`DECODE_AND_MERGE_SLASHES`: decoded slashes take part in dot-segment removal",
            DecodeAndMergeSlashes,
            "/a%2F..%2Fadmin",
            Ok("/admin"),
        ),
        (
            "`NONE`: the path as received",
            NoNorm,
            "/a/../b%2e",
            Ok("/a/../b%2e"),
        ),
        (
            "`NONE` still strips the query for matching",
            NoNorm,
            "/a?q",
            Ok("/a"),
        ),
        (
            "absolute-form target: the path is matched",
            Base,
            "http://example.com/a/../b?x",
            Ok("/b"),
        ),
        (
            "absolute-form without a path is `/`",
            Base,
            "https://example.com",
            Ok("/"),
        ),
        (
            "an empty target is a bad request",
            Base,
            "",
            Err(Reject400::BadTarget),
        ),
        (
            "a target that is not a path is a bad request",
            Base,
            "admin",
            Err(Reject400::BadTarget),
        ),
        (
            "a space in the target is a bad request",
            Base,
            "/a b",
            Err(Reject400::BadTargetChar),
        ),
    ];
    for (quote, mode, target, want) in rows {
        let got = normalize_path(target, mode);
        assert_eq!(
            got.as_ref().map(|n| n.path()),
            want.as_ref().map(|s| *s),
            "{quote}: {target:?} ({mode:?})"
        );
    }
}

#[test]
fn app_still_sees_the_query() {
    // "Query (`?…`) and fragment ignored for `paths` matching (app still sees it)."
    let n = normalize_path("/a/./b?x=1&y=%2e", Base).unwrap();
    assert_eq!(n.path(), "/a/b");
    assert_eq!(n.query(), Some("x=1&y=%2e"));
    assert_eq!(n.forwarded(), "/a/b?x=1&y=%2e");
}

#[test]
fn method_and_header_checks() {
    // "Non-uppercase HTTP method → 400."
    assert_eq!(check_method("GET"), Ok(()));
    assert_eq!(check_method("M-SEARCH"), Ok(()));
    assert_eq!(check_method("get"), Err(Reject400::MethodNotUppercase));
    assert_eq!(check_method("Post"), Err(Reject400::MethodNotUppercase));
    assert_eq!(check_method(""), Err(Reject400::BadMethod));
    assert_eq!(check_method("GE T"), Err(Reject400::BadMethod));
    // "Header names whitespace → 400."
    assert_eq!(check_header_name("x-token"), Ok(()));
    assert_eq!(check_header_name("x token"), Err(Reject400::BadHeaderName));
    assert_eq!(
        check_header_name("x-token\t"),
        Err(Reject400::BadHeaderName)
    );
    assert_eq!(check_header_name(""), Err(Reject400::BadHeaderName));
    assert_eq!(
        Reject400::MethodNotUppercase.to_string(),
        "method is not in upper case"
    );
}

#[test]
fn duplicate_headers_are_joined() {
    // "Duplicate headers are joined with `,` before matching (`x: foo` + `x: bar` → `foo,bar`)."
    let h = vec![
        ("X".to_owned(), "foo".to_owned()),
        ("y".to_owned(), "1".to_owned()),
        ("x".to_owned(), "bar".to_owned()),
    ];
    assert_eq!(header_value(&h, "x").as_deref(), Some("foo,bar"));
    assert_eq!(header_value(&h, "Y").as_deref(), Some("1"));
    assert_eq!(header_value(&h, "z"), None);
}
