//! Our `agent_v2.proto` against the reference implementation's gRPC schema: every message, field
//! (name, number, type, label), enum value and RPC of the reference must be there unchanged, and
//! everything we add must be an extension (field numbers 100 and up, or a new message or enum).
//!
//! The reference schema is read from a Markdown transcription kept outside the repository, in a
//! `shared` folder next to the workspace (as laid out for developers and CI); when it is absent
//! the comparison is skipped with a note, and the structural checks on our own descriptor still
//! run.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use agent_protocol_proto::FILE_DESCRIPTOR_SET;
use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, EnumDescriptorProto, FileDescriptorProto, FileDescriptorSet};

const PACKAGE: &str = "zentinel.agent.v2";

fn file() -> FileDescriptorProto {
    let set = FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("descriptor set decodes");
    set.file
        .into_iter()
        .find(|f| f.package() == PACKAGE)
        .expect("the zentinel.agent.v2 file")
}

/// Messages and enums by their dotted name within the package (`WebSocketFrameEvent.FrameType`).
fn index(
    file: &FileDescriptorProto,
) -> (
    HashMap<String, DescriptorProto>,
    HashMap<String, EnumDescriptorProto>,
) {
    fn walk(
        prefix: &str,
        messages: &[DescriptorProto],
        out_m: &mut HashMap<String, DescriptorProto>,
        out_e: &mut HashMap<String, EnumDescriptorProto>,
    ) {
        for m in messages {
            let name = format!("{prefix}{}", m.name());
            for e in &m.enum_type {
                out_e.insert(format!("{name}.{}", e.name()), e.clone());
            }
            walk(&format!("{name}."), &m.nested_type, out_m, out_e);
            out_m.insert(name, m.clone());
        }
    }
    let mut messages = HashMap::new();
    let mut enums = HashMap::new();
    for e in &file.enum_type {
        enums.insert(e.name().to_owned(), e.clone());
    }
    walk("", &file.message_type, &mut messages, &mut enums);
    (messages, enums)
}

fn schema_text() -> Option<String> {
    schema_candidates()
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
}

/// Where the transcription may be: in a `shared` folder beside the workspace, or beside this
/// crate.
fn schema_candidates() -> [PathBuf; 2] {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let file = Path::new("shared").join("GRPC-SCHEMA").with_extension("md");
    [
        root.join("..").join("..").join(&file),
        root.join("..").join(&file),
    ]
}

struct SchemaField {
    name: String,
    ty: String,
    number: i32,
    label: String,
    in_oneof: bool,
}

enum Section {
    Message(String, Vec<SchemaField>),
    Enum(String, Vec<(String, i32)>),
}

