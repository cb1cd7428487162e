//! Which bus, store and presence a node uses, and how to reach them.

use std::time::Duration;

use clap::Args;
use std::path::PathBuf;

use samvad_bus::{KafkaConfig, NatsConfig};

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Backends: bus, store, presence")]
pub struct BackendArgs {
    /// Message bus: `memory` (in-process, on disk in the data directory), `kafka` or `nats`
    /// (NATS JetStream).
    #[arg(long, env = "SAMVAD_BUS", default_value = "memory")]
    pub bus: String,

    /// `kafka`: bootstrap servers, host:port comma separated.
    #[arg(long, env = "SAMVAD_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,

    /// `kafka`, `nats`: prefix of every topic and consumer group.
    #[arg(long, env = "SAMVAD_TOPIC_PREFIX", default_value = "samvad.")]
    pub topic_prefix: String,

    /// `kafka`: partitions of each topic Samvad creates.
    #[arg(long, env = "SAMVAD_KAFKA_PARTITIONS", default_value = "6")]
    pub kafka_partitions: String,

    /// `kafka`: replication factor of each topic Samvad creates (3 in production).
    #[arg(long, env = "SAMVAD_KAFKA_REPLICATION", default_value = "1")]
    pub kafka_replication: String,

    /// `kafka`: longest time a consumer's fetch waits for records (`fetch.wait.max.ms`).
    /// Kafka answers as soon as a record arrives, whatever this is; tansu waits it out.
    #[arg(long, env = "SAMVAD_KAFKA_FETCH_WAIT_MS", default_value = "500")]
    pub kafka_fetch_wait_ms: String,

    /// `nats`: server URLs, comma separated: nats://host:4222, or tls://host:4222 to require TLS.
    #[arg(long, env = "SAMVAD_NATS_URL")]
    pub nats_url: Option<String>,

    /// `nats`: a credentials file (.creds: a user JWT and its NKey seed) to log in with.
    #[arg(long, env = "SAMVAD_NATS_CREDENTIALS")]
    pub nats_credentials: Option<PathBuf>,

    /// `nats`: PEM certificates of the CAs that sign the servers' TLS certificates, if the
    /// system's roots do not.
    #[arg(long, env = "SAMVAD_NATS_CA_FILE")]
    pub nats_ca_file: Option<PathBuf>,

    /// `nats`: partitions of each topic Samvad creates (the most members of a service's
    /// consumer group that read at once).
    #[arg(long, env = "SAMVAD_NATS_PARTITIONS", default_value = "6")]
    pub nats_partitions: String,

    /// `nats`: replicas of each stream Samvad creates (3 in production).
    #[arg(long, env = "SAMVAD_NATS_REPLICAS", default_value = "1")]
    pub nats_replicas: String,

    /// Store: `embedded` (SQLite in the data directory) or `mongodb`.
    #[arg(long, env = "SAMVAD_STORE", default_value = "embedded")]
    pub store: String,

    /// `mongodb`: connection string, e.g. mongodb://host1,host2,host3/?replicaSet=rs0.
    #[arg(long, env = "SAMVAD_MONGODB_URL", hide_env_values = true)]
    pub mongodb_url: Option<String>,

    /// `mongodb`: the database Samvad keeps its collections in.
    #[arg(long, env = "SAMVAD_MONGODB_DATABASE", default_value = "samvad")]
    pub mongodb_database: String,

    /// Presence: `memory` (this process only) or `redis` (shared by every gateway).
    #[arg(long, env = "SAMVAD_PRESENCE", default_value = "memory")]
    pub presence: String,

    /// `redis`: connection URL, e.g. redis://127.0.0.1:6379/; with SAMVAD_REDIS_CLUSTER, the
    /// URLs of some of the cluster's nodes, comma separated.
    #[arg(long, env = "SAMVAD_REDIS_URL")]
    pub redis_url: Option<String>,

    /// `redis`: `true` when SAMVAD_REDIS_URL names nodes of a Redis Cluster.
    #[arg(long, env = "SAMVAD_REDIS_CLUSTER", default_value = "false")]
    pub redis_cluster: String,

    /// `redis`: prefix of every key Samvad writes.
    #[arg(long, env = "SAMVAD_REDIS_PREFIX", default_value = "samvad:")]
    pub redis_prefix: String,

