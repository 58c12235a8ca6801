//! Property tests (proptest) of the manifest loader, which reads whatever a repository holds:
//! - any text, YAML-like or not, gives manifests or errors, never a panic, and every error names a line
//!   inside the file;
//! - a mapping key given twice anywhere in an orgkeeper object is refused, never last-one-wins;
//! - an apiVersion one edit away from orgkeeper's is an error, never skipped as another kind.
//!
//! Cases that failed once are kept below as plain tests (`regression_*`).

use std::path::Path;
use std::sync::LazyLock;

use orgkeeper::manifests::{ManifestError, SchemaValidator, parse_str};
use proptest::prelude::*;

static VALIDATOR: LazyLock<SchemaValidator> = LazyLock::new(SchemaValidator::new);

const API_KEY: &str = "apiVersion: orgkeeper.dev/v1alpha1
kind: ApiKey
metadata:
  name: backend
  namespace: team
spec:
  organizationRef:
    name: acme
  environment: production
  access: ReadOnly
";

fn parse(text: &str) -> (usize, usize, Vec<ManifestError>) {
    let (manifests, skipped, errors) = parse_str(text, Path::new("fuzz.yaml"), &VALIDATOR);
    (manifests.len(), skipped, errors)
}

fn lines_of(error: &ManifestError) -> Option<usize> {
    match error {
        ManifestError::Syntax { location, .. } | ManifestError::Invalid { location, .. } => Some(location.line),
        _ => None,
    }
}

/// Lines as YAML counts them: `\n`, `\r\n` and a lone `\r` each end one.
fn yaml_lines(text: &str) -> usize {
    text.replace("\r\n", "\n")
        .chars()
        .filter(|c| matches!(c, '\n' | '\r'))
        .count()
        + 1
}

/// Every error points at a line of the file (or just past its end, for an unexpected end).
fn check_lines(text: &str) -> Result<(), TestCaseError> {
    let (_, _, errors) = parse(text);
    let lines = yaml_lines(text);
    for error in &errors {
        if let Some(line) = lines_of(error) {
            prop_assert!(line >= 1 && line <= lines + 1, "{error} in a {lines}-line file");
        }
    }
    Ok(())
}

/// Text built from the pieces YAML is made of, so that the parser goes deep rather than failing at once.
fn yamlish() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("apiVersion: orgkeeper.dev/v1alpha1\n".to_owned()),
        Just("kind: ApiKey\n".to_owned()),
        Just("kind: Organization\n".to_owned()),
        Just("metadata:\n  name: a\n".to_owned()),
        Just("spec:\n".to_owned()),
        Just("---\n".to_owned()),
        Just("  ".to_owned()),
        Just("- ".to_owned()),
        Just("&a ".to_owned()),
        Just("*a\n".to_owned()),
        Just("[".to_owned()),
        Just("]".to_owned()),
        Just("{".to_owned()),
        Just("}".to_owned()),
        Just(": ".to_owned()),
        Just("'".to_owned()),
        Just("\"".to_owned()),
        Just("#".to_owned()),
        Just("!!str ".to_owned()),
        Just("\n".to_owned()),
        "[a-z0-9]{1,8}",
        any::<char>().prop_map(String::from),
    ];
    prop::collection::vec(piece, 0..200).prop_map(|pieces| pieces.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_text_gives_manifests_or_errors_never_a_panic(text in yamlish()) {
        check_lines(&text)?;
    }

    #[test]
    fn a_key_given_twice_is_always_refused(pick in 0usize..100, value in "[a-z]{1,6}") {
        let lines: Vec<&str> = API_KEY.lines().collect();
        // Only keys with a value on their line: the duplicate goes right after, at the same indentation.
        let leaves: Vec<usize> = (0..lines.len()).filter(|&i| !lines[i].ends_with(':')).collect();
        let line = leaves[pick % leaves.len()];
        let trimmed = lines[line].trim_start();
        let indent = &lines[line][..lines[line].len() - trimmed.len()];
        let key = trimmed.split(':').next().unwrap();
        let mut doubled: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
        doubled.insert(line + 1, format!("{indent}{key}: {value}"));
        let text = doubled.join("\n") + "\n";
        let (manifests, _, errors) = parse(&text);
        prop_assert_eq!(manifests, 0);
        prop_assert!(
            errors.iter().any(|e| e.to_string().contains("duplicate key")),
            "{text}\n{errors:?}"
        );
    }

    #[test]
    fn an_api_version_one_edit_away_is_an_error(position in 0usize..13, letter in "[a-z.]") {
        let group = "orgkeeper.dev";
        let mut typo = group.to_owned();
        typo.replace_range(position..=position, &letter);
        prop_assume!(typo != group);
        let text = API_KEY.replace("orgkeeper.dev/", &format!("{typo}/"));
        let (manifests, skipped, errors) = parse(&text);
        prop_assert_eq!((manifests, skipped), (0, 0));
        prop_assert!(errors.iter().any(|e| e.to_string().contains("looks like a typo")), "{errors:?}");
    }
}

#[test]
fn regression_the_document_the_properties_start_from_reads() {
    let (manifests, skipped, errors) = parse(API_KEY);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!((manifests, skipped), (1, 0));
}

#[test]
fn regression_a_lone_carriage_return_ends_a_line() {
    // Found by any_text_gives_manifests_or_errors_never_a_panic: YAML counts `\r` as a line break.
    check_lines("apiVersion: orgkeeper.dev/v1alpha1\n\ra").unwrap();
}
