//! Validation of an object against its CRD schema without an API server: the structural part (types, enums,
//! patterns, formats, ranges, required fields, unknown fields) with `jsonschema`, and the CEL rules with
//! `kube-cel`, the same rules the API server evaluates.

use std::collections::HashMap;

use serde_json::Value;

use crate::crd;

/// One violation: the field (dotted path, as kubectl prints it) and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub field: String,
    pub message: String,
}

struct KindSchema {
    structural: jsonschema::Validator,
    openapi: Value,
    cel: kube_cel::CompiledSchema,
}

/// Compiled schemas for the four kinds; build once, validate many.
pub struct SchemaValidator {
    kinds: HashMap<String, KindSchema>,
    cel: kube_cel::Validator,
}

impl Default for SchemaValidator {
    fn default() -> Self {
        Self::new()
    }
}

impl SchemaValidator {
    pub fn new() -> Self {
        let mut kinds = HashMap::new();
        for kind in ["Organization", "Environment", "User", "ApiKey"] {
            let openapi = crd::schema_for_kind(kind).expect("every kind has a schema");
            let structural = jsonschema::options()
                .should_validate_formats(true)
                .build(&to_json_schema(&openapi))
                .expect("the generated schema is valid JSON Schema");
            let cel = kube_cel::compile_schema(&openapi);
            kinds.insert(
                kind.to_owned(),
                KindSchema {
                    structural,
                    openapi,
                    cel,
                },
            );
        }
        SchemaValidator {
            kinds,
            cel: kube_cel::Validator::new(),
        }
    }

    /// All violations of `object` (a whole manifest: apiVersion, kind, metadata, spec) against its kind.
    pub fn validate(&self, kind: &str, object: &Value) -> Vec<Violation> {
        let Some(schema) = self.kinds.get(kind) else {
            return vec![Violation {
                field: "kind".into(),
                message: format!("unknown kind {kind:?}"),
            }];
        };
        let mut violations: Vec<Violation> = schema
            .structural
            .iter_errors(object)
            .map(|error| Violation {
                field: dotted(&error.instance_path().to_string()),
                message: error.to_string(),
            })
            .collect();
        // A bad email breaks both its format and its pattern: one message per field is enough.
        violations.dedup_by(|a, b| a.field == b.field);
        unknown_fields(&schema.openapi, object, "", &mut violations);
        // CEL rules assume a structurally valid object; evaluating them on a broken one only adds noise.
        if violations.is_empty()
            && let Err(errors) = self.cel.validate_compiled(&schema.cel, object, None)
        {
            violations.extend(errors.into_vec().into_iter().map(|e| Violation {
                field: if e.field_path.is_empty() {
                    "<root>".to_owned()
                } else {
                    e.field_path
                },
                message: e.message,
            }));
        }
        violations
    }
}

