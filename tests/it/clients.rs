//! Real clients against a real node: skopeo, podman, oras-py and docker push, pull,
//! list and delete; referrers built by hand on top of a skopeo push. Each flow runs on
//! every blob backend: the local disk, and S3 (SeaweedFS) proxied and redirected.

use std::path::Path;

use berth_testkit::ImageBuilder;
use berth_testkit::OciImage;
use berth_testkit::Registry;
use berth_testkit::Skopeo;
use berth_testkit::image::EMPTY_JSON_DIGEST;
use berth_testkit::image::MEDIA_DOCKER_MANIFEST;
use berth_testkit::image::MEDIA_OCI_EMPTY;
use berth_testkit::image::MEDIA_OCI_INDEX;
use berth_testkit::image::MEDIA_OCI_MANIFEST;
use berth_testkit::image::layer_files;
use berth_testkit::random_bytes;
use berth_testkit::registry::describe;
use berth_testkit::registry::header_str;
use berth_testkit::sha256_digest;
use berth_testkit::tools::remove_blob_info_cache;
use serde_json::Value;
use serde_json::json;

use crate::Setup;
use crate::start_node_on;

crate::on_every_backend!(
    skopeo_oci_push_inspect_pull_list_delete,
    skopeo_v2s2_push_and_pull,
    podman_push_pull_oci_and_v2s2,
    oras_chunked_push_pull_tags,
    docker_push_rmi_pull,
    referrers_for_an_sbom
);

const ACCEPT_ALL_MANIFESTS: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(bytes)))
}

fn unique(label: &str) -> String {
    format!("{label} {}", uuid::Uuid::new_v4())
}

/// A two-layer gzip image: a few MiB of random data and a small text file.
fn test_image(dir: &Path, seed: u64, tag: &str) -> OciImage {
    let big = random_bytes(3 * 1024 * 1024 + 517, seed);
    let text = unique("hello from berth tests");
    ImageBuilder::new()
        .layer(&[("data/big.bin", big.as_slice())])
        .layer(&[("etc/hello.txt", text.as_bytes())])
        .cmd(&["/bin/true"])
        .label("test.seed", seed.to_string())
        .tag(tag)
        .write(dir)
        .expect("writing OCI layout")
}

/// The image an `oci:` layout dir holds under `tag`: (manifest digest, manifest bytes).
fn layout_manifest(dir: &Path, tag: &str) -> (String, Vec<u8>) {
    let index = json(&std::fs::read(dir.join("index.json")).expect("reading index.json"));
    let desc = index["manifests"]
        .as_array()
        .expect("index.manifests")
        .iter()
        .find(|d| d["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("tag {tag} not in {index}"))
        .clone();
    let digest = desc["digest"].as_str().unwrap().to_string();
    let bytes = std::fs::read(blob_path(dir, &digest)).expect("reading manifest blob");
    assert_eq!(sha256_digest(&bytes), digest, "layout manifest blob is corrupt");
    (digest, bytes)
}

fn blob_path(dir: &Path, digest: &str) -> std::path::PathBuf {
    dir.join("blobs/sha256").join(digest.strip_prefix("sha256:").unwrap())
}

/// Every layer of the pulled layout at `dir:tag` is byte-identical to `image`'s.
fn assert_layers_match(dir: &Path, tag: &str, image: &OciImage) {
    let (_, manifest) = layout_manifest(dir, tag);
    let manifest = json(&manifest);
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), image.layers.len(), "layer count");
    for (got, want) in layers.iter().zip(&image.layers) {
        assert_eq!(got["digest"], want.digest.as_str(), "layer digest");
        let bytes = std::fs::read(blob_path(dir, &want.digest)).expect("pulled layer blob");
        assert!(bytes == want.blob, "layer {} bytes differ", want.digest);
    }
    let config_digest = manifest["config"]["digest"].as_str().unwrap();
    assert_eq!(config_digest, image.config_digest, "config digest");
    let config = std::fs::read(blob_path(dir, config_digest)).unwrap();
    assert!(config == image.config, "config bytes differ");
}

fn ok<T>(what: &str, r: anyhow::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e:#}"))
}

