//! HTTP behaviour of the `/v2/` API against the OCI Distribution Spec v1.1
//! (plus the Docker extensions clients rely on: `_catalog`,
//! `Docker-Content-Digest`, `Docker-Upload-UUID`, ...).
//!
//! Every test starts its own node through `berth-testkit` and talks plain
//! HTTP to it. Where the spec allows several answers the tests accept all of
//! them and say so; where it is precise they are strict. Bad inputs are
//! checked for status, error code, and for having changed nothing.

mod support;

mod base;
mod blobs;
mod catalog;
mod deletes;
mod hostile;
mod lifecycle;
mod manifests;
mod mount;
mod names;
mod referrers;
mod tags;
mod uploads;
