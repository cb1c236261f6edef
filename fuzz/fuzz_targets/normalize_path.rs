//! The request path normalizer on arbitrary request targets, in every mode: it never panics,
//! and what it returns is a normalized path (starts with `/`, no query, no dot segments after
//! BASE, and, without escapes, normalizing it again changes nothing).

#![no_main]

use libfuzzer_sys::fuzz_target;
use trustmesh_core::normalize::{Normalization, normalize_path};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(target) = std::str::from_utf8(rest) else {
        return;
    };
    let mode = match mode % 4 {
        0 => Normalization::None,
        1 => Normalization::Base,
        2 => Normalization::MergeSlashes,
        _ => Normalization::DecodeAndMergeSlashes,
    };
    let Ok(n) = normalize_path(target, mode) else {
        return;
    };
    let p = n.path();
    assert!(!p.contains('?') && !p.contains('#'), "{target:?} -> {p:?}");
    if mode == Normalization::None {
        return;
    }
    assert!(p.starts_with('/'), "{target:?} -> {p:?}");
    assert!(
        !p.split('/').any(|s| s == "." || s == ".."),
        "{target:?} -> {p:?}"
    );
    if mode != Normalization::Base {
        assert!(!p.contains("//"), "{target:?} -> {p:?}");
    }
    // Idempotent when no escape is involved. With `%` it need not be: decoding happens once
    // (Envoy/Chromium), so `%3%33` keeps the invalid `%3` and decodes `%33`, leaving a new
    // `%33` that a second pass would decode ("no double decoding", istio.io normalization page).
    if !target.contains('%') {
        let again = normalize_path(p, mode).expect("a normalized path normalizes");
        assert_eq!(again.path(), p, "{target:?}");
    }
});
