//! `trustmesh enable` on copies of the example folder, through the real binary.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a failed test

use std::path::Path;
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trustmesh"))
        .env_remove("TRUSTMESH_CONFIG")
        .args(args)
        .output()
        .unwrap()
}

fn copy_example(to: &Path) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/teei");
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn json(o: &Output) -> serde_json::Value {
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn enable_rewrites_the_deciding_policy_in_place_and_keeps_its_comments() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("teei");
    copy_example(&dir);
    let d = dir.to_str().unwrap();
    let v = json(&run(&[
        "enable", "staging", "--mode", "STRICT", "--config", d, "-o", "json",
    ]));
    assert_eq!(v["previousMode"], "PERMISSIVE");
    assert_eq!(v["mode"], "STRICT");
    assert_eq!(v["changed"], true);
    let text = std::fs::read_to_string(dir.join("peer-authentication.yaml")).unwrap();
    assert!(text.starts_with("# mTLS everywhere by default"), "{text}");
    assert!(text.contains("# The gateway is the edge"), "{text}");
    assert_eq!(
        text.matches("kind: PeerAuthentication").count(),
        4,
        "{text}"
    );
    assert!(!text.contains("PERMISSIVE\n---\n# The gateway"), "{text}");

    // Running it again changes nothing.
    let v = json(&run(&[
        "enable", "staging", "--mode", "STRICT", "--config", d, "-o", "json",
    ]));
    assert_eq!(v["changed"], false);
    let again = std::fs::read_to_string(dir.join("peer-authentication.yaml")).unwrap();
    assert_eq!(text, again);

    // The folder still loads.
    let o = run(&["check", d, "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["valid"], true, "{v:#}");
}

#[test]
fn enable_adds_a_policy_file_and_lists_it_in_the_kustomization() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("teei");
    copy_example(&dir);
    let d = dir.to_str().unwrap();
    let v = json(&run(&[
        "enable",
        "production",
        "--mode",
        "STRICT",
        "--config",
        d,
        "-o",
        "json",
    ]));
    assert_eq!(v["previousMode"], serde_json::Value::Null);
    let file = dir.join("peer-authentication-production.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("namespace: production") && text.contains("mode: STRICT"));
    let k = std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap();
    assert!(
        k.contains("  - peer-authentication-production.yaml\n"),
        "{k}"
    );
    let o = run(&["check", d, "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["valid"], true, "{v:#}");
}

#[test]
fn enable_refuses_a_change_that_would_break_the_folder_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // A workload-level policy already named `default` in `shop`: a namespace-wide one of the
    // same name would be a duplicate.
    std::fs::write(
        dir.join("pa.yaml"),
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: default\n  namespace: shop\nspec:\n  selector:\n    matchLabels:\n      app: web\n  mtls:\n    mode: STRICT\n",
    )
    .unwrap();
    let o = run(&[
        "enable",
        "shop",
        "--mode",
        "DISABLE",
        "--config",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("nothing was written"), "{err}");
    assert!(!dir.join("peer-authentication-shop.yaml").exists());

    // And a folder that does not load is not touched at all.
    std::fs::write(dir.join("broken.yaml"), "kind: [\n").unwrap();
    let o = run(&[
        "enable",
        "shop",
        "--mode",
        "STRICT",
        "--config",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("broken.yaml"));
}
