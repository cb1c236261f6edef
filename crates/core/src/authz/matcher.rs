//! Value matchers for AuthorizationPolicy fields, mirroring what istiod compiles each value
//! into for Envoy (istio/istio `pilot/pkg/security/authz/matcher`, `model/generator.go`):
//! Istio string patterns (digest §3.4), the namespace regex, the service-account regex and
//! URI path templates (§3.6). Everything here is allocation-free at match time.

use std::net::IpAddr;

use ipnet::IpNet;

/// An Istio string pattern: "Only a **single leading or trailing** `*` is special."
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StrPattern {
    /// `abc`.
    Exact(Box<str>),
    /// `abc*`.
    Prefix(Box<str>),
    /// `*abc`.
    Suffix(Box<str>),
    /// `*` in a string matcher (regex `.+`): the value is present and non-empty.
    NonEmpty,
    /// `*` in a header matcher (`present_match`): the header is present, even if empty.
    Present,
}

impl StrPattern {
    /// Istio `StringMatcher`: `*` → `.+`, `*x` → suffix, `x*` → prefix, else exact. The `*`
    /// test comes first, then leading, then trailing (so `*a*` is the suffix `a*`).
    pub(crate) fn string(v: &str) -> Self {
        Self::parse(v, StrPattern::NonEmpty)
    }

    /// Istio `HeaderMatcher`/`HostMatcher`: as [`StrPattern::string`] but `*` is presence.
    pub(crate) fn header(v: &str) -> Self {
        Self::parse(v, StrPattern::Present)
    }

    fn parse(v: &str, star: StrPattern) -> Self {
        if v == "*" {
            star
        } else if let Some(s) = v.strip_prefix('*') {
            StrPattern::Suffix(s.into())
        } else if let Some(p) = v.strip_suffix('*') {
            StrPattern::Prefix(p.into())
        } else {
            StrPattern::Exact(v.into())
        }
    }

    /// Case-sensitive match; `None` is an absent value, which only negations can satisfy.
    pub(crate) fn matches(&self, v: Option<&str>) -> bool {
        let Some(v) = v else { return false };
        match self {
            StrPattern::Exact(e) => v == &**e,
            StrPattern::Prefix(p) => v.starts_with(&**p),
            StrPattern::Suffix(s) => v.ends_with(&**s),
            StrPattern::NonEmpty => !v.is_empty(),
            StrPattern::Present => true,
        }
    }

    /// ASCII case-insensitive match (Envoy `ignore_case`), for hosts.
    pub(crate) fn matches_ignore_case(&self, v: Option<&str>) -> bool {
        let Some(v) = v else { return false };
        let vb = v.as_bytes();
        match self {
            StrPattern::Exact(e) => v.eq_ignore_ascii_case(e),
            StrPattern::Prefix(p) => {
                vb.len() >= p.len() && vb[..p.len()].eq_ignore_ascii_case(p.as_bytes())
            }
            StrPattern::Suffix(s) => {
                vb.len() >= s.len() && vb[vb.len() - s.len()..].eq_ignore_ascii_case(s.as_bytes())
            }
            StrPattern::NonEmpty => !v.is_empty(),
            StrPattern::Present => true,
        }
    }
}

/// One step of a compiled pattern: a byte class, once or repeated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// This byte.
    Byte(u8),
    /// Any byte but `\n` (regex `.`).
    Any,
    /// Envoy's URI template literal set `a-zA-Z0-9-._~%!$&'()+,;:@`.
    Pchar,
    /// The same plus `/`.
    PcharOrSlash,
}

impl Class {
    fn matches(self, b: u8) -> bool {
        match self {
            Class::Byte(c) => b == c,
            Class::Any => b != b'\n',
            Class::Pchar => is_template_literal(b),
            Class::PcharOrSlash => b == b'/' || is_template_literal(b),
        }
    }
}

/// Envoy `uri_template_internal.cc` `kLiteral`: unreserved, `%`, sub-delims without `*=`, `:@`.
fn is_template_literal(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~%!$&'()+,;:@".contains(&b)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tok {
    class: Class,
    /// Zero or more instead of exactly one.
    star: bool,
}

