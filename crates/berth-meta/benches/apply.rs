//! State-machine apply: the work every node does for each committed Raft entry.
//!
//! Entries go through `StateMachineStore::apply` (openraft's `RaftStateMachine`) on a
//! RocksDB in a temp dir, as in production. Run: `cargo bench -p berth-meta --bench apply`.

use std::hint::black_box;

use berth_meta::Command;
use berth_meta::MetaStore;
use berth_meta::StateMachineStore;
use berth_meta::TypeConfig;
use berth_oci::Descriptor;
use berth_oci::Digest;
use berth_oci::RepoName;
use berth_oci::Tag;
use berth_oci::media_types;
use criterion::BatchSize;
use criterion::Criterion;
use criterion::criterion_group;
use criterion::criterion_main;
use openraft::CommittedLeaderId;
use openraft::Entry;
use openraft::EntryPayload;
use openraft::LogId;
use openraft::storage::RaftStateMachine;

const LAYERS: usize = 10;
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

struct Fixture {
    _dir: tempfile::TempDir,
    sm: StateMachineStore,
    next: u64,
    rt: tokio::runtime::Runtime,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = MetaStore::open(dir.path()).expect("open store");
        let sm = store.state_machine().expect("state machine");
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        Fixture {
            _dir: dir,
            sm,
            next: 1,
            rt,
        }
    }

    fn entry(&mut self, cmd: Command) -> Entry<TypeConfig> {
        let e = Entry::<TypeConfig> {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), self.next),
            payload: EntryPayload::Normal(cmd),
        };
        self.next += 1;
        e
    }

    fn apply(&mut self, cmds: Vec<Command>) {
        let entries: Vec<_> = cmds.into_iter().map(|c| self.entry(c)).collect();
        let out = self.rt.block_on(self.sm.apply(entries)).expect("apply");
        black_box(out);
    }
}

fn repo() -> RepoName {
    RepoName::parse("team/app").expect("repo")
}

fn layer_digests() -> Vec<Digest> {
    (0..LAYERS)
        .map(|i| Digest::sha256_of(format!("layer-{i}").as_bytes()))
        .collect()
}

/// A real-looking 10-layer OCI manifest; `n` makes each one distinct.
fn manifest_bytes(config: &Digest, layers: &[Digest], n: u64) -> Vec<u8> {
    let layer = |d: &Digest| Descriptor::new(OCI_LAYER, d.clone(), 1 << 20);
    let body = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_types::OCI_MANIFEST,
        "config": Descriptor::new(media_types::OCI_CONFIG, config.clone(), 1234),
        "layers": layers.iter().map(layer).collect::<Vec<_>>(),
        "annotations": {"n": n.to_string()},
    });
    serde_json::to_vec(&body).expect("json")
}

fn put_manifest(bytes: Vec<u8>, tag: Option<&str>, blobs: Vec<Digest>) -> Command {
    Command::PutManifest {
        repo: repo(),
        digest: Digest::sha256_of(&bytes),
        media_type: media_types::OCI_MANIFEST.into(),
        bytes,
        tag: tag.map(|t| Tag::parse(t).expect("tag")),
        subject: None,
        referrer: None,
        blobs,
        children: vec![],
        declared_sizes: vec![],
        at: 1_700_000_000_000,
    }
}

/// Links the config and the layers to the repository, as pushes do before the manifest.
fn linked_fixture() -> (Fixture, Digest, Vec<Digest>) {
    let mut f = Fixture::new();
    let config = Digest::sha256_of(b"config");
    let layers = layer_digests();
    let commits = std::iter::once(&config)
        .chain(&layers)
        .map(|d| Command::CommitBlob {
            upload_id: None,
            repo: repo(),
            digest: d.clone(),
            size: 1 << 20,
            at: 1,
        })
        .collect();
    f.apply(commits);
    (f, config, layers)
}

fn bench_apply(c: &mut Criterion) {
    let mut g = c.benchmark_group("apply");

    let (mut f, config, layers) = linked_fixture();
    let mut blobs = layers.clone();
    blobs.push(config.clone());
    let mut n = 0u64;
    g.bench_function("put_manifest_10_layers_tagged", |b| {
        b.iter_batched(
            || {
                n += 1;
                put_manifest(manifest_bytes(&config, &layers, n), Some("latest"), blobs.clone())
            },
            |cmd| f.apply(vec![cmd]),
            BatchSize::SmallInput,
        )
    });

    // Tag writes: the manifest exists; each write moves one of 16 tags between two
    // manifests.
    let (mut f, config, layers) = linked_fixture();
    let mut blobs = layers.clone();
    blobs.push(config.clone());
    let two = [manifest_bytes(&config, &layers, 1), manifest_bytes(&config, &layers, 2)];
    f.apply(vec![
        put_manifest(two[0].clone(), Some("a"), blobs.clone()),
        put_manifest(two[1].clone(), Some("b"), blobs.clone()),
    ]);
    let mut i = 0usize;
    g.bench_function("tag_write", |b| {
        b.iter_batched(
            || {
                i += 1;
                put_manifest(two[i % 2].clone(), Some(&format!("t{}", i % 16)), blobs.clone())
            },
            |cmd| f.apply(vec![cmd]),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("tag_write_batch_of_64", |b| {
        b.iter_batched(
            || {
                (0..64)
                    .map(|_| {
                        i += 1;
                        put_manifest(two[i % 2].clone(), Some(&format!("t{}", i % 16)), blobs.clone())
                    })
                    .collect::<Vec<_>>()
            },
            |cmds| f.apply(cmds),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench_apply);
criterion_main!(benches);
