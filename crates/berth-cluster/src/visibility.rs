//! When a committed entry becomes visible on each node, so that reads through
//! different nodes see the log in one order.
//!
//! Two rules, enforced here, give every read a place in one order (a read returns
//! the state after some prefix of the log, and a read that starts after another one
//! ended never returns a shorter prefix):
//!
//! 1. **The leader shows an entry first.** A follower applies only what the leader
//!    has applied: the commit index the leader sends is cut to its own applied log id
//!    ([`Visibility::cap`]). Once the leader applies more, it sends a heartbeat so
//!    that followers learn at once. So the leader's state, and the leader's read
//!    index (its applied index), cover whatever any follower shows.
//! 2. **Every lease holder logged an entry before anyone shows it.** The leader
//!    applies an entry only once every member holding a follower lease
//!    (`follower_lease.rs`) has it in its log, or that member's lease ran out
//!    ([`ApplyGate::admit`]). A holder answering a read under its lease first applies
//!    everything its own log held when the read arrived (`ClusterNode::read_barrier`).
//!    Whatever any node showed before the read started was in that log, so the read
//!    sees it too.
//!
//! The gate holds on a leader that stepped down, too: openraft still answers a
//! write proposed there once it is applied, and the holders it registered may still
//! read under their leases.
//!
//! Rule 2 also gives a holder every acknowledged write: the leader acknowledges a
//! write after applying it, hence after every holder logged it. A member that
//! becomes a holder does so with a grant whose index is the leader's last log index
//! after registering it: everything the leader admitted without counting it is in
//! the leader's log by then, and the new holder reads only once it applied that far.
//!
//! The cost: with lease holders, the leader applies (and acknowledges) a write once
//! the slowest holder logged it instead of a quorum; and a read on a holder right
//! after a write waits for that write to apply there. Without holders, only rule 1
//! runs: a heartbeat after each applied batch tells followers the new commit index.

use std::collections::HashMap;
use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::OnceLock;
use std::time::Duration;
use std::time::Instant;

use berth_meta::ApplyGate;
use berth_meta::NodeId;
use berth_meta::NodeInfo;
use openraft::LogId;
use openraft::RaftMetrics;
use tokio::sync::Notify;
use tokio::sync::watch;

type Metrics = watch::Receiver<RaftMetrics<NodeId, NodeInfo>>;

#[derive(Default)]
struct Sent {
    /// What this node applied last.
    applied: Option<LogId<NodeId>>,
    /// A commit index was cut to `applied` since the last heartbeat was asked for.
    held_back: bool,
}

#[derive(Default)]
struct Holders {
    /// Members holding a follower lease, until when (by this node's clock).
    until: HashMap<NodeId, Instant>,
    /// Members whose lease ran out while the leader waited for them to log an
    /// entry: no new lease until they logged everything committed.
    stalled: HashSet<NodeId>,
    /// The index the leader waits for holders to log before applying it (0: none),
    /// and since when.
    waiting_for: u64,
    waiting_since: Option<Instant>,
}

/// One per node; the leader's side is what counts (followers only report applies).
#[derive(Default)]
pub(crate) struct Visibility {
    holders: Mutex<Holders>,
    /// This node's Raft metrics (set once Raft runs; the gate is open until then).
    metrics: OnceLock<Metrics>,
    sent: Mutex<Sent>,
    heartbeat: Notify,
    /// Woken on every apply.
    applied_moved: Notify,
}

impl Visibility {
    /// Start following this node's Raft metrics (once Raft is created).
    pub(crate) fn attach(&self, metrics: Metrics) {
        let _ = self.metrics.set(metrics);
    }

    /// `id` holds a follower lease until `until` (by this node's clock).
    pub(crate) fn register(&self, id: NodeId, until: Instant) {
        let mut holders = self.holders();
        let now = Instant::now();
        holders.until.retain(|_, u| *u > now);
        let entry = holders.until.entry(id).or_insert(until);
        *entry = (*entry).max(until);
    }

    fn holders(&self) -> std::sync::MutexGuard<'_, Holders> {
        self.holders.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// May `id`, which has logged up to `logged`, get a lease (the leader's other
    /// checks aside)? Not once the leader has waited longer than `grace` for it to
    /// log an entry (renewing would hold the leader back for as long as it keeps
    /// asking), and not after it stalled the leader once, until it has logged
    /// everything `committed`.
    pub(crate) fn may_register(&self, id: NodeId, logged: u64, committed: u64, grace: Duration) -> bool {
        let mut holders = self.holders();
        let overdue = holders.waiting_since.is_some_and(|t| t.elapsed() > grace);
        if overdue && logged < holders.waiting_for {
            return false;
        }
        if holders.stalled.contains(&id) {
            if logged < committed {
                return false;
            }
            holders.stalled.remove(&id);
        }
        true
    }

