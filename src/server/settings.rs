//! Server settings: a TOML file (`--config`) and command-line flags, flags winning. Defaults
//! serve on a laptop as they are: everything on 127.0.0.1, data under `data/`.

use crate::callbacks::RetryPolicy;
use crate::config::{ConfigError, ConfigProblem, line_col};
use crate::media::PortRange;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// `--config FILE`: every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    pub sip_listen: Option<SocketAddr>,
    /// "LOW-HIGH", e.g. "20000-20999".
    pub rtp_ports: Option<String>,
    pub http_listen: Option<SocketAddr>,
    pub prompts: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    /// One Whisper model for every language; unset: each language's own `[speech] model`.
    pub model: Option<PathBuf>,
    /// Decoder threads for speech recognition.
    pub decoders: Option<usize>,
    /// Threads per decode [default: the cores divided among the decoders].
    pub decode_threads: Option<usize>,
    /// Agents' SIP URIs, longest idle rung first.
    #[serde(default)]
    pub agents: Vec<String>,
    /// Where callbacks are dialed out: the request URI carries the number.
    pub trunk: Option<String>,
    /// Local time zone, minutes east of UTC, for callers' "call me at three".
    pub utc_offset_min: Option<i64>,
    /// How failed callback attempts are retried before a supervisor is asked to act.
    pub callback_retry: Option<RetryPolicy>,
}

impl ServerFile {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::Invalid(vec![ConfigProblem {
                file: path.into(),
                line: 1,
                col: 1,
                message: format!("cannot read: {e}"),
            }])
        })?;
        toml::from_str(&text).map_err(|e| {
            let (line, col) = line_col(&text, e.span().map_or(0, |s| s.start));
            ConfigError::Invalid(vec![ConfigProblem {
                file: path.into(),
                line,
                col,
                message: e.message().trim().to_string(),
            }])
        })
    }
}

/// Everything `serve` runs with, resolved.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub sip_listen: SocketAddr,
    pub rtp_ports: PortRange,
    pub http_listen: SocketAddr,
    pub prompts: PathBuf,
    pub data_dir: PathBuf,
    /// One model for every language (`--model`); `None`: each language's `[speech] model`.
    pub model: Option<PathBuf>,
    pub decoders: usize,
    /// Threads each decode uses.
    pub decode_threads: usize,
    pub agents: Vec<String>,
    pub trunk: Option<String>,
    pub utc_offset_min: i64,
    pub callback_retry: RetryPolicy,
    /// Decode partial transcripts while the caller speaks (off only for baselines).
    pub partials: bool,
}

pub fn parse_port_range(s: &str) -> anyhow::Result<PortRange> {
    let (low, high) = s
        .split_once('-')
        .ok_or_else(|| anyhow::anyhow!("rtp ports `{s}`: expected LOW-HIGH"))?;
    let low: u16 = low
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("rtp ports `{s}`: bad low port"))?;
    let high: u16 = high
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("rtp ports `{s}`: bad high port"))?;
    PortRange::new(low, high).map_err(|e| anyhow::anyhow!("rtp ports `{s}`: {e}"))
}
