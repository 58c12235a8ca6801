//! orgkeeper: GitOps tenancy for an Oso-compatible authorization service.
//!
//! `domain` is the core (resources, rules, plan) and knows neither Kubernetes nor SQL; every other module is
//! an adapter around it, one per way the outside world reaches orgkeeper.

pub mod auth;
pub mod cli;
pub mod controller;
pub mod crd;
pub mod domain;
pub mod facts;
pub mod identity;
pub mod manifests;
pub mod sidecar;
pub mod store;
pub mod telemetry;
