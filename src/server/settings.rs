//! Server settings: a TOML file (`--config`) and command-line flags, flags winning. Defaults
//! serve on a laptop as they are: everything on 127.0.0.1, data under `data/`.

use crate::callbacks::RetryPolicy;
use crate::config::{ConfigError, ConfigProblem, line_col};
use crate::media::PortRange;
use crate::sip::AdmissionLimits;
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
    /// When new calls are refused with 503 and Retry-After.
    pub admission: Option<AdmissionFile>,
}

/// `[admission]`: limits on new calls (see `crate::sip::AdmissionLimits` for the defaults).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdmissionFile {
    /// Calls in progress beyond which new calls get 503 [default: 200, 1..=10000].
    pub max_calls: Option<toml::Spanned<usize>>,
    /// New calls per second beyond which they get 503 [default: 20, 1..=1000].
    pub max_new_calls_per_second: Option<toml::Spanned<u32>>,
}

impl AdmissionFile {
    /// The limits, or the problems (with the span of each bad value).
    pub fn limits(&self) -> Result<AdmissionLimits, Vec<(std::ops::Range<usize>, String)>> {
        let mut limits = AdmissionLimits::default();
        let mut problems = Vec::new();
        if let Some(v) = &self.max_calls {
            if AdmissionLimits::MAX_CALLS.contains(v.get_ref()) {
                limits.max_calls = *v.get_ref();
            } else {
                problems.push((
                    v.span(),
                    format!(
                        "admission.max_calls must be within {}..={}",
                        AdmissionLimits::MAX_CALLS.start(),
                        AdmissionLimits::MAX_CALLS.end()
                    ),
                ));
            }
        }
        if let Some(v) = &self.max_new_calls_per_second {
            if AdmissionLimits::MAX_NEW_CALLS_PER_SECOND.contains(v.get_ref()) {
                limits.max_new_calls_per_second = *v.get_ref();
            } else {
                problems.push((
                    v.span(),
                    format!(
                        "admission.max_new_calls_per_second must be within {}..={}",
                        AdmissionLimits::MAX_NEW_CALLS_PER_SECOND.start(),
                        AdmissionLimits::MAX_NEW_CALLS_PER_SECOND.end()
                    ),
                ));
            }
        }
        if problems.is_empty() {
            Ok(limits)
        } else {
            Err(problems)
        }
    }
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
        let file: ServerFile = toml::from_str(&text).map_err(|e| {
            let (line, col) = line_col(&text, e.span().map_or(0, |s| s.start));
            ConfigError::Invalid(vec![ConfigProblem {
                file: path.into(),
                line,
                col,
                message: e.message().trim().to_string(),
            }])
        })?;
        if let Some(Err(problems)) = file.admission.as_ref().map(AdmissionFile::limits) {
            return Err(ConfigError::Invalid(
                problems
                    .into_iter()
                    .map(|(span, message)| {
                        let (line, col) = line_col(&text, span.start);
                        ConfigProblem {
                            file: path.into(),
                            line,
                            col,
                            message,
                        }
                    })
                    .collect(),
            ));
        }
        Ok(file)
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
    pub model: PathBuf,
    pub decoders: usize,
    /// Threads each decode uses.
    pub decode_threads: usize,
    pub agents: Vec<String>,
    pub trunk: Option<String>,
    pub utc_offset_min: i64,
    pub callback_retry: RetryPolicy,
    /// Decode partial transcripts while the caller speaks (off only for baselines).
    pub partials: bool,
    /// When new calls are refused with 503 and Retry-After.
    pub admission: AdmissionLimits,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<ServerFile, ConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("server.toml");
        std::fs::write(&path, text).expect("write");
        ServerFile::load(&path)
    }

    #[test]
    fn admission_limits_default_and_validate_with_their_line() {
        let f = load("").expect("empty file");
        assert!(f.admission.is_none());
        let f = load("[admission]\nmax_calls = 5\nmax_new_calls_per_second = 2\n").expect("ok");
        let limits = f.admission.expect("table").limits().expect("valid");
        assert_eq!((limits.max_calls, limits.max_new_calls_per_second), (5, 2));
        let err = load("[admission]\nmax_calls = 0\n\nmax_new_calls_per_second = 5000\n")
            .expect_err("out of range");
        let ConfigError::Invalid(problems) = err;
        let lines: Vec<usize> = problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, vec![2, 4], "{problems:?}");
        assert!(load("[admission]\nmax_calls = -1\n").is_err());
    }
}
