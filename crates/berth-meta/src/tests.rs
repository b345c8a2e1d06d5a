use berth_oci::Digest;
use berth_oci::RepoName;
use berth_oci::Tag;
use openraft::CommittedLeaderId;
use openraft::Entry;
use openraft::EntryPayload;
use openraft::LogId;
use openraft::RaftSnapshotBuilder;
use openraft::StorageError;
use openraft::storage::RaftStateMachine;
use openraft::testing::StoreBuilder;
use openraft::testing::Suite;
use tempfile::TempDir;

use crate::*;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<NodeId>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = MetaStore::open(dir.path()).expect("open store");
        let sm = store.state_machine().expect("state machine");
        Ok((dir, store.log_store(), sm))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder).expect("openraft storage suite");
}

struct Fixture {
    _dir: TempDir,
    store: MetaStore,
    sm: StateMachineStore,
    next: u64,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = MetaStore::open(dir.path()).expect("open");
        let sm = store.state_machine().expect("sm");
        Fixture {
            _dir: dir,
            store,
            sm,
            next: 1,
        }
    }

    async fn apply(&mut self, cmd: Command) -> CommandResponse {
        let entry = Entry::<TypeConfig> {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), self.next),
            payload: EntryPayload::Normal(cmd),
        };
        self.next += 1;
        let mut out = self.sm.apply([entry]).await.expect("apply");
        out.remove(0)
    }

    fn reader(&self) -> MetaReader {
        self.store.reader()
    }
}

fn repo(s: &str) -> RepoName {
    RepoName::parse(s).unwrap()
}

fn digest(data: &[u8]) -> Digest {
    Digest::sha256_of(data)
}

fn commit(r: &RepoName, d: &Digest) -> Command {
    Command::CommitBlob {
        upload_id: None,
        repo: r.clone(),
        digest: d.clone(),
        size: 3,
        at: 1,
    }
}

fn put_manifest(r: &RepoName, bytes: &[u8], tag: Option<&str>, blobs: Vec<Digest>) -> Command {
    Command::PutManifest {
        repo: r.clone(),
        digest: digest(bytes),
        media_type: berth_oci::media_types::OCI_MANIFEST.into(),
        bytes: bytes.to_vec(),
        tag: tag.map(|t| Tag::parse(t).unwrap()),
        subject: None,
        referrer: None,
        blobs,
        children: vec![],
        declared_sizes: vec![],
        at: 2,
    }
}

#[tokio::test]
async fn manifest_needs_its_blobs_linked() {
    let mut f = Fixture::new();
    let r = repo("team/app");
    let layer = digest(b"layer");
    let resp = f.apply(put_manifest(&r, b"m1", Some("v1"), vec![layer.clone()])).await;
    assert_eq!(resp.0, Err(Rejection::ManifestBlobUnknown(layer.clone())));
    assert!(
        !f.reader().repo_exists(&r).unwrap(),
        "a rejected command changes nothing"
    );

    assert_eq!(f.apply(commit(&r, &layer)).await, CommandResponse::done());
    assert_eq!(
        f.apply(put_manifest(&r, b"m1", Some("v1"), vec![layer])).await,
        CommandResponse::done()
    );
    let tag = f.reader().tag(&r, &Tag::parse("v1").unwrap()).unwrap().unwrap();
    assert_eq!(tag.digest, digest(b"m1"));
    assert_eq!(f.reader().manifest(&r, &digest(b"m1")).unwrap().unwrap().bytes, b"m1");
}

#[tokio::test]
async fn repositories_are_isolated_and_mounts_need_the_source() {
    let mut f = Fixture::new();
    let (a, b) = (repo("a"), repo("b"));
    let d = digest(b"blob");
    f.apply(commit(&a, &d)).await;
    assert!(f.reader().linked_blob(&b, &d).unwrap().is_none());
    let mount_from_b = Command::MountBlob {
        repo: repo("c"),
        from: b.clone(),
        digest: d.clone(),
        at: 3,
    };
    assert_eq!(f.apply(mount_from_b).await.0, Err(Rejection::BlobUnknown(d.clone())));
    let mount_from_a = Command::MountBlob {
        repo: b.clone(),
        from: a.clone(),
        digest: d.clone(),
        at: 3,
    };
    assert_eq!(f.apply(mount_from_a).await, CommandResponse::done());
    assert!(f.reader().linked_blob(&b, &d).unwrap().is_some());
    let unlink = Command::UnlinkBlob {
        repo: a.clone(),
        digest: d.clone(),
    };
    f.apply(unlink).await;
    assert!(f.reader().linked_blob(&a, &d).unwrap().is_none());
    assert!(f.reader().linked_blob(&b, &d).unwrap().is_some());
}

