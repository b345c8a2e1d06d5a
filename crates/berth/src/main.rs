//! `berth`: the registry binary. CLI, configuration, telemetry set-up, wiring of
//! the crates, and ordered graceful shutdown. No business rules live here.

mod config;
mod telemetry;

use std::collections::BTreeMap;
use std::future::IntoFuture;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use berth_blob::BlobStore;
use berth_blob::CachedBlobStore;
use berth_blob::FsBlobStore;
use berth_blob::S3BlobStore;
use berth_cluster::ClusterNode;
use berth_cluster::RaftGrpcService;
use berth_meta::NodeInfo;
use berth_registry::BlobDelivery;
use berth_registry::Registry;
use berth_registry::RegistryOptions;
use clap::Parser;
use clap::Subcommand;
use config::Backend;
use config::Config;
use config::Delivery;
use config::Overrides;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

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
    /// Inspect and change the members of a cluster, through any node's admin API.
    Cluster {
        /// HTTP address of any node.
        #[arg(long, global = true, default_value = "http://127.0.0.1:5000", value_name = "URL")]
        node: String,
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Load and validate a configuration, print the effective values, and exit.
    CheckConfig {
        #[arg(long, short = 'c', value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Members, roles, leader, term, log and applied indexes.
    Status,
    /// Add a node: it joins as a learner, catches up, then becomes a voter.
    AddNode {
        id: u64,
        /// The new node's gRPC address (its cluster.advertise_grpc).
        grpc_addr: String,
        /// The new node's HTTP address (its cluster.advertise_http).
        #[arg(long, default_value = "")]
        http_addr: String,
        /// Promote it even when the voters would then not have a reachable majority.
        #[arg(long)]
        force: bool,
    },
    /// Remove a node from the cluster.
    RemoveNode {
        id: u64,
        /// Remove it even when the remaining voters would not have a reachable
        /// majority (the cluster then waits for the unreachable ones).
        #[arg(long)]
        force: bool,
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
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("berth")
                .build()?;
            let telemetry = {
                let _in_runtime = rt.enter();
                telemetry::init(&config)?
            };
            // `serve` flushes it in its place in the shutdown; here only when it
            // returned before.
            let mut telemetry = Some(telemetry);
            let result = rt.block_on(serve(config, &mut telemetry));
            if let Some(telemetry) = telemetry {
                let _in_runtime = rt.enter();
                telemetry.shutdown();
            }
            result
        }
        Command::Cluster { node, command } => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(cluster_command(&node, command))
        }
        Command::CheckConfig { config } => {
            let config = Config::load(config.as_deref(), Overrides::default())?;
            print_stdout(&format!("{config:#?}"))?;
            Ok(())
        }
    }
}

/// Print a command's answer on standard output. A reader that went away (`| head`)
/// ends the command quietly, with success: it got what it wanted.
fn print_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => Err(anyhow::Error::new(e).context("writing to standard output")),
    }
}

/// How long in-flight requests (HTTP, and upload requests other nodes handed over)
/// may run on after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long background workers may take to stop once requests are drained.
const WORKERS_STOP: Duration = Duration::from_secs(5);
/// How long the gRPC server may take to close its connections.
const GRPC_STOP: Duration = Duration::from_secs(3);

