//! Raft scenarios on in-process clusters with a fault-injecting transport.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use berth_cluster::ClusterError;
use berth_cluster::RaftOptions;
use berth_meta::Command;
use berth_oci::RepoName;
use berth_testkit::TestCluster;
use berth_testkit::cluster::fast_options;

const WAIT: Duration = Duration::from_secs(15);

fn upload(i: u64) -> Command {
    Command::CreateUpload {
        id: format!("upload-{i}"),
        repo: RepoName::parse("team/app").expect("name"),
        node: 1,
        at: i,
    }
}

fn applied(cluster: &TestCluster, id: u64) -> u64 {
    cluster.node(id).expect("member").status().applied_index.unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_on_any_member_are_applied_everywhere() -> anyhow::Result<()> {
    let cluster = TestCluster::start(3, fast_options()).await?;
    for id in cluster.ids() {
        cluster.node(id)?.propose(upload(id)).await?;
    }
    let last = applied(&cluster, cluster.leader(WAIT).await?);
    for id in cluster.ids() {
        cluster.wait_applied(id, last, WAIT).await?;
        for i in cluster.ids() {
            assert!(
                cluster.node(id)?.reader().upload(&format!("upload-{i}"))?.is_some(),
                "member {id}, upload {i}"
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_is_replaced_and_catches_up_when_healed() -> anyhow::Result<()> {
    let cluster = TestCluster::start(3, fast_options()).await?;
    let old = cluster.leader(WAIT).await?;
    let rest: Vec<u64> = cluster.ids().into_iter().filter(|id| *id != old).collect();
    cluster.faults.isolate(old, &cluster.ids());

    let new = cluster.leader_among(&rest, WAIT).await?;
    assert_ne!(new, old);
    cluster.node(rest[0])?.propose(upload(10)).await?;
    cluster.node(rest[1])?.propose(upload(11)).await?;
    // The cut-off node cannot commit: its clients get "unavailable", never a hang.
    match cluster.node(old)?.propose(upload(12)).await {
        Err(ClusterError::Unavailable(_)) => {}
        other => panic!("a write on the isolated node answered {other:?}"),
    }

    cluster.faults.heal();
    let last = applied(&cluster, new);
    cluster.wait_applied(old, last, WAIT).await?;
    assert!(cluster.node(old)?.reader().upload("upload-11")?.is_some());
    assert_eq!(
        cluster.leader(WAIT).await?,
        new,
        "the healed node follows the new leader"
    );
    Ok(())
}

/// One read on the old leader, as the reader saw it.
struct Read {
    started: Instant,
    answered: bool,
    saw_write: bool,
}

/// Reads on `node` (a barrier, then whether `upload` is there), every `pause`, until
/// the returned flag is set; the handle yields every read.
fn keep_reading(
    node: berth_cluster::ClusterNode,
    upload: &'static str,
    pause: Duration,
) -> (Arc<AtomicBool>, tokio::task::JoinHandle<anyhow::Result<Vec<Read>>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let reader = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut reads = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let answered = node.read_barrier().await.is_ok();
                let saw_write = node.reader().upload(upload)?.is_some();
                reads.push(Read {
                    started,
                    answered,
                    saw_write,
                });
                tokio::time::sleep(pause).await;
            }
            anyhow::Ok(reads)
        }
    });
    (stop, reader)
}

/// Some reads answered, later ones were refused, and none that started after the
/// write was acknowledged answered without it.
fn assert_lease_ran_out_before(reads: &[Read], acknowledged: Instant, who: &str) {
    assert!(reads.iter().any(|r| r.answered), "no read answered under the lease");
    assert!(
        reads.iter().any(|r| !r.answered),
        "the cut-off {who} kept answering reads"
    );
    let stale = reads
        .iter()
        .filter(|r| r.started > acknowledged && r.answered && !r.saw_write)
        .count();
    assert_eq!(
        stale, 0,
        "reads on the cut-off {who} answered without a write acknowledged before they started"
    );
}

/// The leader answers reads under its lease without reaching anyone; once it is cut
/// off, the lease runs out before the others can elect a leader and acknowledge a
/// write, so no read on the old leader that starts after that acknowledgement misses
/// the write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_leader_stops_reading_under_its_lease_before_a_new_leader_writes() -> anyhow::Result<()> {
    let options = RaftOptions {
        heartbeat_interval: Duration::from_millis(100),
        election_timeout_min: Duration::from_millis(600),
        election_timeout_max: Duration::from_millis(1200),
        read_lease: Duration::from_millis(400),
        follower_lease: Duration::from_millis(200),
        request_timeout: Duration::from_secs(3),
        ..RaftOptions::default()
    };
    let cluster = TestCluster::start(3, options).await?;
    let old = cluster.leader(WAIT).await?;
    let rest: Vec<u64> = cluster.ids().into_iter().filter(|id| *id != old).collect();
    let leader = cluster.node(old)?.clone();
    leader.read_barrier().await?;
    cluster.faults.isolate(old, &cluster.ids());
    // Under the lease the cut-off leader still answers: a quorum round would fail.
    leader.read_barrier().await?;

    let (stop, reader) = keep_reading(leader, "upload-20", Duration::from_millis(5));
    cluster.leader_among(&rest, WAIT).await?;
    cluster.node(rest[0])?.propose(upload(20)).await?;
    let acknowledged = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let reads = reader.await??;
    assert_lease_ran_out_before(&reads, acknowledged, "leader");
    Ok(())
}

