//! The processes a fault scenario runs and hurts: ingestion nodes
//! (`switchboard-broker`) and routing workers (`switchboard-workers`),
//! each its own child process with its log in the run's folder; and the
//! deploy/kafka scripts that kill and start Kafka brokers. The benchmark
//! scenarios start their nodes, workers and raw pipes (`RawPipe`) here too.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use tokio::process::{Child, Command};

use crate::loadgen::Target;

/// Partitions of every topic a scenario creates.
pub const PARTITIONS: i32 = 6;

/// Where the Switchboard binaries are: `given`, else beside this one.
pub fn binaries(given: Option<PathBuf>) -> PathBuf {
    given.unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(Path::to_path_buf))
            .unwrap_or_default()
    })
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// How to start one kind of process again: binary, arguments, environment.
#[derive(Debug, Clone)]
struct Spec {
    name: String,
    binary: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
}

/// A Switchboard process that a scenario can kill, freeze and restart.
pub struct Proc {
    spec: Spec,
    child: Option<Child>,
}

impl Proc {
    fn spawn(spec: Spec) -> anyhow::Result<Self> {
        let mut proc = Self { spec, child: None };
        proc.start()?;
        Ok(proc)
    }

    /// Starts the process (again), appending to its log.
    pub fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.spec.log)?;
        let child = Command::new(&self.spec.binary)
            .args(&self.spec.args)
            .env_remove("SWITCHBOARD_KAFKA_BOOTSTRAP")
            .envs(self.spec.env.iter().map(|(k, v)| (k, v)))
            .env(
                "RUST_LOG",
                std::env::var("FAULTS_RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot start {} ({e}); build it first: cargo build --release --bins",
                    self.spec.binary.display()
                )
            })?;
        tracing::info!(name = %self.spec.name, pid = child.id(), "started");
        self.child = Some(child);
        Ok(())
    }

    /// Where its output goes.
    pub fn log(&self) -> &Path {
        &self.spec.log
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> anyhow::Result<u32> {
        self.child
            .as_ref()
            .and_then(Child::id)
            .ok_or_else(|| anyhow::anyhow!("{} is not running", self.spec.name))
    }

    /// Sends `signal` (a `kill -s` name: KILL, STOP, CONT, TERM).
    pub async fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self.pid()?;
        tracing::info!(name = %self.spec.name, pid, signal, "signal");
        let status = Command::new("kill")
            .args(["-s", signal, &pid.to_string()])
            .status()
            .await?;
        anyhow::ensure!(status.success(), "kill -s {signal} {pid} failed");
        Ok(())
    }

    /// `kill -9`, and waits for the process to be gone.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.signal("KILL").await?;
        if let Some(mut child) = self.child.take() {
            child.wait().await?;
        }
        Ok(())
    }

    /// SIGTERM (the process drains), SIGKILL after `grace`; returns
    /// whether it exited by itself, successfully.
    pub async fn stop(&mut self, grace: Duration) -> anyhow::Result<bool> {
        let Some(mut child) = self.child.take() else {
            return Ok(true);
        };
        if let Some(pid) = child.id() {
            let _ = Command::new("kill")
                .args(["-s", "CONT", &pid.to_string()])
                .status()
                .await;
            let _ = Command::new("kill")
                .args(["-s", "TERM", &pid.to_string()])
                .status()
                .await;
        }
        match tokio::time::timeout(grace, child.wait()).await {
            Ok(status) => Ok(status?.success()),
            Err(_) => {
                tracing::warn!(name = %self.spec.name, "did not stop in time; killing");
                child.kill().await?;
                Ok(false)
            }
        }
    }

    /// [`Self::stop`], failing unless the process exits by itself,
    /// successfully, within `grace`; the error names its log.
    pub async fn stop_cleanly(&mut self, grace: Duration) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.stop(grace).await?,
            "{} did not stop cleanly within {grace:?} (see {})",
            self.spec.name,
            self.spec.log.display()
        );
        Ok(())
    }
}

/// An ingestion node.
pub struct Node {
    /// Its process.
    pub proc: Proc,
    /// `http://127.0.0.1:<port>`.
    pub address: String,
}

impl Node {
    /// Starts the ingestion node `binary` (`switchboard-broker`) on free
    /// ports, publishing to `topic`, with `settings` (config keys, as
    /// `SWITCHBOARD_BROKER_<KEY>` variables) and its log in
    /// `dir/<name>.log`, and waits until it answers.
    pub async fn spawn(
        binary: &Path,
        name: &str,
        dir: &Path,
        kafka: &str,
        topic: &str,
        settings: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        let (grpc, metrics) = (free_port()?, free_port()?);
        let spec = Spec {
            name: name.to_owned(),
            binary: binary.to_owned(),
            args: [
                "--grpc-addr",
                &format!("127.0.0.1:{grpc}"),
                "--metrics-addr",
                &format!("127.0.0.1:{metrics}"),
                "--kafka-bootstrap",
                kafka,
                "--messages-topic",
                topic,
                // Several nodes run side by side; the HTTP listener's
                // default port would clash.
                "--http-addr",
                "off",
            ]
            .map(str::to_owned)
            .to_vec(),
            env: settings
                .iter()
                .map(|(key, value)| (format!("SWITCHBOARD_BROKER_{key}"), value.clone()))
                .collect(),
            log: dir.join(format!("{name}.log")),
        };
        let node = Self {
            proc: Proc::spawn(spec)?,
            address: format!("http://127.0.0.1:{grpc}"),
        };
        node.wait_serving().await?;
        Ok(node)
    }

