//! Generates the prost messages and the tonic service from `agent_v2.proto`.
//!
//! The schema is parsed by protox, a protobuf compiler written in Rust, and the resulting file
//! descriptors are handed to tonic-prost-build: no `protoc` binary is needed on any machine.

fn main() {
    println!("cargo:rerun-if-changed=agent_v2.proto");
    let descriptors = match protox::compile(["agent_v2.proto"], ["."]) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("agent_v2.proto does not compile: {e:?}");
            std::process::exit(1);
        }
    };
    // The compiled descriptors, for schema tests and gRPC reflection.
    let out_dir = std::env::var_os("OUT_DIR").map(std::path::PathBuf::from);
    if let Some(dir) = out_dir {
        use prost::Message;
        let path = dir.join("agent_v2_descriptor.bin");
        if let Err(e) = std::fs::write(&path, descriptors.encode_to_vec()) {
            eprintln!("cannot write {}: {e}", path.display());
            std::process::exit(1);
        }
    }
    let generated = tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // The runtime crate owns the channel; the generated client stays generic over it.
        .build_transport(false)
        // Body data and WebSocket payloads as `bytes::Bytes`: decoding slices the received
        // buffer instead of copying into a Vec.
        .bytes(".")
        .compile_fds(descriptors);
    if let Err(e) = generated {
        eprintln!("code generation from agent_v2.proto failed: {e}");
        std::process::exit(1);
    }
}
