//! Finding, parsing and validating manifest files.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::validate::SchemaValidator;
use crate::crd::{self, ApiKey, Environment, Organization, ToDeclaration, User};
use crate::domain::{Declarations, Kind, ObjectRef};

/// Where an object was read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    /// 1-based line where the object's document starts.
    pub line: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// An orgkeeper resource read from a manifest.
#[derive(Clone, Debug)]
pub enum Resource {
    Organization(Box<Organization>),
    Environment(Box<Environment>),
    User(Box<User>),
    ApiKey(Box<ApiKey>),
}

impl Resource {
    pub fn object_ref(&self) -> ObjectRef {
        let (kind, meta) = match self {
            Resource::Organization(o) => (Kind::Organization, &o.metadata),
            Resource::Environment(e) => (Kind::Environment, &e.metadata),
            Resource::User(u) => (Kind::User, &u.metadata),
            Resource::ApiKey(k) => (Kind::ApiKey, &k.metadata),
        };
        ObjectRef::new(kind, &crd::namespace_of(meta), meta.name.as_deref().unwrap_or_default())
    }
}

#[derive(Clone, Debug)]
pub struct Manifest {
    pub location: Location,
    pub resource: Resource,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: {message}", path = .path.display())]
    Read { path: PathBuf, message: String },
    #[error("{location}: YAML syntax error: {message}")]
    Syntax { location: Location, message: String },
    #[error("{location}: {object}: {field}: {message}")]
    Invalid {
        location: Location,
        object: String,
        field: String,
        message: String,
    },
}

/// The orgkeeper objects of a folder, in file order.
#[derive(Debug, Default)]
pub struct ManifestSet {
    pub manifests: Vec<Manifest>,
    pub files: usize,
    /// Documents of other kinds (Deployments, Secrets, ...), which orgkeeper leaves to others.
    pub skipped: usize,
}

impl ManifestSet {
    /// Everything the manifests declare. Fails only for objects the schema would have refused.
    pub fn declarations(&self) -> Result<Declarations, Vec<ManifestError>> {
        let mut declarations = Declarations::default();
        let mut errors = Vec::new();
        for manifest in &self.manifests {
            let result = match &manifest.resource {
                Resource::Organization(o) => o.to_declaration().map(|d| declarations.organizations.push(d)),
                Resource::Environment(e) => e.to_declaration().map(|d| declarations.environments.push(d)),
                Resource::User(u) => u.to_declaration().map(|d| declarations.users.push(d)),
                Resource::ApiKey(k) => k.to_declaration().map(|d| declarations.api_keys.push(d)),
            };
            if let Err(message) = result {
                let (field, message) = message
                    .split_once(": ")
                    .map_or(("spec".to_owned(), message.clone()), |(f, m)| {
                        (f.to_owned(), m.to_owned())
                    });
                errors.push(ManifestError::Invalid {
                    location: manifest.location.clone(),
                    object: manifest.resource.object_ref().to_string(),
                    field,
                    message,
                });
            }
        }
        if errors.is_empty() {
            Ok(declarations)
        } else {
            Err(errors)
        }
    }

    /// Where an object was declared (the first declaration, for duplicates).
    pub fn location_of(&self, object: &ObjectRef) -> Option<&Location> {
        self.manifests
            .iter()
            .find(|m| &m.resource.object_ref() == object)
            .map(|m| &m.location)
    }

    /// Every place an object is declared, so a duplicate can point at all of them.
    pub fn locations_of(&self, object: &ObjectRef) -> Vec<&Location> {
        self.manifests
            .iter()
            .filter(|m| &m.resource.object_ref() == object)
            .map(|m| &m.location)
            .collect()
    }
}

