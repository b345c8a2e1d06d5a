//! Configuration: TOML file → `BERTH_*` environment → command-line flags →
//! validation. Unknown keys are refused with the key named; every default gives
//! the embedded single node.

use std::net::SocketAddr;
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use anyhow::bail;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// HTTP address of the registry API.
    pub listen: String,
    /// Where the node keeps its metadata (and, with the fs backend, its blobs).
    pub data_dir: PathBuf,
    pub storage: StorageConfig,
    pub uploads: UploadsConfig,
    pub metadata: MetadataConfig,
    pub log: LogConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:5000".into(),
            data_dir: PathBuf::from("berth-data"),
            storage: StorageConfig::default(),
            uploads: UploadsConfig::default(),
            metadata: MetadataConfig::default(),
            log: LogConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub backend: Backend,
    pub fs: FsConfig,
}

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    #[default]
    Fs,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct FsConfig {
    /// Directory of blob bytes; defaults to `<data_dir>/blobs`.
    pub path: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UploadsConfig {
    /// An upload idle for this long is cancelled and its bytes removed.
    #[serde(with = "humantime_serde")]
    pub expire_after: Duration,
    /// How often expired uploads are looked for.
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
}

impl Default for UploadsConfig {
    fn default() -> Self {
        UploadsConfig {
            expire_after: Duration::from_secs(24 * 3600),
            sweep_interval: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetadataConfig {
    /// `linearizable` (default) or `local`.
    pub tag_reads: TagReads,
    /// Take a snapshot and compact the Raft log after this many entries.
    pub snapshot_after_logs: u64,
}

impl Default for MetadataConfig {
    fn default() -> Self {
        MetadataConfig {
            tag_reads: TagReads::Linearizable,
            snapshot_after_logs: 10_000,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TagReads {
    Linearizable,
    Local,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter, e.g. `info` or `berth=debug,info`. `RUST_LOG` wins.
    pub level: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Command-line values that override the file and environment.
#[derive(Debug, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
}

const ENV_PREFIX: &str = "BERTH_";

/// `BERTH_UPLOADS__EXPIRE_AFTER=1h` sets `uploads.expire_after`: sections are
/// separated by a double underscore. Values are read as TOML scalars when they parse
/// as one (numbers, booleans), else as strings.
fn apply_env(
    table: &mut toml::Table,
    vars: impl Iterator<Item = (String, String)>,
) -> anyhow::Result<()> {
    for (key, value) in vars {
        let Some(path) = key.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let parts: Vec<String> = path.split("__").map(|p| p.to_ascii_lowercase()).collect();
        if parts.iter().any(|p| p.is_empty()) {
            bail!("environment variable {key}: empty key segment");
        }
        if !TOP_LEVEL_KEYS.contains(&parts[0].as_str()) {
            // Other tools share the prefix (BERTH_TOOLS, …): only our keys are ours.
            continue;
        }
        let mut cur = &mut *table;
        for p in &parts[..parts.len() - 1] {
            let entry = cur
                .entry(p.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            cur = entry
                .as_table_mut()
                .with_context(|| format!("environment variable {key}: {p} is not a section"))?;
        }
        let v = if let Ok(i) = value.parse::<i64>() {
            toml::Value::Integer(i)
        } else if let Ok(b) = value.parse::<bool>() {
            toml::Value::Boolean(b)
        } else {
            toml::Value::String(value)
        };
        cur.insert(parts[parts.len() - 1].clone(), v);
    }
    Ok(())
}

const TOP_LEVEL_KEYS: &[&str] = &[
    "listen", "data_dir", "storage", "uploads", "metadata", "log",
];

impl Config {
    /// Load from an optional file, the process environment and flags, then validate.
    pub fn load(file: Option<&Path>, overrides: Overrides) -> anyhow::Result<Config> {
        Self::load_from(file, std::env::vars(), overrides)
    }

    pub fn load_from(
        file: Option<&Path>,
        env: impl Iterator<Item = (String, String)>,
        overrides: Overrides,
    ) -> anyhow::Result<Config> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                text.parse::<toml::Table>()
                    .with_context(|| format!("parsing config file {}", path.display()))?
            }
            None => toml::Table::new(),
        };
        apply_env(&mut table, env)?;
        let mut config: Config = Config::deserialize(toml::Value::Table(table))
            .map_err(|e| anyhow::anyhow!("invalid configuration: {}", e.message().trim()))
            .with_context(|| match file {
                Some(p) => format!("in {} (or BERTH_* environment)", p.display()),
                None => "in BERTH_* environment".to_string(),
            })?;
        if let Some(l) = overrides.listen {
            config.listen = l;
        }
        if let Some(d) = overrides.data_dir {
            config.data_dir = d;
        }
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        self.listen_addr()?;
        if self.data_dir.as_os_str().is_empty() {
            bail!("data_dir: must not be empty");
        }
        if self.uploads.expire_after.is_zero() {
            bail!("uploads.expire_after: must be greater than zero");
        }
        if self.uploads.sweep_interval.is_zero() {
            bail!("uploads.sweep_interval: must be greater than zero");
        }
        if self.metadata.snapshot_after_logs == 0 {
            bail!("metadata.snapshot_after_logs: must be greater than zero");
        }
        Ok(())
    }

    pub fn listen_addr(&self) -> anyhow::Result<SocketAddr> {
        self.listen.parse().with_context(|| {
            format!(
                "listen: {:?} is not an address like 127.0.0.1:5000",
                self.listen
            )
        })
    }

    pub fn blob_dir(&self) -> PathBuf {
        self.storage
            .fs
            .path
            .clone()
            .unwrap_or_else(|| self.data_dir.join("blobs"))
    }

    pub fn meta_dir(&self) -> PathBuf {
        self.data_dir.join("meta")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml_text: &str, env: &[(&str, &str)]) -> anyhow::Result<Config> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("berth.toml");
        std::fs::write(&path, toml_text)?;
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::load_from(
            Some(&path),
            env.collect::<Vec<_>>().into_iter(),
            Overrides::default(),
        )
    }

    #[test]
    fn defaults_are_the_embedded_single_node() {
        let c = load("", &[]).unwrap();
        assert_eq!(c.listen, "127.0.0.1:5000");
        assert_eq!(c.storage.backend, Backend::Fs);
        assert_eq!(c.blob_dir(), PathBuf::from("berth-data/blobs"));
        assert_eq!(c.uploads.expire_after, Duration::from_secs(86400));
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = format!("{:#}", load("lisen = \"x\"", &[]).unwrap_err());
        assert!(err.contains("lisen"), "{err}");
        let err = format!(
            "{:#}",
            load("[uploads]\nexpires = \"1h\"", &[]).unwrap_err()
        );
        assert!(err.contains("expires"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let err = format!("{:#}", load("listen = \"nowhere\"", &[]).unwrap_err());
        assert!(err.contains("listen"), "{err}");
        let err = format!(
            "{:#}",
            load("[uploads]\nexpire_after = \"soon\"", &[]).unwrap_err()
        );
        assert!(
            err.contains("soon") || err.contains("expire_after"),
            "{err}"
        );
        let err = format!(
            "{:#}",
            load("[storage]\nbackend = \"tape\"", &[]).unwrap_err()
        );
        assert!(err.contains("tape"), "{err}");
    }

    #[test]
    fn environment_overrides_file_and_flags_override_both() {
        let c = load(
            "listen = \"127.0.0.1:1\"\n[uploads]\nexpire_after = \"1h\"",
            &[
                ("BERTH_LISTEN", "127.0.0.1:2"),
                ("BERTH_UPLOADS__EXPIRE_AFTER", "5m"),
                ("BERTH_TOOLS", "/elsewhere"),
            ],
        )
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:2");
        assert_eq!(c.uploads.expire_after, Duration::from_secs(300));

        let o = Overrides {
            listen: Some("127.0.0.1:3".into()),
            data_dir: Some("/tmp/x".into()),
        };
        let c = Config::load_from(
            None,
            [("BERTH_LISTEN".to_string(), "127.0.0.1:2".to_string())].into_iter(),
            o,
        )
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:3");
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn unknown_environment_keys_under_our_sections_are_refused() {
        let err = format!(
            "{:#}",
            load("", &[("BERTH_UPLOADS__NOPE", "1")]).unwrap_err()
        );
        assert!(err.contains("nope"), "{err}");
    }
}
