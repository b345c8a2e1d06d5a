//! Follower read leases: linearizable reads a follower answers from its own state.
//!
//! Without a lease, a linearizable read on a follower costs a read-index request to
//! the leader per burst of reads. With one, the follower answers alone, and the
//! leader pays instead on writes: it acknowledges a write only once every member
//! holding a lease has applied it, or that member's lease ran out.
//!
//! The exchange (`FollowerLease` RPC): a follower that serves reads asks the leader
//! for a lease, and reports its applied index whenever it moves while it may hold one.
//! The leader grants a lease of `follower_lease` only while its own read lease holds
//! (`lease.rs`): it registers the follower as a holder until `now + length` (plus an
//! eighth for clock-rate drift), then answers with its term and its applied index.
//! The follower's lease runs from when it *sent* the request, and it reads under it
//! only once it has applied that index, while it still follows that leader in that
//! term.
//!
//! Why a read under the lease sees every write acknowledged before it started:
//! - a write acknowledged before the grant was applied on the leader before the
//!   leader read its applied index for the reply (registration comes first, so a
//!   write whose holder list was taken before the registration has an index at most
//!   the one in the reply). That index is read from the store, where it is written
//!   with the command: openraft answers a write before its metrics show the index;
//! - a write acknowledged after the registration waited for this follower's report of
//!   having applied it, or for the leader's record of the lease to run out, which is
//!   no earlier than the follower's own (it starts later, and is longer);
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
//! What it gives up, and why it is off by default (`follower_lease = "0s"`): the
//! order of reads through different nodes while a write is in flight. A write is
//! visible on the leader (and on a follower that applied it) as soon as it is
//! applied there, but acknowledged only once every holder applied it. Until then a
//! read through the leader may return the new value and a later read through a
//! slower lease holder the old one. Every acknowledged write is seen by every read
//! that starts after the acknowledgement (the property above), so a pull after a
//! push sees the push, but two readers racing a push through different nodes may
//! see it in different orders. Strict linearizability would need each read to wait
//! until every holder applied what it observed (not built).
//!
//! Leases are only asked for while reads arrive (the last second), and granted only to
//! other members that are caught up, so an idle or lagging follower does not slow
//! writes. A follower that dies while it holds a lease delays writes by at most one
//! lease. A follower keeps reporting for twice the lease after each request, whether
//! or not the grant reached it, since the leader counts it from the request on.

use std::collections::HashMap;
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

/// A follower more than this many entries behind the leader is not granted a lease:
/// writes would wait for it to catch up.
pub(crate) const CATCH_UP_SLACK: u64 = 64;

/// Leases are asked for while reads arrived within this long.
const WANTED_FOR: Duration = Duration::from_secs(1);

/// After a refused or failed request, wait this long before asking again.
pub(crate) const RETRY_AFTER: Duration = Duration::from_millis(50);

/// The extra time the leader counts a lease on for, against clock-rate differences.
pub(crate) fn leader_side_length(length: Duration) -> Duration {
    length + length / 8
}

/// On the leader: the members holding a lease, and how far each has applied.
#[derive(Default)]
pub(crate) struct LeaseHolders {
    holders: Mutex<HashMap<NodeId, Holder>>,
}

struct Holder {
    until: Instant,
    applied: watch::Sender<u64>,
}

impl LeaseHolders {
    fn with<R>(&self, id: NodeId, f: impl FnOnce(&mut Holder) -> R) -> R {
        let mut holders = self.holders.lock().unwrap_or_else(|p| p.into_inner());
        let holder = holders.entry(id).or_insert_with(|| Holder {
            until: Instant::now(),
            applied: watch::Sender::new(0),
        });
        f(holder)
    }

    /// `id` reports that it has applied up to `applied`.
    pub(crate) fn report(&self, id: NodeId, applied: u64) {
        self.with(id, |h| {
            h.applied.send_if_modified(|a| {
                let moved = applied > *a;
                *a = (*a).max(applied);
                moved
            })
        });
    }

