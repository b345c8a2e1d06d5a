//! `berth`: the registry binary. CLI, configuration, telemetry set-up, wiring of
//! the crates, and ordered graceful shutdown. No business rules live here.

mod config;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use berth_blob::BlobStore;
use berth_blob::FsBlobStore;
use berth_cluster::ClusterNode;
use berth_cluster::RaftOptions;
use berth_meta::NodeInfo;
use berth_registry::Registry;
use berth_registry::RegistryOptions;
use clap::Parser;
use clap::Subcommand;
use config::Config;
use config::LogFormat;
use config::Overrides;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing_subscriber::EnvFilter;

/// berth: a distributed container-image registry (OCI Distribution API).
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a registry node. With no configuration: a single node on 127.0.0.1:5000
    /// keeping metadata and blobs under ./berth-data.
    Serve {
        /// TOML configuration file (see the configuration reference in README.md).
        #[arg(long, short = 'c', value_name = "FILE")]
        config: Option<PathBuf>,
        /// HTTP listen address; overrides `listen` of the file and BERTH_LISTEN.
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        /// Data directory; overrides `data_dir` of the file and BERTH_DATA_DIR.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Load and validate a configuration, print the effective values, and exit.
    CheckConfig {
        #[arg(long, short = 'c', value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config,
            listen,
            data_dir,
        } => {
            let config = Config::load(config.as_deref(), Overrides { listen, data_dir })?;
            init_tracing(&config)?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("berth")
                .build()?;
            rt.block_on(serve(config))
        }
        Command::CheckConfig { config } => {
            let config = Config::load(config.as_deref(), Overrides::default())?;
            println!("{config:#?}");
            Ok(())
        }
    }
}

fn init_tracing(config: &Config) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::try_new(v),
        _ => EnvFilter::try_new(&config.log.level),
    }
    .with_context(|| format!("log.level: {:?} is not a valid filter", config.log.level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let addr = config.listen_addr()?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("data_dir: cannot create {}", config.data_dir.display()))?;

    let blobs: Arc<dyn BlobStore> = Arc::new(
        FsBlobStore::open(config.blob_dir())
            .await
            .with_context(|| {
                format!(
                    "storage.fs.path: cannot use {}",
                    config.blob_dir().display()
                )
            })?,
    );

    let raft_options = RaftOptions {
        snapshot_after_logs: config.metadata.snapshot_after_logs,
        ..RaftOptions::default()
    };
    let node_id = 1;
    let cluster = ClusterNode::open(node_id, &config.meta_dir(), raft_options)
        .await
        .with_context(|| format!("opening metadata store in {}", config.meta_dir().display()))?;
    let me = NodeInfo {
        grpc_addr: String::new(),
        http_addr: config.listen.clone(),
    };
    cluster.bootstrap(BTreeMap::from([(node_id, me)])).await?;
    cluster.wait_for_leader(Duration::from_secs(30)).await?;

    let registry = Registry::new(
        blobs,
        cluster.clone(),
        RegistryOptions {
            upload_expiry: config.uploads.expire_after,
            sweep_interval: config.uploads.sweep_interval,
            tag_reads: match config.metadata.tag_reads {
                config::TagReads::Linearizable => berth_registry::TagReads::Linearizable,
                config::TagReads::Local => berth_registry::TagReads::Local,
            },
            ..RegistryOptions::default()
        },
    );

    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    tasks.spawn(registry.clone().run_upload_sweeper(stop.clone()));

    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listen: cannot bind {addr}"))?;
    tracing::info!(%addr, data_dir = %config.data_dir.display(), "berth is serving the OCI distribution API");

    let app = berth_api::router(registry);
    let shutdown = stop.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested");
        shutdown.cancel();
    });
    let server_stop = stop.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { server_stop.cancelled().await })
        .await
        .context("http server")?;

    // Requests are done: stop background work, then Raft (which closes RocksDB).
    tasks.close();
    if tokio::time::timeout(Duration::from_secs(10), tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("background tasks did not stop in time");
    }
    cluster.shutdown().await;
    tracing::info!("berth stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
