//! Istio request normalization (digest §3.12): what the destination proxy does to a request
//! before AuthorizationPolicy sees it, and what it forwards to the application.
//!
//! Istio's `pathNormalization` options map to Envoy settings: `BASE` = `normalize_path`
//! (Chromium's URL path canonicalizer: decode the unreserved set once, `\` → `/`, RFC 3986
//! dot-segment removal, `%00` → 400), `MERGE_SLASHES` adds `merge_slashes`,
//! `DECODE_AND_MERGE_SLASHES` first decodes `%2F`/`%5C` (`UNESCAPE_AND_FORWARD`), `NONE` does
//! nothing. Also here: the method and header-name checks that turn into a 400, and the
//! duplicate-header join used by header matching. Not here: matching itself ([`crate::authz`]).

use std::borrow::Cow;

use serde::Serialize;

use crate::model::mesh::NormalizationType;

/// The normalization applied to request paths (MeshConfig `pathNormalization`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Normalization {
    /// Forward the path exactly as received.
    None,
    /// Envoy `normalize_path`: RFC 3986 normalization and backslash to slash. Istio's default.
    #[default]
    Base,
    /// `BASE` plus merging of repeated slashes.
    MergeSlashes,
    /// `%2F` and `%5C` decoded first, then `MERGE_SLASHES`.
    DecodeAndMergeSlashes,
}

impl From<NormalizationType> for Normalization {
    fn from(t: NormalizationType) -> Self {
        match t {
            // "Options: NONE, BASE, MERGE_SLASHES, DECODE_AND_MERGE_SLASHES"; DEFAULT is BASE.
            NormalizationType::Default | NormalizationType::Base => Normalization::Base,
            NormalizationType::None => Normalization::None,
            NormalizationType::MergeSlashes => Normalization::MergeSlashes,
            NormalizationType::DecodeAndMergeSlashes => Normalization::DecodeAndMergeSlashes,
        }
    }
}

/// Why the proxy answers 400 instead of evaluating policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Reject400 {
    /// The path holds `%00` (or a raw NUL).
    #[error("path contains %00")]
    EncodedNul,
    /// The request target is empty or neither origin-form (`/...`) nor absolute-form.
    #[error("request target must start with '/' (or be an absolute http(s) URL)")]
    BadTarget,
    /// A space or ASCII control character in the request target.
    #[error("request target contains a space or control character")]
    BadTargetChar,
    /// The method is empty or not an HTTP token.
    #[error("method is not a valid HTTP token")]
    BadMethod,
    /// The method has lowercase letters.
    #[error("method is not in upper case")]
    MethodNotUppercase,
    /// A header name is empty or holds whitespace.
    #[error("header name is empty or contains whitespace")]
    BadHeaderName,
}

/// A request path after normalization, split from its query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NormalizedPath {
    path: String,
    query: Option<String>,
}

impl NormalizedPath {
    /// The normalized path without query and fragment: what `paths`/`notPaths` match.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The query (without `?`), if the target had one.
    pub fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }

    /// What the application receives as `:path`: the normalized path and the query.
    pub fn forwarded(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        }
    }
}

/// Normalizes a raw request target (`/a/../b?x=1`, as sent) the way the destination proxy does.
pub fn normalize_path(target: &str, mode: Normalization) -> Result<NormalizedPath, Reject400> {
    // An HTTP parser refuses these bytes in a request target before any normalization.
    if target.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(Reject400::BadTargetChar);
    }
    let origin = origin_form(target)?;
    let origin: &str = &origin;
    // "Query (`?…`) and fragment ignored for `paths` matching (app still sees it)." The
    // fragment is never forwarded; the query is.
    let (before_fragment, _fragment) = match origin.find('#') {
        Some(i) => (&origin[..i], Some(&origin[i + 1..])),
        None => (origin, None),
    };
    let (raw_path, query) = match before_fragment.find('?') {
        Some(i) => (&before_fragment[..i], Some(&before_fragment[i + 1..])),
        None => (before_fragment, None),
    };
    let path = match mode {
        Normalization::None => raw_path.to_owned(),
        Normalization::Base => canonical_path(raw_path)?,
        Normalization::MergeSlashes => merge_slashes(&canonical_path(raw_path)?),
        Normalization::DecodeAndMergeSlashes => {
            merge_slashes(&canonical_path(&unescape_slashes(raw_path))?)
        }
    };
    Ok(NormalizedPath {
        path,
        query: query.map(str::to_owned),
    })
}