#[tokio::test]
async fn tags_page_in_lexical_order_and_deletes_cascade() {
    let mut f = Fixture::new();
    let r = repo("r");
    for t in ["b", "a", "c", "d"] {
        f.apply(put_manifest(&r, format!("m-{t}").as_bytes(), Some(t), vec![]))
            .await;
    }
    f.apply(put_manifest(&r, b"m-a", Some("alias"), vec![])).await;
    let p = f.reader().tags(&r, None, 2).unwrap();
    assert_eq!(
        (p.items.clone(), p.more),
        (vec!["a".to_string(), "alias".to_string()], true)
    );
    let p = f.reader().tags(&r, Some("alias"), 10).unwrap();
    assert_eq!(
        (p.items, p.more),
        (vec!["b".to_string(), "c".into(), "d".into()], false)
    );

    let del = Command::DeleteManifest {
        repo: r.clone(),
        digest: digest(b"m-a"),
        at: 9,
    };
    match f.apply(del).await.0 {
        Ok(Applied::ManifestDeleted { tags }) => {
            assert_eq!(tags.iter().map(|t| t.as_str()).collect::<Vec<_>>(), vec!["a", "alias"])
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(f.reader().tags(&r, None, 10).unwrap().items, vec!["b", "c", "d"]);
    let again = Command::DeleteTag {
        repo: r.clone(),
        tag: Tag::parse("a").unwrap(),
        at: 9,
    };
    assert!(matches!(f.apply(again).await.0, Err(Rejection::TagUnknown(_))));
}

#[tokio::test]
async fn referrers_are_indexed_by_subject_even_before_it_exists() {
    let mut f = Fixture::new();
    let r = repo("r");
    let subject = digest(b"not pushed yet");
    let sbom = b"sbom";
    let desc = berth_oci::Descriptor::new(berth_oci::media_types::OCI_MANIFEST, digest(sbom), 4);
    let cmd = Command::PutManifest {
        repo: r.clone(),
        digest: digest(sbom),
        media_type: berth_oci::media_types::OCI_MANIFEST.into(),
        bytes: sbom.to_vec(),
        tag: None,
        subject: Some(subject.clone()),
        referrer: Some(desc.clone()),
        blobs: vec![],
        children: vec![],
        declared_sizes: vec![],
        at: 1,
    };
    f.apply(cmd).await;
    assert_eq!(f.reader().referrers(&r, &subject).unwrap(), vec![desc]);
    let del = Command::DeleteManifest {
        repo: r.clone(),
        digest: digest(sbom),
        at: 2,
    };
    f.apply(del).await;
    assert!(f.reader().referrers(&r, &subject).unwrap().is_empty());
}

#[tokio::test]
async fn uploads_progress_and_commit() {
    let mut f = Fixture::new();
    let r = repo("r");
    let create = Command::CreateUpload {
        id: "u1".into(),
        repo: r.clone(),
        node: 1,
        at: 1,
    };
    f.apply(create).await;
    let progress = Command::UploadProgress {
        id: "u1".into(),
        offset: 42,
        at: 5,
    };
    f.apply(progress).await;
    let rec = f.reader().upload("u1").unwrap().unwrap();
    assert_eq!((rec.offset, rec.updated_at), (42, 5));
    let d = digest(b"x");
    let c = Command::CommitBlob {
        upload_id: Some("u1".into()),
        repo: r.clone(),
        digest: d.clone(),
        size: 42,
        at: 6,
    };
    assert_eq!(f.apply(c.clone()).await, CommandResponse::done());
    assert!(f.reader().upload("u1").unwrap().is_none());
    assert_eq!(f.apply(c).await.0, Err(Rejection::UploadUnknown("u1".into())));
}

#[tokio::test]
async fn snapshot_round_trips_into_a_fresh_store() {
    let mut f = Fixture::new();
    let r = repo("team/app");
    f.apply(put_manifest(&r, b"m", Some("v1"), vec![])).await;
    let snap = f.sm.build_snapshot().await.unwrap();

    let mut g = Fixture::new();
    g.sm.install_snapshot(&snap.meta, snap.snapshot).await.unwrap();
    assert_eq!(
        g.reader().tag(&r, &Tag::parse("v1").unwrap()).unwrap().unwrap().digest,
        digest(b"m")
    );
    assert_eq!(g.reader().applied_index().unwrap(), Some(1));
    assert_eq!(g.reader().catalog(None, 10).unwrap().items, vec!["team/app"]);
    // Changes of the snapshot's commands travel with it.
    assert_eq!(g.reader().changes(None, 10).unwrap().len(), 2);
}

#[tokio::test]
async fn a_descriptor_whose_size_disagrees_with_the_stored_blob_is_refused() {
    let mut f = Fixture::new();
    let r = repo("team/sizes");
    let layer = digest(b"layer");
    f.apply(commit(&r, &layer)).await; // 3 bytes
    let mut wrong = put_manifest(&r, b"m-wrong", Some("v1"), vec![layer.clone()]);
    if let Command::PutManifest { declared_sizes, .. } = &mut wrong {
        declared_sizes.push((layer.clone(), 999));
    }
    assert_eq!(
        f.apply(wrong).await.0,
        Err(Rejection::SizeMismatch {
            digest: layer.clone(),
            declared: 999,
            actual: 3
        })
    );
    assert!(f.reader().manifest(&r, &digest(b"m-wrong")).unwrap().is_none());
    assert!(f.reader().tag(&r, &Tag::parse("v1").unwrap()).unwrap().is_none());

    let mut right = put_manifest(&r, b"m-right", Some("v1"), vec![layer.clone()]);
    if let Command::PutManifest { declared_sizes, .. } = &mut right {
        declared_sizes.push((layer, 3));
    }
    assert_eq!(f.apply(right).await, CommandResponse::done());
}

#[tokio::test]
async fn a_blob_a_manifest_references_is_not_unlinked() {
    let mut f = Fixture::new();
    let r = repo("team/in-use");
    let layer = digest(b"layer");
    let loose = digest(b"loose");
    f.apply(commit(&r, &layer)).await;
    f.apply(commit(&r, &loose)).await;
    f.apply(put_manifest(&r, b"m1", Some("v1"), vec![layer.clone()])).await;
    let unlink = |d: &Digest| Command::UnlinkBlob {
        repo: r.clone(),
        digest: d.clone(),
    };
    assert_eq!(
        f.apply(unlink(&layer)).await.0,
        Err(Rejection::BlobInUse {
            digest: layer.clone(),
            manifest: digest(b"m1")
        })
    );
    assert!(f.reader().linked_blob(&r, &layer).unwrap().is_some());
    // A blob no manifest uses goes; once the manifest is gone, its layer may go too.
    assert_eq!(f.apply(unlink(&loose)).await, CommandResponse::done());
    let del = Command::DeleteManifest {
        repo: r.clone(),
        digest: digest(b"m1"),
        at: 5,
    };
    assert!(f.apply(del).await.0.is_ok());
    assert_eq!(f.apply(unlink(&layer)).await, CommandResponse::done());
    assert!(f.reader().linked_blob(&r, &layer).unwrap().is_none());
}

/// Apply `n` tagged manifests spread over `repos` repositories, many entries per
/// call as openraft does.
async fn fill(f: &mut Fixture, n: usize, repos: usize) {
    let mut entries = Vec::new();
    for i in 0..n {
        let r = repo(&format!("org/repo-{}", i % repos));
        let tag = format!("t{i}");
        let cmd = put_manifest(&r, format!("manifest {i}").as_bytes(), Some(tag.as_str()), vec![]);
        entries.push(Entry::<TypeConfig> {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), f.next),
            payload: EntryPayload::Normal(cmd),
        });
        f.next += 1;
        if entries.len() == 1000 {
            f.sm.apply(std::mem::take(&mut entries)).await.expect("apply");
        }
    }
    f.sm.apply(entries).await.expect("apply");
}

