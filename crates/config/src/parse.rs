//! One file's text → typed resources with origins, or errors naming file, line, resource and
//! field.
//!
//! How: the text is split into YAML documents at `---`/`...` markers (a line starting with
//! them is always a document boundary in YAML 1.2, even inside scalars), so one broken document
//! does not hide errors in the next. Each document is read twice by serde-saphyr: first into a
//! [`Node`] tree with spans (syntax errors, `apiVersion`/`kind`/`metadata`, line lookup), then
//! into the typed kind through `serde_path_to_error` (field path) — serde-saphyr's error
//! carries the line. `kind: List` documents dispatch each of their `items` by its own kind.
//! Nothing here panics on any input (see the property test in `tests/`).

use std::fmt;
use std::ops::Range;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{DefaultMessageFormatter, MessageFormatter, Spanned};
use trustmesh_core::model::{Kind, Resource, ResourceKey};
use trustmesh_core::snapshot::Sourced;
use trustmesh_core::validate::Origin;

use crate::error::LoadError;

/// A document's place in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DocSpan {
    /// Byte range in the file's text.
    pub range: Range<usize>,
    /// 1-based line of the range's first line (serde-saphyr lines are relative to it).
    pub base_line: u32,
    /// 1-based line of the document's first content line (its origin).
    pub first_line: u32,
}

/// Splits `text` into documents, skipping those with no content (only comments, blanks,
/// directives and markers).
pub(crate) fn split_documents(text: &str) -> Vec<DocSpan> {
    let mut docs = Vec::new();
    let mut start = 0usize;
    let mut start_line = 1u32;
    let mut first_content: Option<u32> = None;
    let mut seen_marker = false;
    let mut offset = 0usize;
    let close =
        |docs: &mut Vec<DocSpan>, start: usize, end: usize, start_line: u32, first: Option<u32>| {
            if let Some(first_line) = first {
                docs.push(DocSpan {
                    range: start..end,
                    base_line: start_line,
                    first_line,
                });
            }
        };
    for (line_no, line) in (1u32..).zip(text.split_inclusive('\n')) {
        let bare = line.trim_end_matches(['\n', '\r']);
        let marker = |m: &str| {
            bare.strip_prefix(m)
                .filter(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
        };
        if let Some(rest) = marker("---") {
            // A prefix of only comments and directives belongs to this document; after content
            // or another marker, a new document starts.
            if first_content.is_some() || seen_marker {
                close(&mut docs, start, offset, start_line, first_content);
                start = offset;
                start_line = line_no;
                first_content = None;
            }
            seen_marker = true;
            let rest = rest.trim();
            if !rest.is_empty() && !rest.starts_with('#') {
                first_content = Some(line_no);
            }
        } else if marker("...").is_some() {
            let end = offset + line.len();
            close(&mut docs, start, end, start_line, first_content);
            start = end;
            start_line = line_no + 1;
            first_content = None;
            seen_marker = false;
        } else {
            let t = bare.trim();
            let directive = first_content.is_none() && bare.starts_with('%');
            if first_content.is_none() && !t.is_empty() && !t.starts_with('#') && !directive {
                first_content = Some(line_no);
            }
        }
        offset += line.len();
    }
    close(&mut docs, start, text.len(), start_line, first_content);
    docs
}

/// A YAML node with its children's positions: enough to read `apiVersion`/`kind`/`metadata`
/// and to find the line of any field path.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Node {
    /// A scalar, as text (`None` for null).
    Scalar(Option<String>),
    /// A sequence.
    Seq(Vec<Spanned<Node>>),
    /// A mapping: key text, key line, value.
    Map(Vec<(String, u64, Spanned<Node>)>),
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Scalar(Some(v.to_string())))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Scalar(Some(v.to_string())))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
        Ok(Node::Scalar(Some(v.to_string())))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Node, E> {
        Ok(Node::Scalar(Some(v.to_string())))
    }
    fn visit_u128<E>(self, v: u128) -> Result<Node, E> {
        Ok(Node::Scalar(Some(v.to_string())))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Scalar(Some(v.to_string())))
    }
    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Scalar(Some(v.to_owned())))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<Node, E> {
        Ok(Node::Scalar(Some(String::from_utf8_lossy(v).into_owned())))
    }
    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Scalar(None))
    }
    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Scalar(None))
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut v = Vec::new();
        while let Some(n) = seq.next_element::<Spanned<Node>>()? {
            v.push(n);
        }
        Ok(Node::Seq(v))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut v = Vec::new();
        while let Some(k) = map.next_key::<Spanned<Key>>()? {
            v.push((
                k.value.0,
                k.referenced.line(),
                map.next_value::<Spanned<Node>>()?,
            ));
        }
        Ok(Node::Map(v))
    }
}