async fn serve(config: Config, telemetry: &mut Option<telemetry::Telemetry>) -> anyhow::Result<()> {
    let addr = config.listen_addr()?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("data_dir: cannot create {}", config.data_dir.display()))?;

    let (blobs, delivery) = open_blob_store(&config).await?;

    let cc = &config.cluster;
    let node_id = cc.node_id;
    let raft_options = config.raft_options();
    let cluster = ClusterNode::open(node_id, &config.meta_dir(), raft_options)
        .await
        .with_context(|| format!("opening metadata store in {}", config.meta_dir().display()))?;
    let me = NodeInfo {
        grpc_addr: cc
            .advertise_grpc
            .clone()
            .or_else(|| cc.grpc_listen.clone())
            .unwrap_or_default(),
        http_addr: cc.advertise_http.clone().unwrap_or_else(|| config.listen.clone()),
    };

    // One token per shutdown stage (see the end of this function): the gRPC server
    // outlives the HTTP drain, so Raft and upload hand-overs keep working while
    // requests finish.
    let grpc_stop = CancellationToken::new();
    let grpc_server = match &cc.grpc_listen {
        Some(grpc) => {
            let grpc_listener = tokio::net::TcpListener::bind(grpc)
                .await
                .with_context(|| format!("cluster.grpc_listen: cannot bind {grpc}"))?;
            tracing::info!(addr = %grpc, "serving the cluster gRPC service");
            // Every gRPC service of the node is added here.
            let router = berth_cluster::grpc_server().add_service(RaftGrpcService::new(cluster.clone()));
            let stop = grpc_stop.clone().cancelled_owned();
            Some(tokio::spawn(
                async move {
                    if let Err(e) = router
                        .serve_with_incoming_shutdown(berth_cluster::grpc_incoming(grpc_listener), stop)
                        .await
                    {
                        tracing::error!(error = %e, "gRPC server failed");
                    }
                }
                .instrument(tracing::info_span!("grpc_server")),
            ))
        }
        None => None,
    };
    if !cc.is_clustered() {
        cluster.bootstrap(BTreeMap::from([(node_id, me)])).await?;
        cluster.wait_for_leader(Duration::from_secs(30)).await?;
    } else {
        let members = cc.members()?;
        // One member initialises a new cluster; the others are reached by its leader.
        if members.iter().map(|(id, _)| *id).min() == Some(node_id) {
            let map = members
                .into_iter()
                .map(|(id, grpc_addr)| {
                    let info = if id == node_id {
                        me.clone()
                    } else {
                        NodeInfo {
                            grpc_addr,
                            http_addr: String::new(),
                        }
                    };
                    (id, info)
                })
                .collect();
            cluster.bootstrap(map).await?;
        }
        match cluster.wait_for_leader(Duration::from_secs(10)).await {
            Ok(leader) => tracing::info!(leader, "cluster has a leader"),
            Err(_) => tracing::warn!("no leader yet: serving, not ready until this node is part of a cluster"),
        }
    }

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
            delivery,
            deletes: config.registry.deletes,
            max_sessions_per_repository: config.uploads.max_sessions_per_repository,
            max_sessions: config.uploads.max_sessions,
            ..RegistryOptions::default()
        },
    );

    registry.start_workers();

    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listen: cannot bind {addr}"))?;
    tracing::info!(
        %addr,
        data_dir = %config.data_dir.display(),
        workers = tokio::runtime::Handle::current().metrics().num_workers(),
        "berth is serving the OCI distribution API"
    );

    let app = berth_api::router(registry.clone());
    let http_stop = CancellationToken::new();
    let force = CancellationToken::new();
    tokio::spawn(watch_signals(http_stop.clone(), force.clone()).instrument(tracing::info_span!("shutdown_signals")));
    let server_stop = http_stop.clone();
    let server = axum::serve(listener, app)
        .with_graceful_shutdown(async move { server_stop.cancelled().await })
        .into_future();
    tokio::pin!(server);
    // Biased: once the signal came, the server's end (at once when no request runs)
    // is the drain's, not an early end that would skip draining the hand-overs.
    let ended_early = tokio::select! {
        biased;
        () = http_stop.cancelled() => None,
        served = &mut server => Some(served.context("http server")),
    };

    // The shutdown, in stages. 1: no new HTTP connections (the listener is closed);
    // requests in flight, here and those other nodes handed over, get the grace
    // period, while gRPC serves on.
    let stage = Instant::now();
    let drained = async {
        let http = async {
            match ended_early {
                None => (&mut server).await,
                Some(_) => Ok(()),
            }
        };
        let (served, ()) = tokio::join!(http, cluster.drain_hand_overs());
        served
    };
    tokio::select! {
        served = drained => {
            if let Err(e) = served {
                tracing::warn!(error = %e, "http server failed while draining");
            }
            tracing::info!(took = ?stage.elapsed(), "shutdown: requests drained");
        }
        () = tokio::time::sleep(SHUTDOWN_GRACE) => tracing::warn!(
            grace = ?SHUTDOWN_GRACE,
            "shutdown: requests still running after the grace period: cancelling them"
        ),
        () = force.cancelled() => tracing::warn!(
            took = ?stage.elapsed(),
            "shutdown: second signal: cancelling the requests still running"
        ),
    }

    // 2: background workers.
    let stage = Instant::now();
    if registry.workers().shutdown(WORKERS_STOP).await {
        tracing::info!(took = ?stage.elapsed(), "shutdown: background workers stopped");
    } else {
        tracing::warn!(bound = ?WORKERS_STOP, "shutdown: background workers did not stop in time");
    }

    // 3: gRPC. Peers get GOAWAY; calls in flight may finish within the bound.
    if let Some(mut server) = grpc_server {
        let stage = Instant::now();
        grpc_stop.cancel();
        if tokio::time::timeout(GRPC_STOP, &mut server).await.is_err() {
            server.abort();
            tracing::warn!(bound = ?GRPC_STOP, "shutdown: gRPC connections still open: closing them");
        } else {
            tracing::info!(took = ?stage.elapsed(), "shutdown: gRPC server stopped");
        }
    }

    // 4: telemetry, before Raft: the spans of everything above are still queued,
    // and closing Raft needs only the log.
    if let Some(telemetry) = telemetry.take() {
        let stage = Instant::now();
        // The exporter's flush blocks its thread until the spans are sent.
        if let Err(e) = tokio::task::spawn_blocking(move || telemetry.shutdown()).await {
            tracing::warn!(error = %e, "shutdown: flushing telemetry failed");
        }
        tracing::info!(took = ?stage.elapsed(), "shutdown: telemetry flushed");
    }

    // 5: Raft and the node's background tasks; this closes RocksDB.
    let stage = Instant::now();
    cluster.shutdown().await;
    tracing::info!(took = ?stage.elapsed(), "shutdown: Raft and the metadata store closed");
    tracing::info!("berth stopped");
    ended_early.unwrap_or(Ok(()))
}

