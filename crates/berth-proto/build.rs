fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A vendored protoc: building berth needs no system package for protobuf.
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment here.
    unsafe { std::env::set_var("PROTOC", protoc) };
    // Read at run time, not baked in with env!(): the compiled build script is reused
    // from a shared target directory by checkouts at other paths.
    let root = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = [root.join("berth/cluster/v1/cluster.proto")];
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    tonic_prost_build::configure().compile_protos(&files, &[root])?;
    Ok(())
}
