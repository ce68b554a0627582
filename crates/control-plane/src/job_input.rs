//! Job definitions as people write them, turned into checked
//! [`JobDefinition`]s: JSON from the console API, or a `[[jobs]]` table of
//! `control-plane.toml` (the `JobSpec` fields flattened next to `group` and
//! `sink`, and a truststore given as a file).
//!
//! Every problem comes back as a [`FieldError`] naming the field. Beyond
//! [`JobDefinition::validate`] this checks what only the control plane
//! knows or can check early: keys nobody reads (the wire type `JobSpec`
//! tolerates unknown keys so that peers can add fields, so a typo such as
//! `max_record` would otherwise be ignored silently), the agent group, the
//! client configuration the agent will build (truststore readable with its
//! password, session timeout in range), and the size of the `assign_job`
//! message.

use crate::delivery::{FieldError, JobDefinition};
use base64::Engine as _;
use connectivity_protocol::job::{
    Compression, Partitions, Sasl, SaslMechanism, Security, SecurityProtocol, StartPosition,
    Truststore, TruststoreFormat,
};
use connectivity_protocol::secret::{MASK, Secret};
use connectivity_protocol::validate::{self, SpecError};
use connectivity_protocol::{ControlMessage, MAX_CONTROL_MESSAGE_BYTES};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use std::path::Path;

/// Top-level keys of a JSON job definition.
const DEFINITION_KEYS: &[&str] = &["spec", "group", "sink", "value_format", "paused"];
/// Keys of a `[[jobs]]` table that are not `JobSpec` fields.
const TOML_DEFINITION_KEYS: &[&str] = &["group", "sink", "value_format", "paused"];
/// Fields whose values are never echoed in an error.
/// (Objects that hold secrets are included: a string given in their place
/// may well be one.)
const SECRET_FIELDS: &[&str] = &[
    "password",
    "data",
    "client_key_pem",
    "headers",
    "sasl",
    "truststore",
    "security",
];
/// Longest value echoed in an error.
const MAX_SHOWN: usize = 100;

/// Parse a JSON job definition (console API). Unknown keys are errors.
pub fn from_json(input: Value) -> Result<JobDefinition, Vec<FieldError>> {
    let Value::Object(map) = &input else {
        return Err(vec![FieldError::new(
            "",
            None,
            "is not a JSON object",
            "send a job definition object: {\"spec\": {...}, \"group\": ..., \"sink\": {...}}",
        )]);
    };
    let errors: Vec<FieldError> = map
        .keys()
        .filter(|k| !DEFINITION_KEYS.contains(&k.as_str()))
        .map(|k| unknown_key(k, DEFINITION_KEYS))
        .collect();
    if !errors.is_empty() {
        return Err(errors);
    }
    let def = serde_json::from_value::<JobDefinition>(input.clone()).map_err(|err| {
        vec![locate("", &input).unwrap_or_else(|| {
            FieldError::new(
                "",
                None,
                err.to_string(),
                "see docs/DELIVERY.md for the job definition format",
            )
        })]
    })?;
    let errors = unknown_nested_keys(&input, &def);
    if errors.is_empty() {
        Ok(def)
    } else {
        Err(errors)
    }
}

/// Keys below the top level that `def` did not take from `input`.
fn unknown_nested_keys(input: &Value, def: &JobDefinition) -> Vec<FieldError> {
    // Serialized back, a definition has every key it understood.
    let understood = serde_json::to_value(def).unwrap_or(Value::Null);
    let mut unknown = Vec::new();
    unknown_keys(input, &understood, "", &mut unknown);
    unknown
        .into_iter()
        .map(|path| {
            let (parent, key) = path.rsplit_once('.').unwrap_or(("", &path));
            let known = understood
                .pointer(&pointer(parent))
                .and_then(Value::as_object)
                .map(|m| m.keys().cloned().collect::<Vec<_>>())
                .unwrap_or_default();
            FieldError::new(
                &path,
                None,
                "is not a known key",
                format!(
                    "remove it or correct the spelling{}",
                    suggestion(key, &known)
                ),
            )
        })
        .collect()
}

