//! The fact store: orgkeeper's built-in upstream, serving the fact endpoints of Oso Cloud that the official
//! clients use (`POST /api/batch`, `GET /api/facts`, the v1 `tell`/`delete`/`bulk*` endpoints), with facts
//! kept per environment in the backing store. Policy evaluation is out of scope: those endpoints answer 404 saying so.
//!
//! `wire` and `query` turn requests into domain facts (`crate::domain::facts`), `store::facts` keeps them,
//! `server` routes and authenticates, `json` writes bodies the way the clients expect them.

pub mod health;
pub mod json;
pub mod metrics;
pub mod query;
pub mod server;
pub mod wire;

pub use health::{DEFAULT_STORE_TIMEOUT, StoreHealth, watch_store};
pub use metrics::FactsMetrics;
pub use server::{DEFAULT_BODY_TIMEOUT, DEFAULT_MAX_BODY_BYTES, FactsApp, FactsConfig, router};