/// Read barriers on `node` until it holds a follower read lease.
async fn lease_on(node: &berth_cluster::ClusterNode) -> anyhow::Result<()> {
    let deadline = Instant::now() + WAIT;
    while !node.holds_follower_lease() {
        anyhow::ensure!(Instant::now() < deadline, "no follower lease granted");
        node.read_barrier().await?;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// A follower with a lease answers reads alone, and still sees every write
/// acknowledged before the read started: the leader acknowledges a write only once
/// each lease holder applied it (writes through the leader and forwarded ones).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_under_its_lease_reads_every_write_acknowledged_before() -> anyhow::Result<()> {
    let cluster = TestCluster::start(3, fast_options()).await?;
    let leader = cluster.leader(WAIT).await?;
    let followers: Vec<u64> = cluster.ids().into_iter().filter(|id| *id != leader).collect();
    let reader = cluster.node(followers[0])?.clone();
    lease_on(&reader).await?;

    let mut under_lease = 0;
    for i in 0..200 {
        // Through the leader, and forwarded by the other follower.
        let writer = if i % 2 == 0 { leader } else { followers[1] };
        cluster.node(writer)?.propose(upload(100 + i)).await?;
        let leased = reader.holds_follower_lease();
        reader.read_barrier().await?;
        assert!(
            reader.reader().upload(&format!("upload-{}", 100 + i))?.is_some(),
            "write {i} acknowledged, then a read on the follower (lease: {leased}) missed it"
        );
        under_lease += usize::from(leased);
    }
    assert!(under_lease >= 150, "only {under_lease} of 200 reads under the lease");
    Ok(())
}

/// Reads through different nodes see writes in one order, even while a write is
/// in flight and one lease holder is slow to receive it: once any read returned
/// the write, no read that starts later, on any node, misses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_a_read_on_any_node_saw_a_write_no_later_read_misses_it() -> anyhow::Result<()> {
    // Leases long against the slow link, so that the slow holder keeps its lease.
    let options = RaftOptions {
        election_timeout_min: Duration::from_millis(600),
        election_timeout_max: Duration::from_millis(1200),
        read_lease: Duration::from_millis(200),
        follower_lease: Duration::from_millis(400),
        ..fast_options()
    };
    let cluster = TestCluster::start(3, options).await?;
    let leader = cluster.leader(WAIT).await?;
    let followers: Vec<u64> = cluster.ids().into_iter().filter(|id| *id != leader).collect();
    let (fast, slow) = (followers[0], followers[1]);
    // The slow holder gets everything from the leader late, lease grants included.
    cluster.faults.delay(leader, slow, Duration::from_millis(40));
    for id in [fast, slow] {
        lease_on(cluster.node(id)?).await?;
    }

    let mut slow_under_lease = 0;
    for i in 0..10 {
        let name = format!("upload-{}", 300 + i);
        let writing = tokio::spawn({
            let node = cluster.node(leader)?.clone();
            async move { node.propose(upload(300 + i)).await }
        });
        let mut seen_by: Option<u64> = None;
        let mut rounds = 0;
        loop {
            // One read after another: each starts after the one before it ended.
            let mut all_saw = true;
            for id in [fast, leader, slow] {
                let node = cluster.node(id)?;
                let leased = node.holds_follower_lease();
                node.read_barrier().await?;
                let saw = node.reader().upload(&name)?.is_some();
                if let Some(first) = seen_by {
                    if id == slow && leased {
                        slow_under_lease += 1;
                    }
                    assert!(
                        saw,
                        "write {i}: a read on node {first} returned it, then a later read on node {id} \
                         (follower lease: {leased}) missed it"
                    );
                }
                if saw {
                    seen_by.get_or_insert(id);
                }
                all_saw &= saw;
            }
            rounds += 1;
            if all_saw && writing.is_finished() {
                break;
            }
            anyhow::ensure!(rounds < 10_000, "write {i} never became visible everywhere");
        }
        writing.await??;
    }
    // The case that matters was tested: the slow holder read under its lease after
    // another node had shown the write.
    assert!(
        slow_under_lease >= 5,
        "only {slow_under_lease} reads on the slow follower under its lease after the write showed elsewhere"
    );
    Ok(())
}