fn snapshot_files(f: &Fixture) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(f._dir.path().join("snapshots"))
        .expect("snapshot dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Copy of the bytes of `snap` (a built snapshot), through its `SnapshotFile`.
async fn snapshot_bytes(snap: &mut openraft::Snapshot<TypeConfig>) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    use tokio::io::AsyncSeekExt;
    snap.snapshot.seek(std::io::SeekFrom::Start(0)).await.unwrap();
    let mut out = Vec::new();
    snap.snapshot.read_to_end(&mut out).await.unwrap();
    out
}

/// Receive `bytes` as openraft does (into a file from `begin_receiving_snapshot`) and
/// install them.
async fn receive(
    g: &mut Fixture,
    meta: &openraft::SnapshotMeta<NodeId, NodeInfo>,
    bytes: &[u8],
) -> Result<(), StorageError<NodeId>> {
    use tokio::io::AsyncWriteExt;
    let mut file = g.sm.begin_receiving_snapshot().await?;
    file.write_all(bytes).await.unwrap();
    file.shutdown().await.unwrap();
    g.sm.install_snapshot(meta, file).await
}

#[tokio::test]
async fn a_large_snapshot_streams_into_a_fresh_store_replacing_its_state() {
    let mut f = Fixture::new();
    fill(&mut f, 20_000, 100).await;
    let mut snap = f.sm.build_snapshot().await.unwrap();
    assert_eq!(snap.meta.last_log_id.map(|l| l.index), Some(20_000));
    let bytes = snapshot_bytes(&mut snap).await;
    assert_eq!(snapshot_files(&f).len(), 1, "{:?}", snapshot_files(&f));

    let mut g = Fixture::new();
    let stale = repo("stale/repo");
    g.apply(put_manifest(&stale, b"old", Some("old"), vec![])).await;
    receive(&mut g, &snap.meta, &bytes).await.unwrap();

    let r = g.reader();
    assert!(!r.repo_exists(&stale).unwrap(), "the install replaces the state");
    assert_eq!(r.applied_index().unwrap(), Some(20_000));
    let mut repos = 0;
    let mut last = None;
    loop {
        let page = r.catalog(last.as_deref(), 37).unwrap();
        repos += page.items.len();
        last = page.items.last().cloned();
        if !page.more {
            break;
        }
    }
    assert_eq!(repos, 100);
    for i in [0usize, 7_777, 19_999] {
        let rr = repo(&format!("org/repo-{}", i % 100));
        let tag = r.tag(&rr, &Tag::parse(&format!("t{i}")).unwrap()).unwrap().unwrap();
        let m = r.manifest(&rr, &tag.digest).unwrap().unwrap();
        assert_eq!(m.bytes, format!("manifest {i}").as_bytes());
    }
    assert_eq!(r.changes(None, 100_000).unwrap().len(), 40_000);
    // The follower serves the same snapshot on, from its own file.
    let mut current = g.sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, snap.meta);
    assert_eq!(snapshot_bytes(&mut current).await, bytes);
    assert_eq!(snapshot_files(&g).len(), 1, "{:?}", snapshot_files(&g));
}

