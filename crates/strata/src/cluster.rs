//! `strata cluster`: the scaled-out system on one machine — a gateway, N api and M worker
//! processes of this same binary on loopback, over one shared database — with their logs
//! streamed under a prefix, stopped together on Ctrl-C.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    /// api instances behind the gateway.
    #[arg(long, default_value_t = 3)]
    pub api: usize,
    /// worker instances (outbox relay and event listeners).
    #[arg(long, default_value_t = 1)]
    pub worker: usize,
    /// Shared database for every instance (e.g. postgres://…); default: a SQLite file in
    /// --data.
    #[arg(long)]
    pub database: Option<String>,
    /// Shared cache (e.g. redis://127.0.0.1:6379, which needs cache.secret); default none://:
    /// per-instance caches would serve each other's stale sessions.
    #[arg(long)]
    pub cache: Option<String>,
    /// Where the gateway listens.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Directory of the default SQLite database.
    #[arg(long, default_value = "strata-cluster")]
    pub data: std::path::PathBuf,
}

struct Member {
    name: String,
    child: Child,
    addr: String,
}

pub async fn run(args: ClusterArgs) -> anyhow::Result<()> {
    if args.api == 0 {
        anyhow::bail!("--api must be at least 1");
    }
    let exe = std::env::current_exe().context("cannot find the strata binary")?;
    let database = match &args.database {
        Some(url) => url.clone(),
        None => {
            std::fs::create_dir_all(&args.data).with_context(|| format!("cannot create {}", args.data.display()))?;
            format!("sqlite://{}/strata.db", args.data.display())
        }
    };
    let cache = args.cache.clone().unwrap_or_else(|| "none://".to_owned());
    let mut members: Vec<Member> = Vec::new();
    let result = async {
        // One at a time: the first migrates the database before the others open it.
        for i in 1..=args.api {
            members.push(start(&exe, &format!("api-{i}"), "api", "127.0.0.1:0", &database, &cache, &[]).await?);
        }
        for i in 1..=args.worker {
            members.push(start(&exe, &format!("worker-{i}"), "worker", "127.0.0.1:0", &database, &cache, &[]).await?);
        }
        let upstreams: Vec<&str> =
            members.iter().filter(|m| m.name.starts_with("api-")).map(|m| m.addr.as_str()).collect();
        let upstreams = format!("static://{}", upstreams.join(","));
        let listen = args.listen.to_string();
        let gateway =
            start(&exe, "gateway", "gateway", &listen, &database, &cache, &[("STRATA_GATEWAY_UPSTREAMS", &upstreams)])
                .await?;
        members.insert(0, gateway);
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = result {
        stop_all(&mut members).await;
        return Err(e);
    }
    println!("strata cluster: database {}, cache {cache}", strata_store::redact_url(&database));
    for m in &members {
        println!("  {:<10} http://{:<21} pid {}", m.name, m.addr, m.child.id().unwrap_or(0));
    }
    println!("try: curl http://{}/healthz   (Ctrl-C stops everything)", members[0].addr);
    // Stream until Ctrl-C/SIGTERM, or until the gateway exits.
    let mut gateway = members.remove(0);
    tokio::select! {
        _ = crate::app::shutdown_signal() => {}
        status = gateway.child.wait() => println!("[gateway] exited: {status:?}"),
    }
    members.insert(0, gateway);
    stop_all(&mut members).await;
    Ok(())
}

/// Starts one member and waits for its banner, which names its address; then streams its
/// output under `[name]`.
async fn start(
    exe: &std::path::Path,
    name: &str,
    role: &str,
    listen: &str,
    database: &str,
    cache: &str,
    env: &[(&str, &str)],
) -> anyhow::Result<Member> {
    let mut cmd = Command::new(exe);
    cmd.args(["serve", "--role", role, "--listen", listen])
        .env("STRATA_DATABASE_URL", database)
        .env("STRATA_CACHE_URL", cache)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().with_context(|| format!("cannot start {name}"))?;
    let mut stdout = BufReader::new(child.stdout.take().context("no stdout")?).lines();
    let stderr = BufReader::new(child.stderr.take().context("no stderr")?).lines();
    stream(name.to_owned(), stderr);
    let banner = tokio::time::timeout(Duration::from_secs(60), stdout.next_line())
        .await
        .with_context(|| format!("{name} did not start within 60 s"))?
        .with_context(|| format!("reading {name}'s output"))?
        .with_context(|| format!("{name} exited before listening (see its log above)"))?;
    let addr = banner
        .split("http://")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .with_context(|| format!("{name} printed no address: {banner}"))?
        .to_owned();
    println!("[{name}] {banner}");
    stream(name.to_owned(), stdout);
    Ok(Member { name: name.to_owned(), child, addr })
}

fn stream<R: tokio::io::AsyncBufRead + Unpin + Send + 'static>(name: String, mut lines: tokio::io::Lines<R>) {
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            println!("[{name}] {line}");
        }
    });
}

/// SIGTERM to everyone (the gateway first, so it drains), then wait; SIGKILL after the
/// grace period.
async fn stop_all(members: &mut [Member]) {
    for m in members.iter() {
        if let Some(pid) = m.child.id() {
            let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status().await;
        }
    }
    for m in members.iter_mut() {
        match tokio::time::timeout(Duration::from_secs(35), m.child.wait()).await {
            Ok(status) => {
                println!("[{}] stopped: {}", m.name, status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()))
            }
            Err(_) => {
                let _ = m.child.kill().await;
                println!("[{}] killed after 35 s", m.name);
            }
        }
    }
}
