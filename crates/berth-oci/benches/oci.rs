//! The hot pure code of berth-oci: digest verification, manifest parsing and
//! validation, name and reference parsing. Run: `cargo bench -p berth-oci --bench oci`.

use std::hint::black_box;

use berth_oci::Digest;
use berth_oci::ParsedManifest;
use berth_oci::Reference;
use berth_oci::RepoName;
use berth_oci::Tag;
use berth_oci::media_types;
use criterion::Criterion;
use criterion::Throughput;
use criterion::criterion_group;
use criterion::criterion_main;
use serde_json::json;

const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// Deterministic pseudo-random bytes (xorshift64).
fn data(len: usize) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn digest_of(i: usize) -> String {
    Digest::sha256_of(format!("blob-{i}").as_bytes()).to_string()
}

fn image_manifest(layers: usize) -> Vec<u8> {
    let body = json!({
        "schemaVersion": 2,
        "mediaType": media_types::OCI_MANIFEST,
        "config": {"mediaType": media_types::OCI_CONFIG, "digest": digest_of(0), "size": 1469},
        "layers": (1..=layers).map(|i| json!({
            "mediaType": OCI_LAYER,
            "digest": digest_of(i),
            "size": 1_000_000 + i,
        })).collect::<Vec<_>>(),
        "annotations": {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"},
    });
    serde_json::to_vec(&body).expect("json")
}

fn index(entries: usize) -> Vec<u8> {
    let archs = ["amd64", "arm64", "ppc64le", "s390x", "riscv64"];
    let body = json!({
        "schemaVersion": 2,
        "mediaType": media_types::OCI_INDEX,
        "manifests": (0..entries).map(|i| json!({
            "mediaType": media_types::OCI_MANIFEST,
            "digest": digest_of(100 + i),
            "size": 2000 + i,
            "platform": {"architecture": archs[i % archs.len()], "os": "linux"},
        })).collect::<Vec<_>>(),
    });
    serde_json::to_vec(&body).expect("json")
}

fn bench_digest(c: &mut Criterion) {
    let mut g = c.benchmark_group("digest_verify");
    for (name, len) in [("1MiB", 1usize << 20), ("16MiB", 16 << 20)] {
        let bytes = data(len);
        let d = Digest::sha256_of(&bytes);
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(name, |b| b.iter(|| assert!(d.verify(black_box(&bytes)))));
    }
    g.finish();
}

fn bench_manifest(c: &mut Criterion) {
    let mut g = c.benchmark_group("manifest_parse");
    let m = image_manifest(10);
    g.throughput(Throughput::Bytes(m.len() as u64));
    g.bench_function("image_10_layers", |b| {
        b.iter(|| ParsedManifest::parse(black_box(&m), Some(media_types::OCI_MANIFEST)).expect("valid"))
    });
    let i = index(20);
    g.throughput(Throughput::Bytes(i.len() as u64));
    g.bench_function("index_20_entries", |b| {
        b.iter(|| ParsedManifest::parse(black_box(&i), Some(media_types::OCI_INDEX)).expect("valid"))
    });
    g.finish();
}

fn bench_names(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse");
    let digest = digest_of(1);
    g.bench_function("repo_name", |b| {
        b.iter(|| RepoName::parse(black_box("library/team-a/app.server_v2")).expect("valid"))
    });
    g.bench_function("tag", |b| {
        b.iter(|| Tag::parse(black_box("v1.2.3-alpine3.19")).expect("valid"))
    });
    g.bench_function("reference_tag", |b| {
        b.iter(|| Reference::parse(black_box("latest")).expect("valid"))
    });
    g.bench_function("reference_digest", |b| {
        b.iter(|| Reference::parse(black_box(&digest)).expect("valid"))
    });
    g.bench_function("digest", |b| {
        b.iter(|| Digest::parse(black_box(&digest)).expect("valid"))
    });
    g.finish();
}

criterion_group!(benches, bench_digest, bench_manifest, bench_names);
criterion_main!(benches);