#[tokio::test]
async fn a_truncated_or_altered_snapshot_is_refused_and_changes_nothing() {
    let mut f = Fixture::new();
    fill(&mut f, 300, 3).await;
    let mut snap = f.sm.build_snapshot().await.unwrap();
    let bytes = snapshot_bytes(&mut snap).await;

    let mut g = Fixture::new();
    let mine = repo("mine");
    g.apply(put_manifest(&mine, b"kept", Some("v"), vec![])).await;
    let mut flipped = bytes.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x40;
    let mut longer = bytes.clone();
    longer.push(0);
    for (what, damaged) in [
        ("truncated", &bytes[..bytes.len() - 1]),
        ("cut in half", &bytes[..middle]),
        ("a flipped bit", &flipped[..]),
        ("a trailing byte", &longer[..]),
        ("empty", &[][..]),
    ] {
        assert!(receive(&mut g, &snap.meta, damaged).await.is_err(), "{what}: installed");
        assert!(g.reader().repo_exists(&mine).unwrap(), "{what}: state changed");
        assert_eq!(g.reader().applied_index().unwrap(), Some(1), "{what}");
        assert!(snapshot_files(&g).is_empty(), "{what}: {:?}", snapshot_files(&g));
    }
    // A good copy under another snapshot's meta is refused too.
    let mut other = snap.meta.clone();
    other.snapshot_id.push_str("-other");
    assert!(receive(&mut g, &other, &bytes).await.is_err());
    receive(&mut g, &snap.meta, &bytes).await.unwrap();
    assert!(!g.reader().repo_exists(&mine).unwrap());
}