    /// When the first lease of a holder that has not logged `index` runs out, if
    /// any such holder's lease still runs (`None`: `index` may be applied). Without
    /// replication progress (this node no longer leads) no holder counts as having
    /// logged anything.
    /// Holders whose lease ran out meanwhile and that had not logged `index` are
    /// marked stalled. Sets (or clears) what the leader waits for.
    fn blocked_until(&self, index: u64, m: &RaftMetrics<NodeId, NodeInfo>) -> Option<Instant> {
        let mut holders = self.holders();
        let now = Instant::now();
        let logged = |id: &NodeId| {
            m.replication
                .as_ref()
                .and_then(|r| r.get(id).copied().flatten())
                .map_or(0, |l| l.index)
        };
        let mut blocked = None;
        let mut stalled = Vec::new();
        for (id, until) in &holders.until {
            if logged(id) >= index {
                continue;
            }
            if *until > now {
                blocked = Some(blocked.map_or(*until, |b: Instant| b.min(*until)));
            } else if holders.waiting_for == index {
                stalled.push(*id);
            }
        }
        if !stalled.is_empty() {
            tracing::info!(
                ?stalled,
                index,
                "lease holders did not log an entry before their leases ran out"
            );
        }
        holders.stalled.extend(stalled);
        if blocked.is_none() {
            holders.waiting_for = 0;
            holders.waiting_since = None;
        } else if holders.waiting_for != index {
            holders.waiting_for = index;
            holders.waiting_since = Some(now);
        }
        blocked
    }

    /// The commit index to send to a follower: never beyond what this node applied
    /// (rule 1). A cut index is sent again in full by the heartbeat that follows
    /// this node's next apply.
    pub(crate) fn cap(&self, commit: Option<LogId<NodeId>>) -> Option<LogId<NodeId>> {
        let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        if commit > sent.applied {
            sent.held_back = true;
            sent.applied
        } else {
            commit
        }
    }

    /// Wait (at most `within`) until this node has applied `commit`: a commit
    /// notice sent then carries it whole, and needs no heartbeat after it.
    pub(crate) async fn settle(&self, commit: Option<LogId<NodeId>>, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            // Created before the check: an apply in between still wakes it.
            let moved = self.applied_moved.notified();
            if self.sent.lock().unwrap_or_else(|p| p.into_inner()).applied >= commit {
                return;
            }
            if tokio::time::timeout_at(deadline, moved).await.is_err() {
                return;
            }
        }
    }

    /// Resolves when a commit index was held back and this node applied more since:
    /// time for a heartbeat.
    pub(crate) async fn heartbeat_wanted(&self) {
        self.heartbeat.notified().await;
    }
}

