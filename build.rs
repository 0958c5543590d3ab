//! Compiles `proto/` into the typed API with the vendored protoc, so a fresh
//! machine needs no system protoc.
use std::{env, error::Error, path::PathBuf};

fn main() -> Result<(), Box<dyn Error>> {
    // tonic-prost-build prints no rerun-if-changed of its own.
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-env-changed=PROTOC");

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    let well_known = protoc_bin_vendored::include_path()?;

    // No `connect` helper in the generated client: the API crate carries no transport; the
    // client crate brings its own channel. The codec keeps a small encode buffer per stream.
    tonic_prost_build::configure()
        .build_transport(false)
        .codec_path("crate::codec::LeanCodec")
        .file_descriptor_set_path(out_dir.join("dakota_descriptor.bin"))
        .compile_with_config(
            config,
            &[PathBuf::from("proto/dakota/content/v1/content.proto")],
            &[PathBuf::from("proto"), well_known],
        )?;
    Ok(())
}