/// A full-match pattern over bytes: a sequence of classes, each once or starred. Matching is
/// dynamic programming, O(pattern × input), never exponential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Seq(Vec<Tok>);

impl Seq {
    fn lit(&mut self, s: &str) {
        self.0.extend(s.bytes().map(|b| Tok {
            class: Class::Byte(b),
            star: false,
        }));
    }

    fn push(&mut self, class: Class, star: bool) {
        self.0.push(Tok { class, star });
    }

    pub(crate) fn matches(&self, input: &str) -> bool {
        let s = input.as_bytes();
        // cur[j]: the tokens so far match s[..j].
        let mut cur = vec![false; s.len() + 1];
        cur[0] = true;
        let mut next = vec![false; s.len() + 1];
        for t in &self.0 {
            if t.star {
                next[0] = cur[0];
                for j in 1..=s.len() {
                    next[j] = cur[j] || (next[j - 1] && t.class.matches(s[j - 1]));
                }
            } else {
                next[0] = false;
                for j in 1..=s.len() {
                    next[j] = cur[j - 1] && t.class.matches(s[j - 1]);
                }
            }
            std::mem::swap(&mut cur, &mut next);
        }
        cur[s.len()]
    }
}

/// Appends a value that istiod pastes unescaped into an RE2 regex: `.` is any byte and, where
/// `star_is_wildcard`, every `*` is `.*` (the namespace generator replaces `*` by `.*` first).
/// Other regex metacharacters cannot occur in Kubernetes namespace or service-account names
/// and are taken literally.
fn regex_value(seq: &mut Seq, v: &str, star_is_wildcard: bool) {
    for b in v.bytes() {
        match b {
            b'*' if star_is_wildcard => seq.push(Class::Any, true),
            b'.' => seq.push(Class::Any, false),
            _ => seq.push(Class::Byte(b), false),
        }
    }
}

/// `namespaces` / `source.namespace`: sidecar regex `.*/ns/<v>/.*` over the peer's URI SAN,
/// every `*` in `v` becoming `.*` ("`namespaces` in sidecar splits on every `*` into `.*` regex").
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NsPattern {
    /// No `*` or `.` in the value: the URI contains `/ns/<v>/`.
    Contains(Box<str>),
    /// Anything else, matched as the regex.
    Regex(Seq),
}

impl NsPattern {
    pub(crate) fn new(v: &str) -> Self {
        if !v.contains(['*', '.']) {
            return NsPattern::Contains(format!("/ns/{v}/").into());
        }
        let mut seq = Seq(Vec::new());
        seq.push(Class::Any, true);
        seq.lit("/ns/");
        regex_value(&mut seq, v, true);
        seq.lit("/");
        seq.push(Class::Any, true);
        NsPattern::Regex(seq)
    }

    /// `uri` is the peer's full SPIFFE ID; `None` (plaintext) never matches. `workload_ns` is
    /// the `<ns>` of a `/ns/<ns>/sa/<sa>` peer: for those IDs `.*/ns/<v>/.*` holds exactly when
    /// `<ns>` is `v`, or when `<ns>` is `ns` and `v` is `sa` (`/ns/ns/sa/...` contains
    /// `/ns/sa/`), which is the fast path.
    pub(crate) fn matches(&self, uri: Option<&str>, workload_ns: Option<&str>) -> bool {
        let Some(uri) = uri else { return false };
        match self {
            NsPattern::Contains(c) => match workload_ns {
                Some(ns) => {
                    let v = &c[4..c.len() - 1];
                    ns == v || (ns == "ns" && v == "sa")
                }
                None => uri.contains(&**c),
            },
            NsPattern::Regex(seq) => seq.matches(uri),
        }
    }

    /// The namespace this pattern requires, when it is a plain name.
    pub(crate) fn exact(&self) -> Option<&str> {
        match self {
            NsPattern::Contains(c) => Some(&c[4..c.len() - 1]),
            NsPattern::Regex(_) => None,
        }
    }
}

/// `serviceAccounts` / `source.serviceAccount`: regex
/// `spiffe://.+/ns/<ns>/(.+/|)sa/<sa>(/.+)?` (istio/istio `generator.go` `serviceAccountRegex`),
/// so any trust domain matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SaPattern {
    ns: Box<str>,
    sa: Box<str>,
    /// The regex's alternatives, expanded: `(.+/|)` × `(/.+)?`.
    alternatives: Vec<Seq>,
}