impl ApplyGate for Visibility {
    fn admit(&self, index: u64) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let Some(metrics) = self.metrics.get() else {
                return;
            };
            let mut metrics = metrics.clone();
            let mut waited = false;
            loop {
                // Whatever this node's role now: a leader that stepped down may still
                // apply (and acknowledge) entries while leases it granted run.
                let blocked = self.blocked_until(index, &metrics.borrow_and_update());
                let Some(until) = blocked else {
                    if waited {
                        tracing::trace!(index, "lease holders logged the entries: applying");
                    }
                    return;
                };
                waited = true;
                tokio::select! {
                    changed = metrics.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                    _ = tokio::time::sleep_until(until.into()) => {}
                }
            }
        })
    }

    fn applied(&self, log_id: LogId<NodeId>) {
        let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        if Some(log_id) > sent.applied {
            sent.applied = Some(log_id);
        }
        if std::mem::take(&mut sent.held_back) {
            self.heartbeat.notify_one();
        }
        self.applied_moved.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use openraft::CommittedLeaderId;
    use openraft::ServerState;
    use openraft::StoredMembership;
    use openraft::Vote;

    use super::*;

    fn log_id(index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(2, 1), index)
    }

    fn leader_metrics(matched: &[(NodeId, u64)]) -> RaftMetrics<NodeId, NodeInfo> {
        let mut m = RaftMetrics::new_initial(1);
        m.state = ServerState::Leader;
        m.current_term = 2;
        m.vote = Vote::new_committed(2, 1);
        m.current_leader = Some(1);
        m.membership_config = Arc::new(StoredMembership::default());
        let replication: BTreeMap<NodeId, Option<LogId<NodeId>>> =
            matched.iter().map(|(id, i)| (*id, Some(log_id(*i)))).collect();
        m.replication = Some(replication);
        m
    }

    #[tokio::test]
    async fn the_leader_applies_once_every_holder_logged_the_entries_or_its_lease_ran_out() {
        let (tx, rx) = watch::channel(leader_metrics(&[(2, 5), (3, 5)]));
        let vis = Arc::new(Visibility::default());
        vis.attach(rx);

        // No holders: nothing to wait for.
        vis.admit(9).await;

        let until = Instant::now() + Duration::from_millis(400);
        vis.register(2, until);
        // 3's lease is over: not waited for.
        vis.register(3, Instant::now());
        vis.admit(5).await;

        let waiting = tokio::spawn({
            let vis = vis.clone();
            async move { vis.admit(7).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "holder 2 has logged 5, not 7");
        tx.send_replace(leader_metrics(&[(2, 6), (3, 5)]));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "6 is not 7");
        assert!(vis.may_register(2, 6, 7, Duration::from_secs(1)), "within the grace");
        assert!(
            !vis.may_register(2, 6, 7, Duration::from_millis(10)),
            "no renewal for what the leader waited for too long"
        );
        assert!(vis.may_register(3, 7, 7, Duration::ZERO));
        tx.send_replace(leader_metrics(&[(2, 7), (3, 5)]));
        waiting.await.unwrap();
        assert!(Instant::now() < until, "released by the log, not by the lease's end");

        // A silent holder holds the leader back until its lease ends, no longer...
        vis.admit(8).await;
        let now = Instant::now();
        assert!(now >= until && now < until + Duration::from_secs(1));
        // ... and gets no new lease until it logged everything committed.
        let grace = Duration::from_secs(1);
        assert!(!vis.may_register(2, 7, 9, grace));
        assert!(vis.may_register(2, 9, 9, grace));
        assert!(
            vis.may_register(2, 9, 10, grace),
            "caught up once: the usual checks again"
        );
    }

    #[tokio::test]
    async fn a_leader_that_stepped_down_still_waits_for_the_leases_it_granted() {
        let mut m = leader_metrics(&[(2, 9)]);
        m.state = ServerState::Follower;
        m.replication = None;
        let (_tx, rx) = watch::channel(m);
        let vis = Visibility::default();
        vis.attach(rx);
        // A node that granted no lease applies as its leader says.
        tokio::time::timeout(Duration::from_secs(1), vis.admit(9))
            .await
            .unwrap();

        let until = Instant::now() + Duration::from_millis(200);
        vis.register(2, until);
        vis.admit(9).await;
        assert!(Instant::now() >= until, "applied while a lease it granted ran");
    }

    #[tokio::test]
    async fn commit_indexes_sent_never_pass_what_the_leader_applied() {
        let vis = Visibility::default();
        assert_eq!(vis.cap(None), None);
        vis.applied(log_id(4));
        assert_eq!(vis.cap(Some(log_id(3))), Some(log_id(3)));
        assert_eq!(vis.cap(Some(log_id(4))), Some(log_id(4)));
        // Nothing held back yet: no heartbeat wanted.
        vis.applied(log_id(4));
        assert!(
            tokio::time::timeout(Duration::from_millis(20), vis.heartbeat_wanted())
                .await
                .is_err()
        );

        assert_eq!(vis.cap(Some(log_id(6))), Some(log_id(4)), "cut to the applied index");
        vis.applied(log_id(6));
        tokio::time::timeout(Duration::from_secs(1), vis.heartbeat_wanted())
            .await
            .expect("the apply asks for a heartbeat");
        assert_eq!(vis.cap(Some(log_id(6))), Some(log_id(6)));
        // A commit notice may wait for the apply, and then goes out whole.
        let vis = Arc::new(vis);
        let settling = tokio::spawn({
            let vis = vis.clone();
            async move { vis.settle(Some(log_id(8)), Duration::from_secs(5)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!settling.is_finished());
        vis.applied(log_id(8));
        tokio::time::timeout(Duration::from_secs(1), settling)
            .await
            .expect("woken by the apply")
            .unwrap();
        assert_eq!(vis.cap(Some(log_id(8))), Some(log_id(8)));
        // It does not wait longer than asked.
        let started = Instant::now();
        vis.settle(Some(log_id(9)), Duration::from_millis(30)).await;
        assert!(started.elapsed() < Duration::from_secs(1));
        // Applies never move it back.
        vis.applied(log_id(5));
        assert_eq!(vis.cap(Some(log_id(6))), Some(log_id(6)));
    }
}
