//! The leader's read lease: linearizable reads without a heartbeat round per burst.
//!
//! A read barrier on the leader normally confirms leadership with a round of
//! heartbeats to a quorum (openraft's `ensure_linearizable`). Each follower that
//! acknowledges such a heartbeat refuses to vote for anyone else for
//! `election_timeout_max` after receiving it (openraft's vote lease), so no other
//! leader can be elected before `asked + election_timeout_max`, where `asked` is when
//! the confirmed round was requested (its heartbeats were sent later). Until then,
//! and as long as this node still reports itself leader of the same term, its own
//! state already holds every acknowledged write (a write is acknowledged only after
//! the leader applied it), so reads may be answered without asking anyone.
//!
//! The lease granted here is much shorter than what the followers promise (250 ms
//! by default against `election_timeout_max`, 1 s by default; `ClusterNode::open`
//! refuses a lease longer than `election_timeout_min`), which leaves room for
//! clock-rate differences between machines and for scheduling delays. A lease is renewed in the background once half of it is used, so a
//! steady stream of reads never waits for a round.

use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use berth_meta::NodeId;
use berth_meta::NodeInfo;
use openraft::ServerState;
use openraft::metrics::RaftServerMetrics;
use tokio::sync::watch;

/// Proof of leadership for a term, valid until an instant.
#[derive(Debug, Clone, Copy)]
struct Held {
    term: u64,
    until: Instant,
}

/// What a read should do, according to the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LeaseCheck {
    /// Read locally.
    Valid,
    /// Read locally, and start a renewal round (more than half of the lease used).
    Renew,
    /// No valid lease: wait for a read-index round.
    Expired,
}

pub(crate) struct ReadLease {
    id: NodeId,
    /// Zero disables leases: every burst of reads waits for a round.
    length: Duration,
    held: Mutex<Option<Held>>,
    renewing: AtomicBool,
    server: watch::Receiver<RaftServerMetrics<NodeId, NodeInfo>>,
}

impl ReadLease {
    pub(crate) fn new(
        id: NodeId,
        length: Duration,
        server: watch::Receiver<RaftServerMetrics<NodeId, NodeInfo>>,
    ) -> ReadLease {
        ReadLease {
            id,
            length,
            held: Mutex::new(None),
            renewing: AtomicBool::new(false),
            server,
        }
    }

    /// The term this node currently leads, if it is the leader.
    pub(crate) fn leading_term(&self) -> Option<u64> {
        let m = self.server.borrow();
        let leading = m.state == ServerState::Leader && m.current_leader == Some(self.id) && m.vote.is_committed();
        leading.then(|| m.vote.leader_id().get_term())
    }

    /// Record a confirmed leadership round for `term` that was requested at `asked`.
    pub(crate) fn confirmed(&self, term: u64, asked: Instant) {
        if self.length.is_zero() {
            return;
        }
        let until = asked + self.length;
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        match *held {
            Some(h) if h.term == term && h.until >= until => {}
            _ => *held = Some(Held { term, until }),
        }
    }

    /// A renewal round ended (confirmed or not): another one may start.
    pub(crate) fn round_done(&self) {
        self.renewing.store(false, Ordering::Release);
    }

    /// The term of the lease, if one holds right now (without asking for renewal).
    pub(crate) fn holding(&self) -> Option<u64> {
        let held = (*self.held.lock().unwrap_or_else(|p| p.into_inner()))?;
        (Instant::now() < held.until && self.leading_term() == Some(held.term)).then_some(held.term)
    }

    /// May a read be answered from this node's state right now?
    pub(crate) fn check(&self) -> LeaseCheck {
        let Some(held) = *self.held.lock().unwrap_or_else(|p| p.into_inner()) else {
            return LeaseCheck::Expired;
        };
        let now = Instant::now();
        if now >= held.until || self.leading_term() != Some(held.term) {
            return LeaseCheck::Expired;
        }
        if held.until - now < self.length / 2 && !self.renewing.swap(true, Ordering::AcqRel) {
            LeaseCheck::Renew
        } else {
            LeaseCheck::Valid
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use openraft::StoredMembership;
    use openraft::Vote;

    use super::*;

    fn metrics(state: ServerState, term: u64, leader: Option<NodeId>) -> RaftServerMetrics<NodeId, NodeInfo> {
        RaftServerMetrics {
            id: 1,
            vote: Vote::new_committed(term, leader.unwrap_or(2)),
            state,
            current_leader: leader,
            membership_config: Arc::new(StoredMembership::default()),
        }
    }

    #[test]
    fn a_lease_holds_for_its_term_and_length_only() {
        let (tx, rx) = watch::channel(metrics(ServerState::Leader, 3, Some(1)));
        let lease = ReadLease::new(1, Duration::from_secs(60), rx);
        assert_eq!(lease.check(), LeaseCheck::Expired, "no round confirmed yet");
        assert_eq!(lease.leading_term(), Some(3));

        lease.confirmed(3, Instant::now());
        assert_eq!(lease.check(), LeaseCheck::Valid);
        assert_eq!(lease.holding(), Some(3));

        // Leadership lost, or regained in a later term: the lease of term 3 is void.
        tx.send_replace(metrics(ServerState::Follower, 4, Some(2)));
        assert_eq!(lease.check(), LeaseCheck::Expired);
        assert_eq!(lease.holding(), None);
        tx.send_replace(metrics(ServerState::Leader, 5, Some(1)));
        assert_eq!(lease.check(), LeaseCheck::Expired);
        lease.confirmed(5, Instant::now());
        assert_eq!(lease.check(), LeaseCheck::Valid);
    }

    #[test]
    fn half_used_leases_ask_for_one_renewal_and_old_ones_expire() {
        let (_tx, rx) = watch::channel(metrics(ServerState::Leader, 3, Some(1)));
        let length = Duration::from_secs(60);
        let lease = ReadLease::new(1, length, rx);
        lease.confirmed(3, Instant::now() - Duration::from_secs(40));
        assert_eq!(lease.check(), LeaseCheck::Renew);
        assert_eq!(lease.check(), LeaseCheck::Valid, "one renewal at a time");
        lease.round_done();
        assert_eq!(lease.check(), LeaseCheck::Renew);

        let expired = ReadLease::new(1, length, lease.server.clone());
        expired.confirmed(3, Instant::now() - Duration::from_secs(61));
        assert_eq!(expired.check(), LeaseCheck::Expired);
    }

    #[test]
    fn a_zero_length_disables_leases() {
        let (_tx, rx) = watch::channel(metrics(ServerState::Leader, 3, Some(1)));
        let lease = ReadLease::new(1, Duration::ZERO, rx);
        lease.confirmed(3, Instant::now());
        assert_eq!(lease.check(), LeaseCheck::Expired);
    }
}
