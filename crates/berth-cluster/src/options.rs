//! Raft timing and log-compaction settings, and the limits they must keep.

use std::time::Duration;

/// Raft timing and log-compaction settings.
#[derive(Debug, Clone)]
pub struct RaftOptions {
    pub heartbeat_interval: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// Build a snapshot (and purge the log) after this many applied entries.
    pub snapshot_after_logs: u64,
    /// Entries kept in the log behind a snapshot, so lagging followers can catch up
    /// without a snapshot transfer.
    pub logs_to_keep: u64,
    /// How long a proposal or read barrier may take before the caller gets
    /// "unavailable".
    pub request_timeout: Duration,
    /// Local address of connections to other members; the OS picks when `None`.
    pub source_address: Option<std::net::IpAddr>,
    /// How long a confirmed leadership round lets the leader answer reads without
    /// another one (see `lease.rs`); zero: a round for every burst of reads. At most
    /// `election_timeout_min`, well below `election_timeout_max` (what followers
    /// promise).
    pub read_lease: Duration,
    /// How long a follower may answer linearizable reads alone once the leader
    /// granted it a lease (see `follower_lease.rs`); the leader then applies, and so
    /// acknowledges, a write only once every lease holder logged it. Zero (or a zero
    /// `read_lease`): followers ask the leader for a read index per burst of reads.
    /// `read_lease + follower_lease` may be at most `election_timeout_min`.
    pub follower_lease: Duration,
    /// How long a node being added may take to catch up with the leader's log
    /// before it is promoted to voter; past it the add fails and the node stays a
    /// learner (see `node/membership.rs`).
    pub catch_up_timeout: Duration,
}

impl Default for RaftOptions {
    fn default() -> Self {
        RaftOptions {
            heartbeat_interval: Duration::from_millis(100),
            election_timeout_min: Duration::from_millis(500),
            election_timeout_max: Duration::from_millis(1000),
            snapshot_after_logs: 10_000,
            logs_to_keep: 1_000,
            request_timeout: Duration::from_secs(10),
            source_address: None,
            read_lease: Duration::from_millis(250),
            follower_lease: Duration::from_millis(250),
            catch_up_timeout: Duration::from_secs(300),
        }
    }
}

/// A timing setting that breaks the guarantees the others rest on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimingError {
    #[error("the heartbeat interval must be above zero and under half the election timeout")]
    Heartbeat,
    #[error("the election timeout range is empty (minimum {min:?} is not below maximum {max:?})")]
    ElectionRange { min: Duration, max: Duration },
    #[error(
        "the read lease ({lease:?}) must not exceed the election timeout ({election:?}): followers promise \
         twice that, the rest is the margin for clock drift and pauses"
    )]
    ReadLease { lease: Duration, election: Duration },
    #[error(
        "the read lease plus the follower lease ({total:?}) must not exceed the election timeout \
         ({election:?}): a follower's lease may outlive the leader's by its length"
    )]
    FollowerLease { total: Duration, election: Duration },
    #[error("snapshot_after_logs must be greater than zero")]
    SnapshotAfterLogs,
}

impl RaftOptions {
    /// Check the limits the read path's safety rests on (`lease.rs`,
    /// `follower_lease.rs`): the one place they are stated; the configuration and
    /// [`crate::ClusterNode::open`] both check through it.
    pub fn validate(&self) -> Result<(), TimingError> {
        if self.heartbeat_interval.is_zero() || self.election_timeout_min <= self.heartbeat_interval * 2 {
            return Err(TimingError::Heartbeat);
        }
        if self.election_timeout_min >= self.election_timeout_max {
            return Err(TimingError::ElectionRange {
                min: self.election_timeout_min,
                max: self.election_timeout_max,
            });
        }
        if self.read_lease > self.election_timeout_min {
            return Err(TimingError::ReadLease {
                lease: self.read_lease,
                election: self.election_timeout_min,
            });
        }
        let total = self.read_lease.saturating_add(self.follower_lease);
        if total > self.election_timeout_min {
            return Err(TimingError::FollowerLease {
                total,
                election: self.election_timeout_min,
            });
        }
        if self.snapshot_after_logs == 0 {
            return Err(TimingError::SnapshotAfterLogs);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_defaults_keep_every_limit() {
        assert_eq!(RaftOptions::default().validate(), Ok(()));
    }

    #[test]
    fn each_limit_is_named() {
        let base = RaftOptions::default;
        let check = |o: RaftOptions| o.validate().unwrap_err();
        assert_eq!(
            check(RaftOptions {
                heartbeat_interval: ms(300),
                ..base()
            }),
            TimingError::Heartbeat
        );
        assert!(matches!(
            check(RaftOptions {
                election_timeout_max: ms(500),
                ..base()
            }),
            TimingError::ElectionRange { .. }
        ));
        assert!(matches!(
            check(RaftOptions {
                read_lease: ms(600),
                follower_lease: Duration::ZERO,
                ..base()
            }),
            TimingError::ReadLease { .. }
        ));
        assert!(matches!(
            check(RaftOptions {
                read_lease: ms(250),
                follower_lease: ms(300),
                ..base()
            }),
            TimingError::FollowerLease { .. }
        ));
        assert_eq!(
            check(RaftOptions {
                snapshot_after_logs: 0,
                ..base()
            }),
            TimingError::SnapshotAfterLogs
        );
        // Both leases may use up the whole election timeout, not more.
        let edge = RaftOptions {
            read_lease: ms(250),
            follower_lease: ms(250),
            ..base()
        };
        assert_eq!(edge.validate(), Ok(()));
    }
}
