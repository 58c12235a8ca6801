//! The Helm chart installs the CRDs from its own `crds/` folder (Helm reads CRDs only from inside the chart), so
//! it carries a copy of the generated `crds/orgkeeper.dev.yaml`. This test fails when the copy drifts.

use std::path::Path;

const GENERATED: &str = "crds/orgkeeper.dev.yaml";
const CHART_COPY: &str = "charts/orgkeeper/crds/orgkeeper.dev.yaml";

#[test]
fn the_charts_crds_are_a_copy_of_the_generated_crds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let generated = std::fs::read_to_string(root.join(GENERATED)).expect("reading the generated CRDs");
    let copy = std::fs::read_to_string(root.join(CHART_COPY)).expect("reading the chart's CRDs");
    assert!(
        generated == copy,
        "{CHART_COPY} differs from {GENERATED}: update it with `cp {GENERATED} {CHART_COPY}`"
    );
}