/// A follower cut off from the leader keeps answering under its lease only until
/// the lease runs out, and the leader acknowledges a write the follower cannot
/// apply only after that: no read that starts after the acknowledgement misses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_follower_stops_reading_under_its_lease_before_the_leader_acknowledges_without_it()
-> anyhow::Result<()> {
    let cluster = TestCluster::start(3, fast_options()).await?;
    let leader = cluster.leader(WAIT).await?;
    let cut = cluster.ids().into_iter().find(|id| *id != leader).expect("a follower");
    let follower = cluster.node(cut)?.clone();
    lease_on(&follower).await?;
    cluster.faults.drop_link(leader, cut);
    cluster.faults.drop_link(cut, leader);
    // Under the lease the cut-off follower still answers: a read index would fail.
    follower.read_barrier().await?;

    let (stop, reader) = keep_reading(follower, "upload-40", Duration::from_millis(2));
    let writing = Instant::now();
    cluster.node(leader)?.propose(upload(40)).await?;
    let acknowledged = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let reads = reader.await??;
    assert!(
        acknowledged - writing >= Duration::from_millis(50),
        "the write did not wait for the cut-off lease holder ({:?})",
        acknowledged - writing
    );
    assert_lease_ran_out_before(&reads, acknowledged, "follower");
    Ok(())
}

/// A lease holder that stops receiving the leader's appends, but still reaches the
/// leader and keeps asking for leases, holds writes back once, for about a lease:
/// the leader stops renewing a holder it waits for, and gives none to a holder that
/// stalled it until it has logged everything committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_that_stops_logging_holds_writes_back_once() -> anyhow::Result<()> {
    let options = fast_options();
    let cluster = TestCluster::start(3, options.clone()).await?;
    let leader = cluster.leader(WAIT).await?;
    let stuck = cluster.ids().into_iter().find(|id| *id != leader).expect("a follower");
    let follower = cluster.node(stuck)?.clone();
    lease_on(&follower).await?;
    // Appends (and lease grants) from the leader are lost; its requests still arrive.
    cluster.faults.drop_link(leader, stuck);
    let (stop, reader) = keep_reading(follower, "upload-60", Duration::from_millis(5));

    let first = Instant::now();
    cluster.node(leader)?.propose(upload(60)).await?;
    let first = first.elapsed();
    let rest = Instant::now();
    for i in 1..6 {
        cluster.node(leader)?.propose(upload(60 + i)).await?;
    }
    let rest = rest.elapsed();
    stop.store(true, Ordering::Relaxed);
    reader.await??;
    assert!(
        first >= options.follower_lease / 4,
        "the first write did not wait for the holder ({first:?})"
    );
    // Each of them would wait a whole lease if the holder were still registered.
    assert!(
        rest < options.follower_lease * 2,
        "5 later writes took {rest:?}: the holder that stopped logging still held them back"
    );
    Ok(())
}