    /// `id` holds a lease until `until` (by this node's clock).
    pub(crate) fn register(&self, id: NodeId, until: Instant) {
        self.with(id, |h| h.until = h.until.max(until));
    }

    /// Wait until every member whose lease still runs has applied `index`, or until
    /// its lease ran out.
    pub(crate) async fn wait_applied(&self, index: u64) {
        let pending: Vec<(Instant, watch::Receiver<u64>)> = {
            let holders = self.holders.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            holders
                .values()
                .filter(|h| h.until > now && *h.applied.borrow() < index)
                .map(|h| (h.until, h.applied.subscribe()))
                .collect()
        };
        for (until, mut applied) in pending {
            let caught_up = applied.wait_for(|a| *a >= index);
            // Out of time: the holder's lease is over, its reads go to the leader.
            let _ = tokio::time::timeout_at(until.into(), caught_up).await;
        }
    }
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
    /// This node's configured lease length: grants are cut to it, and after a
    /// request it reports applied moves for twice as long.
    length: Duration,
    held: Mutex<Held>,
    metrics: watch::Receiver<RaftMetrics<NodeId, NodeInfo>>,
    epoch: Instant,
    /// The last read, in microseconds since `epoch` (0: none yet).
    last_read: AtomicU64,
    /// The last request for a lease (the leader may count this node from then on).
    last_asked: Mutex<Option<Instant>>,
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
            last_asked: Mutex::new(None),
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

    /// A request for a lease goes out now.
    pub(crate) fn asked(&self, now: Instant) {
        *self.last_asked.lock().unwrap_or_else(|p| p.into_inner()) = Some(now);
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

    /// The leader may count this node as a holder (it asked for a lease lately,
    /// whether or not the grant arrived): applied moves must be reported. The
    /// leader's record runs an eighth longer than a lease; twice is ample.
    pub(crate) fn reporting(&self, now: Instant) -> bool {
        let asked = *self.last_asked.lock().unwrap_or_else(|p| p.into_inner());
        asked.is_some_and(|t| now < t + self.length * 2)
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

    #[tokio::test]
    async fn writes_wait_for_holders_until_they_applied_or_their_lease_ran_out() {
        let holders = Arc::new(LeaseHolders::default());
        let until = Instant::now() + Duration::from_millis(400);
        holders.report(2, 5);
        holders.register(2, until);
        holders.report(3, 5);
        // 3's lease is over: it is not waited for.
        holders.register(3, Instant::now());

        // Already applied: no wait.
        holders.wait_applied(5).await;

        let waiting = tokio::spawn({
            let holders = holders.clone();
            async move { holders.wait_applied(7).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        holders.report(2, 6);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "6 is not 7");
        holders.report(2, 7);
        waiting.await.unwrap();
        assert!(Instant::now() < until, "released by the report, not by the lease's end");

        // A silent holder holds writes back until its lease ends, no longer.
        holders.wait_applied(8).await;
        let now = Instant::now();
        assert!(now >= until && now < until + Duration::from_secs(1));
    }

    #[test]
    fn reports_and_registrations_only_move_forward() {
        let holders = LeaseHolders::default();
        let later = Instant::now() + Duration::from_secs(5);
        holders.register(2, later);
        holders.register(2, Instant::now());
        holders.report(2, 9);
        holders.report(2, 4);
        let h = holders.holders.lock().unwrap();
        assert_eq!(h[&2].until, later);
        assert_eq!(*h[&2].applied.borrow(), 9);
    }

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
    fn after_asking_applied_moves_are_reported_for_twice_the_lease() {
        let (_tx, rx) = watch::channel(metrics(ServerState::Follower, 3, 1, 10));
        let lease = FollowerLease::new(2, Duration::from_millis(250), rx);
        let now = Instant::now();
        assert!(!lease.reporting(now), "never asked");
        lease.asked(now);
        assert!(lease.reporting(now + Duration::from_millis(499)));
        assert!(!lease.reporting(now + Duration::from_millis(500)));
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
