//! Where a policy comes from: Rego modules and JSON data documents, from
//! files, directories or strings, and the content hash that versions them.

use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::ConfigError;
use crate::error::PolicyError;

/// One configured source of Rego modules.
#[derive(Debug, Clone)]
pub(crate) enum ModuleSource {
    /// A module given as text.
    Inline { name: String, text: String },
    /// A `.rego` file, read again on every reload.
    File(PathBuf),
    /// A directory, read again on every reload: every `*.rego` (except
    /// `*_test.rego`) is a module and every `*.json` a data document,
    /// recursively, in path order.
    Directory(PathBuf),
}

/// One configured data document.
#[derive(Debug, Clone)]
pub(crate) enum DataSource {
    /// A document given as a value.
    Inline { name: String, value: Value },
    /// A `.json` file, read again on every reload.
    File(PathBuf),
}

/// Everything a policy is built from, as configured.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sources {
    pub(crate) modules: Vec<ModuleSource>,
    pub(crate) data: Vec<DataSource>,
}

/// The texts read from [`Sources`] at one moment.
#[derive(Debug, Clone, Default)]
pub(crate) struct Bundle {
    pub(crate) modules: Vec<(String, String)>,
    pub(crate) data: Vec<(String, Value)>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ConfigError + '_ {
    move |source| {
        PolicyError::Io {
            path: path.to_owned(),
            source,
        }
        .into()
    }
}

fn read_data(path: &Path) -> Result<(String, Value), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let name = path.display().to_string();
    let value = serde_json::from_str(&text).map_err(|e| PolicyError::Data {
        document: name.clone(),
        message: e.to_string(),
    })?;
    Ok((name, value))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), ConfigError> {
    let mut entries = std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(io_err(dir))?;
    entries.sort();
    for path in entries {
        if path.is_dir() {
            walk(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

impl Sources {
    /// Read every source now.
    pub(crate) fn load(&self) -> Result<Bundle, ConfigError> {
        let mut bundle = Bundle::default();
        for source in &self.modules {
            match source {
                ModuleSource::Inline { name, text } => {
                    bundle.modules.push((name.clone(), text.clone()));
                }
                ModuleSource::File(path) => {
                    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
                    bundle.modules.push((path.display().to_string(), text));
                }
                ModuleSource::Directory(dir) => {
                    let mut files = Vec::new();
                    walk(dir, &mut files)?;
                    for path in files {
                        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                        if name.ends_with(".rego") && !name.ends_with("_test.rego") {
                            let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
                            bundle.modules.push((path.display().to_string(), text));
                        } else if name.ends_with(".json") {
                            bundle.data.push(read_data(&path)?);
                        }
                    }
                }
            }
        }
        for source in &self.data {
            match source {
                DataSource::Inline { name, value } => bundle.data.push((name.clone(), value.clone())),
                DataSource::File(path) => bundle.data.push(read_data(path)?),
            }
        }
        if bundle.modules.is_empty() {
            return Err(PolicyError::Empty.into());
        }
        Ok(bundle)
    }
}

impl Bundle {
    /// The content hash of the bundle and the rules it is evaluated with:
    /// `sha256:` and the first 16 hex digits.
    pub(crate) fn version(&self, rules: &[&str]) -> String {
        let mut h = Sha256::new();
        let mut part = |tag: &[u8], bytes: &[u8]| {
            h.update(tag);
            h.update((bytes.len() as u64).to_be_bytes());
            h.update(bytes);
        };
        for rule in rules {
            part(b"r", rule.as_bytes());
        }
        for (name, text) in &self.modules {
            part(b"m", name.as_bytes());
            part(b"t", text.as_bytes());
        }
        for (name, value) in &self.data {
            part(b"d", name.as_bytes());
            part(b"v", value.to_string().as_bytes());
        }
        let digest = h.finalize();
        let mut out = String::from("sha256:");
        for byte in &digest[..8] {
            out.push_str(&format!("{byte:02x}"));
        }
        out
    }
}