/// A follower forwarding a write to a leader that went silent (messages vanish,
/// nothing is refused) answers "unavailable" once the others elected a new leader,
/// instead of waiting on the old one; a retry then goes to the new leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_forwarded_to_a_silent_leader_fails_fast_once_another_leads() -> anyhow::Result<()> {
    // A request timeout far beyond an election: the answer must come from the
    // leader change, not from the timeout.
    let options = RaftOptions {
        request_timeout: Duration::from_secs(20),
        ..fast_options()
    };
    let cluster = TestCluster::start(3, options).await?;
    let old = cluster.leader(WAIT).await?;
    let rest: Vec<u64> = cluster.ids().into_iter().filter(|id| *id != old).collect();
    for id in &rest {
        cluster.faults.delay(old, *id, Duration::from_secs(60));
        cluster.faults.delay(*id, old, Duration::from_secs(60));
    }
    let follower = cluster.node(rest[0])?.clone();
    let started = Instant::now();
    let res = follower.propose(upload(70)).await;
    let waited = started.elapsed();
    assert!(
        matches!(res, Err(ClusterError::Unavailable(_))),
        "a write forwarded into the silence answered {res:?}"
    );
    assert!(
        waited < Duration::from_secs(10),
        "it waited {waited:?} on the silent leader"
    );
    cluster.leader_among(&rest, WAIT).await?;
    follower.propose(upload(71)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_links_still_commit_and_a_minority_cannot() -> anyhow::Result<()> {
    let cluster = TestCluster::start(3, fast_options()).await?;
    let leader = cluster.leader(WAIT).await?;
    for a in cluster.ids() {
        for b in cluster.ids() {
            if a != b {
                cluster.faults.delay(a, b, Duration::from_millis(30));
            }
        }
    }
    for i in 0..5 {
        cluster.node(leader)?.propose(upload(20 + i)).await?;
    }
    cluster.faults.heal();
    // Cut both followers off from the leader: it keeps its term but has no quorum.
    let followers: Vec<u64> = cluster.ids().into_iter().filter(|id| *id != leader).collect();
    for f in &followers {
        cluster.faults.drop_link(leader, *f);
        cluster.faults.drop_link(*f, leader);
    }
    let res = cluster.node(leader)?.propose(upload(30)).await;
    assert!(
        matches!(res, Err(ClusterError::Unavailable(_))),
        "minority write answered {res:?}"
    );
    cluster.faults.heal();
    let leader = cluster.leader(WAIT).await?;
    cluster.node(leader)?.propose(upload(31)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_member_catches_up_through_a_snapshot_of_a_compacted_log() -> anyhow::Result<()> {
    let mut options = fast_options();
    options.snapshot_after_logs = 20;
    options.logs_to_keep = 5;
    let mut cluster = TestCluster::start(3, options).await?;
    let leader = cluster.leader(WAIT).await?;
    for i in 0..120 {
        cluster.node(leader)?.propose(upload(100 + i)).await?;
    }
    // The log was compacted behind snapshots.
    let raft = cluster.node(leader)?.raft().clone();
    let purged = raft.metrics().borrow().purged.map(|l| l.index).unwrap_or(0);
    assert!(purged > 50, "log purged only up to {purged}");

    cluster.add_member(4).await?;
    let last = applied(&cluster, leader);
    cluster.wait_applied(4, last, WAIT).await?;
    let status = cluster.node(4)?.status();
    assert!(status.members.contains_key(&4), "member 4 is a voter: {status:?}");
    assert!(
        cluster.node(4)?.reader().upload("upload-100")?.is_some(),
        "state from the snapshot"
    );
    assert!(
        cluster.node(4)?.reader().upload("upload-219")?.is_some(),
        "state from the log"
    );

    // And a member can leave.
    let leader = cluster.leader(WAIT).await?;
    let leaving = cluster.ids().into_iter().find(|id| *id != leader).expect("a follower");
    cluster
        .node(leader)?
        .change_membership(berth_cluster::MembershipChange::Remove {
            id: leaving,
            force: false,
        })
        .await?;
    cluster.stop_member(leaving).await?;
    cluster.node(leader)?.propose(upload(500)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_stays_bounded_under_a_long_stream_of_updates() -> anyhow::Result<()> {
    let mut options = fast_options();
    options.snapshot_after_logs = 50;
    options.logs_to_keep = 10;
    let cluster = TestCluster::start(3, options).await?;
    let leader = cluster.leader(WAIT).await?;
    cluster.node(leader)?.propose(upload(1)).await?;
    // One key updated over and over, through every member in turn.
    let ids = cluster.ids();
    for offset in 1..=600u64 {
        let via = ids[offset as usize % ids.len()];
        let progress = Command::UploadProgress {
            id: "upload-1".into(),
            offset,
            at: offset,
        };
        cluster.node(via)?.propose(progress).await?;
    }
    let last = applied(&cluster, cluster.leader(WAIT).await?);
    for id in ids {
        cluster.wait_applied(id, last, WAIT).await?;
        let node = cluster.node(id)?;
        let m = node.raft().metrics().borrow().clone();
        let kept = m.last_log_index.unwrap_or(0) - m.purged.map_or(0, |p| p.index);
        // A snapshot every 50 entries, 10 kept behind it: never the whole stream.
        assert!(kept <= 50 + 10 + 20, "member {id} keeps {kept} log entries");
        let upload = node.reader().upload("upload-1")?.expect("upload state");
        assert_eq!(upload.offset, 600, "member {id}");
    }
    Ok(())
}

/// A follower's promise not to vote for another leader (which the leader's read lease
/// rests on) lives in memory; a member restarting with a saved vote for another node
/// keeps out of elections for the promise's length before it starts Raft.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_follower_honours_its_last_vote_promise() -> anyhow::Result<()> {
    let options = RaftOptions {
        election_timeout_min: Duration::from_millis(400),
        election_timeout_max: Duration::from_millis(800),
        ..fast_options()
    };
    let waited = start_after_saved_vote(2, &options).await?;
    assert!(
        waited >= options.election_timeout_max,
        "restarted after voting for node 2, it started Raft after {waited:?}"
    );
    Ok(())
}

/// Open node 1 on a store whose saved vote (term 3, committed) is for `voted_for`;
/// how long it took to start.
async fn start_after_saved_vote(voted_for: u64, options: &RaftOptions) -> anyhow::Result<Duration> {
    use berth_cluster::ClusterNode;
    use berth_meta::MetaStore;
    use openraft::Vote;
    use openraft::storage::RaftLogStorage;

    let dir = tempfile::tempdir()?;
    {
        let store = MetaStore::open(dir.path())?;
        store.log_store().save_vote(&Vote::new_committed(3, voted_for)).await?;
    }
    let started = Instant::now();
    let node = ClusterNode::open(1, dir.path(), options.clone()).await?;
    let waited = started.elapsed();
    node.shutdown().await;
    Ok(waited)
}

/// A leader that restarts resumes its term at once, but the follower leases it
/// granted lived in its memory: it waits them out before starting Raft.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_leader_waits_out_the_follower_leases_it_may_have_granted() -> anyhow::Result<()> {
    let options = RaftOptions {
        follower_lease: Duration::from_millis(150),
        ..fast_options()
    };
    let waited = start_after_saved_vote(1, &options).await?;
    assert!(
        waited >= options.follower_lease,
        "restarted after leading, it started Raft after {waited:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_read_lease_longer_than_the_election_timeout_is_refused() -> anyhow::Result<()> {
    let options = RaftOptions {
        read_lease: Duration::from_millis(301),
        ..fast_options()
    };
    let dir = tempfile::tempdir()?;
    match berth_cluster::ClusterNode::open(1, dir.path(), options).await {
        Err(ClusterError::Config(m)) => assert!(m.contains("read lease"), "{m}"),
        Err(e) => panic!("refused with {e}"),
        Ok(_) => panic!("a 301 ms lease with a 300 ms election timeout was accepted"),
    }
    Ok(())
}

/// Answers a handed-over request once the test lets it.
struct HeldHandler {
    release: tokio::sync::Mutex<Option<tokio::sync::oneshot::Receiver<()>>>,
}

#[async_trait::async_trait]
impl berth_cluster::HandOverHandler for HeldHandler {
    async fn handle(
        &self,
        header: Vec<u8>,
        _body: berth_cluster::BodyStream,
    ) -> Result<Vec<u8>, berth_cluster::RemoteError> {
        if let Some(release) = self.release.lock().await.take() {
            let _ = release.await;
        }
        Ok(header)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_a_node_waits_for_the_hand_overs_it_runs() -> anyhow::Result<()> {
    let cluster = TestCluster::start(2, fast_options()).await?;
    let (release, held) = tokio::sync::oneshot::channel();
    let owner = cluster.node(1)?.clone();
    owner.set_hand_over_handler(Arc::new(HeldHandler {
        release: tokio::sync::Mutex::new(Some(held)),
    }));
    let channel = cluster.node(2)?.connect_owner(1).await.map_err(anyhow::Error::msg)?;
    let body: berth_cluster::BodyStream = Box::pin(futures::stream::empty());
    let hand_over = tokio::spawn(channel.send(b"request".to_vec(), body));
    // Until the owner runs it, nothing is in flight to wait for.
    let deadline = Instant::now() + WAIT;
    while !owner.hand_over_in_flight() {
        anyhow::ensure!(Instant::now() < deadline, "the hand-over never reached the owner");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let drain = tokio::spawn(async move { owner.drain_hand_overs().await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!drain.is_finished(), "the drain ended with a hand-over running");
    let _ = release.send(());
    assert_eq!(hand_over.await??, b"request");
    tokio::time::timeout(WAIT, drain).await??;
    Ok(())
}
