//! Facts: the authorization data the fact store keeps per environment, in the shape the Oso clients use.
//!
//! A fact is a predicate applied to typed values, `has_role(User:alice, String:admin, Organization:acme)`.
//! Inserted facts are concrete; deletes and reads take patterns in which a value's type and/or id may be a
//! wildcard. Facts form a set: inserting a fact twice keeps one copy, deleting a missing fact is no error,
//! which is what makes a replayed batch land in the same state as the first delivery.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

/// The longest predicate name accepted, in bytes.
pub const MAX_PREDICATE_LEN: usize = 256;
/// The longest value type accepted, in bytes.
pub const MAX_TYPE_LEN: usize = 256;
/// The longest value id accepted, in bytes (ids are indexed; this keeps index entries well under the
/// backends' limits).
pub const MAX_ID_LEN: usize = 1024;
/// The most arguments one fact may have.
pub const MAX_ARGS: usize = 64;

/// A concrete value: `User:alice`, `String:admin`, `Integer:42`, `Boolean:true`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Value {
    pub type_: String,
    pub id: String,
}

/// A value in a pattern: `None` matches anything in that place.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ValuePattern {
    pub type_: Option<String>,
    pub id: Option<String>,
}

/// A concrete fact.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fact {
    pub predicate: String,
    pub args: Vec<Value>,
}

/// Which facts a filter considers, by number of arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arity {
    /// Exactly this many (a delete pattern has as many arguments as the facts it removes).
    Exact(usize),
    /// At least this many (a read names only the positions it constrains; the rest are wildcards).
    AtLeast(usize),
}

/// A predicate, an arity and a pattern per argument position: what deletes remove and reads return.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FactFilter {
    pub predicate: String,
    /// One pattern per position, `args.len()` positions; positions beyond are unconstrained (for `AtLeast`).
    pub args: Vec<ValuePattern>,
    pub arity: Arity,
}

/// One step of a batch: a run of inserts or a run of deletes, applied in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FactChange {
    Insert(Vec<Fact>),
    Delete(Vec<FactFilter>),
}

