//! Finding, parsing and validating manifest files.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::strict::{StrictValue, check_nesting};

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
    #[error(
        "{path}: larger than {limit} bytes, the most {what} may hold; raise {flag} if this is intended",
        path = .path.display()
    )]
    TooLarge {
        path: PathBuf,
        limit: u64,
        what: &'static str,
        flag: &'static str,
    },
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
    /// Entries named like manifests that were not read, and why: to be shown, since what they declare is
    /// missing from the plan.
    pub skipped_files: Vec<SkippedFile>,
    /// Where each object is first declared, so that looking up many objects stays linear.
    first_location: HashMap<ObjectRef, usize>,
}

/// An entry of the manifests folder that was not read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedFile {
    pub path: PathBuf,
    pub why: &'static str,
}

impl fmt::Display for SkippedFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: skipped: {}", self.path.display(), self.why)
    }
}

/// How much `load_dir` reads at most. A manifest folder is text a person reviews; these bounds keep a
/// stray link to a device, a log file or a generated blob from eating the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadLimits {
    /// Bytes in one file.
    pub max_file_bytes: u64,
    /// Bytes in all files together.
    pub max_total_bytes: u64,
}

impl LoadLimits {
    /// 4 MiB per file.
    pub const DEFAULT_MAX_FILE_BYTES: u64 = 4 << 20;
    /// 64 MiB in all.
    pub const DEFAULT_MAX_TOTAL_BYTES: u64 = 64 << 20;
}

impl Default for LoadLimits {
    fn default() -> Self {
        LoadLimits {
            max_file_bytes: Self::DEFAULT_MAX_FILE_BYTES,
            max_total_bytes: Self::DEFAULT_MAX_TOTAL_BYTES,
        }
    }
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
            if let Err(error) = result {
                errors.push(ManifestError::Invalid {
                    location: manifest.location.clone(),
                    object: manifest.resource.object_ref().to_string(),
                    field: error.field.to_owned(),
                    message: error.message,
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
        self.first_location.get(object).map(|&i| &self.manifests[i].location)
    }

    fn index(&mut self) {
        self.first_location.clear();
        for (i, manifest) in self.manifests.iter().enumerate() {
            self.first_location.entry(manifest.resource.object_ref()).or_insert(i);
        }
    }
}

/// Loads every manifest below `dir` (or the single file `dir`) with the default [`LoadLimits`]. All errors
/// are collected, not just the first.
pub fn load_dir(dir: &Path) -> Result<ManifestSet, Vec<ManifestError>> {
    load_dir_with(dir, LoadLimits::default())
}

/// Loads every manifest below `dir` (or the single file `dir`), reading only regular files and at most
/// `limits` bytes. All errors are collected, not just the first.
pub fn load_dir_with(dir: &Path, limits: LoadLimits) -> Result<ManifestSet, Vec<ManifestError>> {
    let (files, skipped_files) = yaml_files(dir).map_err(|e| vec![e])?;
    let validator = SchemaValidator::new();
    let mut set = ManifestSet {
        files: files.len(),
        skipped_files,
        ..Default::default()
    };
    let mut errors = Vec::new();
    let mut total: u64 = 0;
    for file in files {
        let text = match read_bounded(&file, limits.max_file_bytes) {
            Ok(FileText::Text(text)) => text,
            Ok(FileText::NotRegular) => {
                set.skipped_files.push(SkippedFile {
                    path: file,
                    why: NOT_REGULAR,
                });
                continue;
            }
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        total += text.len() as u64;
        if total > limits.max_total_bytes {
            errors.push(ManifestError::TooLarge {
                path: dir.to_owned(),
                limit: limits.max_total_bytes,
                what: "the manifests together",
                flag: "--max-total-bytes",
            });
            break;
        }
        let (manifests, skipped, file_errors) = parse_str(&text, &file, &validator);
        set.manifests.extend(manifests);
        set.skipped += skipped;
        errors.extend(file_errors);
    }
    set.index();
    if errors.is_empty() { Ok(set) } else { Err(errors) }
}

const NOT_REGULAR: &str = "not a regular file (a FIFO, device or socket is never read)";
const LINKED_FOLDER: &str =
    "a symbolic link to a folder is not followed (it could loop or leave the tree); list the folder itself";

pub enum FileText {
    Text(String),
    NotRegular,
}

/// Reads a regular file of at most `limit` bytes. The type is checked before opening (opening a FIFO
/// would block) and again on the open file; the read itself is bounded, whatever the file claims.
pub fn read_bounded(path: &Path, limit: u64) -> Result<FileText, ManifestError> {
    let read_error = |e: std::io::Error| ManifestError::Read {
        path: path.to_owned(),
        message: e.to_string(),
    };
    if !std::fs::metadata(path).map_err(read_error)?.is_file() {
        return Ok(FileText::NotRegular);
    }
    let file = std::fs::File::open(path).map_err(read_error)?;
    if !file.metadata().map_err(read_error)?.is_file() {
        return Ok(FileText::NotRegular);
    }
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes).map_err(read_error)?;
    if bytes.len() as u64 > limit {
        return Err(ManifestError::TooLarge {
            path: path.to_owned(),
            limit,
            what: "one manifest file",
            flag: "--max-file-bytes",
        });
    }
    String::from_utf8(bytes)
        .map(FileText::Text)
        .map_err(|_| ManifestError::Read {
            path: path.to_owned(),
            message: "not UTF-8 text".to_owned(),
        })
}

/// The manifest files below `root` in a stable order, and the entries named like manifests that are not read.
pub fn yaml_files(root: &Path) -> Result<(Vec<PathBuf>, Vec<SkippedFile>), ManifestError> {
    let read_error = |path: &Path, e: std::io::Error| ManifestError::Read {
        path: path.to_owned(),
        message: e.to_string(),
    };
    let meta = std::fs::metadata(root).map_err(|e| read_error(root, e))?;
    if !meta.is_dir() {
        // Named explicitly: read it whatever its extension (read_bounded refuses anything but a regular file).
        return Ok((vec![root.to_owned()], Vec::new()));
    }
    let mut files = Vec::new();
    let mut skipped = Vec::new();
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
            let manifest_name = matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"));
            if file_type.is_dir() {
                pending.push(path);
            } else if file_type.is_symlink() && std::fs::metadata(&path).is_ok_and(|m| m.is_dir()) {
                skipped.push(SkippedFile {
                    path,
                    why: LINKED_FOLDER,
                });
            } else if manifest_name {
                // Links to regular files are read; read_bounded skips what is not a regular file.
                files.push(path);
            }
        }
    }
    files.sort();
    skipped.sort_by(|a, b| a.path.cmp(&b.path));
    Ok((files, skipped))
}

