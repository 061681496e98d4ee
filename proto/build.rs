//! Generates the `switchboard.v1` Rust code, the gRPC stubs, the serde (proto3
//! JSON) impls and the file descriptor set served by gRPC reflection.
//!
//! `protoc` comes from `protoc-bin-vendored`, so a fresh machine needs nothing
//! installed.

use std::{error::Error, path::PathBuf};

const PROTOS: &[&str] = &[
    "switchboard/v1/envelope.proto",
    "switchboard/v1/routing.proto",
    "switchboard/v1/ingest.proto",
    "switchboard/v1/bot.proto",
    "switchboard/v1/agents.proto",
    "switchboard/v1/broadcasts.proto",
];

fn main() -> Result<(), Box<dyn Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out_dir.join("switchboard_descriptor.bin");
    let wkt_include = protoc_bin_vendored::include_path()?;

    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // Raw webhook bodies are passed around without copying.
    config.bytes([".switchboard.v1.WebhookRequest.payload"]);

    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptor_path)
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        .compile_with_config(
            config,
            &PROTOS.iter().map(PathBuf::from).collect::<Vec<_>>(),
            &[PathBuf::from("."), wkt_include],
        )?;

    let descriptors = std::fs::read(&descriptor_path)?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .extern_path(".google.protobuf", "::pbjson_types")
        .build(&[".switchboard"])?;

    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}
