//! berth-testkit: what end-to-end tests and benchmarks use to drive the real `berth`
//! binary with real clients.
//!
//! - [`node`]: [`BerthNode`] starts `berth serve` on a free loopback port with a
//!   generated config and a private data dir, waits for `/readyz`, and can SIGTERM,
//!   SIGKILL and restart it on the same port and data.
//! - [`image`]: deterministic test data ([`random_bytes`], [`sha256_digest`]) and
//!   [`ImageBuilder`], which writes a real OCI image layout whose layers are real tar
//!   archives, so skopeo, podman and docker can copy and unpack it.
//! - [`registry`]: [`Registry`], a small hand-written OCI distribution client (reqwest)
//!   for pushes and checks the real clients cannot express.
//! - [`tools`]: bounded command execution and the real client tools (skopeo, podman,
//!   oras-py) each with private configuration so nothing outside loopback is consulted.
//! - [`docker`]: [`Dockerd`], a private Docker daemon (or the one `DOCKER_HOST` names).
//! - [`distribution`]: [`Distribution`], the reference registry (CNCF Distribution
//!   2.8.2) on a free loopback port with a generated config, on disk or on S3.
//! - [`proxy`]: [`FaultProxy`] and [`Partitions`], TCP relays in front of cluster
//!   nodes that cut and heal the links between processes.
//!
//! Invariants: every process started here is stopped by its PID when its owner drops,
//! even when a test fails; every wait is bounded; only 127.0.0.1 is ever contacted.
//! Missing tools are an error, never a skip: `scripts/install-test-deps.sh` installs
//! them.

pub mod cluster;
pub mod distribution;
pub mod docker;
pub mod image;
pub mod node;
pub mod proxy;
pub mod registry;
pub mod seaweed;
pub mod tools;

pub use cluster::Faults;
pub use cluster::TestCluster;
pub use distribution::Distribution;
pub use docker::Dockerd;
pub use image::BuiltLayer;
pub use image::ImageBuilder;
pub use image::OciImage;
pub use image::random_bytes;
pub use image::sha256_digest;
pub use node::BerthNode;
pub use node::NodeOptions;
pub use proxy::FaultProxy;
pub use proxy::Partitions;
pub use registry::Registry;
pub use seaweed::S3Access;
pub use seaweed::SeaweedFs;
pub use tools::Oras;
pub use tools::Podman;
pub use tools::Skopeo;