/// Parse one `[[jobs]]` table. `dir` is the config file's directory, for
/// relative truststore paths. Error fields are named as in the table
/// (`topic`, `security.truststore.file`, `sink.path`), without a prefix.
pub fn from_toml(table: &toml::Table, dir: &Path) -> Result<JobDefinition, Vec<FieldError>> {
    let mut spec = Map::new();
    let mut def = Map::new();
    for (key, value) in table {
        let json = serde_json::to_value(value).unwrap_or(Value::Null);
        if TOML_DEFINITION_KEYS.contains(&key.as_str()) {
            def.insert(key.clone(), json);
        } else {
            spec.insert(key.clone(), json);
        }
    }
    if let Some(ts) = spec
        .get_mut("security")
        .and_then(|s| s.get_mut("truststore"))
        .and_then(Value::as_object_mut)
    {
        read_truststore_file(ts, dir).map_err(|e| vec![e])?;
    }
    def.insert("spec".into(), Value::Object(spec));
    from_json(Value::Object(def)).map_err(|errors| errors.into_iter().map(toml_field).collect())
}

/// A field error of the JSON form renamed for a `[[jobs]]` table.
pub fn toml_field(mut e: FieldError) -> FieldError {
    e.field = e
        .field
        .strip_prefix("spec.")
        .map(str::to_owned)
        .unwrap_or(e.field);
    if e.field == "spec" {
        e.field = String::new();
    }
    e
}

/// `truststore = { format = "jks", file = "x.jks", password = "..." }`: read
/// the file now and put its content where the wire wants it (`data`: PEM
/// text, or the base64 of a binary file).
fn read_truststore_file(ts: &mut Map<String, Value>, dir: &Path) -> Result<(), FieldError> {
    let Some(file) = ts.remove("file") else {
        return Ok(());
    };
    let field = "security.truststore.file";
    let Some(file) = file.as_str() else {
        return Err(FieldError::new(
            field,
            Some(file.to_string()),
            "is not a string",
            "give the path of the truststore file",
        ));
    };
    if ts.contains_key("data") {
        return Err(FieldError::new(
            field,
            Some(file.to_owned()),
            "is given together with security.truststore.data",
            "give the truststore either as a file or inline as data, not both",
        ));
    }
    let format = ts
        .get("format")
        .and_then(|f| serde_json::from_value::<TruststoreFormat>(f.clone()).ok());
    let Some(format) = format else {
        return Err(FieldError::new(
            "security.truststore.format",
            ts.get("format").map(|f| f.to_string()),
            "is missing or unknown",
            "give format = \"jks\", \"pkcs12\" or \"pem\"",
        ));
    };
    let path = if Path::new(file).is_absolute() {
        Path::new(file).to_owned()
    } else {
        dir.join(file)
    };
    let bytes = std::fs::read(&path).map_err(|e| {
        FieldError::new(field, Some(path.display().to_string()), format!("cannot read the file: {e}"), "point it at the truststore file, readable by the control plane (a relative path is taken from the config file's directory)")
    })?;
    let data = match format {
        TruststoreFormat::Pem => String::from_utf8(bytes).map_err(|_| {
            FieldError::new(
                field,
                Some(path.display().to_string()),
                "is not PEM text (not UTF-8)",
                "for a binary truststore set format = \"jks\" or \"pkcs12\"",
            )
        })?,
        TruststoreFormat::Jks | TruststoreFormat::Pkcs12 => {
            base64::engine::general_purpose::STANDARD.encode(bytes)
        }
    };
    ts.insert("data".into(), Value::String(data));
    Ok(())
}

/// Everything the control plane checks before accepting a definition:
/// [`JobDefinition::validate`], the group, the agent's client configuration
/// and the size of the `assign_job` message. `groups` are the ids of the
/// agent groups the config defines.
pub fn check(def: &JobDefinition, groups: &[&str]) -> Vec<FieldError> {
    let mut errors = def.validate().err().map(|e| e.0).unwrap_or_default();
    if !def.group.trim().is_empty() && !groups.contains(&def.group.as_str()) {
        errors.push(FieldError::new(
            "group",
            Some(def.group.clone()),
            "is not an agent group of this control plane",
            format!(
                "use one of: {} (groups are defined in control-plane.toml)",
                groups.join(", ")
            ),
        ));
    }
    if !errors.is_empty() {
        return errors;
    }
    // The checks the agent runs too, truststore included: a wrong password
    // is an answer now, not a job error later.
    if let Err(e) = validate::check(&def.spec) {
        errors.push(client_error(e));
    }
    let size = connectivity_protocol::encode(&ControlMessage::AssignJob(def.spec.clone())).len();
    if size > MAX_CONTROL_MESSAGE_BYTES {
        errors.push(FieldError::new(
            "spec",
            Some(format!("{size} bytes")),
            format!("is too large to send to agents (the limit of a control message is {MAX_CONTROL_MESSAGE_BYTES} bytes)"),
            "trim the truststore to the certificates the stream needs",
        ));
    }
    errors
}

