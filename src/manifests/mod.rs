//! Reads a folder of manifests the way a GitOps repository holds them: every `*.yaml`/`*.yml` file below it,
//! multi-document, manifests of other kinds skipped. Each orgkeeper object is checked against the same
//! schema and CEL rules the API server enforces, so `plan` catches what `kubectl apply` would refuse, and
//! every error names the file, the line, the object and the field.

mod load;
mod strict;
mod validate;

pub use load::{
    FileText, LoadLimits, Location, Manifest, ManifestError, ManifestSet, Resource, SkippedFile, document_start_lines,
    load_dir, load_dir_with, parse_str, read_bounded, yaml_files,
};
pub use validate::SchemaValidator;
