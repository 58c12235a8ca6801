//! The CRDs in `crds/` are generated from the Rust types, and every example manifest is valid against them.

use std::path::Path;

const CRDS_FILE: &str = "crds/orgkeeper.dev.yaml";

#[test]
fn the_committed_crds_match_the_rust_types() {
    let committed = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(CRDS_FILE)).unwrap();
    let generated = orgkeeper::crd::crds_yaml();
    assert!(
        committed == generated,
        "{CRDS_FILE} is out of date with src/crd: regenerate it with `cargo run -- crds > {CRDS_FILE}`"
    );
}

#[test]
fn the_cli_prints_the_same_crds() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_orgkeeper"))
        .arg("crds")
        .output()
        .unwrap();
    assert!(output.status.success());
    assert_eq!(String::from_utf8(output.stdout).unwrap(), orgkeeper::crd::crds_yaml());
}

#[test]
fn every_example_manifest_is_valid() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let set = orgkeeper::manifests::load_dir(&examples).unwrap_or_else(|errors| {
        panic!(
            "{}",
            errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
        )
    });
    assert!(
        set.manifests.len() >= 13,
        "the examples declare an organization with users, environments and keys"
    );
    set.declarations().expect("every example converts to a declaration");
}

#[test]
fn each_crd_has_a_status_subresource_printer_columns_and_a_short_name() {
    for crd in orgkeeper::crd::all_crds() {
        let version = &crd.spec.versions[0];
        assert!(
            version.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some(),
            "{}",
            crd.spec.names.kind
        );
        assert!(
            version
                .additional_printer_columns
                .as_ref()
                .is_some_and(|c| c.iter().any(|c| c.name == "Ready"))
        );
        assert!(crd.spec.names.short_names.as_ref().is_some_and(|s| !s.is_empty()));
        assert_eq!(
            crd.spec.names.categories.as_deref(),
            Some(&["orgkeeper".to_owned()][..])
        );
    }
}