/// Parses one file's documents. Returns the orgkeeper objects, the number of other documents skipped, and errors.
pub fn parse_str(text: &str, file: &Path, validator: &SchemaValidator) -> (Vec<Manifest>, usize, Vec<ManifestError>) {
    let mut manifests = Vec::new();
    let mut skipped = 0;
    let mut errors = Vec::new();
    // The YAML parser reads a whole document before the deserializer's depth limit applies, in time that
    // grows with the square of the nesting: refuse deep nesting before parsing.
    if let Err(too_deep) = check_nesting(text) {
        errors.push(ManifestError::Syntax {
            location: Location {
                file: file.to_owned(),
                line: too_deep.line,
            },
            message: too_deep.to_string(),
        });
        return (manifests, skipped, errors);
    }
    let starts = document_start_lines(text);
    for (index, document) in serde_norway::Deserializer::from_str(text).enumerate() {
        let line = starts.get(index).copied().unwrap_or(1);
        let location = Location {
            file: file.to_owned(),
            line,
        };
        let value = match StrictValue::deserialize(document) {
            Ok(StrictValue(value)) => value,
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
    let group = api_version.split('/').next().unwrap_or_default();
    if group != crd::GROUP {
        if looks_like(group, crd::GROUP) {
            // Skipping it would drop what it declares from the plan, and prune (revoke) it.
            return Err(vec![invalid(
                &format!("{kind} <document>"),
                "apiVersion",
                format!(
                    "{api_version:?} looks like a typo of {:?}; orgkeeper refuses it rather than skip the object (and remove what it declares)",
                    crd::API_VERSION
                ),
            )]);
        }
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
    if !KINDS.contains(&kind) {
        let hint = KINDS
            .iter()
            .find(|known| looks_like(kind, known))
            .map(|known| format!(" (did you mean {known}?)"))
            .unwrap_or_default();
        return Err(vec![invalid(
            &label,
            "kind",
            format!("unknown kind {kind:?}{hint}; expected Organization, Environment, User or ApiKey"),
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

const KINDS: [&str; 4] = ["Organization", "Environment", "User", "ApiKey"];

/// Whether `text` is close enough to `ours` to be a typo of it: the same but for case, or two edits away.
fn looks_like(text: &str, ours: &str) -> bool {
    let (text, ours) = (text.to_ascii_lowercase(), ours.to_ascii_lowercase());
    !text.is_empty() && strsim::levenshtein(&text, &ours) <= 2
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