/// The origin-form part of a request target: itself, or the path (and query) of an
/// absolute-form URL (`http://host/p?q` → `/p?q`, `http://host?q` → `/?q`).
fn origin_form(target: &str) -> Result<Cow<'_, str>, Reject400> {
    if target.starts_with('/') {
        return Ok(Cow::Borrowed(target));
    }
    let has_scheme = |s: &str| {
        target
            .get(..s.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(s))
    };
    let rest = if has_scheme("http://") {
        &target[7..]
    } else if has_scheme("https://") {
        &target[8..]
    } else {
        return Err(Reject400::BadTarget);
    };
    Ok(match rest.find(['/', '?', '#']) {
        Some(i) if rest.as_bytes()[i] == b'/' => Cow::Borrowed(&rest[i..]),
        Some(i) => Cow::Owned(format!("/{}", &rest[i..])),
        None => Cow::Borrowed("/"),
    })
}

/// Chromium's path character classes (`url_canon_path.cc` `kPathCharLookup`), as Envoy uses them.
#[derive(Clone, Copy, PartialEq, Eq)]
enum CharClass {
    /// Copied as is.
    Pass,
    /// Percent-encoded when raw; kept encoded when already encoded.
    Escape,
    /// Decoded when percent-encoded: the RFC 3986 unreserved set.
    Unescape,
    /// Never valid (NUL).
    Invalid,
}

fn class(b: u8) -> CharClass {
    match b {
        0 => CharClass::Invalid,
        // "Decode `%2d %2e %30-%39 %41-%5a %5f %61-%7a %7e` once".
        b'-' | b'.' | b'0'..=b'9' | b'A'..=b'Z' | b'_' | b'a'..=b'z' | b'~' => CharClass::Unescape,
        1..=0x20 | b'"' | b'#' | b'%' | b'<' | b'>' | b'?' | b'`' | b'{' | b'}' | 0x7f.. => {
            CharClass::Escape
        }
        _ => CharClass::Pass,
    }
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// `BASE`: Envoy's `PathUtil::canonicalPath` (Chromium `CanonicalizePath`) on the path part.
fn canonical_path(raw: &str) -> Result<String, Reject400> {
    // Already canonical (the common case): no escapes, backslashes, bytes to escape or dot
    // segments, so every step below would copy it unchanged.
    if raw.starts_with('/')
        && raw
            .bytes()
            .all(|b| b != b'\\' && matches!(class(b), CharClass::Pass | CharClass::Unescape))
        && !raw.split('/').any(|s| s == "." || s == "..")
    {
        return Ok(raw.to_owned());
    }
    let bytes = raw.as_bytes();
    let mut decoded: Vec<u8> = Vec::with_capacity(bytes.len() + 1);
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            // "`\` → `/`."
            b'\\' => decoded.push(b'/'),
            b'%' => {
                let pair = bytes
                    .get(i + 1)
                    .and_then(|h| hex_val(*h))
                    .zip(bytes.get(i + 2).and_then(|l| hex_val(*l)));
                match pair {
                    Some((h, l)) => {
                        let v = h * 16 + l;
                        match class(v) {
                            // "`%00` → 400."
                            CharClass::Invalid => return Err(Reject400::EncodedNul),
                            // "Decode ... once": the decoded byte is not looked at again.
                            CharClass::Unescape => decoded.push(v),
                            // "`%2F`/`%5C` NOT decoded by default": kept as written.
                            CharClass::Pass | CharClass::Escape => {
                                decoded.extend_from_slice(&bytes[i..i + 3]);
                            }
                        }
                        i += 3;
                        continue;
                    }
                    // An invalid escape passes through unchanged (Chromium's permissive mode).
                    None => decoded.push(b'%'),
                }
            }
            _ => match class(b) {
                CharClass::Invalid => return Err(Reject400::EncodedNul),
                CharClass::Escape => {
                    decoded.extend_from_slice(&[
                        b'%',
                        HEX_UPPER[usize::from(b >> 4)],
                        HEX_UPPER[usize::from(b & 15)],
                    ]);
                }
                CharClass::Pass | CharClass::Unescape => decoded.push(b),
            },
        }
        i += 1;
    }
    if decoded.first() != Some(&b'/') {
        decoded.insert(0, b'/');
    }
    // Every byte pushed is ASCII (non-ASCII input was percent-encoded above).
    let decoded = String::from_utf8_lossy(&decoded).into_owned();
    Ok(remove_dot_segments(&decoded))
}