/// A mapping key as text (numbers and booleans too: `8080:`).
struct Key(String);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Node::deserialize(d)? {
            Node::Scalar(s) => Ok(Key(s.unwrap_or_default())),
            _ => Err(de::Error::custom("mapping keys must be scalars")),
        }
    }
}

impl Node {
    fn get(&self, key: &str) -> Option<&Spanned<Node>> {
        match self {
            Node::Map(m) => m.iter().find(|(k, _, _)| k == key).map(|(_, _, v)| v),
            _ => None,
        }
    }

    fn str_at(&self, key: &str) -> Option<&str> {
        match &self.get(key)?.value {
            Node::Scalar(Some(s)) => Some(s),
            _ => None,
        }
    }

    /// `metadata.name` and `metadata.namespace`.
    fn name_ns(&self) -> (Option<&str>, Option<&str>) {
        match self.get("metadata") {
            Some(m) => (m.value.str_at("name"), m.value.str_at("namespace")),
            None => (None, None),
        }
    }
}

/// The line of `path` (serde_path_to_error syntax: `a.b[0].c`, map keys may contain dots)
/// below `root`: of its key for a mapping entry, of the element for a sequence item; when
/// the path does not fully exist, of the deepest part that does.
pub(crate) fn locate(root: &Spanned<Node>, path: &str) -> u32 {
    let mut node = root;
    let mut line = root.referenced.line();
    let mut rest = path;
    loop {
        rest = rest.strip_prefix('.').unwrap_or(rest);
        if rest.is_empty() {
            break;
        }
        let next = if let Some(r) = rest.strip_prefix('[') {
            let Some(end) = r.find(']') else { break };
            let idx: Option<usize> = r[..end].parse().ok();
            rest = &r[end + 1..];
            match (&node.value, idx) {
                (Node::Seq(items), Some(i)) => items.get(i).map(|n| (n, n.referenced.line())),
                _ => None,
            }
        } else {
            match &node.value {
                Node::Map(entries) => {
                    // The longest key that the path continues with (keys may hold '.').
                    let found = entries
                        .iter()
                        .filter(|(k, _, _)| {
                            rest.strip_prefix(k.as_str()).is_some_and(|after| {
                                after.is_empty() || after.starts_with(['.', '['])
                            })
                        })
                        .max_by_key(|(k, _, _)| k.len());
                    found.map(|(k, key_line, v)| {
                        rest = &rest[k.len()..];
                        (v, *key_line)
                    })
                }
                _ => None,
            }
        };
        match next {
            Some((n, l)) => {
                node = n;
                line = l;
            }
            None => break,
        }
    }
    u32::try_from(line).unwrap_or(0)
}

/// Reads one document into a [`Node`] tree.
pub(crate) fn parse_tree(text: &str) -> Result<Spanned<Node>, serde_saphyr::Error> {
    serde_saphyr::from_str::<Spanned<Node>>(text)
}