fn parse_schema(text: &str) -> (Vec<Section>, Vec<String>) {
    let mut sections = Vec::new();
    let mut rpcs = Vec::new();
    let mut current: Option<Section> = None;
    let mut in_oneof = false;
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("## ") {
            sections.extend(current.take());
            in_oneof = false;
            let name = rest.split('`').nth(1).unwrap_or_default().to_owned();
            if rest.starts_with("message") {
                current = Some(Section::Message(name, Vec::new()));
            } else if rest.starts_with("enum") {
                current = Some(Section::Enum(name, Vec::new()));
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("- rpc `") {
            rpcs.push(rest.split('`').next().unwrap_or_default().to_owned());
            continue;
        }
        if !line.starts_with('|') {
            continue;
        }
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        if cells.first().is_some_and(|c| c.starts_with("*oneof")) {
            in_oneof = true;
            continue;
        }
        if cells
            .first()
            .is_some_and(|c| c.starts_with("*end of oneof"))
        {
            in_oneof = false;
            continue;
        }
        match current.as_mut() {
            Some(Section::Message(_, fields)) if cells.len() == 4 => {
                if let Ok(number) = cells[2].parse() {
                    fields.push(SchemaField {
                        name: cells[0].to_owned(),
                        ty: cells[1].to_owned(),
                        number,
                        label: cells[3].to_owned(),
                        in_oneof,
                    });
                }
            }
            Some(Section::Enum(_, values)) if cells.len() == 2 => {
                if let Ok(number) = cells[1].parse() {
                    values.push((cells[0].to_owned(), number));
                }
            }
            _ => {}
        }
    }
    sections.extend(current);
    (sections, rpcs)
}

fn scalar(ty: &str) -> Option<Type> {
    Some(match ty {
        "string" => Type::String,
        "bytes" => Type::Bytes,
        "bool" => Type::Bool,
        "uint32" => Type::Uint32,
        "uint64" => Type::Uint64,
        "int32" => Type::Int32,
        "int64" => Type::Int64,
        "float" => Type::Float,
        "double" => Type::Double,
        _ => return None,
    })
}

#[test]
fn our_schema_contains_the_reference_schema_unchanged() {
    let Some(text) = schema_text() else {
        eprintln!(
            "note: reference schema transcription not found at {:?}; reference comparison skipped",
            schema_candidates()
        );
        return;
    };
    let file = file();
    let (messages, enums) = index(&file);
    let (sections, rpcs) = parse_schema(&text);
    assert!(
        sections.len() >= 58,
        "parsed only {} sections",
        sections.len()
    );
    let mut checked_fields = 0;
    for section in &sections {
        match section {
            Section::Enum(name, values) => {
                let ours = enums
                    .get(name)
                    .unwrap_or_else(|| panic!("enum {name} missing"));
                for (value, number) in values {
                    let v = ours
                        .value
                        .iter()
                        .find(|v| v.name() == value)
                        .unwrap_or_else(|| panic!("enum value {name}.{value} missing"));
                    assert_eq!(v.number(), *number, "{name}.{value}");
                }
                assert_eq!(
                    ours.value.len(),
                    values.len(),
                    "extra values in enum {name}"
                );
            }
            Section::Message(name, fields) => {
                let ours = messages
                    .get(name)
                    .unwrap_or_else(|| panic!("message {name} missing"));
                for f in fields {
                    let what = format!("{name}.{}", f.name);
                    let o = ours
                        .field
                        .iter()
                        .find(|o| o.name() == f.name)
                        .unwrap_or_else(|| panic!("field {what} missing"));
                    assert_eq!(o.number(), f.number, "number of {what}");
                    if let Some(t) = scalar(&f.ty) {
                        assert_eq!(o.r#type(), t, "type of {what}");
                    } else if f.ty.starts_with("map<") {
                        assert_eq!(o.r#type(), Type::Message, "type of {what}");
                        assert_eq!(o.label(), Label::Repeated, "map {what}");
                        assert!(o.type_name().ends_with("Entry"), "map {what}");
                    } else {
                        assert_eq!(o.r#type(), Type::Message, "type of {what}");
                        assert_eq!(
                            o.type_name(),
                            format!(".{PACKAGE}.{}", f.ty),
                            "message type of {what}"
                        );
                    }
                    match f.label.as_str() {
                        "repeated" => assert_eq!(o.label(), Label::Repeated, "label of {what}"),
                        "optional" => assert!(o.proto3_optional(), "{what} should be optional"),
                        _ if f.ty.starts_with("map<") => {}
                        _ => {
                            assert_ne!(o.label(), Label::Repeated, "label of {what}");
                            assert!(!o.proto3_optional(), "{what} should not be optional");
                        }
                    }
                    let real_oneof = o.oneof_index.is_some() && !o.proto3_optional();
                    assert_eq!(real_oneof, f.in_oneof, "oneof membership of {what}");
                    checked_fields += 1;
                }
                // Anything of ours below 100 must be in the reference.
                for o in &ours.field {
                    if o.number() < 100 {
                        assert!(
                            fields.iter().any(|f| f.name == o.name()),
                            "{name}.{} ({}) is not in the reference and not an extension",
                            o.name(),
                            o.number()
                        );
                    }
                }
            }
        }
    }
    assert!(
        checked_fields >= 237,
        "checked only {checked_fields} fields"
    );
    let service = file
        .service
        .iter()
        .find(|s| s.name() == "AgentServiceV2")
        .expect("service AgentServiceV2");
    let ours: Vec<&str> = service.method.iter().map(|m| m.name()).collect();
    assert_eq!(ours, rpcs, "RPCs");
}

#[test]
fn streaming_shapes_of_the_rpcs() {
    let file = file();
    let service = &file.service[0];
    let shape = |name: &str| {
        let m = service.method.iter().find(|m| m.name() == name).unwrap();
        (
            m.input_type().to_owned(),
            m.output_type().to_owned(),
            m.client_streaming(),
            m.server_streaming(),
        )
    };
    let t = |n: &str| format!(".{PACKAGE}.{n}");
    assert_eq!(
        shape("ProcessStream"),
        (t("ProxyToAgent"), t("AgentToProxy"), true, true)
    );
    assert_eq!(
        shape("ControlStream"),
        (t("AgentControl"), t("ProxyControl"), true, true)
    );
    assert_eq!(
        shape("ProcessEvent"),
        (t("ProxyToAgent"), t("AgentToProxy"), false, false)
    );
    assert_eq!(
        agent_protocol_proto::SERVICE_NAME,
        format!("{PACKAGE}.AgentServiceV2")
    );
}