impl SaPattern {
    /// `value` is `<ns>/<sa>` or `<sa>`, the latter meaning `policy_ns`.
    pub(crate) fn new(value: &str, policy_ns: &str) -> Self {
        let (ns, sa) = value.split_once('/').unwrap_or((policy_ns, value));
        let mut alternatives = Vec::with_capacity(4);
        for middle in [false, true] {
            for tail in [false, true] {
                let mut s = Seq(Vec::new());
                s.lit("spiffe://");
                s.push(Class::Any, false);
                s.push(Class::Any, true);
                s.lit("/ns/");
                regex_value(&mut s, ns, false);
                s.lit("/");
                if middle {
                    s.push(Class::Any, false);
                    s.push(Class::Any, true);
                    s.lit("/");
                }
                s.lit("sa/");
                regex_value(&mut s, sa, false);
                if tail {
                    s.lit("/");
                    s.push(Class::Any, false);
                    s.push(Class::Any, true);
                }
                alternatives.push(s);
            }
        }
        Self {
            ns: ns.into(),
            sa: sa.into(),
            alternatives,
        }
    }

    /// `workload` is the peer's `(namespace, service account)` when its ID has Istio's
    /// `/ns/<ns>/sa/<sa>` shape: for those IDs the regex reduces to equality (no other `/ns/`
    /// or `sa/` can line up), which is the fast path.
    pub(crate) fn matches(&self, uri: Option<&str>, workload: Option<(&str, &str)>) -> bool {
        let Some(uri) = uri else { return false };
        let plain = !self.ns.contains(['.', '/']) && !self.sa.contains(['.', '/']);
        match workload {
            Some((ns, sa)) if plain => ns == &*self.ns && sa == &*self.sa,
            _ => self.alternatives.iter().any(|s| s.matches(uri)),
        }
    }
}

/// A `paths` value with `{*}` / `{**}`: Envoy's URI template matcher. `{*}` is one path
/// segment (`[pchar]+`), `{**}` zero or more (`[pchar/]*`); everything else is literal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PathTemplate(Seq);

impl PathTemplate {
    /// Whether `v` is a template (istio `security.ContainsPathTemplate`).
    pub(crate) fn is_template(v: &str) -> bool {
        v.contains("{*}") || v.contains("{**}")
    }

    /// Compiles a template; `None` when Envoy would reject it (not starting with `/`,
    /// an operator after `{**}`, stray braces or `*`).
    pub(crate) fn new(v: &str) -> Option<Self> {
        if !v.starts_with('/') {
            return None;
        }
        let mut seq = Seq(Vec::new());
        let mut rest = v;
        let mut seen_text_glob = false;
        while !rest.is_empty() {
            if let Some(r) = rest.strip_prefix("{**}") {
                if seen_text_glob {
                    return None;
                }
                seen_text_glob = true;
                seq.push(Class::PcharOrSlash, true);
                rest = r;
            } else if let Some(r) = rest.strip_prefix("{*}") {
                if seen_text_glob {
                    return None;
                }
                seq.push(Class::Pchar, false);
                seq.push(Class::Pchar, true);
                rest = r;
            } else {
                let c = rest.as_bytes()[0];
                if matches!(c, b'{' | b'}' | b'*') {
                    return None;
                }
                seq.push(Class::Byte(c), false);
                rest = &rest[1..];
            }
        }
        Some(Self(seq))
    }

    pub(crate) fn matches(&self, path: Option<&str>) -> bool {
        path.is_some_and(|p| self.0.matches(p))
    }
}