    /// Stops the node with SIGTERM (it drains), and fails unless it exits
    /// by itself, successfully, within 30 s.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.proc.stop_cleanly(Duration::from_secs(30)).await
    }

    /// Waits until the node accepts connections (60 s at most).
    pub async fn wait_serving(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Target::connect(&self.address, 1).await.is_err() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} did not answer within 60 s",
                self.address
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }
}

/// The workers' settings a scenario chooses.
pub struct WorkerSetup<'a> {
    /// Kafka bootstrap servers.
    pub kafka: &'a str,
    /// Replication of the topics they create.
    pub replication: i32,
    /// Partitions of the topics they create.
    pub partitions: i32,
    /// Prefix of every topic name they write, and the group id.
    pub prefix: &'a str,
    /// The topic they route from.
    pub messages_topic: &'a str,
    /// The routing rules file; none: everything goes to analytics only.
    pub rules: Option<&'a Path>,
}

impl WorkerSetup<'_> {
    /// Worker `name`'s config file, with its own bots (name, endpoint).
    pub fn write_config(
        &self,
        dir: &Path,
        name: &str,
        bots: &[(&str, String)],
    ) -> anyhow::Result<PathBuf> {
        let p = self.prefix;
        let mut config = format!(
            r#"group_id = "{p}"
auto_offset_reset = "earliest"
messages_topic = "{messages}"
analytics_topic = "{p}.analytics"
agent_queue_topic = "{p}.agent-queue"
dlq_topic = "{p}.dlq"
state_topic = "{p}.state"
rejections_topic = "{p}.rejections"
outbound_topic_prefix = "{p}.outbound"
{rules}max_attempts = 6
retry_backoff = "100ms"
retry_backoff_max = "2s"
shutdown_grace = "10s"

[kafka]
bootstrap_servers = "{kafka}"
topic_partitions = {partitions}
topic_replication = {replication}

[agents]
enabled = false
"#,
            messages = self.messages_topic,
            rules = self
                .rules
                .map(|r| format!("rules_file = \"{}\"\n", r.display()))
                .unwrap_or_default(),
            kafka = self.kafka,
            replication = self.replication,
            partitions = self.partitions,
        );
        for (bot, endpoint) in bots {
            config.push_str(&format!(
                "\n[bots.{bot}]\nendpoint = \"{endpoint}\"\ntimeout = \"5s\"\n"
            ));
        }
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, config)?;
        Ok(path)
    }
}

/// A routing worker.
pub struct Worker;

impl Worker {
    /// Starts `switchboard-workers` from `bin` with `config`, its metrics on
    /// a free port.
    pub fn spawn(bin: &Path, name: &str, dir: &Path, config: &Path) -> anyhow::Result<Proc> {
        Proc::spawn(Spec {
            name: name.to_owned(),
            binary: bin.join("switchboard-workers"),
            args: vec!["--config".into(), config.display().to_string()],
            env: vec![(
                "SWITCHBOARD_WORKERS_METRICS_ADDR".into(),
                format!("127.0.0.1:{}", free_port()?),
            )],
            log: dir.join(format!("{name}.log")),
        })
    }
}

/// The raw pipe (`switchboard-bench pipe`: this binary) as a process of
/// its own, reading `from` and writing `to` on `kafka`, its consumer tuned
/// by `kafka.consumer_properties` as a worker's would be.
pub struct RawPipe;

impl RawPipe {
    /// Starts it, its log in `dir/<name>.log`.
    pub fn spawn(
        name: &str,
        dir: &Path,
        kafka: &switchboard_runtime::kafka::KafkaConfig,
        from: &str,
        to: &str,
    ) -> anyhow::Result<Proc> {
        let mut args = vec![
            "pipe".to_owned(),
            "--kafka".into(),
            kafka.bootstrap_servers.clone(),
            "--partitions".into(),
            kafka.topic_partitions.to_string(),
            "--from".into(),
            from.to_owned(),
            "--to".into(),
            to.to_owned(),
        ];
        for (key, value) in &kafka.consumer_properties {
            args.push("--consumer-property".into());
            args.push(format!("{key}={value}"));
        }
        Proc::spawn(Spec {
            name: name.to_owned(),
            binary: std::env::current_exe()?,
            args,
            env: Vec::new(),
            log: dir.join(format!("{name}.log")),
        })
    }
}

/// Runs `deploy/kafka/broker.sh ARGS` (the caller's KAFKA_PORT and
/// KAFKA_DATA_DIR pick the Kafka), its output appended to `log`.
pub async fn kafka_broker(scripts: &Path, log: &Path, args: &[&str]) -> anyhow::Result<()> {
    tracing::info!(?args, "deploy/kafka/broker.sh");
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let status = Command::new(scripts.join("broker.sh"))
        .args(args)
        // A broker killed under load recovers its logs first: minutes on a
        // busy machine.
        .env("KAFKA_START_TIMEOUT", "300")
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .status()
        .await?;
    anyhow::ensure!(
        status.success(),
        "broker.sh {args:?} failed (see {})",
        log.display()
    );
    Ok(())
}
