//! Isthmus: the mTLS ingress gateway for cross-cluster Kubernetes traffic.
//!
//! Request path: [`listener`] (TCP + mTLS) → [`proxy`] (authority, route,
//! authorization, backend) → upstream. Discovery path: [`discovery`] sources →
//! [`discovery::Index`] → [`routes::RouteTable`] published through an `ArcSwap`.
//! [`gateway::Gateway::start`] wires it all for `main` and the tests.

pub mod admin;
pub mod config;
pub mod demo;
pub mod diagnose;
pub mod discovery;
pub mod egress;
pub mod gateway;
pub mod hash;
pub mod listener;
pub mod memory;
pub mod metrics;
pub mod mirror;
pub mod poll;
pub mod proxy;
pub mod routes;
pub mod tls;
