//! How plans, problems and results are shown: text for people, JSON for pipelines.

use std::fmt::Display;

use clap::ValueEnum;
use serde_json::json;

use super::exit;
use super::prepared::{Prepared, Review};
use crate::domain::{Problem, Refusal, live_keys_revoked};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

/// Prints each error on stderr and returns the error exit code.
pub fn print_errors<E: Display>(errors: &[E]) -> u8 {
    for error in errors {
        eprintln!("error: {error}");
    }
    eprintln!("{} error(s); nothing was changed", errors.len());
    exit::ERROR
}

fn located(prepared: &Prepared, problem: &Problem) -> String {
    match prepared.manifests.location_of(&problem.object) {
        Some(location) => format!("{location}: {problem}"),
        None => problem.to_string(),
    }
}

/// Prints a plan (or, with `applied`, what was done). Returns the exit code for `plan`: 0 with no changes,
/// 2 with changes, 3 with a change the `--as` account may not make, 1 when a problem blocks the plan.
pub fn print_plan(prepared: &Prepared, format: OutputFormat, applied: bool) -> u8 {
    let plan = &prepared.plan;
    let (added, changed, removed) = plan.summary();
    let refusals = prepared.review.as_ref().map_or(&[][..], |r| &r.refusals[..]);
    let code = if !plan.problems.is_empty() {
        exit::ERROR
    } else if !refusals.is_empty() {
        exit::REFUSED
    } else if plan.is_empty() {
        exit::OK
    } else {
        exit::CHANGES
    };
    let revoked = live_keys_revoked(&plan.changes, prepared.stored.values());
    if format == OutputFormat::Json {
        let revocations: Vec<_> = revoked
            .iter()
            .map(|(organization, key)| {
                json!({
                    "organization": organization,
                    "apiKey": key.resource_name,
                    "environment": key.environment,
                    "keyId": key.key_id,
                })
            })
            .collect();
        let problems: Vec<_> = plan.problems.iter().map(|p| problem_json(prepared, p)).collect();
        let warnings: Vec<_> = prepared
            .inspection
            .missing
            .iter()
            .map(|p| problem_json(prepared, p))
            .chain(prepared.inspection.notices.iter().map(|n| json!({"message": n})))
            .chain(
                prepared
                    .manifests
                    .skipped_files
                    .iter()
                    .map(|s| json!({"message": s.to_string(), "location": s.path})),
            )
            .collect();
        let mut doc = json!({
            "applied": applied,
            "changes": plan.changes,
            "problems": problems,
            "warnings": warnings,
            "revocations": revocations,
            "summary": {"add": added, "change": changed, "remove": removed, "objects": prepared.objects},
            "store": prepared.store.as_ref().map(|store| json!({"statements": store.statements(), "writes": store.writes()})),
        });
        if let (Some(review), Some(object)) = (&prepared.review, doc.as_object_mut()) {
            let refusals: Vec<_> = review.refusals.iter().map(|r| refusal_json(prepared, r)).collect();
            object.insert("as".into(), json!(review.account));
            object.insert("refusals".into(), json!(refusals));
        }
        println!("{}", serde_json::to_string_pretty(&doc).expect("JSON serialises"));
        return code;
    }
    for skipped in &prepared.manifests.skipped_files {
        eprintln!("warning: {skipped}");
    }
    for notice in &prepared.inspection.notices {
        eprintln!("warning: {notice}");
    }
    for warning in &prepared.inspection.missing {
        eprintln!("warning: {}", located(prepared, warning));
    }
    if !plan.problems.is_empty() {
        for problem in &plan.problems {
            eprintln!("error: {}", located(prepared, problem));
        }
        eprintln!("{} problem(s); nothing was changed", plan.problems.len());
        return code;
    }
    if plan.is_empty() {
        println!(
            "No changes: the store matches {} object(s) in {} file(s).",
            prepared.objects, prepared.manifests.files
        );
        return code;
    }
    if !revoked.is_empty() {
        // First and loud: a revoked key stops working for every client that holds it, at once.
        let verb = if applied { "revoked" } else { "revokes" };
        println!(
            "!! This plan {verb} {} live API key(s); every client using them is cut off:",
            revoked.len()
        );
        for (organization, key) in &revoked {
            println!(
                "!!   {}/{} in {organization}/{} (key {})",
                organization.namespace, key.resource_name, key.environment, key.key_id
            );
        }
    }
    for change in &plan.changes {
        println!("{change}");
    }
    let verb = if applied { "Applied" } else { "Plan" };
    println!("{verb}: {added} to add, {changed} to change, {removed} to remove.");
    if let Some(review) = &prepared.review {
        print_review(prepared, review);
    }
    code
}

/// The `--as` verdict, after the plan so that a CI log reads: what changes, then who may not change it.
fn print_review(prepared: &Prepared, review: &Review) {
    if review.refusals.is_empty() {
        println!("{} may make every change.", review.account);
        return;
    }
    for refusal in &review.refusals {
        let change = refusal.change.to_string();
        let change = change.lines().next().unwrap_or_default();
        match refusal_location(prepared, refusal) {
            Some(location) => eprintln!("refused: {location}: {change}\n    {refusal}"),
            None => eprintln!("refused: {change}\n    {refusal}"),
        }
    }
    eprintln!(
        "{} change(s) {} may not make; an Admin of the organization must make them",
        review.refusals.len(),
        review.account
    );
}

fn refusal_location(prepared: &Prepared, refusal: &Refusal) -> Option<String> {
    let object = refusal.object.as_ref()?;
    prepared.manifests.location_of(object).map(ToString::to_string)
}

fn refusal_json(prepared: &Prepared, refusal: &Refusal) -> serde_json::Value {
    json!({
        "change": refusal.change,
        "object": refusal.object,
        "rule": refusal.rule,
        "message": refusal.message,
        "location": refusal_location(prepared, refusal),
    })
}

fn problem_json(prepared: &Prepared, problem: &Problem) -> serde_json::Value {
    let location = prepared.manifests.location_of(&problem.object).map(ToString::to_string);
    json!({
        "object": problem.object,
        "reason": problem.reason,
        "message": problem.message,
        "location": location,
    })
}
