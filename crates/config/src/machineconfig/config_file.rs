//! A machine config file given to `talos apply --file`: checked here, before it
//! is sent, so that garbage is refused naming the file and line rather than the
//! node (a 56 MB file used to come back as an HTTP/2 protocol error).

use std::path::Path;

use serde_yaml_ng::Value;

use super::error::ConfigError;

/// Reads and checks a machine config file; returns its bytes for sending.
pub fn read_machine_config(path: &Path) -> Result<Vec<u8>, ConfigError> {
    let text = crate::limits::read_text(path, crate::limits::MAX_INPUT_BYTES)
        .map_err(|p| ConfigError::unreadable(path, p))?;
    parse_machine_config(&text, path)?;
    Ok(text.into_bytes())
}

/// The documents of a machine config: YAML mappings, one of them the v1alpha1
/// document (`version: v1alpha1`), the others typed documents (`apiVersion` and
/// `kind`), as Talos's config decoder requires.
pub fn parse_machine_config(text: &str, source: &Path) -> Result<Vec<Value>, ConfigError> {
    crate::limits::check_text(text, crate::limits::MAX_INPUT_BYTES)
        .map_err(|p| ConfigError::unreadable(source, p))?;
    let hint =
        "pass a machine config written by `gen config` (talos/clusterconfig/<cluster>-<host>.yaml)";
    let mut docs = Vec::new();
    let mut start = 1;
    for de in serde_yaml_ng::Deserializer::from_str(text) {
        let v: Value = serde::Deserialize::deserialize(de).map_err(|e: serde_yaml_ng::Error| {
            let line = e.location().map(|l| l.line()).unwrap_or(0);
            let msg = e.to_string();
            let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
            ConfigError::input(source, line, format!("not valid YAML: {msg}"), hint)
        })?;
        match &v {
            Value::Null => continue,
            Value::Mapping(m) => {
                let typed = m.contains_key("apiVersion") && m.contains_key("kind");
                let main = m.get("version").and_then(Value::as_str) == Some("v1alpha1");
                if !typed && !main {
                    return Err(ConfigError::input(
                        source,
                        start,
                        "a document is neither the v1alpha1 config (`version: v1alpha1`) nor a typed document (`apiVersion` and `kind`)",
                        hint,
                    ));
                }
            }
            _ => {
                return Err(ConfigError::input(
                    source,
                    start,
                    "a document is not a YAML mapping: this is not a machine config",
                    hint,
                ))
            }
        }
        docs.push(v);
        start = 0;
    }
    if docs.is_empty() {
        return Err(ConfigError::input(
            source,
            0,
            "the file holds no document",
            hint,
        ));
    }
    if !docs.iter().any(super::patch::is_v1alpha1) {
        return Err(ConfigError::input(
            source,
            0,
            "no v1alpha1 document (`version: v1alpha1`): this is not a machine config",
            hint,
        ));
    }
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_refused_naming_the_file() {
        let p = Path::new("x.yaml");
        for bad in [
            "garbage",
            "- a\n- b\n",
            "",
            "a: [",
            "apiVersion: v1alpha1\nkind: X\n",
        ] {
            let e = parse_machine_config(bad, p).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}");
            assert!(e.to_string().starts_with("x.yaml"), "{e}");
        }
        assert!(parse_machine_config(
            "version: v1alpha1\nmachine: {}\n---\napiVersion: v1alpha1\nkind: HostnameConfig\n",
            p
        )
        .is_ok());
    }
}