/// Run a `berth cluster …` command against a node's admin API and print its answer.
async fn cluster_command(node: &str, command: ClusterCommand) -> anyhow::Result<()> {
    let base = node.trim_end_matches('/');
    let base = if base.starts_with("http://") || base.starts_with("https://") {
        base.to_string()
    } else {
        format!("http://{base}")
    };
    let client = reqwest::Client::new();
    let request = match command {
        ClusterCommand::Status => client.get(format!("{base}/admin/cluster")),
        ClusterCommand::AddNode {
            id,
            grpc_addr,
            http_addr,
            force,
        } => client
            .post(format!("{base}/admin/cluster/nodes"))
            .json(&serde_json::json!({"id": id, "grpc_addr": grpc_addr, "http_addr": http_addr, "force": force})),
        ClusterCommand::RemoveNode { id, force } => {
            client.delete(format!("{base}/admin/cluster/nodes/{id}?force={force}"))
        }
    };
    let resp = request.send().await.with_context(|| format!("cannot reach {base}"))?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.context("reading the node's answer")?;
    print_stdout(&serde_json::to_string_pretty(&body)?)?;
    if !status.is_success() {
        anyhow::bail!("the node answered {status}");
    }
    Ok(())
}

/// The blob store the configuration asks for, with the cache wrapped around S3.
async fn open_blob_store(config: &Config) -> anyhow::Result<(Arc<dyn BlobStore>, BlobDelivery)> {
    match config.storage.backend {
        Backend::Fs => {
            let dir = config.blob_dir();
            let store = FsBlobStore::open(&dir)
                .await
                .with_context(|| format!("storage.fs.path: cannot use {}", dir.display()))?
                .with_direct_io(config.storage.fs.direct_io);
            Ok((Arc::new(store), BlobDelivery::Proxy))
        }
        Backend::S3 => {
            let s3 = &config.storage.s3;
            let mut s3_config = berth_blob::S3Config::new(s3.bucket.clone(), config.spool_dir());
            s3_config.endpoint = s3.endpoint.clone();
            s3_config.region = s3.region.clone();
            s3_config.path_style = s3.path_style;
            s3_config.prefix = s3.prefix.clone();
            s3_config.access_key_id = s3.access_key_id.clone();
            s3_config.secret_access_key = s3.secret()?;
            s3_config.part_size = s3.part_size.as_u64();
            s3_config.request_timeout = s3.request_timeout;
            s3_config.max_attempts = s3.max_attempts;
            let store = S3BlobStore::connect(s3_config).await.with_context(|| {
                let endpoint = s3.endpoint.as_deref().unwrap_or("AWS");
                format!("storage.s3: bucket {:?} at {endpoint} is not usable", s3.bucket)
            })?;
            let store: Arc<dyn BlobStore> = Arc::new(store);
            let delivery = match s3.blob_delivery {
                Delivery::Redirect => BlobDelivery::Redirect {
                    expires: s3.redirect_expiry,
                },
                Delivery::Proxy => BlobDelivery::Proxy,
            };
            if !config.storage.cache.enabled || delivery != BlobDelivery::Proxy {
                return Ok((store, delivery));
            }
            let dir = config.cache_dir();
            let cached = CachedBlobStore::open(store, dir.clone(), config.storage.cache.max_bytes.as_u64())
                .await
                .with_context(|| format!("storage.cache.path: cannot use {}", dir.display()))?
                .with_direct_io(config.storage.cache.direct_io);
            Ok((Arc::new(cached), delivery))
        }
    }
}

/// The first SIGTERM or ctrl-c starts the shutdown (`http_stop`); a second one
/// during it cuts the request drain short (`force`).
async fn watch_signals(http_stop: CancellationToken, force: CancellationToken) {
    let mut signals = Signals::new();
    signals.next().await;
    tracing::info!("shutdown requested");
    http_stop.cancel();
    signals.next().await;
    tracing::warn!("second shutdown signal");
    force.cancel();
}

/// SIGTERM and ctrl-c, listened to from creation on, so that a signal between two
/// `next` calls is not missed.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    #[cfg(unix)]
    fn new() -> Signals {
        use tokio::signal::unix::SignalKind;
        let listen = |kind: SignalKind, name: &str| match tokio::signal::unix::signal(kind) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for {name}");
                None
            }
        };
        Signals {
            term: listen(SignalKind::terminate(), "SIGTERM"),
            int: listen(SignalKind::interrupt(), "ctrl-c"),
        }
    }

    #[cfg(not(unix))]
    fn new() -> Signals {
        Signals {}
    }

    #[cfg(unix)]
    async fn next(&mut self) {
        async fn one(s: &mut Option<tokio::signal::unix::Signal>) {
            if let Some(s) = s
                && s.recv().await.is_some()
            {
                return;
            }
            std::future::pending().await
        }
        tokio::select! {
            () = one(&mut self.term) => {},
            () = one(&mut self.int) => {},
        }
    }

    #[cfg(not(unix))]
    async fn next(&mut self) {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    }
}
