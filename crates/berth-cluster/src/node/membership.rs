//! Membership changes that cannot stop the cluster.
//!
//! A change is made on the leader (any node forwards it there) and is refused
//! before it is proposed when it could leave the cluster unable to commit:
//! - an address that is no `host:port` is refused (`400`), before anything is
//!   stored;
//! - a new node joins as a learner and is promoted to voter only once it holds
//!   every entry the leader had when it was added. A node that does not get there
//!   within `catch_up_timeout` (nothing listens at its address, it is still
//!   copying a snapshot) stays a learner: it does not count for any quorum and can
//!   be removed, or added again once it runs;
//! - a change after which fewer than a majority of the voters would be reachable
//!   right now is refused (`409`) unless it is forced: adding a voter while others
//!   are down, removing a live voter while another is down. A change commits in
//!   both the old and the new voter set (joint consensus), so both need a reachable
//!   majority. Forcing is for an operator who knows the unreachable members come
//!   back; a forced change that cannot commit answers `503` after the request
//!   timeout and completes once they do.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use berth_meta::NodeId;
use berth_meta::NodeInfo;
use berth_proto::cluster::v1::MembershipRequest;
use openraft::ChangeMembers;
use openraft::error::ClientWriteError;
use openraft::error::RaftError;
use serde::Deserialize;
use serde::Serialize;

use super::ClusterNode;
use super::ForwardOr;
use super::leader_info;
use super::unavailable;
use crate::ClusterError;
use crate::network::traced_client;

/// A change of the cluster's members, made on the leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MembershipChange {
    /// Add a node: it joins as a learner, catches up (through a snapshot when the log
    /// was compacted), then becomes a voter.
    Add {
        id: NodeId,
        info: NodeInfo,
        /// Promote it even when the voters would then not have a reachable majority.
        #[serde(default)]
        force: bool,
    },
    /// Remove a node from the voters and from the cluster.
    Remove {
        id: NodeId,
        /// Remove it even when the remaining voters would not have a reachable
        /// majority.
        #[serde(default)]
        force: bool,
    },
}

/// Checks that `addr` is `host:port` as members dial it: an IPv4 address, an IPv6
/// address in brackets or a DNS name, and a port from 1 to 65535.
pub fn validate_address(addr: &str) -> Result<(), String> {
    let fail = |why: &str| Err(format!("{addr:?} is not an address like 10.0.0.1:7000: {why}"));
    if addr.parse::<std::net::SocketAddr>().is_ok() {
        return if addr.ends_with(":0") { fail("port 0") } else { Ok(()) };
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return fail("no port");
    };
    match port.parse::<u16>() {
        Ok(0) | Err(_) => return fail("the port is not a number from 1 to 65535"),
        Ok(_) => {}
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
        return fail("the host is neither an IP address nor a DNS name");
    }
    Ok(())
}

/// [`validate_address`] of a member's HTTP address, which may start with
/// `http://` or `https://`.
pub fn validate_http_address(addr: &str) -> Result<(), String> {
    let bare = ["http://", "https://"]
        .iter()
        .find_map(|s| addr.strip_prefix(s))
        .unwrap_or(addr);
    validate_address(bare)
}

/// Whether `voters`, of which `live` answer now, keep a majority that answers.
fn keeps_quorum(voters: &BTreeSet<NodeId>, live: &BTreeSet<NodeId>) -> bool {
    voters.intersection(live).count() * 2 > voters.len()
}

impl MembershipChange {
    fn validate(&self) -> Result<(), ClusterError> {
        match self {
            MembershipChange::Add { id, info, .. } => {
                if *id == 0 {
                    return Err(ClusterError::InvalidMember("node ids start at 1".into()));
                }
                validate_address(&info.grpc_addr)
                    .map_err(|e| ClusterError::InvalidMember(format!("grpc_addr: {e}")))?;
                if !info.http_addr.is_empty() {
                    validate_http_address(&info.http_addr)
                        .map_err(|e| ClusterError::InvalidMember(format!("http_addr: {e}")))?;
                }
                Ok(())
            }
            MembershipChange::Remove { .. } => Ok(()),
        }
    }
}