/// OpenAPI's `nullable: true` becomes JSON Schema's `type: [T, "null"]`; the `x-kubernetes-*` extensions are
/// left for `kube-cel` (JSON Schema ignores unknown keywords).
fn to_json_schema(schema: &Value) -> Value {
    match schema {
        Value::Object(map) => {
            let mut out: serde_json::Map<String, Value> = map
                .iter()
                .filter(|(k, _)| *k != "nullable")
                .map(|(k, v)| (k.clone(), to_json_schema(v)))
                .collect();
            if map.get("nullable") == Some(&Value::Bool(true))
                && let Some(Value::String(t)) = map.get("type")
            {
                out.insert("type".into(), serde_json::json!([t, "null"]));
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(to_json_schema).collect()),
        other => other.clone(),
    }
}

/// Fields the schema does not know. The API server would silently drop them, which turns a typo such as
/// `displayname` into a setting that never takes effect; like `kubectl --validate=strict`, we refuse them.
fn unknown_fields(schema: &Value, value: &Value, path: &str, out: &mut Vec<Violation>) {
    let (Some(properties), Value::Object(fields)) = (schema.get("properties").and_then(Value::as_object), value) else {
        if let (Some(items), Value::Array(elements)) = (schema.get("items"), value) {
            for (i, element) in elements.iter().enumerate() {
                unknown_fields(items, element, &format!("{path}[{i}]"), out);
            }
        }
        return;
    };
    for (name, child) in fields {
        let child_path = if path.is_empty() {
            name.clone()
        } else {
            format!("{path}.{name}")
        };
        match properties.get(name) {
            Some(child_schema) => unknown_fields(child_schema, child, &child_path, out),
            // apiVersion, kind and metadata are the API machinery's, not the CRD schema's.
            None if path.is_empty() && matches!(name.as_str(), "apiVersion" | "kind" | "metadata") => {}
            None => out.push(Violation {
                field: child_path,
                message: format!("unknown field {name:?}"),
            }),
        }
    }
}

/// `/spec/limits/maxBatchFacts` -> `spec.limits.maxBatchFacts`; `/spec/items/0` -> `spec.items[0]`.
fn dotted(pointer: &str) -> String {
    let mut out = String::new();
    for segment in pointer.split('/').filter(|s| !s.is_empty()) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        if segment.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{segment}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&segment);
        }
    }
    if out.is_empty() { "<root>".to_owned() } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn user(spec: Value) -> Value {
        json!({"apiVersion": "orgkeeper.dev/v1alpha1", "kind": "User", "metadata": {"name": "alice"}, "spec": spec})
    }

    fn fields(violations: Vec<Violation>) -> Vec<String> {
        violations.into_iter().map(|v| v.field).collect()
    }

    #[test]
    fn a_valid_user_passes() {
        let v = SchemaValidator::new();
        assert_eq!(
            v.validate(
                "User",
                &user(json!({"organizationRef": {"name": "acme"}, "github": "alice"}))
            ),
            vec![]
        );
    }

    #[test]
    fn both_or_neither_account_is_refused_by_the_cel_rule() {
        let v = SchemaValidator::new();
        let both = v.validate(
            "User",
            &user(json!({"organizationRef": {"name": "acme"}, "github": "a", "google": "a@b.co"})),
        );
        assert_eq!(both.len(), 1, "{both:?}");
        assert!(both[0].message.contains("exactly one of github or google"), "{both:?}");
        let neither = v.validate("User", &user(json!({"organizationRef": {"name": "acme"}})));
        assert!(neither[0].message.contains("exactly one"), "{neither:?}");
    }

    #[test]
    fn structural_violations_name_the_field() {
        let v = SchemaValidator::new();
        assert_eq!(
            fields(v.validate(
                "User",
                &user(json!({"organizationRef": {"name": "acme"}, "google": "not-an-email"}))
            )),
            vec!["spec.google"]
        );
        assert_eq!(
            fields(v.validate(
                "User",
                &user(json!({"organizationRef": {"name": "acme"}, "github": "a", "role": "Owner"}))
            )),
            vec!["spec.role"]
        );
        assert_eq!(fields(v.validate("User", &user(json!({"github": "a"})))), vec!["spec"]);
        let env = json!({"apiVersion": "orgkeeper.dev/v1alpha1", "kind": "Environment", "metadata": {"name": "staging"},
            "spec": {"organizationRef": {"name": "acme"}, "limits": {"maxBatchFacts": -1}}});
        assert_eq!(
            fields(v.validate("Environment", &env)),
            vec!["spec.limits.maxBatchFacts"]
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let v = SchemaValidator::new();
        let typo = user(json!({"organizationRef": {"name": "acme"}, "github": "a", "rol": "Admin"}));
        let violations = v.validate("User", &typo);
        assert_eq!(fields(violations.clone()), vec!["spec.rol"]);
        assert!(violations[0].message.contains("unknown field"));
    }

    #[test]
    fn root_rules_check_the_name() {
        let v = SchemaValidator::new();
        let env = json!({"apiVersion": "orgkeeper.dev/v1alpha1", "kind": "Environment", "metadata": {"name": "Bad_Name"},
            "spec": {"organizationRef": {"name": "acme"}}});
        let violations = v.validate("Environment", &env);
        assert!(
            violations.iter().any(|v| v.message.contains("DNS label")),
            "{violations:?}"
        );
        let prod = json!({"apiVersion": "orgkeeper.dev/v1alpha1", "kind": "Environment", "metadata": {"name": "production"},
            "spec": {"organizationRef": {"name": "acme"}, "production": false}});
        assert!(
            v.validate("Environment", &prod)
                .iter()
                .any(|v| v.message.contains("always a production environment"))
        );
    }

    #[test]
    fn nullable_fields_accept_null() {
        let v = SchemaValidator::new();
        let env = json!({"apiVersion": "orgkeeper.dev/v1alpha1", "kind": "Environment", "metadata": {"name": "staging"},
            "spec": {"organizationRef": {"name": "acme"}, "displayName": null}});
        assert_eq!(v.validate("Environment", &env), vec![]);
    }
}