    /// `redis`: seconds a gateway's presence entries outlive its last heartbeat.
    #[arg(long, env = "SAMVAD_PRESENCE_TTL_SECS", default_value = "90")]
    pub presence_ttl_secs: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusSettings {
    Memory,
    Kafka(KafkaConfig),
    Nats(NatsConfig),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSettings {
    Embedded,
    MongoDb { url: String, database: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceSettings {
    Memory,
    Redis {
        /// One server's URL, or (with `cluster`) seed nodes of a Redis Cluster.
        urls: Vec<String>,
        cluster: bool,
        prefix: String,
        ttl: Duration,
    },
}

impl BackendArgs {
    pub(super) fn validate(
        &self,
        instance: Option<&str>,
        problems: &mut Vec<String>,
    ) -> (BusSettings, StoreSettings, PresenceSettings) {
        (
            self.bus(instance, problems),
            self.store(problems),
            self.presence(problems),
        )
    }

    fn store(&self, problems: &mut Vec<String>) -> StoreSettings {
        match (self.store.as_str(), &self.mongodb_url) {
            ("embedded", _) => StoreSettings::Embedded,
            ("mongodb", Some(url))
                if url.starts_with("mongodb://") || url.starts_with("mongodb+srv://") =>
            {
                StoreSettings::MongoDb {
                    url: url.clone(),
                    database: self.mongodb_database.clone(),
                }
            }
            ("mongodb", _) => {
                problems.push(
                    "SAMVAD_MONGODB_URL: required with SAMVAD_STORE=mongodb, as mongodb://…".into(),
                );
                StoreSettings::Embedded
            }
            (other, _) => {
                problems.push(format!(
                    "SAMVAD_STORE: `{other}` is not `embedded` or `mongodb`"
                ));
                StoreSettings::Embedded
            }
        }
    }

    fn bus(&self, instance: Option<&str>, problems: &mut Vec<String>) -> BusSettings {
        match self.bus.as_str() {
            "memory" => BusSettings::Memory,
            "kafka" => self.kafka(instance, problems),
            "nats" => self.nats(instance, problems),
            other => {
                problems.push(format!(
                    "SAMVAD_BUS: `{other}` is not `memory`, `kafka` or `nats`"
                ));
                BusSettings::Memory
            }
        }
    }

    fn kafka(&self, instance: Option<&str>, problems: &mut Vec<String>) -> BusSettings {
        let partitions = super::number(
            problems,
            "SAMVAD_KAFKA_PARTITIONS",
            &self.kafka_partitions,
            1..=10_000,
        );
        let replication = super::number(
            problems,
            "SAMVAD_KAFKA_REPLICATION",
            &self.kafka_replication,
            1..=16,
        );
        let fetch_wait_ms = super::number(
            problems,
            "SAMVAD_KAFKA_FETCH_WAIT_MS",
            &self.kafka_fetch_wait_ms,
            1..=60_000,
        );
        match &self.kafka_brokers {
            Some(brokers) if !brokers.trim().is_empty() => BusSettings::Kafka(KafkaConfig {
                brokers: brokers.clone(),
                prefix: self.topic_prefix.clone(),
                partitions: partitions as i32,
                replication: replication as i32,
                instance: instance.map(str::to_owned),
                fetch_wait: Duration::from_millis(fetch_wait_ms),
            }),
            _ => {
                problems.push("SAMVAD_KAFKA_BROKERS: required with SAMVAD_BUS=kafka".into());
                BusSettings::Memory
            }
        }
    }

    fn nats(&self, instance: Option<&str>, problems: &mut Vec<String>) -> BusSettings {
        let partitions = super::number(
            problems,
            "SAMVAD_NATS_PARTITIONS",
            &self.nats_partitions,
            1..=1_000,
        );
        // JetStream keeps an odd number of replicas, at most five.
        let replicas = super::number(problems, "SAMVAD_NATS_REPLICAS", &self.nats_replicas, 1..=5);
        if replicas.is_multiple_of(2) {
            problems.push(format!(
                "SAMVAD_NATS_REPLICAS: {replicas} is even; JetStream needs a majority, use 1, 3 or 5"
            ));
        }
        for (name, path) in [
            ("SAMVAD_NATS_CREDENTIALS", &self.nats_credentials),
            ("SAMVAD_NATS_CA_FILE", &self.nats_ca_file),
        ] {
            if let Some(path) = path
                && !path.is_file()
            {
                problems.push(format!("{name}: {} is not a readable file", path.display()));
            }
        }
        match &self.nats_url {
            Some(url) if !url.trim().is_empty() => BusSettings::Nats(NatsConfig {
                url: url.clone(),
                credentials: self.nats_credentials.clone(),
                ca_file: self.nats_ca_file.clone(),
                prefix: self.topic_prefix.clone(),
                partitions: partitions as u32,
                replicas: replicas as usize,
                instance: instance.map(str::to_owned),
            }),
            _ => {
                problems.push("SAMVAD_NATS_URL: required with SAMVAD_BUS=nats".into());
                BusSettings::Memory
            }
        }
    }

    fn presence(&self, problems: &mut Vec<String>) -> PresenceSettings {
        let ttl = super::number(
            problems,
            "SAMVAD_PRESENCE_TTL_SECS",
            &self.presence_ttl_secs,
            3..=3600,
        );
        match self.presence.as_str() {
            "memory" => PresenceSettings::Memory,
            "redis" => {
                let cluster = match self.redis_cluster.as_str() {
                    "true" => true,
                    "false" => false,
                    other => {
                        problems.push(format!(
                            "SAMVAD_REDIS_CLUSTER: `{other}` is not `true` or `false`"
                        ));
                        false
                    }
                };
                let urls: Vec<String> = self
                    .redis_url
                    .iter()
                    .flat_map(|u| u.split(','))
                    .map(|u| u.trim().to_owned())
                    .filter(|u| !u.is_empty())
                    .collect();
                let well_formed = !urls.is_empty()
                    && (cluster || urls.len() == 1)
                    && urls
                        .iter()
                        .all(|u| u.starts_with("redis://") || u.starts_with("rediss://"));
                if !well_formed {
                    problems.push(
                        "SAMVAD_REDIS_URL: required with SAMVAD_PRESENCE=redis, as redis://host:port/ \
                         (several, comma separated, only with SAMVAD_REDIS_CLUSTER=true)"
                            .into(),
                    );
                }
                PresenceSettings::Redis {
                    urls,
                    cluster,
                    prefix: self.redis_prefix.clone(),
                    ttl: Duration::from_secs(ttl),
                }
            }
            other => {
                problems.push(format!(
                    "SAMVAD_PRESENCE: `{other}` is not `memory` or `redis`"
                ));
                PresenceSettings::Memory
            }
        }
    }
}