/// Loads every manifest below `dir` (or the single file `dir`). All errors are collected, not just the first.
pub fn load_dir(dir: &Path) -> Result<ManifestSet, Vec<ManifestError>> {
    let files = yaml_files(dir).map_err(|e| vec![e])?;
    let validator = SchemaValidator::new();
    let mut set = ManifestSet {
        files: files.len(),
        ..Default::default()
    };
    let mut errors = Vec::new();
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => {
                let (manifests, skipped, file_errors) = parse_str(&text, &file, &validator);
                set.manifests.extend(manifests);
                set.skipped += skipped;
                errors.extend(file_errors);
            }
            Err(e) => errors.push(ManifestError::Read {
                path: file,
                message: e.to_string(),
            }),
        }
    }
    if errors.is_empty() { Ok(set) } else { Err(errors) }
}

pub fn yaml_files(root: &Path) -> Result<Vec<PathBuf>, ManifestError> {
    let read_error = |path: &Path, e: std::io::Error| ManifestError::Read {
        path: path.to_owned(),
        message: e.to_string(),
    };
    let meta = std::fs::metadata(root).map_err(|e| read_error(root, e))?;
    if meta.is_file() {
        return Ok(vec![root.to_owned()]);
    }
    let mut files = Vec::new();
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).map_err(|e| read_error(&dir, e))? {
            let entry = entry.map_err(|e| read_error(&dir, e))?;
            let path = entry.path();
            let name = entry.file_name();
            // Hidden entries (.git, .github, editor files) are never manifests.
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            let file_type = entry.file_type().map_err(|e| read_error(&path, e))?;
            if file_type.is_dir() {
                pending.push(path);
            } else if matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Parses one file's documents. Returns the orgkeeper objects, the number of other documents skipped, and errors.
pub fn parse_str(text: &str, file: &Path, validator: &SchemaValidator) -> (Vec<Manifest>, usize, Vec<ManifestError>) {
    let starts = document_start_lines(text);
    let mut manifests = Vec::new();
    let mut skipped = 0;
    let mut errors = Vec::new();
    for (index, document) in serde_norway::Deserializer::from_str(text).enumerate() {
        let line = starts.get(index).copied().unwrap_or(1);
        let location = Location {
            file: file.to_owned(),
            line,
        };
        let value = match Value::deserialize(document) {
            Ok(value) => value,
            Err(e) => {
                let line = e.location().map_or(line, |l| l.line());
                errors.push(ManifestError::Syntax {
                    location: Location {
                        file: file.to_owned(),
                        line,
                    },
                    message: e.to_string(),
                });
                // After a syntax error the stream's positions are unreliable: stop reading this file.
                break;
            }
        };
        match read_object(value, &location, validator) {
            Ok(Some(resource)) => manifests.push(Manifest { location, resource }),
            Ok(None) => skipped += 1,
            Err(mut e) => errors.append(&mut e),
        }
    }
    (manifests, skipped, errors)
}

/// The 1-based line each YAML document starts on (the line after a `---`, or 1 for the first).
pub fn document_start_lines(text: &str) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut content_seen = false;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_end();
        if trimmed == "---" || trimmed.starts_with("--- ") {
            starts.push(i + 2);
            content_seen = false;
        } else if !content_seen && !trimmed.is_empty() && !trimmed.starts_with('#') {
            if starts.is_empty() {
                starts.push(i + 1);
            } else if let Some(last) = starts.last_mut() {
                // Point at the first line with content, not at blank lines or comments after `---`.
                *last = (*last).max(i + 1);
            }
            content_seen = true;
        }
    }
    starts
}