impl FactChange {
    /// Facts named by this step (for metrics and write budgets).
    pub fn len(&self) -> usize {
        match self {
            FactChange::Insert(facts) => facts.len(),
            FactChange::Delete(filters) => filters.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a fact, pattern or value is refused. Messages name the field in the client's terms.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FactError {
    #[error("the predicate must not be empty")]
    EmptyPredicate,
    #[error("the predicate is {0} bytes long; the limit is {MAX_PREDICATE_LEN}")]
    PredicateTooLong(usize),
    #[error("a fact has {0} arguments; the limit is {MAX_ARGS}")]
    TooManyArgs(usize),
    #[error("the type must not be empty")]
    EmptyType,
    #[error("the type is {0} bytes long; the limit is {MAX_TYPE_LEN}")]
    TypeTooLong(usize),
    #[error("the id is {0} bytes long; the limit is {MAX_ID_LEN}")]
    IdTooLong(usize),
    #[error("the {0} contains a NUL character, which the store cannot keep")]
    Nul(&'static str),
    #[error("inserted facts must be concrete: give both type and id (wildcards are only allowed in deletes and reads)")]
    NotConcrete,
}

pub fn check_predicate(predicate: &str) -> Result<(), FactError> {
    if predicate.is_empty() {
        return Err(FactError::EmptyPredicate);
    }
    if predicate.len() > MAX_PREDICATE_LEN {
        return Err(FactError::PredicateTooLong(predicate.len()));
    }
    no_nul(predicate, "predicate")
}

pub fn check_arg_count(count: usize) -> Result<(), FactError> {
    if count > MAX_ARGS {
        return Err(FactError::TooManyArgs(count));
    }
    Ok(())
}

pub fn check_type(type_: &str) -> Result<(), FactError> {
    if type_.is_empty() {
        return Err(FactError::EmptyType);
    }
    if type_.len() > MAX_TYPE_LEN {
        return Err(FactError::TypeTooLong(type_.len()));
    }
    no_nul(type_, "type")
}

pub fn check_id(id: &str) -> Result<(), FactError> {
    if id.len() > MAX_ID_LEN {
        return Err(FactError::IdTooLong(id.len()));
    }
    no_nul(id, "id")
}

/// PostgreSQL text cannot hold NUL; refusing it everywhere keeps both backends alike.
fn no_nul(text: &str, what: &'static str) -> Result<(), FactError> {
    if text.contains('\0') {
        return Err(FactError::Nul(what));
    }
    Ok(())
}

impl ValuePattern {
    /// A pattern whose type and id are both given; checks them.
    pub fn new(type_: Option<String>, id: Option<String>) -> Result<Self, FactError> {
        if let Some(t) = &type_ {
            check_type(t)?;
        }
        if let Some(i) = &id {
            check_id(i)?;
        }
        Ok(ValuePattern { type_, id })
    }

    pub fn any() -> Self {
        ValuePattern::default()
    }

    pub fn is_wildcard(&self) -> bool {
        self.type_.is_none() || self.id.is_none()
    }

    /// The concrete value this pattern names, if it has no wildcard.
    pub fn concrete(&self) -> Option<Value> {
        Some(Value {
            type_: self.type_.clone()?,
            id: self.id.clone()?,
        })
    }

    pub fn matches(&self, value: &Value) -> bool {
        self.type_.as_ref().is_none_or(|t| *t == value.type_) && self.id.as_ref().is_none_or(|i| *i == value.id)
    }
}

impl From<&Value> for ValuePattern {
    fn from(value: &Value) -> Self {
        ValuePattern {
            type_: Some(value.type_.clone()),
            id: Some(value.id.clone()),
        }
    }
}

impl Value {
    /// Turns a pattern from the wire into a concrete value, refusing wildcards.
    pub fn from_pattern(pattern: ValuePattern) -> Result<Self, FactError> {
        match (pattern.type_, pattern.id) {
            (Some(type_), Some(id)) => {
                check_type(&type_)?;
                check_id(&id)?;
                Ok(Value { type_, id })
            }
            _ => Err(FactError::NotConcrete),
        }
    }
}

impl Fact {
    /// A stable identity for the fact: the same fact always gets the same key, different facts (in practice)
    /// never share one. 128 bits of SHA-256 over an unambiguous, length-prefixed encoding.
    pub fn key(&self) -> String {
        let mut hasher = Sha256::new();
        let mut part = |bytes: &[u8]| {
            hasher.update((bytes.len() as u64).to_be_bytes());
            hasher.update(bytes);
        };
        part(self.predicate.as_bytes());
        for arg in &self.args {
            part(arg.type_.as_bytes());
            part(arg.id.as_bytes());
        }
        hex::encode(&hasher.finalize()[..16])
    }

    pub fn matches(&self, filter: &FactFilter) -> bool {
        let arity_ok = match filter.arity {
            Arity::Exact(n) => self.args.len() == n,
            Arity::AtLeast(n) => self.args.len() >= n,
        };
        arity_ok && self.predicate == filter.predicate && filter.args.iter().zip(&self.args).all(|(p, v)| p.matches(v))
    }
}

impl FactFilter {
    /// A delete pattern: exactly these arguments, some of which may be wildcards.
    pub fn pattern(predicate: String, args: Vec<ValuePattern>) -> Self {
        FactFilter {
            arity: Arity::Exact(args.len()),
            predicate,
            args,
        }
    }

    /// A read: constraints at some positions, any arity that has those positions.
    pub fn query(predicate: String, constraints: BTreeMap<usize, ValuePattern>) -> Self {
        let len = constraints.keys().next_back().map_or(0, |last| last + 1);
        let mut args = vec![ValuePattern::any(); len];
        for (position, pattern) in constraints {
            args[position] = pattern;
        }
        FactFilter {
            predicate,
            args,
            arity: Arity::AtLeast(len),
        }
    }

    /// The one fact this filter matches, if it names a single fact (no wildcard, exact arity).
    pub fn concrete(&self) -> Option<Fact> {
        if !matches!(self.arity, Arity::Exact(_)) {
            return None;
        }
        let args = self
            .args
            .iter()
            .map(ValuePattern::concrete)
            .collect::<Option<Vec<_>>>()?;
        Some(Fact {
            predicate: self.predicate.clone(),
            args,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(t: &str, i: &str) -> Value {
        Value {
            type_: t.into(),
            id: i.into(),
        }
    }

    fn p(t: Option<&str>, i: Option<&str>) -> ValuePattern {
        ValuePattern {
            type_: t.map(Into::into),
            id: i.map(Into::into),
        }
    }

    fn role(user: &str, role: &str, org: &str) -> Fact {
        Fact {
            predicate: "has_role".into(),
            args: vec![v("User", user), v("String", role), v("Organization", org)],
        }
    }

    #[test]
    fn keys_identify_facts_and_nothing_else() {
        assert_eq!(
            role("alice", "admin", "acme").key(),
            role("alice", "admin", "acme").key()
        );
        assert_eq!(role("alice", "admin", "acme").key().len(), 32);
        assert_ne!(
            role("alice", "admin", "acme").key(),
            role("alice", "admin", "acme2").key()
        );
        // Length prefixes keep shifted boundaries apart: ("ab","c") is not ("a","bc").
        let a = Fact {
            predicate: "p".into(),
            args: vec![v("ab", "c")],
        };
        let b = Fact {
            predicate: "p".into(),
            args: vec![v("a", "bc")],
        };
        assert_ne!(a.key(), b.key());
        let short = Fact {
            predicate: "p".into(),
            args: vec![v("A", "x")],
        };
        let long = Fact {
            predicate: "p".into(),
            args: vec![v("A", "x"), v("", "")],
        };
        assert_ne!(short.key(), long.key());
    }

    #[test]
    fn delete_patterns_match_their_arity_and_wildcards() {
        let pattern = FactFilter::pattern(
            "has_role".into(),
            vec![
                p(Some("User"), Some("alice")),
                p(None, None),
                p(Some("Organization"), None),
            ],
        );
        assert!(role("alice", "admin", "acme").matches(&pattern));
        assert!(!role("bob", "admin", "acme").matches(&pattern));
        let two = Fact {
            predicate: "has_role".into(),
            args: vec![v("User", "alice"), v("String", "admin")],
        };
        assert!(!two.matches(&pattern));
        assert!(pattern.concrete().is_none());
        let id_only = FactFilter::pattern(
            "has_role".into(),
            vec![p(None, Some("alice")), p(None, None), p(None, None)],
        );
        assert!(role("alice", "x", "y").matches(&id_only));
    }

    #[test]
    fn reads_match_any_arity_that_has_the_constrained_positions() {
        let query = FactFilter::query(
            "has_role".into(),
            BTreeMap::from([(2, p(Some("Organization"), Some("acme")))]),
        );
        assert_eq!(query.arity, Arity::AtLeast(3));
        assert!(role("alice", "admin", "acme").matches(&query));
        let two = Fact {
            predicate: "has_role".into(),
            args: vec![v("User", "alice"), v("Organization", "acme")],
        };
        assert!(!two.matches(&query));
        let all = FactFilter::query("has_role".into(), BTreeMap::new());
        assert!(two.matches(&all) && role("a", "b", "c").matches(&all));
        assert!(all.concrete().is_none());
    }

    #[test]
    fn a_pattern_without_wildcards_names_one_fact() {
        let fact = role("alice", "admin", "acme");
        let pattern = FactFilter::pattern(fact.predicate.clone(), fact.args.iter().map(Into::into).collect());
        assert_eq!(pattern.concrete(), Some(fact));
    }

    #[test]
    fn inserts_refuse_wildcards_and_oversized_parts() {
        assert_eq!(Value::from_pattern(p(Some("User"), None)), Err(FactError::NotConcrete));
        assert_eq!(Value::from_pattern(p(Some(""), Some("x"))), Err(FactError::EmptyType));
        assert_eq!(
            Value::from_pattern(p(Some("User"), Some(&"x".repeat(MAX_ID_LEN + 1)))),
            Err(FactError::IdTooLong(MAX_ID_LEN + 1))
        );
        assert!(Value::from_pattern(p(Some("User"), Some(""))).is_ok());
        assert_eq!(check_predicate(""), Err(FactError::EmptyPredicate));
        assert_eq!(check_arg_count(MAX_ARGS + 1), Err(FactError::TooManyArgs(MAX_ARGS + 1)));
        assert!(ValuePattern::new(Some("T".repeat(MAX_TYPE_LEN + 1)), None).is_err());
        assert_eq!(check_id("a\0b"), Err(FactError::Nul("id")));
        assert_eq!(
            check_predicate("p\0").unwrap_err().to_string(),
            "the predicate contains a NUL character, which the store cannot keep"
        );
    }
}
