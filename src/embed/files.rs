//! Finding and checking the model files, and the model's identity that stored vectors are tagged with.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{EmbedError, Precision};

pub const DEFAULT_MODEL: &str = "sentence-transformers/all-MiniLM-L6-v2";

/// Where the model comes from: a local folder, or a hub repo id at a revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    Local(PathBuf),
    Hub { repo: String, revision: String },
}

impl ModelSource {
    /// A path that exists is a folder; anything else is a repo id, optionally `repo@revision`.
    /// The default, when nothing is given, is the copy scripts/setup puts under models/ if present.
    pub fn parse(spec: Option<&str>) -> ModelSource {
        let spec = match spec {
            Some(s) if !s.is_empty() => s.to_owned(),
            _ => {
                let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/all-MiniLM-L6-v2");
                if local.join("config.json").exists() {
                    return ModelSource::Local(local);
                }
                DEFAULT_MODEL.to_owned()
            }
        };
        if Path::new(&spec).is_dir() {
            return ModelSource::Local(PathBuf::from(spec));
        }
        match spec.split_once('@') {
            Some((repo, revision)) => ModelSource::Hub {
                repo: repo.into(),
                revision: revision.into(),
            },
            None => ModelSource::Hub {
                repo: spec,
                revision: "main".into(),
            },
        }
    }
}

/// The stable name of the model that produced a vector.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ModelIdentity {
    pub name: String,
    /// The hub revision, or `sha256:<first 16 hex>` of the weights for a local folder.
    pub revision: String,
    pub dimension: usize,
    /// The arithmetic of its matrix multiplies: vectors of one model at two precisions differ slightly,
    /// so a generation's are all of one.
    pub precision: Precision,
}

impl std::fmt::Display for ModelIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}@{} ({} dims, {})",
            self.name, self.revision, self.dimension, self.precision
        )
    }
}

#[derive(Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
}

#[derive(Deserialize)]
struct SentenceBertConfig {
    max_seq_length: usize,
}

/// The checked contents of a model folder.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    pub config: candle_transformers::models::bert::Config,
    pub weights: PathBuf,
    pub tokenizer: PathBuf,
    pub max_seq_length: usize,
    pub identity: ModelIdentity,
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, EmbedError> {
    let text = std::fs::read_to_string(path).map_err(|e| EmbedError::MissingFile {
        path: path.display().to_string(),
        hint: format!("{e}; a sentence-transformers model folder has config.json, model.safetensors, tokenizer.json and 1_Pooling/config.json"),
    })?;
    serde_json::from_str(&text).map_err(|e| EmbedError::InvalidFile {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

fn weights_digest(path: &Path) -> Result<String, EmbedError> {
    let mut file = std::fs::File::open(path).map_err(|e| EmbedError::MissingFile {
        path: path.display().to_string(),
        hint: e.to_string(),
    })?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| EmbedError::InvalidFile {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", &hex::encode(hasher.finalize())[..16]))
}

impl ModelFiles {
    pub fn resolve(source: &ModelSource) -> Result<Self, EmbedError> {
        match source {
            ModelSource::Local(dir) => {
                let name = std::fs::read_to_string(dir.join("README.md"))
                    .ok()
                    .filter(|readme| readme.contains("all-MiniLM-L6-v2"))
                    .map(|_| DEFAULT_MODEL.to_owned())
                    .unwrap_or_else(|| dir.display().to_string());
                Self::from_dir(dir, name, None)
            }
            ModelSource::Hub { repo, revision } => {
                let dir = fetch_from_hub(repo, revision)?;
                Self::from_dir(&dir, repo.clone(), Some(revision.clone()))
            }
        }
    }

    fn from_dir(dir: &Path, name: String, revision: Option<String>) -> Result<Self, EmbedError> {
        let config_path = dir.join("config.json");
        let config: candle_transformers::models::bert::Config = read_json(&config_path)?;
        let invalid = |reason: String| EmbedError::InvalidFile {
            path: config_path.display().to_string(),
            reason,
        };
        if config.num_attention_heads == 0 || !config.hidden_size.is_multiple_of(config.num_attention_heads) {
            return Err(invalid(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                config.hidden_size, config.num_attention_heads
            )));
        }
        let pooling_path = dir.join("1_Pooling/config.json");
        let pooling: PoolingConfig = read_json(&pooling_path)?;
        if !pooling.pooling_mode_mean_tokens || pooling.pooling_mode_cls_token || pooling.pooling_mode_max_tokens {
            return Err(EmbedError::InvalidFile {
                path: pooling_path.display().to_string(),
                reason: "only mean pooling is supported".into(),
            });
        }
        let sbert_path = dir.join("sentence_bert_config.json");
        let max_seq_length = if sbert_path.exists() {
            read_json::<SentenceBertConfig>(&sbert_path)?.max_seq_length
        } else {
            config.max_position_embeddings
        };
        if max_seq_length > config.max_position_embeddings || max_seq_length < 8 {
            return Err(EmbedError::InvalidFile {
                path: sbert_path.display().to_string(),
                reason: format!(
                    "max_seq_length {max_seq_length} must be between 8 and max_position_embeddings {}",
                    config.max_position_embeddings
                ),
            });
        }
        let weights = dir.join("model.safetensors");
        let tokenizer = dir.join("tokenizer.json");
        for file in [&weights, &tokenizer] {
            if !file.exists() {
                return Err(EmbedError::MissingFile {
                    path: file.display().to_string(),
                    hint: "re-run scripts/setup or download the full model folder".into(),
                });
            }
        }
        let revision = match revision {
            Some(r) => r,
            None => weights_digest(&weights)?,
        };
        let identity = ModelIdentity {
            name,
            revision,
            dimension: config.hidden_size,
            precision: Precision::F32,
        };
        Ok(ModelFiles {
            config,
            weights,
            tokenizer,
            max_seq_length,
            identity,
        })
    }
}

/// Resolves a repo through hf-hub: its cache first (the only source when HF_HUB_OFFLINE=1), then the hub.
fn fetch_from_hub(repo: &str, revision: &str) -> Result<PathBuf, EmbedError> {
    use hf_hub::{Cache, Repo, RepoType};
    let hub_err = |reason: String| EmbedError::Hub {
        repo: repo.to_owned(),
        reason,
    };
    let spec = Repo::with_revision(repo.to_owned(), RepoType::Model, revision.to_owned());
    let files = [
        "config.json",
        "tokenizer.json",
        "model.safetensors",
        "1_Pooling/config.json",
        "sentence_bert_config.json",
    ];
    let offline = std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    let cached = Cache::from_env().repo(spec.clone());
    if let Some(paths) = files.iter().map(|f| cached.get(f)).collect::<Option<Vec<_>>>() {
        return Ok(paths[0].parent().expect("a cached file has a folder").to_path_buf());
    }
    if offline {
        return Err(hub_err(
            "HF_HUB_OFFLINE is set and the model is not in the hf-hub cache".into(),
        ));
    }
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .build()
        .map_err(|e| hub_err(e.to_string()))?;
    let repo_api = api.repo(spec);
    let mut first = None;
    for file in files {
        let path = repo_api.get(file).map_err(|e| hub_err(format!("{file}: {e}")))?;
        first.get_or_insert(path);
    }
    Ok(first
        .expect("at least one file")
        .parent()
        .expect("a file has a folder")
        .to_path_buf())
}
