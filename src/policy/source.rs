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

/// Every file under `dir`, recursively, in path order. Hidden entries
/// (`.name`) are skipped: editors' swap files, and the `..data` /
/// `..<timestamp>` directories a Kubernetes ConfigMap mount keeps beside the
/// symlinks to the current files (reading those too would load every module
/// twice).
fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), ConfigError> {
    let mut entries = std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(io_err(dir))?;
    entries.retain(|path| {
        !path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'))
    });
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

/// What a file looked like: its path, length and modification time (after
/// following symlinks, so a ConfigMap's symlink swap shows).
type Stamp = (PathBuf, u64, Option<std::time::SystemTime>);

/// How often [`Sources::load`] reads the sources again when they change
/// while being read, before it gives up (and a reload keeps the old policy).
const LOAD_ATTEMPTS: usize = 3;

impl Sources {
    /// Read every source now, as one consistent snapshot.
    ///
    /// A deployment that rewrites a policy directory file by file could
    /// otherwise be read half old, half new: each module valid on its own,
    /// together a policy nobody wrote. So every file is stamped (length and
    /// modification time) before and after the read; if anything changed,
    /// was added or removed meanwhile, the read (or its error) is thrown away
    /// and starts over, and after
    /// [`LOAD_ATTEMPTS`] changing reads it fails ([`PolicyError::Unstable`]):
    /// the server does not start, or a reload keeps the previous policy.
    pub(crate) fn load(&self) -> Result<Bundle, ConfigError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let before = self.stamps()?;
            // A file caught half-written may fail to parse: that too is
            // only an error if nothing changed during the read.
            let bundle = self.read();
            if self.stamps()? == before {
                return bundle;
            }
            if attempts == LOAD_ATTEMPTS {
                return Err(PolicyError::Unstable { attempts }.into());
            }
        }
    }

    /// The files behind the sources, as they are now.
    fn stamps(&self) -> Result<Vec<Stamp>, ConfigError> {
        let mut files = Vec::new();
        for source in &self.modules {
            match source {
                ModuleSource::Inline { .. } => {}
                ModuleSource::File(path) => files.push(path.clone()),
                ModuleSource::Directory(dir) => walk(dir, &mut files)?,
            }
        }
        for source in &self.data {
            if let DataSource::File(path) = source {
                files.push(path.clone());
            }
        }
        files
            .into_iter()
            .map(|path| {
                let meta = std::fs::metadata(&path).map_err(io_err(&path))?;
                Ok((path, meta.len(), meta.modified().ok()))
            })
            .collect()
    }

    /// Read every source once.
    fn read(&self) -> Result<Bundle, ConfigError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("rmcp-guard-source-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_configmap_mount_is_read_once_through_its_symlinks() {
        // The layout kubelet writes: the files live in a hidden timestamped
        // directory, `..data` points at it, and the visible names are
        // symlinks through `..data`.
        let dir = temp_dir("configmap");
        let real = dir.join("..2026_12_01_00_00_00.1");
        std::fs::create_dir_all(&real).unwrap();
        std::fs::write(real.join("authz.rego"), "package mcp.authz\nallow := true\n").unwrap();
        std::fs::write(real.join("data.json"), "{}").unwrap();
        std::os::unix::fs::symlink(&real, dir.join("..data")).unwrap();
        std::os::unix::fs::symlink(dir.join("..data/authz.rego"), dir.join("authz.rego")).unwrap();
        std::os::unix::fs::symlink(dir.join("..data/data.json"), dir.join("data.json")).unwrap();
        let sources = Sources {
            modules: vec![ModuleSource::Directory(dir.clone())],
            data: Vec::new(),
        };
        let bundle = sources.load().unwrap();
        assert_eq!(bundle.modules.len(), 1, "{:?}", bundle.modules);
        assert_eq!(bundle.data.len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn stamps_see_a_rewritten_added_or_removed_file() {
        let dir = temp_dir("stamps");
        std::fs::write(dir.join("a.rego"), "package a\n").unwrap();
        let sources = Sources {
            modules: vec![ModuleSource::Directory(dir.clone())],
            data: Vec::new(),
        };
        let first = sources.stamps().unwrap();
        assert_eq!(sources.stamps().unwrap(), first, "nothing changed");
        std::fs::write(dir.join("a.rego"), "package a\nx := 1\n").unwrap();
        let rewritten = sources.stamps().unwrap();
        assert_ne!(rewritten, first);
        std::fs::write(dir.join("b.rego"), "package b\n").unwrap();
        let added = sources.stamps().unwrap();
        assert_ne!(added, rewritten);
        std::fs::remove_file(dir.join("b.rego")).unwrap();
        assert_eq!(sources.stamps().unwrap(), rewritten);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