async fn skopeo_oci_push_inspect_pull_list_delete(setup: Setup) {
    let node = start_node_on(setup).await;
    let hp = node.host_port();
    let skopeo = Skopeo::new().expect("skopeo");
    let work = tempfile::tempdir().unwrap();
    let image = test_image(&work.path().join("src"), 11, "v1");
    let dst = format!("docker://{hp}/team/skopeo-oci:v1");
    remove_blob_info_cache();

    // Push; --preserve-digests makes skopeo fail rather than rewrite the manifest.
    ok(
        "skopeo copy to registry",
        skopeo.copy(&image.oci_ref(), &dst, &["--preserve-digests"]).await,
    );

    let raw = ok(
        "inspect --raw",
        skopeo.run(&["inspect", "--tls-verify=false", "--raw", &dst]).await,
    );
    assert!(
        raw == image.manifest,
        "inspect --raw differs from the pushed manifest:\n{}\nvs\n{}",
        String::from_utf8_lossy(&raw),
        String::from_utf8_lossy(&image.manifest)
    );
    let config = ok(
        "inspect --config --raw",
        skopeo
            .run(&["inspect", "--tls-verify=false", "--config", "--raw", &dst])
            .await,
    );
    assert!(config == image.config, "config differs");
    let info = json(&ok(
        "inspect",
        skopeo.run(&["inspect", "--tls-verify=false", &dst]).await,
    ));
    assert_eq!(info["Digest"], image.manifest_digest.as_str());
    let layer_digests: Vec<&str> = image.layers.iter().map(|l| l.digest.as_str()).collect();
    assert_eq!(info["Layers"], json!(layer_digests));

    // A second tag through a registry-to-registry copy (blobs already there).
    let dst2 = format!("docker://{hp}/team/skopeo-oci:v2");
    ok(
        "skopeo copy v1 -> v2",
        skopeo.copy(&dst, &dst2, &["--preserve-digests"]).await,
    );

    // Pull both back into a new layout and compare bytes.
    let out = work.path().join("pulled");
    let out_ref = format!("oci:{}:v1", out.display());
    ok("skopeo copy from registry", skopeo.copy(&dst, &out_ref, &[]).await);
    let (digest, manifest) = layout_manifest(&out, "v1");
    assert_eq!(digest, image.manifest_digest, "pulled manifest digest");
    assert!(manifest == image.manifest, "pulled manifest bytes differ");
    assert_layers_match(&out, "v1", &image);
    let out_ref2 = format!("oci:{}:v2", out.display());
    ok("skopeo copy v2 from registry", skopeo.copy(&dst2, &out_ref2, &[]).await);
    assert_eq!(layout_manifest(&out, "v2").0, image.manifest_digest);

    // The registry also serves it by digest, with the right headers.
    let reg = Registry::new(node.base_url());
    let resp = reg
        .get_manifest("team/skopeo-oci", &image.manifest_digest, ACCEPT_ALL_MANIFESTS)
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", describe(resp).await);
    assert_eq!(header_str(&resp, "content-type").as_deref(), Some(MEDIA_OCI_MANIFEST));
    assert_eq!(
        header_str(&resp, "docker-content-digest").as_deref(),
        Some(image.manifest_digest.as_str())
    );

    let tags = json(&ok(
        "list-tags",
        skopeo
            .run(&[
                "list-tags",
                "--tls-verify=false",
                &format!("docker://{hp}/team/skopeo-oci"),
            ])
            .await,
    ));
    let mut tags: Vec<String> = serde_json::from_value(tags["Tags"].clone()).expect("Tags");
    tags.sort();
    assert_eq!(tags, vec!["v1", "v2"]);

    // skopeo delete resolves the tag and DELETEs the manifest by digest: every tag
    // on that digest goes with it.
    ok(
        "skopeo delete",
        skopeo.run(&["delete", "--tls-verify=false", &dst]).await,
    );
    for reference in [
        dst.clone(),
        dst2.clone(),
        format!("docker://{hp}/team/skopeo-oci@{}", image.manifest_digest),
    ] {
        let mut cmd = skopeo.cmd();
        cmd.args(["inspect", "--tls-verify=false", "--raw", &reference]);
        ok(
            "inspect after delete must fail",
            berth_testkit::tools::run_expect_failure(&mut cmd, berth_testkit::tools::CMD_TIMEOUT).await,
        );
    }
    let resp = reg
        .get_manifest("team/skopeo-oci", &image.manifest_digest, ACCEPT_ALL_MANIFESTS)
        .await
        .unwrap();
    assert_eq!(resp.status(), 404, "manifest after delete: {}", describe(resp).await);
}