impl ClusterNode {
    /// Apply a membership change, forwarding it to the leader when this node is not.
    pub async fn change_membership(&self, change: MembershipChange) -> Result<(), ClusterError> {
        match self.change_membership_here(change.clone()).await {
            Err(ForwardOr::Forward(leader)) => {
                let leader = leader.ok_or_else(|| unavailable("no leader known"))?;
                tracing::info!(leader = %leader.grpc_addr, ?change, "forwarding membership change to the leader");
                let ch = self.inner.peers.channel(&leader.grpc_addr)?;
                let bytes = rmp_serde::to_vec_named(&change).map_err(unavailable)?;
                traced_client(ch)
                    .change_membership(MembershipRequest { change: bytes })
                    .await
                    .map_err(|s| ClusterError::from_status(&s, &format!("leader {}", leader.grpc_addr)))?;
                // Answered once this node's membership shows the change, like every
                // forwarded write is answered once applied here: the status the
                // caller reads next from this node must not show the old members.
                // A node that removed itself may never hear the final membership.
                if matches!(change, MembershipChange::Remove { id, .. } if id == self.inner.id) {
                    return Ok(());
                }
                let shown = move |m: &openraft::RaftMetrics<NodeId, NodeInfo>| {
                    let config = m.membership_config.membership();
                    match &change {
                        MembershipChange::Add { id, .. } => config.voter_ids().any(|v| v == *id),
                        MembershipChange::Remove { id, .. } => !config.nodes().any(|(n, _)| n == id),
                    }
                };
                self.inner
                    .raft
                    .wait(Some(self.inner.options.request_timeout))
                    .metrics(shown, "membership change shown on this node")
                    .await
                    .map_err(unavailable)?;
                Ok(())
            }
            Err(ForwardOr::Failed(e)) => Err(e),
            Ok(()) => Ok(()),
        }
    }

