//! Poll jobs on the control plane: the definitions (kept by
//! [`Delivery`](crate::delivery::Delivery) in its SQLite store), which agent
//! group runs each, and the signal that tells sessions to re-check what
//! their agent should run.
//!
//! Assignment is level-triggered: every change (create, replace, delete,
//! pause, resume) bumps a generation number on a `watch` channel; each
//! session then compares the jobs its group should run with what it has
//! assigned and sends `assign_job` / `revoke_job` for the difference. So a
//! slow agent never makes a queue grow, changes coalesce, and nothing is
//! missed between a session's welcome and its first look.
//!
//! Jobs from `control-plane.toml` are written to the store at every start
//! (the file wins over console edits of the same id); jobs created through
//! the console live only in the store and survive restarts.

use super::config::ControlPlaneConfig;
use super::job_input;
use super::registry::{AgentJobState, Registry};
use crate::delivery::{
    AdminError, Delivery, FieldError, JobDefinition, JobStats, SinkConfig, StoredJob,
};
use connectivity_common::timefmt;
use connectivity_protocol::JobSpec;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, UNIX_EPOCH};
use tokio::sync::watch;

/// Why a job change was refused.
#[derive(Debug, thiserror::Error)]
pub enum JobChangeError {
    /// The definition has problems; each names its field.
    #[error("invalid job definition: {}", join_fields(.0))]
    Invalid(Vec<FieldError>),
    #[error("job {0:?} already exists; change it with PUT /api/v1/jobs/{0}")]
    AlreadyExists(String),
    #[error("no job {0:?}")]
    NotFound(String),
    /// The definition is fine on its own but clashes with another job.
    #[error("{}", join_fields(std::slice::from_ref(.0)))]
    Conflict(FieldError),
    #[error("the control plane is shutting down; retry shortly")]
    ShuttingDown,
    /// The store failed; the message is for the log and the operator.
    #[error("{0}")]
    Internal(String),
}

fn join_fields(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl From<AdminError> for JobChangeError {
    fn from(e: AdminError) -> Self {
        match e {
            AdminError::Invalid(v) => JobChangeError::Invalid(v.0),
            AdminError::AlreadyExists { job_id } => JobChangeError::AlreadyExists(job_id),
            AdminError::NotFound { job_id } => JobChangeError::NotFound(job_id),
            AdminError::SinkPathInUse { path, other } => JobChangeError::Conflict(FieldError::new(
                "sink.path",
                Some(path),
                format!("is already the file of job {other:?}"),
                "give each job its own file",
            )),
            AdminError::Sink { source, .. } => JobChangeError::Invalid(vec![FieldError::new(
                "sink",
                None,
                source.to_string(),
                "correct the sink",
            )]),
            AdminError::ShuttingDown => JobChangeError::ShuttingDown,
            e @ (AdminError::HttpClient(_) | AdminError::Store(_)) => {
                JobChangeError::Internal(e.to_string())
            }
        }
    }
}

/// What the console shows about a job: its definition with every secret
/// masked, delivery counters, and what each agent reports.
#[derive(Debug, Clone, Serialize)]
pub struct JobView {
    pub id: String,
    /// `config` for a `[[jobs]]` table (rewritten at every start), `console`
    /// for one created through the API.
    pub defined_in: &'static str,
    /// `JobDefinition::redacted()`.
    pub definition: JobDefinition,
    pub created_at: String,
    pub updated_at: String,
    /// Counters of the control plane's side since it started.
    pub delivery: Option<JobStats>,
    /// Each agent's last report, connected or not.
    pub agents: Vec<AgentJobState>,
    /// One line per partition: the agent that runs it and its progress.
    pub partitions: Vec<PartitionView>,
    /// Records relayed per second, summed over the connected agents.
    pub records_per_sec: f64,
}

/// A partition of a job, from the report of the agent that holds it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PartitionView {
    pub partition: i32,
    pub agent_id: String,
    pub agent_name: String,
    pub agent_state: super::AgentState,
    pub fetched: i64,
    pub relayed: i64,
    /// Every record below this offset is acked.
    pub acked: i64,
    pub committed: i64,
    /// `-1` when not known yet.
    pub high_watermark: i64,
    /// `high_watermark - committed`: records not yet committed by the
    /// consumer group; `null` while either is unknown.
    pub lag: Option<i64>,
}