async fn skopeo_v2s2_push_and_pull(setup: Setup) {
    let node = start_node_on(setup).await;
    let hp = node.host_port();
    let skopeo = Skopeo::new().expect("skopeo");
    let work = tempfile::tempdir().unwrap();
    let image = test_image(&work.path().join("src"), 12, "v1");
    let dst = format!("docker://{hp}/team/skopeo-v2s2:v1");
    remove_blob_info_cache();

    ok(
        "skopeo copy --format v2s2",
        skopeo.copy(&image.oci_ref(), &dst, &["--format", "v2s2"]).await,
    );

    let raw = ok(
        "inspect --raw",
        skopeo.run(&["inspect", "--tls-verify=false", "--raw", &dst]).await,
    );
    let manifest = json(&raw);
    assert_eq!(manifest["mediaType"], MEDIA_DOCKER_MANIFEST);
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.docker.container.image.v1+json"
    );
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), image.layers.len());
    for (got, want) in layers.iter().zip(&image.layers) {
        assert_eq!(got["mediaType"], "application/vnd.docker.image.rootfs.diff.tar.gzip");
        assert_eq!(got["digest"], want.digest.as_str());
    }

    // The registry answers with the stored type and the digest of the stored bytes.
    let reg = Registry::new(node.base_url());
    let resp = reg
        .get_manifest("team/skopeo-v2s2", "v1", ACCEPT_ALL_MANIFESTS)
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", describe(resp).await);
    assert_eq!(
        header_str(&resp, "content-type").as_deref(),
        Some(MEDIA_DOCKER_MANIFEST)
    );
    assert_eq!(
        header_str(&resp, "docker-content-digest"),
        Some(sha256_digest(&raw)),
        "Docker-Content-Digest must be the digest of the served bytes"
    );
    let body = resp.bytes().await.unwrap();
    assert!(body.as_ref() == raw.as_slice());

    // Pull back (converted to OCI by skopeo for the oci: transport); layers identical.
    let out = work.path().join("pulled");
    ok(
        "skopeo copy from registry",
        skopeo.copy(&dst, &format!("oci:{}:v1", out.display()), &[]).await,
    );
    let (_, pulled) = layout_manifest(&out, "v1");
    let pulled = json(&pulled);
    for (got, want) in pulled["layers"].as_array().unwrap().iter().zip(&image.layers) {
        assert_eq!(got["digest"], want.digest.as_str());
        let bytes = std::fs::read(blob_path(&out, &want.digest)).unwrap();
        assert!(bytes == want.blob, "layer bytes differ");
    }
    let files = layer_files(&std::fs::read(blob_path(&out, &image.layers[0].digest)).unwrap()).unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].0, "data/big.bin");
}