/// "RFC 3986 dot-segment removal (`/a/./b/../c` → `/a/c`), also after decoding `%2e`."
/// `path` starts with `/`.
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for seg in path[1..].split('/') {
        trailing_slash = false;
        match seg {
            "." => trailing_slash = true,
            ".." => {
                out.pop();
                trailing_slash = true;
            }
            s => out.push(s),
        }
    }
    let mut s = String::with_capacity(path.len());
    for seg in &out {
        s.push('/');
        s.push_str(seg);
    }
    if trailing_slash || s.is_empty() {
        s.push('/');
    }
    s
}

/// "Multiple slashes **not** merged by default (`MERGE_SLASHES` option)."
fn merge_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut prev_slash = false;
    for c in path.chars() {
        if c == '/' {
            if !prev_slash {
                out.push(c);
            }
            prev_slash = true;
        } else {
            out.push(c);
            prev_slash = false;
        }
    }
    out
}

/// `DECODE_AND_MERGE_SLASHES`: `%2F` → `/`, `%5C` → `\` (either hex case) before `BASE`.
fn unescape_slashes(raw: &str) -> Cow<'_, str> {
    if !raw.contains('%') {
        return Cow::Borrowed(raw);
    }
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let pair = [b[i + 1].to_ascii_uppercase(), b[i + 2].to_ascii_uppercase()];
            if pair == *b"2F" {
                out.push(b'/');
                i += 3;
                continue;
            }
            if pair == *b"5C" {
                out.push(b'\\');
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// "Non-uppercase HTTP method → 400."
pub fn check_method(method: &str) -> Result<(), Reject400> {
    if method.is_empty() || !method.bytes().all(is_tchar) {
        return Err(Reject400::BadMethod);
    }
    if method.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(Reject400::MethodNotUppercase);
    }
    Ok(())
}

/// "Header names whitespace → 400."
pub fn check_header_name(name: &str) -> Result<(), Reject400> {
    if name.is_empty()
        || name
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(Reject400::BadHeaderName);
    }
    Ok(())
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The value a header matcher sees for `name` (case-insensitive): "Duplicate headers are
/// joined with `,` before matching (`x: foo` + `x: bar` → `foo,bar`)". `None` when absent.
pub fn header_value<'a>(headers: &'a [(String, String)], name: &str) -> Option<Cow<'a, str>> {
    let mut found = headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str());
    let first = found.next()?;
    match found.next() {
        None => Some(Cow::Borrowed(first)),
        Some(second) => {
            let mut joined = format!("{first},{second}");
            for v in found {
                joined.push(',');
                joined.push_str(v);
            }
            Some(Cow::Owned(joined))
        }
    }
}
