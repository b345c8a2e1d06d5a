//! Follower read leases: linearizable reads a follower answers from its own state.
//!
//! Without a lease, a linearizable read on a follower costs a read-index request to
//! the leader per burst of reads. With one, the follower answers alone, and the
//! leader pays instead on writes: it applies (and so acknowledges) an entry only once
//! every member holding a lease has it in its log, or that member's lease ran out
//! (`visibility.rs`, which also gives the order of reads across nodes).
//!
//! The exchange (`FollowerLease` RPC): a follower that serves reads asks the leader
//! for a lease. The leader grants one of `follower_lease` only while its own read
//! lease holds (`lease.rs`) and only to a caught-up member; it registers the
//! follower as a holder until `now + length` (plus an eighth for clock-rate drift),
//! then answers with its term and its last log index. The follower's lease runs from
//! when it *sent* the request, and it reads under it only once it has applied that
//! index, while it still follows that leader in that term. Each read first applies
//! whatever the follower's log held when the read arrived.
//!
//! Why a read under the lease sees every write acknowledged before it started:
//! - a write the leader applied before the registration is in the leader's log when
//!   it reads its last log index for the reply, so the follower applied it before
//!   its first read under the lease;
//! - a write applied after the registration waited for this follower to log it (or
//!   for the leader's record of the lease to run out, which is no earlier than the
//!   follower's own: it starts later and is longer), and the read applies the log;
//! - a write acknowledged by a later leader: the grant was made under the old
//!   leader's read lease, which ends before `asked + read_lease`, and no other leader
//!   can be elected before `asked + election_timeout_max` (the vote promise the read
//!   lease rests on). The follower's lease ends before `asked + read_lease +
//!   follower_lease`, and `ClusterNode::open` refuses `read_lease + follower_lease`
//!   longer than `election_timeout_min`, half the promise;
//! - a write acknowledged by the same leader after a restart: the holders lived in
//!   its memory, and openraft resumes leading the same term at once, so a restarted
//!   member whose saved vote is its own waits one lease (the leader's count of it)
//!   before it starts Raft.
//!
//! Leases are only asked for while reads arrive (the last second), and granted only
//! to other members that have logged everything committed and applied nearly all of
//! it, so an idle or lagging follower does not slow writes. A follower that dies, or
//! stops logging, while it holds a lease delays writes once, by at most one lease
//! plus an eighth (and reads that need the leader, whose applies wait as well); it
//! gets no new lease until it has logged everything committed again. Only members
//! that say they apply their log before reading (`drains_log`) get a lease.

use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use berth_meta::NodeId;
use berth_meta::NodeInfo;
use berth_proto::cluster::v1::FollowerLeaseReply;
use openraft::RaftMetrics;
use openraft::ServerState;
use tokio::sync::Notify;
use tokio::sync::watch;

/// A follower that applied more than this many entries less than the commit index
/// is not granted a lease: its reads would wait for it to catch up.
pub(crate) const CATCH_UP_SLACK: u64 = 64;

/// Leases are asked for while reads arrived within this long.
const WANTED_FOR: Duration = Duration::from_secs(1);

/// After a refused or failed request, wait this long before asking again.
pub(crate) const RETRY_AFTER: Duration = Duration::from_millis(50);

/// The extra time the leader counts a lease on for, against clock-rate differences.
pub(crate) fn leader_side_length(length: Duration) -> Duration {
    length + length / 8
}

/// A lease this follower holds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Granted {
    pub leader: NodeId,
    pub term: u64,
    /// When the request that got it was sent.
    pub sent: Instant,
    pub until: Instant,
    /// Reads may use the lease once this node has applied this index.
    pub index: u64,
}

impl Granted {
    /// More than half of it is used: time to ask for the next one.
    fn renew_at(&self) -> Instant {
        self.sent + (self.until - self.sent) / 2
    }
}

/// A granted length below this is treated as a refusal (it would renew in a loop).
const SHORTEST_GRANT: Duration = Duration::from_millis(10);

/// The leases a follower holds: the newest, and the one before it (still usable
/// while this node catches up to the newest one's index).
#[derive(Debug, Default, Clone, Copy)]
struct Held {
    current: Option<Granted>,
    previous: Option<Granted>,
}