fn client_error(e: SpecError) -> FieldError {
    let fix = "correct the field; docs/CONTROL_PLANE.md lists every job field";
    match &e {
        SpecError::Empty { field, fix } => {
            FieldError::new(&format!("spec.{field}"), None, "is empty", *fix)
        }
        SpecError::Invalid { field, value, fix } => FieldError::new(
            &format!("spec.{field}"),
            Some(value.clone()),
            "is not valid",
            *fix,
        ),
        SpecError::Truststore(_) => FieldError::new(
            "spec.security.truststore",
            None,
            e.to_string(),
            "give the truststore as keytool or openssl wrote it, with the password it was created with (or none)",
        ),
        _ => FieldError::new("spec.security", None, e.to_string(), fix),
    }
}

fn unknown_key(key: &str, known: &[&str]) -> FieldError {
    let known: Vec<String> = known.iter().map(|k| (*k).to_owned()).collect();
    FieldError::new(
        key,
        None,
        "is not a known key",
        format!(
            "remove it or correct the spelling{}",
            suggestion(key, &known)
        ),
    )
}

/// `; did you mean "x"? (keys allowed here: ...)`
fn suggestion(key: &str, known: &[String]) -> String {
    let guess = known
        .iter()
        .map(|k| (strsim::jaro_winkler(key, k), k))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| format!("; did you mean {k:?}?"))
        .unwrap_or_default();
    if known.is_empty() {
        guess
    } else {
        format!("{guess} (keys allowed here: {})", known.join(", "))
    }
}