async fn podman_push_pull_oci_and_v2s2(setup: Setup) {
    let node = start_node_on(setup).await;
    let hp = node.host_port();
    let podman = berth_testkit::Podman::new().expect("podman");
    let ctx = podman.scratch_dir("ctx").unwrap();
    let hello = unique("hello from podman");
    std::fs::write(ctx.join("hello.txt"), &hello).unwrap();
    std::fs::write(ctx.join("Containerfile"), "FROM scratch\nCOPY hello.txt /hello.txt\n").unwrap();
    let ctx_s = ctx.to_str().unwrap();
    let tag = format!("{hp}/team/podman:v1");
    let tag_v2s2 = format!("{hp}/team/podman-v2s2:v1");
    remove_blob_info_cache();

    ok(
        "podman build",
        podman
            .run(&[
                "build",
                "--network",
                "none",
                "-t",
                &tag,
                "-f",
                &format!("{ctx_s}/Containerfile"),
                ctx_s,
            ])
            .await,
    );
    let id = String::from_utf8(ok(
        "inspect",
        podman.run(&["image", "inspect", "--format", "{{.Id}}", &tag]).await,
    ))
    .unwrap()
    .trim()
    .to_string();

    let digest_file = ctx.join("digest");
    ok(
        "podman push",
        podman
            .run(&[
                "push",
                "--tls-verify=false",
                "--digestfile",
                digest_file.to_str().unwrap(),
                &tag,
            ])
            .await,
    );
    let pushed_digest = std::fs::read_to_string(&digest_file).unwrap().trim().to_string();
    ok(
        "podman push --format v2s2",
        podman
            .run(&[
                "push",
                "--tls-verify=false",
                "--format",
                "v2s2",
                &tag,
                &format!("docker://{tag_v2s2}"),
            ])
            .await,
    );

    let reg = Registry::new(node.base_url());
    let resp = reg
        .get_manifest("team/podman", "v1", ACCEPT_ALL_MANIFESTS)
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", describe(resp).await);
    assert_eq!(header_str(&resp, "content-type").as_deref(), Some(MEDIA_OCI_MANIFEST));
    assert_eq!(
        header_str(&resp, "docker-content-digest").as_deref(),
        Some(pushed_digest.as_str())
    );
    let resp = reg
        .get_manifest("team/podman-v2s2", "v1", ACCEPT_ALL_MANIFESTS)
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", describe(resp).await);
    assert_eq!(
        header_str(&resp, "content-type").as_deref(),
        Some(MEDIA_DOCKER_MANIFEST)
    );

    for (name, want_type) in [
        (tag.as_str(), MEDIA_OCI_MANIFEST),
        (tag_v2s2.as_str(), MEDIA_DOCKER_MANIFEST),
    ] {
        // Remove every local copy, pull back, and look inside.
        ok("podman rmi", podman.run(&["rmi", "--all", "--force"]).await);
        let mut cmd = podman.cmd();
        cmd.args(["image", "exists", name]);
        ok(
            "image gone after rmi",
            berth_testkit::tools::run_expect_failure(&mut cmd, berth_testkit::tools::CMD_TIMEOUT).await,
        );

        ok("podman pull", podman.run(&["pull", "--tls-verify=false", name]).await);
        let pulled_id = String::from_utf8(ok(
            "inspect",
            podman.run(&["image", "inspect", "--format", "{{.Id}}", name]).await,
        ))
        .unwrap()
        .trim()
        .to_string();
        assert_eq!(
            pulled_id, id,
            "image ID (config digest) after pulling {name} ({want_type})"
        );
        let mount = String::from_utf8(ok("podman image mount", podman.run(&["image", "mount", name]).await))
            .unwrap()
            .trim()
            .to_string();
        let content = std::fs::read_to_string(Path::new(&mount).join("hello.txt"))
            .unwrap_or_else(|e| panic!("hello.txt in {mount}: {e}"));
        assert_eq!(content, hello, "file content after pulling {name}");
        ok("podman image unmount", podman.run(&["image", "unmount", name]).await);
    }
}

const ORAS_SCRIPT: &str = r#"
import json, os, sys
import oras.client

host, repo, chunk = sys.argv[1], sys.argv[2], int(sys.argv[3])
client = oras.client.OrasClient(hostname=host, insecure=True)
target = f"{host}/{repo}"

r = client.push(target=f"{target}:v1", files=["artifact.bin:application/vnd.berth.test.blob"],
                do_chunked=True, chunk_size=chunk, disable_path_validation=True)
assert r.status_code == 201, f"push v1: {r.status_code} {r.text}"
r = client.push(target=f"{target}:v2", files=["small.txt:text/plain"], disable_path_validation=True)
assert r.status_code == 201, f"push v2: {r.status_code} {r.text}"

tags = client.get_tags(target)
manifest = client.get_manifest(f"{target}:v1")
os.makedirs("out", exist_ok=True)
files = client.pull(target=f"{target}:v1", outdir="out")
print(json.dumps({"tags": tags, "manifest": manifest, "files": files}))
"#;