/// Which agent holds each partition: of the agents that report it, a
/// connected one with a running job, then the most recent report.
fn partition_views(states: &[AgentJobState]) -> Vec<PartitionView> {
    use connectivity_protocol::job::JobPhase;
    let mut best: BTreeMap<i32, (&AgentJobState, &connectivity_protocol::PartitionState)> =
        BTreeMap::new();
    let rank = |s: &AgentJobState| {
        let live = s.agent_state == super::AgentState::Connected;
        let active = !matches!(s.state.phase, JobPhase::Stopped | JobPhase::Failed);
        (live, active, s.reported_at)
    };
    for s in states {
        for p in &s.state.partitions {
            let better = best
                .get(&p.partition)
                .is_none_or(|(held, _)| rank(s) > rank(held));
            if better {
                best.insert(p.partition, (s, p));
            }
        }
    }
    best.into_values()
        .map(|(s, p)| {
            let hw = p.high_watermark.unwrap_or(-1);
            PartitionView {
                partition: p.partition,
                agent_id: s.agent_id.clone(),
                agent_name: s.agent_name.clone(),
                agent_state: s.agent_state,
                fetched: p.fetched,
                relayed: p.relayed,
                acked: p.acked,
                committed: p.committed,
                high_watermark: hw,
                lag: (hw >= 0 && p.committed >= 0).then(|| (hw - p.committed).max(0)),
            }
        })
        .collect()
}

/// Why the config's job `i` could not be loaded: a [`ConfigError`](super::ConfigError)
/// naming its key when the definition is at fault.
fn load_error(config: &ControlPlaneConfig, i: usize, id: &str, e: JobChangeError) -> anyhow::Error {
    let at = |field: &str| format!("jobs[{i}].{}", field.strip_prefix("spec.").unwrap_or(field));
    let config_error = |field: &FieldError| super::ConfigError {
        file: config.path.clone(),
        line: None,
        key: Some(at(&field.field)),
        value: field.value.clone(),
        problem: field.problem.clone(),
        fix: field.fix.clone(),
    };
    match e {
        JobChangeError::Conflict(f) => config_error(&f).into(),
        JobChangeError::Invalid(fields) if !fields.is_empty() => config_error(&fields[0]).into(),
        other => anyhow::anyhow!(
            "cannot load job {id:?} from {} into the job store: {other}",
            config.path.display()
        ),
    }
}

/// Per job, what a batch needs checked without cloning the definition.
#[derive(Debug, Clone)]
struct Indexed {
    group: String,
}

/// The control plane's jobs. Cheap to share (`Arc`).
pub struct JobService {
    delivery: Delivery,
    config: Arc<ControlPlaneConfig>,
    registry: Arc<Registry>,
    config_ids: BTreeSet<String>,
    index: RwLock<HashMap<String, Indexed>>,
    changes: watch::Sender<u64>,
}

impl JobService {
    /// Load the config's jobs into `delivery` (create or replace each) and
    /// index every job. A config job that clashes with a stored one (its
    /// JSONL file is another job's) is a [`ConfigError`](super::ConfigError).
    pub async fn open(
        config: Arc<ControlPlaneConfig>,
        delivery: Delivery,
        registry: Arc<Registry>,
    ) -> anyhow::Result<JobService> {
        for (i, def) in config.jobs.iter().enumerate() {
            let id = def.id().to_owned();
            if let Err(e) = delivery.put_job(def.clone()).await {
                return Err(load_error(&config, i, &id, e.into()));
            }
            tracing::info!(job = %id, "job from the config file loaded");
        }
        let service = JobService {
            config_ids: config.jobs.iter().map(|j| j.id().to_owned()).collect(),
            delivery,
            config,
            registry,
            index: RwLock::new(HashMap::new()),
            changes: watch::channel(0).0,
        };
        service.reindex();
        Ok(service)
    }

    pub fn delivery(&self) -> &Delivery {
        &self.delivery
    }