fn pointer(dotted: &str) -> String {
    if dotted.is_empty() {
        String::new()
    } else {
        format!("/{}", dotted.replace('.', "/"))
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Keys of `input` that `understood` (the parsed value serialized back) does
/// not have. A `null` input value is no key at all; maps whose keys are data
/// (webhook headers, start offsets) are not descended into.
fn unknown_keys(input: &Value, understood: &Value, path: &str, out: &mut Vec<String>) {
    let (Value::Object(inp), Value::Object(und)) = (input, understood) else {
        return;
    };
    for (key, value) in inp {
        if value.is_null() {
            continue;
        }
        let here = join(path, key);
        match und.get(key) {
            None => out.push(here),
            Some(u) if !matches!(here.as_str(), "sink.headers" | "spec.start.offsets") => {
                unknown_keys(value, u, &here, out)
            }
            Some(_) => {}
        }
    }
}

/// Find the field that does not deserialize: the deepest known field whose
/// value has the wrong type, or the object missing a required key.
fn locate(path: &str, value: &Value) -> Option<FieldError> {
    if let Value::Object(map) = value {
        for (key, child) in map {
            if let Some(e) = locate(&join(path, key), child) {
                return Some(e);
            }
        }
    }
    let err = try_type(path, value)?.err()?;
    let shown = shown_value(path, value);
    let msg = err.to_string();
    let ticked: Vec<&str> = msg.split('`').skip(1).step_by(2).collect();
    if msg.starts_with("missing field") && !ticked.is_empty() {
        let field = join(path, ticked[0]);
        return Some(FieldError::new(
            &field,
            None,
            "is missing",
            "add it; docs/CONTROL_PLANE.md lists every job field",
        ));
    }
    if msg.starts_with("unknown field") && !ticked.is_empty() {
        let known: Vec<String> = ticked[1..].iter().map(|k| (*k).to_owned()).collect();
        return Some(FieldError::new(
            &join(path, ticked[0]),
            None,
            "is not a known key",
            format!(
                "remove it or correct the spelling{}",
                suggestion(ticked[0], &known)
            ),
        ));
    }
    // serde quotes the value it could not take: not for secrets.
    let problem = if shown.as_deref() == Some(MASK) {
        match msg.split_once(", expected ") {
            Some((_, expected)) => format!("has the wrong type or value; expected {expected}"),
            None => "has the wrong type or value".to_owned(),
        }
    } else {
        msg
    };
    Some(FieldError::new(
        path,
        shown,
        problem,
        "give a value of the documented type; docs/CONTROL_PLANE.md lists every job field",
    ))
}

fn shown_value(path: &str, value: &Value) -> Option<String> {
    let leaf = path.rsplit('.').next().unwrap_or(path);
    if SECRET_FIELDS.contains(&leaf) || path.starts_with("sink.headers") {
        return Some(MASK.to_owned());
    }
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Object(_) | Value::Array(_) => return None,
        other => other.to_string(),
    };
    let cut = (0..=MAX_SHOWN.min(text.len()))
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    Some(text[..cut].to_owned())
}

fn ty<T: DeserializeOwned>(v: &Value) -> Result<(), serde_json::Error> {
    serde_json::from_value::<T>(v.clone()).map(|_| ())
}

/// Deserialize `value` as the type of the field at `path`; `None` for paths
/// without a type of their own here.
fn try_type(path: &str, v: &Value) -> Option<Result<(), serde_json::Error>> {
    use crate::delivery::{SinkConfig, ValueFormat};
    Some(match path {
        "" => ty::<JobDefinition>(v),
        "spec" => ty::<connectivity_protocol::JobSpec>(v),
        "spec.id"
        | "spec.bootstrap_servers"
        | "spec.topic"
        | "spec.consumer_group"
        | "group"
        | "spec.security.client_cert_pem" => ty::<String>(v),
        "spec.partitions" => ty::<Partitions>(v),
        "spec.start" => ty::<StartPosition>(v),
        "spec.max_records" | "spec.max_bytes" | "spec.window" | "spec.session_timeout_ms" => {
            ty::<u32>(v)
        }
        "spec.max_wait_ms" | "spec.window_bytes" => ty::<u64>(v),
        "spec.compression" => ty::<Compression>(v),
        "spec.security" => ty::<Security>(v),
        "spec.security.protocol" => ty::<SecurityProtocol>(v),
        "spec.security.sasl" => ty::<Sasl>(v),
        "spec.security.sasl.mechanism" => ty::<SaslMechanism>(v),
        "spec.security.sasl.username" => ty::<String>(v),
        "spec.security.sasl.password"
        | "spec.security.truststore.data"
        | "spec.security.truststore.password"
        | "spec.security.client_key_pem" => ty::<Secret>(v),
        "spec.security.truststore" => ty::<Truststore>(v),
        "spec.security.truststore.format" => ty::<TruststoreFormat>(v),
        "sink" => ty::<SinkConfig>(v),
        "value_format" => ty::<ValueFormat>(v),
        "paused" => ty::<bool>(v),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn good() -> Value {
        json!({
            "spec": {"id": "users", "bootstrap_servers": "localhost:9092", "topic": "USERS", "consumer_group": "oic",
                     "security": {"protocol": "SASL_SSL", "sasl": {"username": "u", "password": "p4ss"}}},
            "group": "G",
            "sink": {"kind": "jsonl", "path": "/tmp/users.jsonl"}
        })
    }

    fn groups() -> Vec<&'static str> {
        vec!["G"]
    }

    fn lines(errors: Vec<FieldError>) -> Vec<String> {
        errors.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_good_definition_parses_and_checks() {
        let def = from_json(good()).unwrap();
        assert_eq!(check(&def, &groups()), vec![]);
    }

    #[test]
    fn unknown_keys_are_named_with_a_suggestion() {
        let mut v = good();
        v["spec"]["max_record"] = json!(10);
        v["spec"]["security"]["sasl"]["pasword"] = json!("x");
        let errs = lines(from_json(v).unwrap_err());
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].starts_with("spec.max_record: is not a known key; fix: remove it or correct the spelling; did you mean \"max_records\"?"), "{errs:?}");
        assert!(errs[1].starts_with("spec.security.sasl.pasword: is not a known key; fix: remove it or correct the spelling; did you mean \"password\"?"), "{errs:?}");
        let mut v = good();
        v["pasued"] = json!(true);
        assert!(lines(from_json(v).unwrap_err())[0].starts_with("pasued: is not a known key; fix: remove it or correct the spelling; did you mean \"paused\"?"));
    }

    #[test]
    fn type_errors_and_missing_fields_name_the_field_and_hide_secrets() {
        let mut v = good();
        v["spec"]["max_records"] = json!("many");
        assert_eq!(
            lines(from_json(v).unwrap_err()),
            vec![
                "spec.max_records = \"many\": invalid type: string \"many\", expected u32; fix: give a value of the documented type; docs/CONTROL_PLANE.md lists every job field"
            ]
        );
        let mut v = good();
        v["spec"]["compression"] = json!("gzip");
        assert_eq!(
            lines(from_json(v).unwrap_err()),
            vec![
                "spec.compression = \"gzip\": unknown variant `gzip`, expected one of `none`, `lz4`, `zstd`; fix: give a value of the documented type; docs/CONTROL_PLANE.md lists every job field"
            ]
        );
        let mut v = good();
        v["spec"]["window_bytes"] = json!("64MiB");
        assert_eq!(
            lines(from_json(v).unwrap_err()),
            vec![
                "spec.window_bytes = \"64MiB\": invalid type: string \"64MiB\", expected u64; fix: give a value of the documented type; docs/CONTROL_PLANE.md lists every job field"
            ]
        );
        let mut v = good();
        v["spec"]["compresion"] = json!("lz4");
        assert!(
            lines(from_json(v).unwrap_err())[0].contains("did you mean \"compression\"?"),
            "a misspelt compression is named"
        );
        let mut v = good();
        v["spec"].as_object_mut().unwrap().remove("topic");
        assert_eq!(
            lines(from_json(v).unwrap_err()),
            vec![
                "spec.topic: is missing; fix: add it; docs/CONTROL_PLANE.md lists every job field"
            ]
        );
        let mut v = good();
        v["spec"]["security"]["sasl"]["password"] = json!(12345);
        let errs = lines(from_json(v).unwrap_err());
        assert_eq!(
            errs,
            vec![
                "spec.security.sasl.password = \"******\": has the wrong type or value; expected a string; fix: give a value of the documented type; docs/CONTROL_PLANE.md lists every job field"
            ]
        );
        let mut v = good();
        v["sink"]["fsyncc"] = json!(true);
        let errs = lines(from_json(v).unwrap_err());
        assert!(errs[0].starts_with("sink.fsyncc: is not a known key; fix: remove it or correct the spelling; did you mean \"fsync\"?"), "{errs:?}");
        // A kafka sink: its connection is required, its keys are checked.
        let mut v = good();
        v["sink"] = json!({"kind": "kafka"});
        let errs = lines(from_json(v).unwrap_err());
        assert_eq!(
            errs,
            [
                "sink.connection: is missing; fix: add it; docs/CONTROL_PLANE.md lists every job field"
            ]
        );
        let mut v = good();
        v["sink"] = json!({"kind": "kafka", "connection": "copy", "partitions": "key"});
        let errs = lines(from_json(v).unwrap_err());
        assert!(errs[0].starts_with("sink.partitions: is not a known key; fix: remove it or correct the spelling; did you mean \"partitioning\"?"), "{errs:?}");
    }

    #[test]
    fn check_names_an_unknown_group_and_a_bad_session_timeout() {
        let mut def = from_json(good()).unwrap();
        def.group = "NOPE".into();
        assert_eq!(
            lines(check(&def, &groups())),
            vec![
                "group = \"NOPE\": is not an agent group of this control plane; fix: use one of: G (groups are defined in control-plane.toml)"
            ]
        );
        let mut def = from_json(good()).unwrap();
        def.spec.session_timeout_ms = 10;
        let errs = lines(check(&def, &groups()));
        assert_eq!(
            errs,
            vec![
                "spec.session_timeout_ms = \"10\": is not valid; fix: give 1000..3600000 milliseconds (default 6000), within the broker's group.min/max.session.timeout.ms"
            ]
        );
    }

    #[test]
    fn toml_tables_flatten_the_spec_and_read_truststore_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ts.jks"), b"\xfe\xed\xfe\xed").unwrap();
        let table: toml::Table = toml::from_str(
            r#"
            id = "users"
            group = "G"
            bootstrap_servers = "localhost:9092"
            topic = "USERS"
            consumer_group = "oic"
            start = { offsets = { 0 = 42 } }
            security = { protocol = "SASL_SSL", sasl = { username = "u", password = "p" }, truststore = { format = "jks", file = "ts.jks" } }
            sink = { kind = "discard" }
            "#,
        )
        .unwrap();
        let def = from_toml(&table, dir.path()).unwrap();
        assert_eq!(def.spec.start, StartPosition::Offsets([(0, 42)].into()));
        assert_eq!(
            def.spec.security.truststore.as_ref().unwrap().data.expose(),
            "/u3+7Q=="
        );

        let mut bad = table.clone();
        bad.insert("max_wait".into(), toml::Value::Integer(5));
        let set_file = |t: &mut toml::Table, f: &str| {
            let ts = t
                .get_mut("security")
                .and_then(|s| s.get_mut("truststore"))
                .and_then(|t| t.as_table_mut())
                .unwrap();
            ts.insert("file".into(), toml::Value::String(f.into()));
        };
        set_file(&mut bad, "missing.jks");
        let errs = lines(from_toml(&bad, dir.path()).unwrap_err());
        assert!(
            errs[0].starts_with(&format!(
                "security.truststore.file = \"{}\": cannot read the file: No such file",
                dir.path().join("missing.jks").display()
            )),
            "{errs:?}"
        );
        set_file(&mut bad, "ts.jks");
        let errs = lines(from_toml(&bad, dir.path()).unwrap_err());
        assert!(errs[0].starts_with("max_wait: is not a known key; fix: remove it or correct the spelling; did you mean \"max_wait_ms\"?"), "{errs:?}");
    }
}