async fn oras_chunked_push_pull_tags(setup: Setup) {
    let node = start_node_on(setup).await;
    let oras = berth_testkit::Oras::new().expect("oras-py");
    let chunk = 1024 * 1024;
    // Five full chunks and a partial one: six PATCHes with Content-Range.
    let data = random_bytes(5 * chunk + 12345, 21);
    std::fs::write(oras.dir().join("artifact.bin"), &data).unwrap();
    std::fs::write(oras.dir().join("small.txt"), unique("small")).unwrap();
    let repo = "team/oras-artifact";

    let out = ok(
        "oras script",
        oras.run_script(ORAS_SCRIPT, &[&node.host_port(), repo, &chunk.to_string()])
            .await,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let result = json(stdout.lines().last().unwrap_or("").as_bytes());

    let mut tags: Vec<String> = serde_json::from_value(result["tags"].clone()).unwrap();
    tags.sort();
    assert_eq!(tags, vec!["v1", "v2"]);
    let layer = &result["manifest"]["layers"][0];
    assert_eq!(layer["digest"], sha256_digest(&data).as_str());
    assert_eq!(layer["size"], data.len() as u64);
    let pulled = std::fs::read(oras.dir().join("out").join("artifact.bin")).expect("pulled file");
    assert!(
        pulled == data,
        "pulled bytes differ ({} vs {} bytes)",
        pulled.len(),
        data.len()
    );

    // The blob is also served whole by the registry.
    let reg = Registry::new(node.base_url());
    let blob = reg.get_blob(repo, &sha256_digest(&data)).await.unwrap();
    assert!(blob == data);
}

async fn docker_push_rmi_pull(setup: Setup) {
    let node = start_node_on(setup).await;
    let hp = node.host_port();
    let dockerd = berth_testkit::Dockerd::start().await.expect("dockerd");
    let busybox =
        std::fs::read(berth_testkit::tools::require_executable(berth_testkit::tools::BUSYBOX).unwrap()).unwrap();
    let hello = unique("hello from docker");
    let tag = format!("{hp}/team/docker-app:v1");
    let tag2 = format!("{hp}/team/docker-app2:v1");
    let id = ok(
        "docker build",
        dockerd
            .build_scratch_image(
                &tag,
                &[("hello.txt", hello.as_bytes(), 0o644), ("bin/busybox", &busybox, 0o755)],
                Some(&["/bin/busybox", "cat", "/hello.txt"]),
            )
            .await,
    );

    let out = String::from_utf8(ok("docker push", dockerd.run(&["push", &tag]).await)).unwrap();
    let digest = out
        .split_whitespace()
        .skip_while(|w| *w != "digest:")
        .nth(1)
        .unwrap_or_else(|| panic!("no digest in docker push output:\n{out}"))
        .to_string();
    // Same layers in a second repository: docker tries a cross-repo mount.
    ok("docker tag", dockerd.run(&["tag", &tag, &tag2]).await);
    ok("docker push 2", dockerd.run(&["push", &tag2]).await);

    let reg = Registry::new(node.base_url());
    let resp = reg
        .get_manifest("team/docker-app", "v1", ACCEPT_ALL_MANIFESTS)
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", describe(resp).await);
    assert_eq!(
        header_str(&resp, "content-type").as_deref(),
        Some(MEDIA_DOCKER_MANIFEST)
    );
    assert_eq!(
        header_str(&resp, "docker-content-digest").as_deref(),
        Some(digest.as_str())
    );

    for name in [&tag, &tag2] {
        // Remove every local name of the image, then pull this one back.
        for n in [&tag, &tag2] {
            let mut cmd = dockerd.docker(&["image", "rm", "--force", n]);
            let out = berth_testkit::tools::run_unchecked(&mut cmd, berth_testkit::tools::CMD_TIMEOUT)
                .await
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() || stderr.contains("No such image"),
                "docker image rm {n}: {stderr}"
            );
        }
        let mut cmd = dockerd.docker(&["image", "inspect", name]);
        ok(
            "image gone after rmi",
            berth_testkit::tools::run_expect_failure(&mut cmd, berth_testkit::tools::CMD_TIMEOUT).await,
        );

        ok("docker pull", dockerd.run(&["pull", name]).await);
        let pulled_id = String::from_utf8(ok(
            "inspect",
            dockerd.run(&["image", "inspect", "--format", "{{.Id}}", name]).await,
        ))
        .unwrap();
        assert_eq!(pulled_id.trim(), id, "image ID after pulling {name}");
        let repo_digests = String::from_utf8(ok(
            "inspect",
            dockerd
                .run(&["image", "inspect", "--format", "{{json .RepoDigests}}", name])
                .await,
        ))
        .unwrap();
        assert!(
            repo_digests.contains(&digest),
            "RepoDigests {repo_digests} lacks {digest}"
        );

        // Look inside: docker save, then the layer tars.
        let saved = ok("docker save", dockerd.run(&["save", name]).await);
        let files = berth_testkit::docker::saved_image_files(&saved).expect("reading docker save archive");
        let find = |p: &str| files.iter().find(|(path, _)| path == p).map(|(_, c)| c.clone());
        assert_eq!(
            find("hello.txt").as_deref(),
            Some(hello.as_bytes()),
            "hello.txt after pull"
        );
        assert!(
            find("bin/busybox").as_deref() == Some(busybox.as_slice()),
            "bin/busybox after pull"
        );
    }
}