    /// Notified on every change; sessions re-check their assignments.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn reindex(&self) {
        let index = self
            .delivery
            .jobs()
            .into_iter()
            .map(|j| {
                (
                    j.definition.spec.id.clone(),
                    Indexed {
                        group: j.definition.group,
                    },
                )
            })
            .collect();
        *self.index.write().unwrap_or_else(PoisonError::into_inner) = index;
    }

    /// After a change: refresh the index and wake every session.
    fn changed(&self) {
        self.reindex();
        self.changes.send_modify(|g| *g += 1);
    }

    /// The agent group of a job, if the job exists.
    pub fn group_of(&self, job_id: &str) -> Option<String> {
        self.index
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(job_id)
            .map(|i| i.group.clone())
    }

    /// The specs every agent of `group` should run: its jobs that are not paused.
    pub fn desired_for(&self, group: &str) -> BTreeMap<String, JobSpec> {
        self.delivery
            .jobs()
            .into_iter()
            .filter(|j| j.definition.group == group && !j.definition.paused)
            .map(|j| (j.definition.spec.id.clone(), j.definition.spec))
            .collect()
    }

    fn checked(&self, def: &JobDefinition) -> Result<(), JobChangeError> {
        let mut errors = job_input::check(def, &self.config.group_ids());
        errors.extend(self.missing_connection(def));
        if errors.is_empty() {
            Ok(())
        } else {
            Err(JobChangeError::Invalid(errors))
        }
    }

    /// A kafka sink's stream connection that does not exist. Checked for
    /// the console API only: a `[[jobs]]` table is loaded before anyone
    /// could create its connection (its deliveries say what is missing).
    fn missing_connection(&self, def: &JobDefinition) -> Option<FieldError> {
        // An empty name already has its own error.
        let SinkConfig::Kafka(k) = &def.sink else {
            return None;
        };
        if k.connection.is_empty() {
            return None;
        }
        let publisher = self.delivery.publisher()?;
        (!publisher.streams.has_connection(&k.connection)).then(|| {
            FieldError::new(
                "sink.connection",
                Some(k.connection.clone()),
                "names no stream connection",
                format!(
                    "create it first with PUT /api/v1/streams/{}, or give one that GET /api/v1/streams lists",
                    k.connection
                ),
            )
        })
    }

    /// Create a job; it is assigned at once to the connected agents of its
    /// group unless it is paused.
    pub async fn create(&self, def: JobDefinition) -> Result<JobView, JobChangeError> {
        if self.delivery.job(def.id()).is_some() {
            return Err(JobChangeError::AlreadyExists(def.spec.id));
        }
        self.checked(&def)?;
        let id = def.spec.id.clone();
        self.delivery.create_job(def).await?;
        tracing::info!(job = %id, "job created");
        self.changed();
        self.view(&id).ok_or(JobChangeError::NotFound(id))
    }

    /// Replace job `id` with `def`. Secrets given as the mask (`******`)
    /// keep their stored values. Agents get the new spec (they restart the
    /// job only if the spec changed).
    pub async fn replace(
        &self,
        id: &str,
        mut def: JobDefinition,
    ) -> Result<JobView, JobChangeError> {
        if def.id() != id {
            return Err(JobChangeError::Invalid(vec![FieldError::new(
                "spec.id",
                Some(def.spec.id.clone()),
                format!("differs from the job in the URL ({id:?})"),
                "a job cannot be renamed: create the new id and delete the old one",
            )]));
        }
        let Some(stored) = self.delivery.job(id) else {
            return Err(JobChangeError::NotFound(id.to_owned()));
        };
        def.unmask_from(&stored.definition);
        self.checked(&def)?;
        self.delivery.put_job(def).await?;
        tracing::info!(job = %id, "job replaced");
        self.changed();
        self.view(id)
            .ok_or_else(|| JobChangeError::NotFound(id.to_owned()))
    }

    /// Delete a job: agents are told to revoke it, its watermarks go.
    pub async fn delete(&self, id: &str) -> Result<(), JobChangeError> {
        self.delivery.delete_job(id).await?;
        self.registry.forget_job(id);
        tracing::info!(job = %id, "job deleted");
        self.changed();
        Ok(())
    }

    /// Pause (revoke from agents, keep the definition) or resume.
    pub async fn set_paused(&self, id: &str, paused: bool) -> Result<JobView, JobChangeError> {
        self.delivery.set_paused(id, paused).await?;
        tracing::info!(job = %id, paused, "job paused flag set");
        self.changed();
        self.view(id)
            .ok_or_else(|| JobChangeError::NotFound(id.to_owned()))
    }

    /// The console's view of one job.
    pub fn view(&self, id: &str) -> Option<JobView> {
        self.delivery.job(id).map(|j| self.view_of(j))
    }

    /// Every job, by id.
    pub fn views(&self) -> Vec<JobView> {
        self.delivery
            .jobs()
            .into_iter()
            .map(|j| self.view_of(j))
            .collect()
    }

    fn view_of(&self, j: StoredJob) -> JobView {
        let id = j.definition.spec.id.clone();
        let at = |ms: i64| timefmt::rfc3339(UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64));
        let agents = self.registry.job_states(&id);
        JobView {
            defined_in: if self.config_ids.contains(&id) {
                "config"
            } else {
                "console"
            },
            definition: j.definition.redacted(),
            created_at: at(j.created_at_ms),
            updated_at: at(j.updated_at_ms),
            delivery: self.delivery.stats(&id),
            partitions: partition_views(&agents),
            records_per_sec: agents
                .iter()
                .filter(|a| a.agent_state == super::AgentState::Connected)
                .map(|a| a.records_per_sec)
                .sum(),
            agents,
            id,
        }
    }
}