fn read_object(
    value: Value,
    location: &Location,
    validator: &SchemaValidator,
) -> Result<Option<Resource>, Vec<ManifestError>> {
    if value.is_null() {
        return Ok(None);
    }
    let invalid = |object: &str, field: &str, message: String| ManifestError::Invalid {
        location: location.clone(),
        object: object.to_owned(),
        field: field.to_owned(),
        message,
    };
    let Some(object) = value.as_object() else {
        return Err(vec![invalid(
            "<document>",
            "<root>",
            "a manifest must be a mapping with apiVersion and kind".into(),
        )]);
    };
    let api_version = object.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or_default();
    if api_version.split('/').next() != Some(crd::GROUP) {
        return Ok(None);
    }
    let name = value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let namespace = value
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let label = format!("{kind} {namespace}/{name}");
    if api_version != crd::API_VERSION {
        return Err(vec![invalid(
            &label,
            "apiVersion",
            format!(
                "unsupported version {api_version:?}; orgkeeper serves {}",
                crd::API_VERSION
            ),
        )]);
    }
    if !matches!(kind, "Organization" | "Environment" | "User" | "ApiKey") {
        return Err(vec![invalid(
            &label,
            "kind",
            format!("unknown kind {kind:?}; expected Organization, Environment, User or ApiKey"),
        )]);
    }
    let mut errors = Vec::new();
    if !is_dns_subdomain(name) {
        errors.push(invalid(
            &label,
            "metadata.name",
            "required, and must be a DNS subdomain (lowercase letters, digits, '-' and '.')".into(),
        ));
    }
    if !is_dns_label(namespace) {
        errors.push(invalid(&label, "metadata.namespace", "must be a DNS label".into()));
    }
    errors.extend(
        validator
            .validate(kind, &value)
            .into_iter()
            .map(|v| invalid(&label, &v.field, v.message)),
    );
    if !errors.is_empty() {
        return Err(errors);
    }
    let typed = |e: serde_json::Error| vec![invalid(&label, "<root>", e.to_string())];
    Ok(Some(match kind {
        "Organization" => Resource::Organization(Box::new(serde_json::from_value(value).map_err(typed)?)),
        "Environment" => Resource::Environment(Box::new(serde_json::from_value(value).map_err(typed)?)),
        "User" => Resource::User(Box::new(serde_json::from_value(value).map_err(typed)?)),
        _ => Resource::ApiKey(Box::new(serde_json::from_value(value).map_err(typed)?)),
    }))
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (Vec<Manifest>, usize, Vec<ManifestError>) {
        parse_str(text, Path::new("org.yaml"), &SchemaValidator::new())
    }

    const ORG: &str =
        "apiVersion: orgkeeper.dev/v1alpha1\nkind: Organization\nmetadata:\n  name: acme\nspec:\n  displayName: Acme\n";

    #[test]
    fn multi_document_files_skip_other_kinds_and_know_their_lines() {
        let text =
            format!("# a comment\n{ORG}---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n---\n\n{ORG}");
        let (manifests, skipped, errors) = parse(&text);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(skipped, 1);
        assert_eq!(manifests.len(), 2);
        assert_eq!(manifests[0].location.line, 2);
        assert_eq!(manifests[1].location.line, 15);
    }

    #[test]
    fn syntax_errors_name_the_file_and_line() {
        let (_, _, errors) = parse(&format!("{ORG}---\nkind: [unclosed\n"));
        let message = errors[0].to_string();
        assert!(message.starts_with("org.yaml:9: YAML syntax error"), "{message}");
    }

    #[test]
    fn schema_errors_name_the_file_object_and_field() {
        let text = "apiVersion: orgkeeper.dev/v1alpha1\nkind: Organization\nmetadata:\n  name: acme\n  namespace: team\nspec:\n  displayName: Acme\n  plan: Enterprise\n";
        let (_, _, errors) = parse(text);
        let message = errors[0].to_string();
        assert!(
            message.starts_with("org.yaml:1: Organization team/acme: spec.plan: "),
            "{message}"
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for text in [
            "- a\n- b\n",
            "just text",
            "apiVersion: orgkeeper.dev/v1alpha1\nkind: Widget\n",
            "apiVersion: orgkeeper.dev/v2\nkind: User\n",
            "\u{0}\u{1}",
        ] {
            let (manifests, _, errors) = parse(text);
            assert!(manifests.is_empty());
            assert!(!errors.is_empty(), "{text:?}");
        }
    }

    #[test]
    fn missing_names_are_reported() {
        let (_, _, errors) = parse("apiVersion: orgkeeper.dev/v1alpha1\nkind: Organization\nspec:\n  displayName: A\n");
        assert!(
            errors.iter().any(|e| e.to_string().contains("metadata.name")),
            "{errors:?}"
        );
    }
}