    /// The change on this node, which must be the leader.
    pub(crate) async fn change_membership_here(&self, change: MembershipChange) -> Result<(), ForwardOr> {
        change.validate().map_err(ForwardOr::Failed)?;
        let raft = &self.inner.raft;
        let to_forward = |e: RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>| match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                ForwardOr::Forward(f.leader_node.clone().or_else(|| leader_info(raft, f.leader_id)))
            }
            RaftError::APIError(e) => ForwardOr::Failed(ClusterError::Config(e.to_string())),
            RaftError::Fatal(e) => ForwardOr::Failed(ClusterError::Fatal(e.to_string())),
        };
        let (members, voters) = {
            let m = raft.metrics();
            let m = m.borrow();
            let config = m.membership_config.membership();
            let members: BTreeMap<NodeId, NodeInfo> = config.nodes().map(|(id, n)| (*id, n.clone())).collect();
            (members, config.voter_ids().collect::<BTreeSet<NodeId>>())
        };
        match change {
            MembershipChange::Add { id, info, force } => {
                if let Some(known) = members.get(&id)
                    && known.grpc_addr != info.grpc_addr
                {
                    return Err(ForwardOr::Failed(ClusterError::Config(format!(
                        "node {id} is already a member at {}: remove it first",
                        known.grpc_addr
                    ))));
                }
                if voters.contains(&id) {
                    tracing::info!(node = id, "already a voter at this address");
                    return Ok(());
                }
                tracing::info!(node = id, grpc = %info.grpc_addr, "adding a learner");
                let added = raft.add_learner(id, info.clone(), false).await.map_err(to_forward)?;
                self.wait_caught_up(id, &info, added.log_id.index)
                    .await
                    .map_err(ForwardOr::Failed)?;
                let mut after = voters.clone();
                after.insert(id);
                self.check_quorum(
                    &members,
                    [&voters, &after],
                    Some(id),
                    force,
                    &format!("promoting node {id}"),
                )
                .await
                .map_err(ForwardOr::Failed)?;
                tracing::info!(node = id, "learner caught up; promoting to voter");
                self.commit_change(ChangeMembers::AddVoterIds(BTreeSet::from([id])), to_forward)
                    .await?;
            }
            MembershipChange::Remove { id, force } => {
                tracing::info!(node = id, "removing a node");
                let change = if voters.contains(&id) {
                    let mut after = voters.clone();
                    after.remove(&id);
                    self.check_quorum(&members, [&voters, &after], None, force, &format!("removing node {id}"))
                        .await
                        .map_err(ForwardOr::Failed)?;
                    ChangeMembers::RemoveVoters(BTreeSet::from([id]))
                } else {
                    ChangeMembers::RemoveNodes(BTreeSet::from([id]))
                };
                self.commit_change(change, to_forward).await?;
            }
        }
        Ok(())
    }

    /// Propose `change` and wait for it to commit, at most the request timeout.
    async fn commit_change(
        &self,
        change: ChangeMembers<NodeId, NodeInfo>,
        to_forward: impl Fn(RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>) -> ForwardOr,
    ) -> Result<(), ForwardOr> {
        let timeout = self.inner.options.request_timeout;
        match tokio::time::timeout(timeout, self.inner.raft.change_membership(change, false)).await {
            Ok(done) => done.map(|_| ()).map_err(to_forward),
            Err(_) => Err(ForwardOr::Failed(ClusterError::Unavailable(format!(
                "the membership change did not commit within {timeout:?}: it completes once a majority of \
                 the old and of the new voters answers"
            )))),
        }
    }

    /// Wait until the leader knows learner `id` holds the log up to `index` (the
    /// entry that added it), at most `catch_up_timeout`.
    async fn wait_caught_up(&self, id: NodeId, info: &NodeInfo, index: u64) -> Result<(), ClusterError> {
        let timeout = self.inner.options.catch_up_timeout;
        let mut metrics = self.inner.raft.metrics();
        let matched = |m: &openraft::RaftMetrics<NodeId, NodeInfo>| {
            m.replication
                .as_ref()
                .and_then(|r| r.get(&id).cloned().flatten())
                .map(|l| l.index)
        };
        let waited = tokio::time::timeout(
            timeout,
            metrics.wait_for(|m| m.replication.is_none() || matched(m).is_some_and(|i| i >= index)),
        )
        .await
        .map(|done| done.is_ok());
        let m = metrics.borrow().clone();
        match waited {
            Ok(true) if m.replication.is_some() => Ok(()),
            Ok(_) => Err(ClusterError::NotLeader(format!(
                "this node stopped leading while node {id} caught up: it stays a learner; add it again"
            ))),
            Err(_) => {
                tracing::warn!(node = id, grpc = %info.grpc_addr, ?timeout, "new node did not catch up; it stays a learner");
                Err(ClusterError::Config(format!(
                    "node {id} at {} did not catch up with the leader's log within {timeout:?} (it holds {} of \
                     {index} entries): it stays a learner and does not vote; start it and add it again, or \
                     remove it",
                    info.grpc_addr,
                    matched(&m).map_or_else(|| "none".to_string(), |i| i.to_string()),
                )))
            }
        }
    }

    /// Refuse a change unless both the voters `before` and `after` it have a
    /// majority that answers now (it commits in both), unless `force`. `fresh` has
    /// just been seen caught up.
    async fn check_quorum(
        &self,
        members: &BTreeMap<NodeId, NodeInfo>,
        [before, after]: [&BTreeSet<NodeId>; 2],
        fresh: Option<NodeId>,
        force: bool,
        what: &str,
    ) -> Result<(), ClusterError> {
        let all: BTreeSet<NodeId> = before.union(after).copied().collect();
        let live = self.live_members(members, &all, fresh).await;
        let Some(short) = [before, after].into_iter().find(|set| !keeps_quorum(set, &live)) else {
            return Ok(());
        };
        let down: Vec<String> = short.difference(&live).map(|id| id.to_string()).collect();
        let message = format!(
            "{what} needs a reachable majority of the voters {} and only {} of {} answer (not reachable \
             now: {}): the change could not commit, and the cluster could not commit anything after it, \
             until they return",
            if std::ptr::eq(short, before) {
                "before it"
            } else {
                "after it"
            },
            short.intersection(&live).count(),
            short.len(),
            down.join(", "),
        );
        if force {
            tracing::warn!(%message, "forced membership change");
            return Ok(());
        }
        Err(ClusterError::Config(format!(
            "{message}; force the change to make it anyway"
        )))
    }

    /// Which of `ids` answer a status request now (this node always does).
    async fn live_members(
        &self,
        members: &BTreeMap<NodeId, NodeInfo>,
        ids: &BTreeSet<NodeId>,
        fresh: Option<NodeId>,
    ) -> BTreeSet<NodeId> {
        let asked = futures::future::join_all(ids.iter().map(|id| async move {
            let live = if *id == self.inner.id || Some(*id) == fresh {
                true
            } else {
                match members.get(id) {
                    Some(info) => self.ask_status(&info.grpc_addr).await.is_some(),
                    None => false,
                }
            };
            (*id, live)
        }))
        .await;
        asked.into_iter().filter(|(_, live)| *live).map(|(id, _)| id).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_host_and_port() {
        for ok in ["127.0.0.1:7000", "[::1]:7000", "node-1.berth.svc:7000", "localhost:1"] {
            assert!(validate_address(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "127.0.0.1",
            "127.0.0.1:0",
            "127.0.0.1:65536",
            "host:port",
            "a\0b:1",
            "a\nb:1",
            "-a:1",
            "a..b:1",
            ":7000",
            "http://a:1",
            "a b:1",
        ] {
            assert!(validate_address(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_quorum_is_a_reachable_majority_of_the_voters() {
        let set = |ids: &[NodeId]| ids.iter().copied().collect::<BTreeSet<NodeId>>();
        assert!(keeps_quorum(&set(&[1]), &set(&[1])));
        assert!(!keeps_quorum(&set(&[1, 2]), &set(&[1])));
        assert!(keeps_quorum(&set(&[1, 2, 3]), &set(&[1, 3])));
        assert!(!keeps_quorum(&set(&[1, 2, 3, 4]), &set(&[1, 3])));
        assert!(!keeps_quorum(&set(&[1, 2]), &set(&[1, 3, 4])));
    }
}
