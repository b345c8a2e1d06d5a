//! The gRPC contracts of berth, compiled from `proto/` once.
//!
//! `berth-proto` holds generated code and nothing hand-written beyond the
//! `include!`s: the cluster-internal service (`berth.cluster.v1`). Callers own the
//! meaning of the messages.

pub mod cluster {
    pub mod v1 {
        tonic::include_proto!("berth.cluster.v1");
    }
}