/// A serde-saphyr error's message without the "at line X, column Y" suffix, on one line.
pub(crate) fn message(e: &serde_saphyr::Error) -> String {
    let msg = DefaultMessageFormatter.format_message(e.without_snippet());
    // One printable line: control characters escaped, quotes left as they are (`escape_debug`
    // on the whole message turned `'['` into `\'[\'`).
    msg.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .map(|c| {
            if c.is_control() {
                c.escape_debug().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn line_col(e: &serde_saphyr::Error) -> (u32, u32) {
    e.location()
        .map(|l| {
            (
                u32::try_from(l.line()).unwrap_or(0),
                u32::try_from(l.column()).unwrap_or(0),
            )
        })
        .unwrap_or((0, 0))
}

/// A resource read from a file, with what is needed to point at its fields later.
#[derive(Debug, Clone)]
pub(crate) struct Parsed {
    /// The resource and its origin (file, first line).
    pub resource: Sourced<Resource>,
    /// Where its document is in the file.
    pub doc: DocSpan,
    /// Path prefix of the resource inside its document (`items[3]` in a List, else empty).
    pub prefix: String,
}

/// Parses one file's text. Returns every resource that parsed and every error.
pub(crate) fn parse_file(file: &str, text: &str) -> (Vec<Parsed>, Vec<LoadError>) {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for doc in split_documents(text) {
        let Some(doc_text) = text.get(doc.range.clone()) else {
            continue;
        };
        parse_document(file, doc_text, doc, &mut out, &mut errors);
    }
    (out, errors)
}

fn parse_document(
    file: &str,
    text: &str,
    doc: DocSpan,
    out: &mut Vec<Parsed>,
    errors: &mut Vec<LoadError>,
) {
    let abs = |rel: u32| doc.base_line.saturating_add(rel.saturating_sub(1));
    // Fast path: a mapping whose apiVersion/kind name a known kind and that parses as it.
    // Anything else (Lists, errors, odd documents) takes the tree path below, which reports.
    if let Ok(Some(p)) = serde_saphyr::from_str::<Option<Probe>>(text)
        && p.kind.as_deref() != Some("List")
        && let Ok(kind) = Kind::from_type_meta(p.api_version.as_deref(), p.kind.as_deref())
        && let Ok(r) = typed(text, KindSeed(kind))
    {
        let line = doc.first_line;
        push(out, file, r, doc, line, String::new());
        return;
    }
    let tree = match parse_tree(text) {
        Ok(t) => t,
        Err(e) => {
            let (line, column) = line_col(&e);
            errors.push(LoadError::Syntax {
                file: file.to_owned(),
                line: if line == 0 { doc.first_line } else { abs(line) },
                column,
                message: message(&e),
            });
            return;
        }
    };
    let root = &tree.value;
    match root {
        Node::Scalar(None) => return, // A null document, as kubectl skips.
        Node::Map(_) => {}
        _ => {
            errors.push(LoadError::Syntax {
                file: file.to_owned(),
                line: doc.first_line,
                column: 1,
                message: "a document must be a mapping with apiVersion and kind".to_owned(),
            });
            return;
        }
    }
    let kind_line = |n: &Spanned<Node>| {
        n.value
            .get("kind")
            .map_or(doc.first_line, |k| abs(locate_line(k)))
    };
    if root.str_at("kind") == Some("List") && root.str_at("apiVersion").is_some_and(|v| v == "v1") {
        let items: &[Spanned<Node>] = match root.get("items").map(|i| &i.value) {
            Some(Node::Seq(items)) => items,
            Some(Node::Scalar(None)) | None => &[],
            Some(_) => {
                errors.push(LoadError::Syntax {
                    file: file.to_owned(),
                    line: doc.first_line,
                    column: 1,
                    message: "List items must be a sequence".to_owned(),
                });
                return;
            }
        };
        let mut kinds = Vec::with_capacity(items.len());
        for item in items {
            match Kind::from_type_meta(item.value.str_at("apiVersion"), item.value.str_at("kind")) {
                Ok(k) => kinds.push(Some(k)),
                Err(error) => {
                    kinds.push(None);
                    errors.push(LoadError::Type {
                        file: file.to_owned(),
                        line: kind_line(item),
                        name: item.value.name_ns().0.map(str::to_owned),
                        error,
                    });
                }
            }
        }
        let seed = ListSeed { kinds: &kinds };
        match typed(text, seed) {
            Ok(resources) => {
                for (i, r) in resources.into_iter().enumerate() {
                    let Some(r) = r else { continue };
                    let line = items.get(i).map_or(doc.first_line, |n| abs(locate_line(n)));
                    push(out, file, r, doc.clone(), line, format!("items[{i}]"));
                }
            }
            Err(f) => {
                let (path, e) = *f;
                // `items[N]...`: name the item.
                let idx = path
                    .strip_prefix("items[")
                    .and_then(|r| r.split(']').next())
                    .and_then(|n| n.parse::<usize>().ok());
                let item = idx.and_then(|i| items.get(i));
                let resource = item.map_or_else(
                    || "List".to_owned(),
                    |n| describe(&n.value, kinds.get(idx.unwrap_or(0)).copied().flatten()),
                );
                errors.push(schema_error(file, &doc, &tree, &path, &e, resource));
            }
        }
        return;
    }
    let kind = match Kind::from_type_meta(root.str_at("apiVersion"), root.str_at("kind")) {
        Ok(k) => k,
        Err(error) => {
            errors.push(LoadError::Type {
                file: file.to_owned(),
                line: kind_line(&tree),
                name: root.name_ns().0.map(str::to_owned),
                error,
            });
            return;
        }
    };
    match typed(text, KindSeed(kind)) {
        Ok(r) => {
            let line = doc.first_line;
            push(out, file, r, doc.clone(), line, String::new());
        }
        Err(f) => {
            let (path, e) = *f;
            let resource = describe(root, Some(kind));
            errors.push(schema_error(file, &doc, &tree, &path, &e, resource));
        }
    }
}

/// Just `apiVersion` and `kind`; every other field is skipped unparsed.
#[derive(Deserialize)]
struct Probe {
    #[serde(default, rename = "apiVersion")]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
}

fn locate_line(n: &Spanned<Node>) -> u32 {
    u32::try_from(n.referenced.line()).unwrap_or(0)
}

fn push(
    out: &mut Vec<Parsed>,
    file: &str,
    object: Resource,
    doc: DocSpan,
    line: u32,
    prefix: String,
) {
    out.push(Parsed {
        resource: Sourced {
            origin: Some(Origin {
                file: file.to_owned(),
                line,
            }),
            object,
        },
        doc,
        prefix,
    });
}

/// `Kind ns/name` from the document itself (before defaulting: no namespace → `default`
/// for namespaced kinds, as the snapshot will do).
fn describe(node: &Node, kind: Option<Kind>) -> String {
    let (name, ns) = node.name_ns();
    let Some(kind) = kind else {
        return node.str_at("kind").unwrap_or("resource").to_owned();
    };
    let namespace = if kind.is_namespaced() {
        ns.unwrap_or("default")
    } else {
        ""
    };
    ResourceKey {
        kind,
        namespace: namespace.to_owned(),
        name: name.unwrap_or("<unnamed>").to_owned(),
    }
    .to_string()
}

fn schema_error(
    file: &str,
    doc: &DocSpan,
    tree: &Spanned<Node>,
    path: &str,
    e: &serde_saphyr::Error,
    resource: String,
) -> LoadError {
    let (line, _) = line_col(e);
    let line = if line > 0 {
        doc.base_line.saturating_add(line - 1)
    } else {
        doc.base_line
            .saturating_add(locate(tree, path).saturating_sub(1))
    };
    LoadError::Schema {
        file: file.to_owned(),
        line,
        resource,
        field: if path.is_empty() || path == "." {
            "(document)".to_owned()
        } else {
            path.to_owned()
        },
        message: message(e),
    }
}

/// Deserializes `text` with `seed`, tracking the field path of any error.
pub(crate) fn typed<T, S>(text: &str, seed: S) -> Result<T, Box<(String, serde_saphyr::Error)>>
where
    S: for<'de> DeserializeSeed<'de, Value = T>,
{
    let mut failure: Option<(String, serde_saphyr::Error)> = None;
    let result = serde_saphyr::with_deserializer_from_str(text, |de| {
        let mut track = serde_path_to_error::Track::new();
        match seed.deserialize(serde_path_to_error::Deserializer::new(de, &mut track)) {
            Ok(v) => Ok(Some(v)),
            Err(e) => {
                failure = Some((track.path().to_string(), e));
                Ok(None)
            }
        }
    });
    match (failure, result) {
        (Some(f), _) => Err(Box::new(f)),
        (None, Ok(Some(v))) => Ok(v),
        (None, Ok(None)) => Err(Box::new((
            String::new(),
            <serde_saphyr::Error as de::Error>::custom("document could not be read"),
        ))),
        (None, Err(e)) => Err(Box::new((String::new(), e))),
    }
}

/// Deserializes a document as one kind.
#[derive(Clone, Copy)]
struct KindSeed(Kind);

impl<'de> DeserializeSeed<'de> for KindSeed {
    type Value = Resource;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Resource, D::Error> {
        Resource::deserialize_as(self.0, d)
    }
}

/// Deserializes a `kind: List`, each item as its probed kind (`None`: skipped, already
/// reported).
#[derive(Clone, Copy)]
struct ListSeed<'k> {
    kinds: &'k [Option<Kind>],
}

impl<'de> DeserializeSeed<'de> for ListSeed<'_> {
    type Value = Vec<Option<Resource>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ListSeed<'_> {
    type Value = Vec<Option<Resource>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a List with items")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "items" => items = map.next_value_seed(ItemsSeed { kinds: self.kinds })?,
                "apiVersion" | "kind" | "metadata" => {
                    map.next_value::<IgnoredAny>()?;
                }
                other => {
                    return Err(de::Error::unknown_field(
                        other,
                        &["apiVersion", "kind", "metadata", "items"],
                    ));
                }
            }
        }
        Ok(items)
    }
}