/// `ipBlocks`, `remoteIpBlocks`, `source.ip`, `remote.ip`, `destination.ip`: CIDR containment;
/// a bare IP is its /32 or /128.
pub(crate) fn ip_in(net: &IpNet, ip: IpAddr) -> bool {
    net.contains(&ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_patterns_follow_istio_string_matcher() {
        // (pattern, value, matches) — digest §3.4 table.
        let cases: &[(&str, Option<&str>, bool)] = &[
            ("abc", Some("abc"), true),
            ("abc", Some("abcd"), false),
            ("abc*", Some("abc"), true),
            ("abc*", Some("abcd"), true),
            ("/api*", Some("/apix"), true),
            ("*abc", Some("xabc"), true),
            ("*abc", Some("abcx"), false),
            ("*", Some("x"), true),
            ("*", Some(""), false),
            ("*", None, false),
            ("a*c", Some("abc"), false),
            ("a*c", Some("a*c"), true),
            ("*a*", Some("xa*"), true),
            ("*a*", Some("xa"), false),
        ];
        for (p, v, want) in cases {
            assert_eq!(StrPattern::string(p).matches(*v), *want, "{p} vs {v:?}");
        }
        assert!(StrPattern::header("*").matches(Some("")));
        assert!(!StrPattern::header("*").matches(None));
        assert!(StrPattern::header("Example.COM:*").matches_ignore_case(Some("example.com:80")));
        assert!(StrPattern::header("*.EXAMPLE.com").matches_ignore_case(Some("a.example.COM")));
        assert!(!StrPattern::header("example.com").matches_ignore_case(Some("example.com:80")));
    }

    #[test]
    fn namespace_regex_matches_like_the_sidecar() {
        let uri = Some("spiffe://cluster.local/ns/foo-bar/sa/x");
        for fast in [None, Some("foo-bar")] {
            assert!(NsPattern::new("foo-bar").matches(uri, fast));
            assert!(!NsPattern::new("foo").matches(uri, fast));
            assert!(!NsPattern::new("bar").matches(uri, fast));
            assert!(NsPattern::new("foo*").matches(uri, fast));
            assert!(NsPattern::new("*bar").matches(uri, fast));
            assert!(NsPattern::new("f*b*r").matches(uri, fast));
            assert!(NsPattern::new("*").matches(uri, fast));
            // `.` is regex "any byte" in the sidecar.
            assert!(NsPattern::new("foo.bar").matches(uri, fast));
        }
        assert!(!NsPattern::new("*").matches(None, None));
        // The fast path agrees with the substring search on the odd `/ns/ns/sa/` case.
        let odd = Some("spiffe://td/ns/ns/sa/y");
        assert!(NsPattern::new("sa").matches(odd, None));
        assert!(NsPattern::new("sa").matches(odd, Some("ns")));
        assert!(NsPattern::new("ns").matches(odd, Some("ns")));
    }

    #[test]
    fn service_account_regex_ignores_trust_domain() {
        let p = SaPattern::new("sleep", "default");
        let uri = "spiffe://td.example/ns/default/sa/sleep";
        assert!(p.matches(Some(uri), Some(("default", "sleep"))));
        assert!(p.matches(Some(uri), None), "slow path agrees");
        assert!(!p.matches(Some("spiffe://td/ns/default/sa/sleep-2"), None));
        assert!(p.matches(Some("spiffe://td/ns/default/k/v/sa/sleep/x/y"), None));
        let p = SaPattern::new("other/sleep", "default");
        assert!(!p.matches(Some(uri), Some(("default", "sleep"))));
        assert!(p.matches(
            Some("spiffe://x/ns/other/sa/sleep"),
            Some(("other", "sleep"))
        ));
        assert!(!p.matches(None, None));
    }

    #[test]
    fn path_templates_follow_envoy() {
        // digest §3.6, from `TestAuthz_PathTemplating`.
        let t = PathTemplate::new("/allow/admin/{**}").unwrap();
        assert!(t.matches(Some("/allow/admin/")));
        assert!(t.matches(Some("/allow/admin/foo/x.txt")));
        assert!(!t.matches(Some("/allow/admin")));
        let t = PathTemplate::new("/store/{**}/cart").unwrap();
        assert!(t.matches(Some("/store//cart")));
        assert!(t.matches(Some("/store/a/b/cart")));
        assert!(!t.matches(Some("/store/cart")));
        let t = PathTemplate::new("/foo/{*}/bar").unwrap();
        assert!(t.matches(Some("/foo/x/bar")));
        assert!(!t.matches(Some("/foo//bar")));
        assert!(!t.matches(Some("/foo/x/y/bar")));
        assert!(PathTemplate::new("/a/{**}/{*}").is_none());
        assert!(PathTemplate::new("a/{*}").is_none());
    }
}
