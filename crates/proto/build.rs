//! Compiles the .proto files with protox (pure Rust) so no system `protoc` is needed.

use prost::Message;

fn main() -> anyhow::Result<()> {
    let proto_root = "../../proto";
    let files = [
        "../../proto/meridian/v1/sequencer.proto",
        "../../proto/meridian/v1/ledger.proto",
        "../../proto/meridian/v1/topology.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, [proto_root])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out_dir.join("meridian_descriptor.bin");
    std::fs::write(&descriptor_path, descriptors.encode_to_vec())?;
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptor_path)
        .skip_protoc_run()
        .compile_protos(&files, &[proto_root])?;
    Ok(())
}