struct ItemsSeed<'k> {
    kinds: &'k [Option<Kind>],
}

impl<'de> DeserializeSeed<'de> for ItemsSeed<'_> {
    type Value = Vec<Option<Resource>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ItemsSeed<'_> {
    type Value = Vec<Option<Resource>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a sequence of resources")
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        loop {
            let kind = self.kinds.get(out.len()).copied().flatten();
            let next = match kind {
                Some(k) => seq.next_element_seed(KindSeed(k))?.map(Some),
                None => seq.next_element::<IgnoredAny>()?.map(|_| None),
            };
            match next {
                Some(item) => out.push(item),
                None => return Ok(out),
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn spans(text: &str) -> Vec<(String, u32, u32)> {
        split_documents(text)
            .into_iter()
            .map(|d| (text[d.range].to_owned(), d.base_line, d.first_line))
            .collect()
    }

    #[test]
    fn splits_at_markers_and_skips_empty_documents() {
        let text = "# header\n---\na: 1\n---\n# only a comment\n---\nb: 2\n...\n%YAML 1.2\n---\nc: 3\n--- {d: 4}\n";
        let got = spans(text);
        assert_eq!(
            got,
            [
                ("# header\n---\na: 1\n".to_owned(), 1, 3),
                ("---\nb: 2\n...\n".to_owned(), 6, 7),
                ("%YAML 1.2\n---\nc: 3\n".to_owned(), 9, 11),
                ("--- {d: 4}\n".to_owned(), 12, 12),
            ]
        );
        assert!(spans("").is_empty());
        assert!(spans("---\n---\n# nothing\n").is_empty());
        // `----` and `---x` are content, not markers.
        assert_eq!(spans("a: |\n  ----\n---x: 1\n").len(), 1);
    }

    #[test]
    fn locate_walks_keys_with_dots_and_indices() {
        let text = "metadata:\n  labels:\n    app.kubernetes.io/name: x\nspec:\n  rules:\n  - from:\n    - source:\n        principals:\n        - a\n        - b\n";
        let tree = parse_tree(text).unwrap();
        assert_eq!(locate(&tree, "metadata.labels.app.kubernetes.io/name"), 3);
        assert_eq!(
            locate(&tree, "spec.rules[0].from[0].source.principals[1]"),
            10
        );
        // Missing tail: the deepest existing ancestor.
        assert_eq!(locate(&tree, "spec.rules[0].to[0]"), 6);
        assert_eq!(locate(&tree, "spec.rules[5]"), 5);
    }

    #[test]
    fn messages_have_no_location_suffix() {
        let e = parse_tree("a: [1, 2\n").unwrap_err();
        let m = message(&e);
        assert!(!m.contains("at line"), "{m}");
        assert!(m.contains("bracket") || m.contains("flow"), "{m}");
    }
}