async fn referrers_for_an_sbom(setup: Setup) {
    let node = start_node_on(setup).await;
    let hp = node.host_port();
    let skopeo = Skopeo::new().expect("skopeo");
    let work = tempfile::tempdir().unwrap();
    let image = test_image(&work.path().join("src"), 31, "v1");
    let repo = "team/referrers-app";
    remove_blob_info_cache();
    ok(
        "skopeo push",
        skopeo
            .copy(
                &image.oci_ref(),
                &format!("docker://{hp}/{repo}:v1"),
                &["--preserve-digests"],
            )
            .await,
    );

    let reg = Registry::new(node.base_url());
    let empty = reg.push_blob(repo, b"{}").await.unwrap();
    assert_eq!(empty, EMPTY_JSON_DIGEST);

    // Two artifacts on the image: an SBOM and a signature-like blob.
    let mut pushed = Vec::new();
    for (artifact_type, content) in [
        (
            "application/spdx+json",
            br#"{"spdxVersion":"SPDX-2.3","name":"app"}"#.to_vec(),
        ),
        ("application/vnd.berth.test.signature", random_bytes(300, 32)),
    ] {
        let layer_digest = reg.push_blob(repo, &content).await.unwrap();
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": {
                "mediaType": MEDIA_OCI_EMPTY,
                "digest": EMPTY_JSON_DIGEST,
                "size": 2,
                "data": "e30=",
            },
            "layers": [{
                "mediaType": artifact_type,
                "digest": layer_digest,
                "size": content.len(),
            }],
            "subject": image.manifest_descriptor(),
            "annotations": { "org.opencontainers.image.created": "2024-01-01T00:00:00Z" },
        }))
        .unwrap();
        let digest = sha256_digest(&manifest);
        let resp = reg
            .put_manifest(repo, &digest, MEDIA_OCI_MANIFEST, &manifest)
            .await
            .unwrap();
        assert_eq!(
            header_str(&resp, "oci-subject").as_deref(),
            Some(image.manifest_digest.as_str()),
            "PUT of a manifest with a subject must answer OCI-Subject"
        );
        pushed.push((artifact_type, digest, manifest));
    }

    let url = reg.url(&format!("/v2/{repo}/referrers/{}", image.manifest_digest));
    let resp = reg.http.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{}", describe(resp).await);
    assert_eq!(header_str(&resp, "content-type").as_deref(), Some(MEDIA_OCI_INDEX));
    let index: Value = resp.json().await.unwrap();
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(index["mediaType"], MEDIA_OCI_INDEX);
    let listed = index["manifests"].as_array().expect("manifests");
    assert_eq!(listed.len(), 2, "referrers: {index}");
    for (artifact_type, digest, manifest) in &pushed {
        let d = listed
            .iter()
            .find(|d| d["digest"] == digest.as_str())
            .unwrap_or_else(|| panic!("{digest} not in referrers {index}"));
        assert_eq!(d["mediaType"], MEDIA_OCI_MANIFEST);
        assert_eq!(d["size"], manifest.len() as u64);
        assert_eq!(d["artifactType"], *artifact_type);
        assert_eq!(
            d["annotations"]["org.opencontainers.image.created"],
            "2024-01-01T00:00:00Z"
        );
    }

    // Filter by artifactType.
    let resp = reg
        .http
        .get(format!("{url}?artifactType=application/spdx%2Bjson"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", describe(resp).await);
    assert_eq!(
        header_str(&resp, "oci-filters-applied").as_deref(),
        Some("artifactType")
    );
    let filtered: Value = resp.json().await.unwrap();
    let listed = filtered["manifests"].as_array().expect("manifests");
    assert_eq!(listed.len(), 1, "filtered referrers: {filtered}");
    assert_eq!(listed[0]["digest"], pushed[0].1.as_str());

    // A digest nothing refers to: 200 with an empty index, never 404.
    let other = sha256_digest(b"nothing refers to this");
    let resp = reg
        .http
        .get(reg.url(&format!("/v2/{repo}/referrers/{other}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", describe(resp).await);
    let none: Value = resp.json().await.unwrap();
    assert_eq!(none["manifests"], json!([]));

    // The artifacts themselves are pullable by digest, byte-identical.
    for (_, digest, manifest) in &pushed {
        let resp = reg.get_manifest(repo, digest, MEDIA_OCI_MANIFEST).await.unwrap();
        assert_eq!(resp.status(), 200, "{}", describe(resp).await);
        assert!(resp.bytes().await.unwrap().as_ref() == manifest.as_slice());
    }
}
