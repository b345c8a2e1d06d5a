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
