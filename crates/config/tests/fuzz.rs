//! `load_str` never panics (fuzz-style property tests; the same entry point serves a
//! cargo-fuzz target).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;

const SEED: &str = include_str!("../../../examples/teei/authorization-policies.yaml");

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_text_never_panics(s in "\\PC{0,200}") {
        let _ = trustmesh_config::load_str("fuzz.yaml", &s);
    }

    /// Truncations and single-byte changes of a real file: parses or reports, never panics.
    #[test]
    fn mutated_real_files_never_panic(cut in 0..SEED.len(), at in 0..SEED.len(), byte in prop::sample::select(vec![b'[', b'{', b':', b'-', b' ', b'\n', b'*', b'&', b'!', b'"', b'\''])) {
        let mut bytes = SEED.as_bytes().to_vec();
        bytes[at] = byte;
        bytes.truncate(cut.max(at + 1));
        if let Ok(text) = String::from_utf8(bytes) {
            match trustmesh_config::load_str("fuzz.yaml", &text) {
                Ok(rs) => prop_assert!(rs.len() <= 10),
                Err(e) => prop_assert!(!e.errors.is_empty()),
            }
        }
    }
}