/// On a follower: the lease it holds, and whether its reads want one.
pub(crate) struct FollowerLease {
    id: NodeId,
    /// This node's configured lease length: grants are cut to it.
    length: Duration,
    held: Mutex<Held>,
    metrics: watch::Receiver<RaftMetrics<NodeId, NodeInfo>>,
    epoch: Instant,
    /// The last read, in microseconds since `epoch` (0: none yet).
    last_read: AtomicU64,
    wake: Notify,
}

impl FollowerLease {
    pub(crate) fn new(
        id: NodeId,
        length: Duration,
        metrics: watch::Receiver<RaftMetrics<NodeId, NodeInfo>>,
    ) -> FollowerLease {
        FollowerLease {
            id,
            length,
            held: Mutex::new(Held::default()),
            metrics,
            epoch: Instant::now(),
            last_read: AtomicU64::new(0),
            wake: Notify::new(),
        }
    }

    fn held(&self) -> Held {
        *self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new lease; the one it replaces stays usable until it runs out.
    pub(crate) fn set(&self, granted: Granted) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.previous = held.current.replace(granted);
    }

    /// Drop leases from any other leader than `leader` (all of them for `None`).
    pub(crate) fn forget_leader(&self, leader: Option<NodeId>) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let keep = |g: &Option<Granted>| g.filter(|g| Some(g.leader) == leader);
        *held = Held {
            current: keep(&held.current),
            previous: keep(&held.previous),
        };
    }

    /// How long the lease in `reply` may be used, if it grants one.
    pub(crate) fn granted_length(&self, reply: &FollowerLeaseReply) -> Option<Duration> {
        let length = Duration::from_micros(reply.lease_micros).min(self.length);
        (reply.granted && length >= SHORTEST_GRANT).then_some(length)
    }

    /// May a linearizable read be answered from this node's state right now? Also
    /// notes the read, so that a lease is asked for (or renewed) while reads come.
    pub(crate) fn check(&self) -> bool {
        if self.metrics.borrow().state == ServerState::Leader {
            return false;
        }
        let now = Instant::now();
        let micros = u64::try_from(now.duration_since(self.epoch).as_micros()).unwrap_or(u64::MAX);
        self.last_read.store(micros.max(1), Ordering::Relaxed);
        let valid = self.usable_at(now);
        if !valid {
            self.wake.notify_one();
        }
        valid
    }

    /// Does a usable lease hold right now? (Does not count as a read.)
    pub(crate) fn valid_now(&self) -> bool {
        self.usable_at(Instant::now())
    }

    fn usable_at(&self, now: Instant) -> bool {
        let held = self.held();
        [held.current, held.previous]
            .iter()
            .flatten()
            .any(|g| self.usable(g, now))
    }

    fn usable(&self, g: &Granted, now: Instant) -> bool {
        if now >= g.until {
            return false;
        }
        let m = self.metrics.borrow();
        m.id == self.id
            && matches!(m.state, ServerState::Follower | ServerState::Learner)
            && m.current_leader == Some(g.leader)
            && m.current_term == g.term
            && m.last_applied.map_or(0, |l| l.index) >= g.index
    }

    /// Did reads arrive lately?
    pub(crate) fn wanted(&self, now: Instant) -> bool {
        let last = self.last_read.load(Ordering::Relaxed);
        last != 0 && self.epoch + Duration::from_micros(last) + WANTED_FOR > now
    }

    /// Should a request for a lease go out now?
    pub(crate) fn renew_due(&self, now: Instant) -> bool {
        self.wanted(now) && self.held().current.is_none_or(|g| now >= g.renew_at())
    }

    /// When the loop should look again without being woken.
    pub(crate) fn next_renewal(&self, now: Instant) -> Option<Instant> {
        if !self.wanted(now) {
            return None;
        }
        Some(self.held().current.map_or(now, |g| g.renew_at()))
    }

    pub(crate) async fn woken(&self) {
        self.wake.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use openraft::LogId;
    use openraft::StoredMembership;
    use openraft::Vote;

    use super::*;

    fn metrics(state: ServerState, term: u64, leader: NodeId, applied: u64) -> RaftMetrics<NodeId, NodeInfo> {
        let mut m = RaftMetrics::new_initial(2);
        m.state = state;
        m.current_term = term;
        m.vote = Vote::new_committed(term, leader);
        m.current_leader = Some(leader);
        m.last_applied = Some(LogId::new(openraft::CommittedLeaderId::new(term, leader), applied));
        m.membership_config = Arc::new(StoredMembership::default());
        m
    }

    #[test]
    fn a_lease_serves_reads_only_for_its_leader_term_length_and_index() {
        let (tx, rx) = watch::channel(metrics(ServerState::Follower, 3, 1, 10));
        let lease = FollowerLease::new(2, Duration::from_secs(60), rx);
        assert!(!lease.check(), "no lease yet");
        assert!(lease.wanted(Instant::now()), "the read asks for one");
        assert!(lease.renew_due(Instant::now()));

        let now = Instant::now();
        let grant = |index| Granted {
            leader: 1,
            term: 3,
            sent: now,
            until: now + Duration::from_secs(60),
            index,
        };
        lease.set(grant(12));
        assert!(!lease.check(), "index 12 not applied yet");
        tx.send_replace(metrics(ServerState::Follower, 3, 1, 12));
        assert!(lease.check());
        assert!(!lease.renew_due(Instant::now()), "not half used");
        assert_eq!(
            lease.next_renewal(Instant::now()),
            Some(now + Duration::from_secs(30)),
            "renewed once half is used"
        );
        // A newer lease this node has not caught up with yet: the older one serves.
        lease.set(grant(15));
        assert!(lease.check());

        // Another leader, a later term, or this node standing for election: void.
        tx.send_replace(metrics(ServerState::Follower, 4, 3, 15));
        assert!(!lease.check());
        tx.send_replace(metrics(ServerState::Candidate, 3, 1, 15));
        assert!(!lease.check());
        tx.send_replace(metrics(ServerState::Follower, 3, 1, 15));
        assert!(lease.check());
        lease.forget_leader(Some(3));
        assert!(!lease.check(), "leases of leader 1 dropped on following 3");

        // Run out.
        lease.set(Granted {
            sent: now - Duration::from_millis(1500),
            until: now - Duration::from_millis(500),
            ..grant(12)
        });
        assert!(!lease.check());
    }

    #[test]
    fn grants_are_cut_to_this_nodes_length_and_tiny_ones_refused() {
        let (_tx, rx) = watch::channel(metrics(ServerState::Follower, 3, 1, 10));
        let lease = FollowerLease::new(2, Duration::from_millis(250), rx);
        let reply = |granted, micros| FollowerLeaseReply {
            granted,
            term: 3,
            index: 10,
            lease_micros: micros,
        };
        assert_eq!(
            lease.granted_length(&reply(true, 100_000)),
            Some(Duration::from_millis(100))
        );
        assert_eq!(
            lease.granted_length(&reply(true, u64::MAX)),
            Some(Duration::from_millis(250))
        );
        assert_eq!(lease.granted_length(&reply(true, 1)), None);
        assert_eq!(lease.granted_length(&reply(false, 100_000)), None);
    }

    #[test]
    fn the_leader_neither_reads_under_nor_asks_for_a_follower_lease() {
        let (_tx, rx) = watch::channel(metrics(ServerState::Leader, 3, 2, 10));
        let lease = FollowerLease::new(2, Duration::from_millis(250), rx);
        assert!(!lease.check());
        assert!(!lease.wanted(Instant::now()));
    }

    #[test]
    fn without_reads_no_lease_is_asked_for() {
        let (_tx, rx) = watch::channel(metrics(ServerState::Follower, 3, 1, 10));
        let lease = FollowerLease::new(2, Duration::from_millis(250), rx);
        assert!(!lease.wanted(Instant::now()));
        assert!(!lease.renew_due(Instant::now()));
        assert_eq!(lease.next_renewal(Instant::now()), None);
        lease.check();
        assert!(!lease.wanted(Instant::now() + WANTED_FOR + Duration::from_millis(1)));
    }
}