#[tokio::test]
async fn the_snapshot_survives_a_restart_and_only_the_newest_file_is_kept() {
    let mut f = Fixture::new();
    fill(&mut f, 50, 2).await;
    let first = f.sm.build_snapshot().await.unwrap();
    fill(&mut f, 50, 2).await;
    let second = f.sm.build_snapshot().await.unwrap();
    assert_ne!(first.meta.snapshot_id, second.meta.snapshot_id);
    drop((first, second.snapshot));
    assert_eq!(snapshot_files(&f).len(), 1, "{:?}", snapshot_files(&f));

    let Fixture {
        _dir: dir, store, sm, ..
    } = f;
    drop((store, sm));
    // Left by a build or a transfer that a crash interrupted.
    std::fs::write(dir.path().join("snapshots/receive-1.tmp"), b"partial").unwrap();
    let store = MetaStore::open(dir.path()).unwrap();
    let mut sm = store.state_machine().unwrap();
    let current = sm.get_current_snapshot().await.unwrap().expect("a snapshot");
    assert_eq!(current.meta, second.meta);
    let (applied, membership) = sm.applied_state().await.unwrap();
    assert_eq!(applied.map(|l| l.index), Some(100));
    assert_eq!(membership, current.meta.last_membership);
    let g = Fixture {
        _dir: dir,
        store,
        sm,
        next: 101,
    };
    assert_eq!(
        snapshot_files(&g),
        vec![crate::snapshot::file_name(&second.meta.snapshot_id)]
    );
}

#[tokio::test]
async fn an_install_interrupted_halfway_is_finished_when_the_store_opens() {
    let mut f = Fixture::new();
    fill(&mut f, 200, 4).await;
    let snap = f.sm.build_snapshot().await.unwrap();
    let (leader_file, _) = snap.snapshot.finish().await.unwrap();

    let mut g = Fixture::new();
    let mine = repo("mine");
    g.apply(put_manifest(&mine, b"replaced", Some("v"), vec![])).await;
    // The process stops once the install is recorded, before the state is replaced.
    g.sm.stage(&snap.meta, &leader_file, true).unwrap();
    let Fixture {
        _dir: dir, store, sm, ..
    } = g;
    drop((store, sm));

    let store = MetaStore::open(dir.path()).unwrap();
    let r = store.reader();
    assert!(!r.repo_exists(&mine).unwrap());
    assert_eq!(r.applied_index().unwrap(), Some(200));
    assert_eq!(r.catalog(None, 10).unwrap().items.len(), 4);
    let mut sm = store.state_machine().unwrap();
    assert_eq!(sm.get_current_snapshot().await.unwrap().unwrap().meta, snap.meta);
}

#[tokio::test]
async fn referrers_and_uploads_page() {
    let mut f = Fixture::new();
    let r = repo("r");
    let subject = digest(b"subject");
    let mut want = Vec::new();
    for i in 0..5 {
        let bytes = format!("sbom {i}").into_bytes();
        let desc = berth_oci::Descriptor::new(berth_oci::media_types::OCI_MANIFEST, digest(&bytes), 6);
        want.push(desc.clone());
        let cmd = Command::PutManifest {
            repo: r.clone(),
            digest: digest(&bytes),
            media_type: berth_oci::media_types::OCI_MANIFEST.into(),
            bytes,
            tag: None,
            subject: Some(subject.clone()),
            referrer: Some(desc),
            blobs: vec![],
            children: vec![],
            declared_sizes: vec![],
            at: 1,
        };
        f.apply(cmd).await;
        let upload = Command::CreateUpload {
            id: format!("u{i}"),
            repo: r.clone(),
            node: 1,
            at: 1,
        };
        f.apply(upload).await;
    }
    want.sort_by_key(|d| d.digest.to_string());
    let reader = f.reader();
    assert_eq!(reader.referrers(&r, &subject).unwrap(), want);
    let first = reader.referrers_page(&r, &subject, None, 2).unwrap();
    assert_eq!((first.items.as_slice(), first.more), (&want[..2], true));
    let last = first.items.last().map(|d| d.digest.clone());
    let rest = reader.referrers_page(&r, &subject, last.as_ref(), 10).unwrap();
    assert_eq!((rest.items.as_slice(), rest.more), (&want[2..], false));
    let other = digest(b"other subject");
    assert!(reader.referrers_page(&r, &other, None, 10).unwrap().items.is_empty());

    let ids = |page: Vec<(String, UploadRecord)>| page.into_iter().map(|(id, _)| id).collect::<Vec<_>>();
    assert_eq!(ids(reader.uploads_page(None, 2).unwrap()), vec!["u0", "u1"]);
    assert_eq!(ids(reader.uploads_page(Some("u1"), 2).unwrap()), vec!["u2", "u3"]);
    assert_eq!(reader.uploads().unwrap().len(), 5);
}
