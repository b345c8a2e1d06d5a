//! The replicated metadata of a berth site.
//!
//! `berth-meta` owns everything small and mutable that a registry must agree on:
//! repositories, tags, manifests (their bytes included: they are small), blob records,
//! blob links, referrers, upload sessions and the change feed. All of it changes only
//! by applying a committed [`Command`] from the Raft log, so every node answers
//! reads from its own copy.
//!
//! The crate provides openraft's storage (the Raft log and the state machine, both in
//! one RocksDB instance under separate column families), the command vocabulary and
//! the read-side queries ([`MetaReader`]). It is called by `berth-cluster` (which runs
//! the Raft instance) and `berth-registry` (which proposes commands and reads).
//! It never talks HTTP or S3, and it never decides what is a valid request: commands
//! arrive validated, except for the invariants that must hold atomically at apply
//! time (a manifest's blobs are linked, an upload still exists), which it re-checks.

mod command;
mod error;
mod keys;
mod log_store;
mod reader;
mod records;
mod snapshot;
mod state_machine;
mod store;

pub use command::Applied;
pub use command::Command;
pub use command::CommandResponse;
pub use command::Rejection;
pub use error::MetaError;
pub use log_store::LogStore;
pub use reader::MetaReader;
pub use reader::Page;
pub use reader::ReferrersPage;
pub use records::BlobRecord;
pub use records::Change;
pub use records::ChangeKind;
pub use records::ManifestRecord;
pub use records::NodeInfo;
pub use records::TagRecord;
pub use records::UploadRecord;
pub use snapshot::SnapshotFile;
pub use state_machine::ApplyGate;
pub use state_machine::StateMachineStore;
pub use store::MetaStore;

openraft::declare_raft_types!(
    /// The openraft type configuration of berth's metadata group.
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
        NodeId = u64,
        Node = NodeInfo,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = SnapshotFile,
        AsyncRuntime = openraft::TokioRuntime,
);

/// Raft node id.
pub type NodeId = u64;

#[cfg(test)]
mod tests;
