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
        .compile_fds(raw_event_headers(descriptors));
    if let Err(e) = generated {
        eprintln!("code generation from agent_v2.proto failed: {e}");
        std::process::exit(1);
    }
}

/// The descriptors the Rust types are generated from: as compiled, except that the header lists
/// of RequestHeadersEvent and ResponseHeadersEvent are made of `RawHeader`, a copy of `Header`
/// whose name and value are `bytes`.
///
/// On the wire `string` and `bytes` are the same (a length and the bytes), so peers see no
/// difference, and the published schema (`agent_v2_descriptor.bin`, `agent_v2.proto`) keeps
/// `string`. Decoded as `bytes` (`Bytes`, see `.bytes(".")`), a request's header names and values
/// are slices of the received message instead of a `String` allocated for each, and encoded from
/// the core's headers they are its shared text instead of a copy each. The conversion checks the
/// UTF-8 that prost would have checked (`convert::headers`).
fn raw_event_headers(mut set: prost_types::FileDescriptorSet) -> prost_types::FileDescriptorSet {
    use prost_types::field_descriptor_proto::Type;
    const HEADER: &str = ".zentinel.agent.v2.Header";
    for file in &mut set.file {
        if file.package() != "zentinel.agent.v2" {
            continue;
        }
        let Some(at) = file.message_type.iter().position(|m| m.name() == "Header") else {
            continue;
        };
        let mut raw = file.message_type[at].clone();
        raw.name = Some("RawHeader".into());
        for field in &mut raw.field {
            field.set_type(Type::Bytes);
        }
        // The copy gets the original's comments (path 4 = message_type, then its index), kept
        // sorted by path as the code generator looks them up.
        let (at, copy) = (at as i32, file.message_type.len() as i32);
        if let Some(info) = &mut file.source_code_info {
            let copied: Vec<_> = info
                .location
                .iter()
                .filter(|l| l.path.starts_with(&[4, at]))
                .map(|l| {
                    let mut l = l.clone();
                    l.path[1] = copy;
                    l
                })
                .collect();
            info.location.extend(copied);
            info.location.sort_by(|a, b| a.path.cmp(&b.path));
        }
        file.message_type.push(raw);
        for message in &mut file.message_type {
            if !matches!(
                message.name(),
                "RequestHeadersEvent" | "ResponseHeadersEvent"
            ) {
                continue;
            }
            for field in &mut message.field {
                if field.type_name() == HEADER {
                    field.type_name = Some(".zentinel.agent.v2.RawHeader".into());
                }
            }
        }
    }
    set
}
