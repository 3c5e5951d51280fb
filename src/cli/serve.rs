//! `humanline serve`: flags, the optional `--config` file, and the runtime.

use crate::server::{ServeOptions, ServerFile, settings_port_range};
use crate::storage::StoreSetting;
use anyhow::Context;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Server settings (TOML); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Prompts folder.
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// SIP address, UDP and TCP [default: 127.0.0.1:5060].
    #[arg(long)]
    sip_listen: Option<SocketAddr>,
    /// RTP port range LOW-HIGH [default: 20000-20999].
    #[arg(long)]
    rtp_ports: Option<String>,
    /// HTTP address for /healthz, /metrics, /api and browser callers (/call.html)
    /// [default: 127.0.0.1:8080].
    #[arg(long)]
    http_listen: Option<SocketAddr>,
    /// Folder for the callback ledger [default: data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Where the callback ledger lives: "sqlite" (in the data folder) or a
    /// "postgres://user@host:port/database" URL shared by several nodes [default: sqlite].
    #[arg(long, value_parser = StoreSetting::parse)]
    store: Option<StoreSetting>,
    /// This node's name among several sharing one store [default: the file's `node`, else
    /// one made for each run].
    #[arg(long, value_parser = node_name)]
    node: Option<String>,
    /// An agent's SIP URI (repeatable); added to the config file's agents.
    #[arg(long = "agent", value_name = "SIP-URI")]
    agents: Vec<String>,
    /// Outbound target for callbacks (the request URI carries the number).
    #[arg(long)]
    trunk: Option<String>,
    /// Whisper model (ggml) for every language [default: $HUMANLINE_MODEL, else each
    /// language's own `[speech] model` in the models folder].
    #[arg(long)]
    model: Option<PathBuf>,
    /// Decide only at the end of speech (no partial transcripts): the baseline benchmarks
    /// compare against.
    #[arg(long)]
    no_partials: bool,
    /// Decoder threads for speech recognition [default: 1].
    #[arg(long)]
    decoders: Option<usize>,
    /// Threads per decode [default: the cores divided among the decoders]. On a machine
    /// shared with other busy work, 1 degrades more gracefully.
    #[arg(long)]
    decode_threads: Option<usize>,
}

fn node_name(s: &str) -> Result<String, String> {
    if crate::server::valid_node_name(s) {
        Ok(s.to_string())
    } else {
        Err("a node name is 1 to 64 letters, digits, `.`, `_` or `-`".into())
    }
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(path) => ServerFile::load(path)?,
        None => ServerFile::default(),
    };
    // Each decoder gets its share of the cores (`PoolConfig::sharing_cores`).
    let decoders = args.decoders.or(file.decoders).unwrap_or(1).max(1);
    let (utc_offset_min, callback_retry, callback_numbers) = (
        file.utc_offset_min(),
        file.callback_retry(),
        file.number_policy(),
    );
    let no_media_timeout = file.no_media_timeout();
    let (browser, auth) = (file.browser_settings(), file.auth_config());
    let store = args.store.unwrap_or_else(|| file.store());
    let node = args
        .node
        .clone()
        .or_else(|| file.node.as_ref().map(|n| n.get_ref().clone()));
    let node_timeout = file.node_liveness();
    let mut agents = file.agents.clone();
    agents.extend(args.agents.iter().cloned());
    let rtp = args
        .rtp_ports
        .or(file.rtp_ports)
        .unwrap_or_else(|| "20000-20999".into());
    let opts = ServeOptions {
        sip_listen: args
            .sip_listen
            .or(file.sip_listen)
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 5060))),
        rtp_ports: settings_port_range(&rtp)?,
        http_listen: args
            .http_listen
            .or(file.http_listen)
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8080))),
        prompts: args
            .prompts
            .or(file.prompts)
            .unwrap_or_else(|| "prompts".into()),
        data_dir: args
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| "data".into()),
        store,
        node,
        node_timeout,
        model: crate::speech::models::explicit_model(args.model.or(file.model).as_deref()),
        decoders,
        decode_threads: args
            .decode_threads
            .or(file.decode_threads)
            .unwrap_or_else(|| crate::speech::threads_per_decoder(decoders))
            .max(1),
        agents,
        utc_offset_min,
        callback_retry,
        callback_numbers,
        trunk: args.trunk.or(file.trunk),
        partials: !args.no_partials,
        no_media_timeout,
        // validated when the file was loaded
        admission: file
            .admission
            .as_ref()
            .and_then(|a| a.limits().ok())
            .unwrap_or_default(),
        browser,
        auth,
        registrar: file.registrar.settings(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(crate::server::serve(opts))
}
