//! End-to-end tests against the real `berth` binary: each test starts its own node
//! (free loopback port, private data dir) with `berth-testkit` and drives it with real
//! clients (skopeo, podman, oras-py, docker) or by hand over HTTP.
//!
//! Client tools are installed by `scripts/install-test-deps.sh`; a missing tool fails
//! the test loudly. Tests run in parallel (nextest: one process per test), so every
//! test uses its own node, temp dirs and repository names.

mod clients;
mod persistence;
mod spec;

use berth_testkit::BerthNode;

/// Path of the binary under test.
pub fn berth_binary() -> &'static str {
    env!("CARGO_BIN_EXE_berth")
}

/// A fresh node with default settings (fs backend).
pub async fn start_node() -> BerthNode {
    match BerthNode::start(berth_binary()).await {
        Ok(node) => node,
        Err(e) => panic!("starting berth: {e:#}"),
    }
}
